"""Optional cleanup: fill small holes, remove small islands (OpenCV connected components), then NMS again."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from sam_engine.data import rle as rle_utils

from .encode import masks_to_rle
from .filters import masks_to_boxes
from .nms import nms


def remove_small_regions(mask: np.ndarray, min_area: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``min_area`` pixels.

    Uses 8-connectivity. When every island is small the largest one is kept. Returns (mask, changed).
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    work = (mask ^ holes).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(work, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(sizes < min_area) + 1
    if len(small) == 0:
        return mask, False
    if holes:
        # background of the inverted mask (label 0) and the small holes become foreground
        fill = np.concatenate([[0], small])
    else:
        fill = np.setdiff1d(np.arange(1, n), small)
        if len(fill) == 0:
            fill = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, fill), True


def clean_masks(
    rles: list[dict], boxes: torch.Tensor, min_area: int, nms_thresh: float
) -> tuple[torch.Tensor, list[dict], torch.Tensor]:
    """Clean every mask, then box-NMS preferring unchanged masks.

    Returns (kept indices, their RLEs, their XYXY boxes); changed masks get new RLEs and boxes.
    """
    if not rles:
        return torch.zeros(0, dtype=torch.int64), [], boxes[:0]
    masks = rle_utils.decode_batch(rles)
    changed = np.zeros(len(rles), dtype=bool)
    for i in range(len(masks)):
        m, c1 = remove_small_regions(masks[i], min_area, "holes")
        m, c2 = remove_small_regions(m, min_area, "islands")
        if c1 or c2:
            masks[i] = m
            changed[i] = True
    masks_t = torch.from_numpy(masks)
    new_boxes = masks_to_boxes(masks_t)
    keep = nms(new_boxes.float(), torch.from_numpy((~changed).astype(np.float32)), nms_thresh)
    out_rles = [rles[i] for i in keep.tolist()]
    out_boxes = boxes[keep].clone()
    redo = [j for j, i in enumerate(keep.tolist()) if changed[i]]
    if redo:
        idx = keep[redo]
        for j, r in zip(redo, masks_to_rle(masks_t[idx]), strict=True):
            out_rles[j] = r
        out_boxes[redo] = new_boxes[idx].to(out_boxes.dtype)
    return keep, out_rles, out_boxes
