"""How much a mask's outline stands out from the image: colour contrast across its boundary.

An object differs from what surrounds it; a mask that cuts through one surface, or spills over into the
background, has about the same colours on both sides of much of its outline. ``edge_contrast`` measures
that, the classic objectness cue of colour contrast across a window's border, on the mask's own outline:

    contrast = || mean colour of the inner ring - mean colour of the outer ring ||
               / (mean channel std of the inner ring + mean channel std of the outer ring + ``floor``)

with rings ``width`` pixels wide just inside and just outside the mask. The automatic-mask quality model
(:mod:`.calibration`) learns from it beside the model's own scores.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

_CROSS = ndi.generate_binary_structure(2, 1)


def edge_contrast(image: np.ndarray, masks: np.ndarray, width: int = 3, floor: float = 5.0) -> np.ndarray:
    """Colour contrast across each mask's boundary (see the module docstring) for an (H, W, C) or (H, W)
    image and (N, H, W) bool masks: (N,) float64, 0 for an empty mask or one without both rings."""
    if width < 1:
        raise ValueError(f"edge_contrast: width must be at least 1, got {width}")
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != pixels.shape[:2]:
        raise ValueError(f"edge_contrast: masks {masks.shape} do not match the image {pixels.shape[:2]}")
    height, wide = pixels.shape[:2]
    out = np.zeros(len(masks), dtype=np.float64)
    for k, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            continue
        # the mask's box, grown by the ring width (both rings fit in it)
        y0, y1 = max(0, rows[0] - width - 1), min(height, rows[-1] + width + 2)
        x0, x1 = max(0, cols[0] - width - 1), min(wide, cols[-1] + width + 2)
        m = mask[y0:y1, x0:x1]
        # the image's border is not a boundary with anything: erode as if the mask went on past it
        inner = m & ~ndi.binary_erosion(m, _CROSS, iterations=width, border_value=1)
        outer = ndi.binary_dilation(m, _CROSS, iterations=width) & ~m
        if not inner.any() or not outer.any():
            continue
        crop = pixels[y0:y1, x0:x1]
        a, b = crop[inner], crop[outer]
        spread = float(a.std(axis=0).mean() + b.std(axis=0).mean()) + floor
        out[k] = float(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0))) / spread
    return out
