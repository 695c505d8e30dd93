"""Point grids for automatic mask generation, normalized to [0, 1] x [0, 1] as (x, y)."""

from __future__ import annotations

import numpy as np


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``n_per_side``² points at the centres of an even ``n_per_side`` x ``n_per_side`` tiling, row-major (y outer).

    Point ``k`` is ``((k % n + 0.5) / n, (k // n + 0.5) / n)``.
    """
    if n_per_side < 1:
        raise ValueError(f"n_per_side must be >= 1, got {n_per_side}")
    centres = (np.arange(n_per_side, dtype=np.float64) + 0.5) / n_per_side
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def build_layer_grids(n_per_side: int, n_layers: int, downscale_factor: int) -> list[np.ndarray]:
    """One grid per crop layer: layer ``i`` has ``int(n_per_side / downscale_factor**i)`` points a side."""
    grids = []
    for layer in range(n_layers + 1):
        n = int(n_per_side / (downscale_factor**layer))
        grids.append(build_point_grid(max(n, 1)))
    return grids


def scale_grid(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalized (x, y) grid to pixel coordinates of an image (or crop) of ``height`` x ``width``."""
    return np.asarray(grid, dtype=np.float64) * np.array([[width, height]], dtype=np.float64)
