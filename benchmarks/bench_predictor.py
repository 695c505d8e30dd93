"""Predictor speed on the "tiny" model: per-click latency with a cached embedding, encode time,
batched encoding, and training throughput (forward + backward).

Run: ``.venv/bin/python benchmarks/bench_predictor.py`` (``--quick`` for a seconds-long smoke run).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from sam_engine.model import build_sam
from sam_engine.predictor import EmbeddingCache, SamPredictor

BENCH = "predictor"


def _image(seed: int, h: int = 192, w: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        img[y : y + rng.integers(10, h // 2), x : x + rng.integers(10, w // 2)] = rng.integers(0, 256, 3)
    return img


def _times_ms(fn, n: int) -> np.ndarray:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000.0)
    return np.asarray(out)


def _row(metric: str, value: float, unit: str, baseline: float | None = None) -> dict:
    row = {"benchmark": BENCH, "metric": metric, "value": round(float(value), 3), "unit": unit}
    if baseline is not None:
        row["baseline"] = round(float(baseline), 3)
        row["ratio"] = round(float(value) / float(baseline), 4) if baseline else float("nan")
    return row


def train_images_per_s(batch: int, prompts: int, steps: int, seed: int = 0) -> float:
    """Forward + backward + AdamW step of the tiny model, ``prompts`` decoder prompts per image."""
    model = build_sam("tiny", seed=seed).train()
    cfg = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, cfg.img_size, cfg.img_size, generator=gen) * 255
    coords = torch.rand(batch * prompts, 2, 2, generator=gen) * cfg.img_size
    labels = torch.tensor([[1, 0]]).expand(batch * prompts, 2)
    index = torch.arange(batch).repeat_interleave(prompts)

    def step() -> None:
        emb = model.image_encoder(model.preprocess(images))
        low, iou = model.decode(emb[index], coords, labels, multimask_output=True)
        loss = low.sigmoid().mean() + iou.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    best = min(_times_ms(step, steps)) / 1000.0
    return batch / best


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    model = build_sam("tiny", seed=0).eval()
    n_clicks = 5 if quick else 200
    n_encode = 2 if quick else 20
    img = _image(0)
    rng = np.random.default_rng(0)
    clicks = rng.uniform(0, [img.shape[1], img.shape[0]], size=(n_clicks, 1, 2))

    predictor = SamPredictor(model, cache=EmbeddingCache())
    predictor.set_image(img, image_key="bench")
    it = iter(range(10**9))

    def cached_click() -> None:
        i = next(it) % n_clicks
        predictor.set_image(img, image_key="bench")  # cache hit
        predictor.predict(clicks[i], np.array([1]))

    def uncached_click() -> None:
        i = next(it) % n_clicks
        predictor.set_image(img)  # no key: embedding recomputed every click
        predictor.predict(clicks[i], np.array([1]))

    cached_click()
    cached = _times_ms(cached_click, n_clicks)
    uncached = _times_ms(uncached_click, max(3, n_clicks // 4))

    images = [_image(s) for s in range(8 if not quick else 2)]
    one_by_one = _times_ms(lambda: [predictor.encode_images([im]) for im in images], 1 if quick else 3)
    batched = _times_ms(lambda: predictor.encode_images(images, batch_size=8), 1 if quick else 3)
    per_img_single = one_by_one.min() / len(images)
    per_img_batched = batched.min() / len(images)

    rows = [
        _row("click_latency_cached_p50", np.percentile(cached, 50), "ms", np.percentile(uncached, 50)),
        _row("click_latency_cached_p99", np.percentile(cached, 99), "ms", np.percentile(uncached, 99)),
        _row(
            "encode_per_image", np.median(_times_ms(lambda: predictor.encode_images([img]), n_encode)), "ms"
        ),
        _row("encode_per_image_batched8", per_img_batched, "ms", per_img_single),
    ]
    if quick:
        rows.append(_row("train_fwd_bwd_images_per_s_b2x2", train_images_per_s(2, 2, 1), "images/s"))
    else:
        rows.append(_row("train_fwd_bwd_images_per_s_b16x8", train_images_per_s(16, 8, 5), "images/s"))
    return rows


if __name__ == "__main__":
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for r in run(quick="--quick" in sys.argv):
        print(r)
