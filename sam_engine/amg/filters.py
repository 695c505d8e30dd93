"""Vectorized mask filters: stability score, mask boxes, crop-edge test, large-mask test."""

from __future__ import annotations

import torch


def count_true(masks: torch.Tensor) -> torch.Tensor:
    """Number of True pixels of each (N, ...) boolean mask, as int32 (N,).

    Fast path (CPU, contiguous, pixels per mask a multiple of 8): the mask bytes are read as int64 lanes
    (8 pixels each) and summed 255 lanes at a time, so no byte of a lane can carry; the byte counts of each
    lane sum are then added up (rows shorter than 255 lanes in one block). Otherwise rows are summed in int16 first.
    """
    n = masks.shape[0]
    flat = masks.reshape(n, -1)
    size = flat.shape[1]
    if n == 0 or size == 0:
        return torch.zeros(n, dtype=torch.int32, device=masks.device)
    if size % 8 or not flat.is_contiguous() or flat.device.type != "cpu":
        width = masks.shape[-1] if masks.dim() > 1 else size
        if width < 32768 and size % width == 0:
            return flat.reshape(n, -1, width).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
        return flat.sum(dim=1, dtype=torch.int32)
    lanes = flat.view(torch.uint8).view(torch.int64)  # (n, size / 8)
    per = min(255, lanes.shape[1])
    whole = (lanes.shape[1] // per) * per
    total = torch.zeros(n, dtype=torch.int32)
    if whole:
        sums = lanes[:, :whole].reshape(n, -1, per).sum(dim=-1)  # every byte of a sum is <= 255
        total += sums.view(torch.uint8).to(torch.int32).sum(dim=-1)
    if whole < lanes.shape[1]:
        total += flat[:, whole * 8 :].sum(dim=1, dtype=torch.int32)
    return total


def stability_score(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """IoU of the masks binarized at ``threshold + offset`` and ``threshold - offset``.

    The high-cutoff mask lies inside the low-cutoff one, so the IoU is the ratio of their pixel counts:
    ``|logits > t + off| / |logits > t - off|`` over the last two dimensions (NaN when both are empty).
    """
    n = logits[..., 0, 0].numel()
    flat = logits.reshape(n, -1)
    size = flat.shape[1]
    # Compare into a zero-padded buffer whose rows are a multiple of 8 bytes, so counting takes the fast path.
    buffer = torch.zeros(n, -(-size // 8) * 8, dtype=torch.bool, device=logits.device)
    counts = []
    for cut in (threshold + offset, threshold - offset):
        torch.gt(flat, cut, out=buffer[:, :size])
        counts.append(count_true(buffer))
    return (counts[0] / counts[1]).reshape(logits.shape[:-2])


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Inclusive XYXY pixel boxes of (..., H, W) boolean masks; empty masks give [0, 0, 0, 0]."""
    shape = masks.shape
    h, w = shape[-2], shape[-1]
    if masks.numel() == 0:
        return torch.zeros(*shape[:-2], 4, dtype=torch.int64, device=masks.device)
    flat = masks.reshape(-1, h, w)
    rows = flat.any(dim=-1)  # (N, H)
    cols = flat.any(dim=-2)  # (N, W)
    top = rows.to(torch.uint8).argmax(dim=-1)
    bottom = h - 1 - rows.flip(-1).to(torch.uint8).argmax(dim=-1)
    left = cols.to(torch.uint8).argmax(dim=-1)
    right = w - 1 - cols.flip(-1).to(torch.uint8).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1).to(torch.int64)
    boxes = boxes * rows.any(dim=-1, keepdim=True)
    return boxes.reshape(*shape[:-2], 4)


def near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """True for boxes (image frame, XYXY) within ``atol`` px of a crop edge that is not also an image edge."""
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float32, device=boxes.device)
    b = boxes.to(torch.float32)
    near_crop = (b - crop[None]).abs() <= atol
    near_image = (b - image[None]).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


def covers_too_much(areas: torch.Tensor, height: int, width: int, max_ratio: float | None) -> torch.Tensor:
    """True for masks whose area is at least ``max_ratio`` of the image (never when ``max_ratio`` is None)."""
    if max_ratio is None:
        return torch.zeros(areas.shape, dtype=torch.bool, device=areas.device)
    return areas.to(torch.float64) >= max_ratio * float(height * width)
