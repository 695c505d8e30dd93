"""The standard interactive-segmentation click protocol (RITM / SimpleClick / FocalClick / SAM).

First click: the pixel deepest inside the object (argmax of the distance transform of the mask padded by
1 px, so the image border counts as outside). Every later click goes to the deepest point of the larger
error: false negatives (GT and not predicted) give a positive click, false positives (predicted and not
GT) a negative one. Ties break in row-major order (first maximum), so the protocol is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Click:
    """One click at pixel (``x``, ``y``) of the original image; ``positive`` for foreground."""

    x: int
    y: int
    positive: bool

    @property
    def label(self) -> int:
        return 1 if self.positive else 0


# float32 distances d have a relative error under 2**-23, so d**2 is within 0.5 of its integer below ~1400 px
_EXACT_DEPTH = 1400.0


def padded_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each mask pixel to the nearest non-mask pixel, the border counting as outside.

    The same float64 values as ``scipy.ndimage.distance_transform_edt``, a few times faster (see
    ``benchmarks/bench_distance.py``): OpenCV's exact
    transform (``DIST_MASK_PRECISE``) gives float32 distances whose last bit can differ from one call to the
    next on the same mask, which would break the protocol's ties; squared and rounded, they are the integer
    squared distances again (exactly, up to depths of :data:`_EXACT_DEPTH` px; scipy beyond). A (M, H, W)
    batch gets each slice's own 2-D distances.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 3:
        out = np.zeros(mask.shape, dtype=np.float64)
        for i, m in enumerate(mask):
            out[i] = padded_distance(m)
        return out
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float64)
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    approx = cv2.distanceTransform(padded.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    if approx.max() > _EXACT_DEPTH:
        return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    return np.sqrt(np.rint(np.square(approx, dtype=np.float64)))


def _deepest(dt: np.ndarray) -> tuple[int, int, float]:
    idx = int(np.argmax(dt))
    y, x = divmod(idx, dt.shape[1])
    return x, y, float(dt.flat[idx])


def first_click(gt: np.ndarray, ignore: np.ndarray | None = None) -> Click:
    """The first click: positive, at the argmax of the GT mask's padded distance transform."""
    click = next_click(gt, np.zeros_like(gt, dtype=bool), ignore)
    if click is None:
        raise ValueError("cannot place a first click on an empty mask")
    return click


def error_masks(
    gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(false negatives, false positives), both outside the ignore mask."""
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"GT shape {gt.shape} and prediction shape {pred.shape} differ")
    fn = gt & ~pred
    fp = ~gt & pred
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        fn &= keep
        fp &= keep
    return fn, fp


def next_click(
    gt: np.ndarray,
    pred: np.ndarray,
    ignore: np.ndarray | None = None,
    clicked: np.ndarray | None = None,
) -> Click | None:
    """The protocol's next click given the current binary prediction, or ``None`` when there is no error.

    ``clicked`` (optional bool mask) marks pixels already clicked; they are never chosen again.
    Positive when max DT(FN) > max DT(FP), else negative; strictly greater, as in the reference protocol.
    """
    fn, fp = error_masks(gt, pred, ignore)
    fn_dt = padded_distance(fn)
    fp_dt = padded_distance(fp)
    if clicked is not None:
        fn_dt[clicked] = 0.0
        fp_dt[clicked] = 0.0
    fx, fy, fn_max = _deepest(fn_dt)
    px, py, fp_max = _deepest(fp_dt)
    if fn_max == 0.0 and fp_max == 0.0:
        return None
    if fn_max > fp_max:
        return Click(fx, fy, True)
    return Click(px, py, False)


def clicks_to_arrays(clicks: list[Click]) -> tuple[np.ndarray, np.ndarray]:
    """Point coordinates (N, 2) as (x, y) float32 and labels (N,) int32, the predictor's input."""
    coords = np.array([[c.x, c.y] for c in clicks], dtype=np.float32).reshape(-1, 2)
    labels = np.array([c.label for c in clicks], dtype=np.int32)
    return coords, labels
