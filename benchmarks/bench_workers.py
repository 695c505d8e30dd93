"""Worker processes (sam_engine/parallel.py) against one process with every core, on the engine's own work.

The released default model (``released/public_v0.pt``) answers the click protocol (zoom and snapping on, as
the engine evaluates) on domain-B scenes of the synthetic generator, and its automatic mask generator (the
engine's settings) runs over the same images: once in this process with every core as torch threads (the
baseline), once spread over :func:`~sam_engine.parallel.pool_workers` forked workers with one thread each.
Rows: seconds of each, the ratio (baseline / workers), and whether both gave the same results (1 or 0).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

BENCH = "workers"
REPO = Path(__file__).resolve().parent.parent


def _setup(quick: bool):
    from sam_engine.config import load_config
    from sam_engine.data import rle
    from sam_engine.data.synthetic import pool_scene
    from sam_engine.engine.models import amg_params
    from sam_engine.evaluation.interactive import EvalObject
    from sam_engine.model.checkpoint import load_model
    from sam_engine.snap import DEFAULT_REGION_CACHE
    from sam_engine.zoom import interactive_predictor

    cfg = load_config("default")
    model = load_model(REPO / "released" / "public_v0.pt").eval()
    scenes = [pool_scene(0, i, cfg.corpus.pool_size, cfg.corpus.regions) for i in range(2 if quick else 12)]
    objects = [
        EvalObject(image_key=i, image=s.image, gt=rle.decode(a["segmentation"]), image_id=i, object_id=k)
        for i, s in enumerate(scenes)
        for k, a in enumerate(s.annotations[: 2 if quick else 8])
    ]
    m = cfg.model

    def predictor():
        """A predictor with empty caches (embeddings and, process-wide, the snapping regions)."""
        DEFAULT_REGION_CACHE.clear()
        return interactive_predictor(model, zoom=m.zoom_in, expansion=m.zoom_expansion, snap=m.snap)

    params = amg_params(SimpleNamespace(cfg=cfg)).model_copy(
        update={"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}
    )
    return model, predictor, objects, [s.image for s in scenes], params


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(quick: bool = False) -> list[dict]:
    from sam_engine.amg import AutomaticMaskGenerator
    from sam_engine.evaluation.interactive import ClickProtocol, evaluate_objects
    from sam_engine.parallel import fork_map, pool_workers
    from sam_engine.snap import DEFAULT_REGION_CACHE
    from sam_engine.threads import configure_torch_threads

    configure_torch_threads()
    workers = pool_workers()
    model, predictor, objects, images, params = _setup(quick)
    protocol = ClickProtocol(max_clicks=5 if quick else 20)
    generate = AutomaticMaskGenerator(model, params).generate
    evaluate_objects(predictor(), objects[:1], protocol)  # warm-up: the first calls of every code path
    # each way starts from empty caches: forked workers would otherwise inherit the regions and embeddings
    # the other way computed
    serial, t_serial = _timed(lambda: evaluate_objects(predictor(), objects, protocol))
    spread, t_spread = _timed(lambda: evaluate_objects(predictor(), objects, protocol, workers=workers))

    def amg(n_workers: int) -> list[list[dict]]:
        DEFAULT_REGION_CACHE.clear()  # the snapping regions of these images were computed above
        return fork_map(generate, images, n_workers)

    amg_serial, a_serial = _timed(lambda: amg(1))
    amg_spread, a_spread = _timed(lambda: amg(workers))
    same_clicks = serial.drop(columns=["clicks"]).equals(spread.drop(columns=["clicks"]))
    same_masks = [[r["segmentation"]["counts"] for r in recs] for recs in amg_serial] == [
        [r["segmentation"]["counts"] for r in recs] for recs in amg_spread
    ]
    note = f"{workers} workers x 1 thread vs 1 process x {torch.get_num_threads()} threads"
    n_obj, n_img = len(objects), len(images)
    return [
        {
            "benchmark": BENCH,
            "metric": f"click protocol, {n_obj} objects, {protocol.max_clicks} clicks ({note})",
            "value": t_spread,
            "unit": "s",
            "baseline": t_serial,
            "ratio": t_serial / t_spread,
        },
        {
            "benchmark": BENCH,
            "metric": "click protocol: same table",
            "value": int(same_clicks),
            "unit": "0/1",
        },
        {
            "benchmark": BENCH,
            "metric": f"automatic masks, {n_img} images ({note})",
            "value": a_spread,
            "unit": "s",
            "baseline": a_serial,
            "ratio": a_serial / a_spread,
        },
        {
            "benchmark": BENCH,
            "metric": "automatic masks: same masks",
            "value": int(same_masks),
            "unit": "0/1",
        },
        {
            "benchmark": BENCH,
            "metric": "automatic masks per image",
            "value": float(np.mean([len(r) for r in amg_spread])),
            "unit": "masks",
        },
    ]


if __name__ == "__main__":
    print(pd.DataFrame(run()).to_string(index=False))
