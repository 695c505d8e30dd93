"""SAM's training loss: 20 x focal + 1 x dice on the best output, plus MSE on the predicted IoU.

Computed on the low-res logits (4h x 4w) against the ground truth area-downsampled to that grid (soft
targets: the fraction of each cell inside the mask), which is 16x cheaper than the input resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    """Loss weights. The SAM paper gives 20:1 focal:dice and an MSE IoU head but not the focal alpha; with
    ``focal_alpha`` = 0.75 (foreground weighted up) a from-scratch model leaves the early all-background
    state sooner than with detection's usual 0.25."""

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    focal_alpha: float = 0.75
    focal_gamma: float = 2.0


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss per mask, averaged over pixels: (..., H, W) -> (...). Soft targets allowed."""
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per mask: (..., H, W) -> (...)."""
    prob = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (prob * t).sum(-1) + eps) / (prob.sum(-1) + t.sum(-1) + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """IoU of the binarised logits with the binarised target: (..., H, W) -> (...); 1 when both are empty."""
    pred = logits > threshold
    gt = target > 0.5
    inter = (pred & gt).flatten(-2).sum(-1).to(torch.float32)
    union = (pred | gt).flatten(-2).sum(-1).to(torch.float32)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@dataclass
class LossOutput:
    total: torch.Tensor  # scalar
    focal: torch.Tensor  # scalar, of the chosen outputs
    dice: torch.Tensor
    iou_mse: torch.Tensor
    chosen: torch.Tensor  # (M,) index of the output the mask loss used
    iou: torch.Tensor  # (M,) actual IoU of the chosen output (detached)


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    weights: LossWeights | None = None,
    allowed: torch.Tensor | None = None,
) -> LossOutput:
    """Loss of (M, C, h, w) logits and (M, C) IoU predictions against (M, h, w) soft targets.

    The mask loss of each row is the minimum over its allowed outputs (gradient flows only through that
    one); the IoU head is trained with MSE on every allowed output. ``allowed`` (M, C) bool selects outputs
    per row (e.g. the 3 multimask outputs for a single point, token 0 otherwise); default: all.
    """
    weights = weights or LossWeights()
    m, c = logits.shape[:2]
    if allowed is None:
        allowed = torch.ones((m, c), dtype=torch.bool, device=logits.device)
    tgt = target[:, None].expand_as(logits)
    focal = focal_loss(logits, tgt, weights.focal_alpha, weights.focal_gamma)  # (M, C)
    dice = dice_loss(logits, tgt)
    per_output = weights.focal * focal + weights.dice * dice
    masked = torch.where(allowed, per_output, torch.full_like(per_output, float("inf")))
    chosen = masked.detach().argmin(dim=1)
    rows = torch.arange(m, device=logits.device)
    mask_loss = per_output[rows, chosen]
    with torch.no_grad():
        actual = mask_iou(logits, tgt)
    sq = (iou_pred - actual).pow(2)
    iou_mse = (sq * allowed).sum(1) / allowed.sum(1).clamp(min=1)
    total = (mask_loss + weights.iou * iou_mse).mean()
    return LossOutput(
        total=total,
        focal=focal[rows, chosen].mean().detach(),
        dice=dice[rows, chosen].mean().detach(),
        iou_mse=iou_mse.mean().detach(),
        chosen=chosen,
        iou=actual[rows, chosen],
    )
