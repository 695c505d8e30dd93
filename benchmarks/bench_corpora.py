"""Corpus generation speed: images/s with 2 worker processes against 1 (same process, same settings)."""

from __future__ import annotations

import tempfile
import time

from sam_engine.config import load_config
from sam_engine.data.corpora import generate_corpora


def _time(n: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(
            "default",
            {"data_dir": d, "corpus": {"public_images": n, "pool_images": n, "gold_images": max(1, n // 10)}},
        )
        t0 = time.perf_counter()
        generate_corpora(cfg, workers=workers)
        return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    n = 64 if quick else 400
    images = 2 * n + max(1, n // 10)
    one = _time(n, 1)
    two = _time(n, 2)
    return [
        {
            "benchmark": "corpora",
            "metric": "generate images/s (1 worker)",
            "value": images / one,
            "unit": "img/s",
        },
        {
            "benchmark": "corpora",
            "metric": "generate images/s (2 workers)",
            "value": images / two,
            "unit": "img/s",
            "baseline": images / one,
            "ratio": one / two,
        },
        {
            "benchmark": "corpora",
            "metric": "default corpora (4200 images) estimated",
            "value": 4200 / images * two,
            "unit": "s",
        },
    ]
