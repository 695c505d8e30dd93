"""Distance transforms of the click protocol and the training prompts: OpenCV against scipy.

``padded_distance`` (OpenCV's exact transform, rounded back to the integer squared distances) against the way
the training prompts computed it before (one 3-D ``scipy.ndimage.distance_transform_edt`` over the batch, a
huge spacing between slices) and against scipy slice by slice, on a batch of error regions of the size a
fine-tune step sees (32 masks of 256 px). The rows check that all three give the same values.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from sam_engine.evaluation.clicks import padded_distance


def _regions(n: int, side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    out = np.zeros((n, side, side), dtype=bool)
    for i in range(n):
        cy, cx, r = rng.integers(0, side, 2).tolist() + [int(rng.integers(side // 20, side // 3))]
        out[i] = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) ^ (rng.random((side, side)) < 0.01)
    return out


def _scipy_3d(regions: np.ndarray) -> np.ndarray:
    padded = np.pad(regions, ((0, 0), (1, 1), (1, 1)))
    return ndimage.distance_transform_edt(padded, sampling=(1e6, 1.0, 1.0))[:, 1:-1, 1:-1]


def _scipy_2d(regions: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.distance_transform_edt(np.pad(r, 1))[1:-1, 1:-1] for r in regions])


def _best(fn, arg, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(arg)
        best = min(best, time.perf_counter() - t)
    return best, out


def run(quick: bool = False) -> list[dict]:
    regions = _regions(8 if quick else 32, 256)
    repeats = 2 if quick else 5
    t_cv, ours = _best(padded_distance, regions, repeats)
    rows = [
        {
            "benchmark": "distance",
            "metric": f"padded_distance, {len(regions)} x 256 px",
            "value": t_cv * 1e3,
            "unit": "ms",
        }
    ]
    for name, fn in (("scipy 3-D (before)", _scipy_3d), ("scipy per slice", _scipy_2d)):
        t, ref = _best(fn, regions, repeats)
        rows.append(
            {
                "benchmark": "distance",
                "metric": f"{name}: same values {bool(np.array_equal(ours, ref))}",
                "value": t_cv * 1e3,
                "unit": "ms",
                "baseline": t * 1e3,
                "ratio": t / t_cv,
            }
        )
    return rows


if __name__ == "__main__":
    from benchmarks.run_all import format_table

    print(format_table(run()))
