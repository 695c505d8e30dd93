"""Batch RLE encoding of (N, H, W) boolean masks, with no per-mask Python loop on the hot path.

COCO RLE runs over the column-major (Fortran) flattening of each mask and starts with a run of zeros.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils


def _column_major(masks: torch.Tensor) -> np.ndarray:
    """(N, H, W) bool tensor -> (H, W, N) Fortran-ordered uint8 array without an extra pass per mask."""
    # (N, W, H) C-contiguous is exactly the Fortran layout of each (H, W) mask; .T makes (H, W, N) F-order.
    return masks.permute(0, 2, 1).contiguous().to(torch.uint8).numpy().T


def masks_to_rle(masks: torch.Tensor) -> list[dict]:
    """Compressed COCO RLEs ``{"size": [h, w], "counts": str}`` for a stack of boolean masks (one C call)."""
    n, h, w = masks.shape
    if n == 0:
        return []
    encoded = mask_utils.encode(_column_major(masks.cpu()))
    return [{"size": [h, w], "counts": r["counts"].decode("ascii")} for r in encoded]


def masks_to_uncompressed_rle(masks: torch.Tensor) -> list[dict]:
    """Uncompressed COCO RLEs ``{"size": [h, w], "counts": [int, ...]}``, run lengths found for the whole batch.

    The change points of every mask come from one diff over the flattened column-major stack.
    """
    n, h, w = masks.shape
    if n == 0:
        return []
    flat = masks.permute(0, 2, 1).reshape(n, h * w).cpu().numpy().astype(np.int8)
    # Pad each row with a leading 0 and a trailing sentinel so every row starts with a zero run and closes.
    padded = np.zeros((n, h * w + 2), dtype=np.int8)
    padded[:, 1:-1] = flat
    padded[:, -1] = 1 - padded[:, -2]  # force a change at the end
    rows, cols = np.nonzero(np.diff(padded, axis=1))
    # cols are change positions in [0, h*w]; run lengths are the gaps between consecutive change points.
    starts = np.concatenate([[0], np.flatnonzero(np.diff(rows)) + 1])
    bounds = np.append(starts, len(rows))
    prev = np.concatenate([[0], cols[:-1]])
    prev[starts] = 0
    lengths = cols - prev
    out = []
    for i in range(n):
        counts = lengths[bounds[i] : bounds[i + 1]].tolist()
        out.append({"size": [h, w], "counts": counts})
    return out
