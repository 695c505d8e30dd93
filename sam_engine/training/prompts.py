"""Prompt simulation for training (SAM paper, appendix A), vectorised over a batch of masks.

Round 0: per mask, a foreground point drawn uniformly from the mask or a noisy box (each with probability
1/2; box-corner noise has a standard deviation of 10 % of the box side, at most 20 px). Later rounds add
one point drawn uniformly from the error region of the previous prediction (false negative -> positive
point, false positive -> negative point); mask-only rounds add no point and only feed the previous logits
back. Points are xy in the model's input frame (``img_size`` pixels); boxes ride as two points with the
box-corner labels 2 and 3, so point and box prompts mix in one batch. All randomness comes from the
``torch.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.clicks import padded_distance

LABEL_PAD, LABEL_NEG, LABEL_POS, LABEL_BOX_TL, LABEL_BOX_BR = -1, 0, 1, 2, 3


@dataclass(frozen=True)
class PromptSchedule:
    """Which rounds a training step runs after the first prompt.

    ``point_rounds`` rounds each add an error-region point; ``mask_only_rounds`` rounds add none. SAM uses 8
    point rounds and 2 mask-only rounds (one placed at random among the point rounds, one last); fewer
    rounds train faster on a CPU. ``ungraded_rounds_max``: before those rounds, a step runs a seeded number
    (0 to this many) of extra point rounds without gradients or loss, so the trained rounds also see the
    third, fourth, ... click with fed-back logits, as the click protocol and annotators use the model, at
    a forward pass each instead of a forward and backward pass.
    """

    point_rounds: int = 1
    mask_only_rounds: int = 0
    ungraded_rounds_max: int = 4
    box_prob: float = 0.25
    box_noise_frac: float = 0.1
    box_noise_max: float = 20.0
    interior_prob: float = 0.5
    # share of error-region points placed as the click protocol (and people) place them: at the deepest
    # point of the larger error region, instead of uniformly over the error
    center_prob: float = 0.0

    def rounds(self, generator: torch.Generator) -> list[bool]:
        """The kinds of the rounds after round 0: True adds a point, False is mask-only (seeded placement)."""
        kinds = [True] * self.point_rounds
        extra = self.mask_only_rounds
        if extra > 0 and self.point_rounds > 0:
            at = int(torch.randint(0, self.point_rounds + 1, (1,), generator=generator))
            kinds.insert(at, False)
            extra -= 1
        kinds.extend([False] * extra)
        return kinds

    def ungraded_rounds(self, generator: torch.Generator) -> int:
        """How many ungraded point rounds this step runs (seeded, uniform in 0..``ungraded_rounds_max``)."""
        if self.ungraded_rounds_max <= 0:
            return 0
        return int(torch.randint(0, self.ungraded_rounds_max + 1, (1,), generator=generator))


def sample_uniform(region: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel drawn uniformly from each region of an (M, H, W) bool batch.

    Returns (yx (M, 2) long, found (M,) bool); rows with an empty region get (0, 0) and ``found`` False.
    """
    m, h, w = region.shape
    flat = region.reshape(m, h * w)
    scores = torch.rand(flat.shape, generator=generator, device=region.device)
    scores = torch.where(flat, scores, torch.full_like(scores, -1.0))
    idx = scores.argmax(dim=1)
    found = flat.any(dim=1)
    idx = torch.where(found, idx, torch.zeros_like(idx))
    return torch.stack([idx // w, idx % w], dim=1), found


def interior_weights(masks: torch.Tensor, iterations: int = 8, factor: int = 4) -> torch.Tensor:
    """Approximate depth of each mask pixel (M, H, W): how many 3x3 erosions of the mask, on a grid
    ``factor`` times coarser, keep it (so depths reach ``iterations * factor`` pixels cheaply)."""
    x = masks[:, None].to(torch.float32)
    if factor > 1:
        x = (F.avg_pool2d(x, factor, ceil_mode=True) >= 0.5).to(torch.float32)
    depth = x.clone()
    for _ in range(iterations):
        x = -F.max_pool2d(-x, 3, stride=1, padding=1)  # erosion
        if not bool(x.any()):
            break
        depth = depth + x
    if factor > 1:
        depth = depth.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
        depth = depth[..., : masks.shape[1], : masks.shape[2]]
    # every mask pixel keeps a small weight, so thin masks (empty on the coarse grid) still get points
    return (depth[:, 0] + 0.25) * masks


def sample_weighted(weights: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel per row drawn with probability proportional to ``weights`` (M, H, W) >= 0; (yx, found).

    Inverse-CDF sampling (one uniform per row, a cumulative sum and a binary search): the same distribution
    as ``torch.multinomial`` at a fraction of its cost on full-resolution rows.
    """
    m, h, w = weights.shape
    cdf = weights.reshape(m, h * w).to(torch.float64).cumsum(dim=1)
    total = cdf[:, -1]
    found = total > 0
    u = torch.rand((m, 1), generator=generator, device=weights.device, dtype=torch.float64)
    idx = torch.searchsorted(cdf, u * total[:, None], right=True)[:, 0].clamp(max=h * w - 1)
    idx = torch.where(found, idx, torch.zeros_like(idx))
    return torch.stack([idx // w, idx % w], dim=1), found


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (pixel indices, inclusive) of an (M, H, W) bool batch; empty masks give zeros."""
    m, h, w = masks.shape
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).min(dim=1).values
    y1 = torch.where(rows, ar_h, -1).max(dim=1).values
    x0 = torch.where(cols, ar_w, w).min(dim=1).values
    x1 = torch.where(cols, ar_w, -1).max(dim=1).values
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def noisy_boxes(
    masks: torch.Tensor,
    generator: torch.Generator,
    noise_frac: float = 0.1,
    noise_max: float = 20.0,
    bounds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask boxes with Gaussian corner noise (std = ``noise_frac`` x side, at most ``noise_max`` px).

    ``bounds`` (M, 2) = (h, w) of the valid image area per mask; corners are clipped to it.
    """
    boxes = mask_boxes(masks)
    side_w = (boxes[:, 2] - boxes[:, 0] + 1).clamp(min=1)
    side_h = (boxes[:, 3] - boxes[:, 1] + 1).clamp(min=1)
    std = torch.stack([side_w, side_h, side_w, side_h], dim=1) * noise_frac
    std = std.clamp(max=noise_max)
    noise = torch.randn(boxes.shape, generator=generator, device=boxes.device) * std
    out = boxes + noise
    if bounds is None:
        bounds = torch.tensor(masks.shape[1:], device=masks.device).expand(masks.shape[0], 2)
    hi = torch.stack([bounds[:, 1], bounds[:, 0], bounds[:, 1], bounds[:, 0]], dim=1).to(out.dtype) - 1
    out = torch.minimum(out.clamp(min=0), hi)
    x0 = torch.minimum(out[:, 0], out[:, 2])
    x1 = torch.maximum(out[:, 0], out[:, 2])
    y0 = torch.minimum(out[:, 1], out[:, 3])
    y1 = torch.maximum(out[:, 1], out[:, 3])
    return torch.stack([x0, y0, x1, y1], dim=1)


@dataclass
class Prompts:
    """Point prompts of a batch: coords (M, N, 2) xy input frame, labels (M, N), and which rows began with a box."""

    coords: torch.Tensor
    labels: torch.Tensor
    is_box: torch.Tensor

    @property
    def num_points(self) -> torch.Tensor:
        """Clicked points per row (foreground/background labels only)."""
        return ((self.labels == LABEL_POS) | (self.labels == LABEL_NEG)).sum(dim=1)

    def append(self, coords: torch.Tensor, labels: torch.Tensor) -> Prompts:
        """A copy with one more point per row ((M, 2) coords, (M,) labels; label -1 for none)."""
        return Prompts(
            torch.cat([self.coords, coords[:, None].to(self.coords.dtype)], dim=1),
            torch.cat([self.labels, labels[:, None].to(self.labels.dtype)], dim=1),
            self.is_box,
        )


def first_prompts(
    masks: torch.Tensor,
    generator: torch.Generator,
    box_prob: float = 0.5,
    box_noise_frac: float = 0.1,
    box_noise_max: float = 20.0,
    bounds: torch.Tensor | None = None,
    interior_prob: float = 0.0,
) -> Prompts:
    """Round-0 prompts for (M, H, W) bool masks in the input frame: a point or a noisy box per mask.

    Every row gets two slots: (point, padding) or (box top-left, box bottom-right). Points are uniform over
    the mask (SAM), except that with probability ``interior_prob`` a point is drawn with probability
    proportional to the squared depth inside the mask (where people, and the click protocol, click first).
    """
    m = masks.shape[0]
    device = masks.device
    is_box = torch.rand(m, generator=generator, device=device) < box_prob
    yx, _ = sample_uniform(masks, generator)
    if interior_prob > 0:
        deep = torch.rand(m, generator=generator, device=device) < interior_prob
        if bool(deep.any()):
            yx_deep, found = sample_weighted(interior_weights(masks[deep]).pow(2), generator)
            yx[deep] = torch.where(found[:, None], yx_deep, yx[deep])
    point = yx.flip(1).to(torch.float32)  # xy
    boxes = noisy_boxes(masks, generator, box_noise_frac, box_noise_max, bounds)
    coords = torch.where(
        is_box[:, None, None],
        boxes.view(m, 2, 2),
        torch.stack([point, torch.zeros_like(point)], dim=1),
    )
    box_labels = torch.tensor([LABEL_BOX_TL, LABEL_BOX_BR], device=device)
    point_labels = torch.tensor([LABEL_POS, LABEL_PAD], device=device)
    labels = torch.where(is_box[:, None], box_labels, point_labels)
    return Prompts(coords, labels.to(torch.int64), is_box)


def region_depth(region: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each pixel of an (M, h, w) bool batch to the outside of its region, the image
    border counting as outside (the click protocol's padded distance transform); 0 outside."""
    depth = padded_distance(region.cpu().numpy()).astype(np.float32)
    return torch.from_numpy(depth).to(region.device)


def deepest_error_points(
    pred: torch.Tensor, gt: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The click protocol's next click for each row of (M, h, w) bool prediction vs GT: the deepest pixel of
    the false negatives when they reach deeper than the false positives (a positive click), else of the
    false positives (negative); ties broken at random. Returns (yx (M, 2) long, positive (M,) bool)."""
    d_fn = region_depth(gt & ~pred)
    d_fp = region_depth(pred & ~gt)
    positive = d_fn.flatten(1).amax(dim=1) >= d_fp.flatten(1).amax(dim=1)
    depth = torch.where(positive[:, None, None], d_fn, d_fp)
    jitter = torch.rand(depth.shape, generator=generator, device=depth.device) * 0.5
    idx = torch.where(depth > 0, depth + jitter, torch.zeros_like(depth)).flatten(1).argmax(dim=1)
    w = depth.shape[2]
    return torch.stack([idx // w, idx % w], dim=1), positive


def error_points(
    pred: torch.Tensor,
    gt: torch.Tensor,
    generator: torch.Generator,
    scale: float = 1.0,
    center_prob: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A point drawn uniformly from each row's error region of (M, h, w) bool prediction vs GT.

    The point's label is 1 on a false negative and 0 on a false positive; rows without error get label -1.
    With probability ``center_prob`` a row's point is the click protocol's instead (:func:`deepest_error_points`).
    ``scale`` maps the mask grid to the input frame (e.g. 4 for low-res masks); the point lands at a random
    position inside the chosen cell. Returns (coords (M, 2) xy float, labels (M,) long).
    """
    error = pred ^ gt
    yx, found = sample_uniform(error, generator)
    if center_prob > 0:
        deep = torch.rand(gt.shape[0], generator=generator, device=gt.device) < center_prob
        if bool(deep.any()):
            yx_deep, _ = deepest_error_points(pred[deep], gt[deep], generator)
            yx[deep] = yx_deep
    rows = torch.arange(gt.shape[0], device=gt.device)
    positive = gt[rows, yx[:, 0], yx[:, 1]]
    labels = torch.where(positive, LABEL_POS, LABEL_NEG)
    labels = torch.where(found, labels, torch.full_like(labels, LABEL_PAD))
    jitter = (
        torch.rand(yx.shape, generator=generator, device=gt.device)
        if scale > 1
        else torch.zeros(yx.shape, device=gt.device)
    )
    xy = (yx.flip(1).to(torch.float32) + jitter) * scale
    if scale > 1:
        xy = xy - 0.5
    return xy, labels.to(torch.int64)
