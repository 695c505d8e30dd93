"""How a mask is shaped: the cues of a wrong automatic mask that its scores and colours miss.

A right mask of an object here is mostly one piece, without holes, with an outline about as long as its size
calls for. A mask that bleeds through a gap, catches specks of a texture or cuts along a noisy edge is
fragmented, holed or ragged. :func:`shape_features` measures that per mask, on the mask's box only:

- ``components``: 4-connected pieces;
- ``main_component_share``: the largest piece's share of the area;
- ``hole_share``: the share of the filled outline that the mask leaves empty;
- ``outline_ratio``: boundary pixels over the square root of the area (the image border is no boundary).

The automatic-mask quality model (:mod:`.calibration`) learns from them beside the model's own scores and the
colour contrast across the outline (:mod:`.contrast`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

SHAPE_KEYS = ("components", "main_component_share", "hole_share", "outline_ratio")


def shape_features(masks: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`SHAPE_KEYS` of each of (N, H, W) bool ``masks``, each (N,) float64; an empty mask gets
    0 pieces, share 0, no holes and ratio 0."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"shape_features: masks must be (N, H, W), got {masks.shape}")
    out = {key: np.zeros(len(masks), dtype=np.float64) for key in SHAPE_KEYS}
    for k, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            continue
        # the mask's box with a one-pixel frame; where the box meets the image border the frame copies the
        # mask's edge, so that the border is neither outline nor the outside that closes a hole
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        m = np.pad(mask[y0:y1, x0:x1], 1)
        at_border = (y0 == 0, y1 == mask.shape[0], x0 == 0, x1 == mask.shape[1])
        if at_border[0]:
            m[0] = m[1]
        if at_border[1]:
            m[-1] = m[-2]
        if at_border[2]:
            m[:, 0] = m[:, 1]
        if at_border[3]:
            m[:, -1] = m[:, -2]
        core = m[1:-1, 1:-1]
        area = int(core.sum())
        labels, n = ndi.label(core)
        # background pieces that do not reach the frame are holes
        gaps, _ = ndi.label(~m)
        open_gaps = np.unique(np.concatenate([gaps[0], gaps[-1], gaps[:, 0], gaps[:, -1]]))
        inside = gaps[1:-1, 1:-1]
        holes = int(((inside > 0) & ~np.isin(inside, open_gaps)).sum())
        inner = core & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        out["components"][k] = n
        out["main_component_share"][k] = np.bincount(labels.ravel())[1:].max() / area
        out["hole_share"][k] = holes / (area + holes)
        out["outline_ratio"][k] = (area - int(inner.sum())) / np.sqrt(area)
    return out
