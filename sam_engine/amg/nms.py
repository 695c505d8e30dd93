"""Greedy box non-maximum suppression in torch (no torchvision), batched over categories.

Semantics follow the usual greedy NMS: boxes are visited by descending score (ties keep input order) and a
box is dropped when its IoU with an already kept box is above the threshold. IoU uses ``(x1 - x0) * (y1 - y0)``
areas. The greedy pass is solved as a fixed point over the suppression matrix, so each step is one tensor op.
"""

from __future__ import annotations

import torch


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix (len(a) x len(b)) of XYXY boxes; 0/0 gives NaN, which never suppresses."""
    a = a.to(torch.float32)
    b = b.to(torch.float32)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes greedy NMS keeps, by descending score."""
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes[order], boxes[order])
    # suppress[i, j]: box i (earlier) would drop box j (later) if i is kept.
    suppress = torch.triu(iou > iou_threshold, diagonal=1)
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    # Jacobi iteration on the DAG of suppressions; reaches the greedy answer in (longest chain + 1) steps.
    for _ in range(n + 1):
        new_keep = ~(suppress & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS applied independently per category (boxes of different categories never suppress each other)."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    boxes = boxes.to(torch.float32)
    offset_size = boxes.max() - boxes.min() + 1
    offsets = categories.to(torch.float32) * offset_size
    return nms(boxes + offsets[:, None], scores, iou_threshold)
