"""Interactive quality of the engine's predictor: gold objects and real photos, against GrabCut, and click
compliance per click number.

- gold: the engine's held-out gold scenes (regenerated from the seeded generator, so no data folder is needed),
  ``GOLD_OBJECTS`` objects, the standard 20-click protocol;
- real photos: ``../shared/data/coco_tiny`` val2017 (real COCO photos the engine never trains on; non-crowd
  objects of at least 32x32 px), the same protocol for the model and for OpenCV's GrabCut driven by the same
  clicks (:mod:`sam_engine.evaluation.grabcut`); skipped with a note when the folder is absent.

Weights: ``SAM_ENGINE_BENCH_CHECKPOINT``, else the newest model of the data folder (``model_v3`` .. ``model_v0``),
else the released public checkpoint (``released/public_v0.pt``), else an untrained default model.
Rows: mIoU@1/5/10/20 and NoC@90 (ratio: model against GrabCut where both ran), and the share of clicks obeyed at
each click number 2..20 (the newest click's pixel on its side of the returned mask); for a model-store checkpoint
with a recorded first-click output choice, the same rows again with it (what ``make annotate`` serves).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

BENCH = "quality"
GOLD_OBJECTS = 150
COCO_OBJECTS = 150  # seeded subsample of the 467 val objects (all: SAM_ENGINE_BENCH_COCO_OBJECTS=0)


def _checkpoint() -> tuple[Path | None, str]:
    from sam_engine.config import load_config
    from sam_engine.release import NAME, RELEASE_DIR

    env = os.environ.get("SAM_ENGINE_BENCH_CHECKPOINT")
    if env:
        return Path(env), Path(env).name
    models = load_config().models_dir
    for v in (3, 2, 1, 0):
        path = models / f"model_v{v}" / "model.pt"
        if path.is_file():
            return path, f"model_v{v}"
    released = RELEASE_DIR / f"{NAME}.pt"
    if released.is_file():
        return released, f"released {NAME}"
    return None, "untrained default model"


def gold_objects(n: int, seed: int = 0) -> list:
    """The engine's gold objects (default profile), regenerated in memory; a seeded sample of ``n``."""
    from sam_engine.config import load_config
    from sam_engine.data import rle as rle_utils
    from sam_engine.data.synthetic import DOMAIN_GOLD, pool_scene
    from sam_engine.evaluation.interactive import EvalObject

    cfg = load_config("default")
    c = cfg.corpus
    scenes = {}
    candidates = []
    images = min(c.gold_images, max(4, n // 4))
    for i in range(images):
        scene = pool_scene(cfg.seed, i, tuple(c.pool_size), c.regions, DOMAIN_GOLD)
        scenes[i] = scene
        candidates += [(i, a) for a in scene.annotations if a["area"] >= 16]
    pick = np.random.default_rng(seed).choice(len(candidates), size=min(n, len(candidates)), replace=False)
    out = []
    for k in sorted(pick):
        i, ann = candidates[k]
        out.append(
            EvalObject(
                image_key=("gold", i),
                image=scenes[i].image,
                gt=rle_utils.decode(ann["segmentation"]),
                image_id=ann["image_id"],
                object_id=ann["id"],
                region=scenes[i].region,
            )
        )
    return out


def _rows(name: str, result: dict, clicks: int, baseline: dict | None = None) -> list[dict]:
    s = result["summary"]
    rows = []
    for metric, unit, better_high in (
        ("miou@1", "IoU", True),
        ("miou@5", "IoU", True),
        ("miou@10", "IoU", True),
        ("miou@20", "IoU", True),
        ("noc@90", "clicks", False),
    ):
        if metric not in s:
            continue
        row = {
            "benchmark": BENCH,
            "metric": f"{name} {metric}",
            "value": round(float(s[metric]), 4),
            "unit": unit,
        }
        if baseline is not None and baseline["summary"].get(metric):
            b = float(baseline["summary"][metric])
            row["baseline"] = round(b, 4)
            row["ratio"] = round(float(s[metric]) / b, 4) if better_high else round(b / float(s[metric]), 4)
        rows.append(row)
    for k in range(2, clicks + 1):
        share, n = result["compliance"].get(str(k), (float("nan"), 0))
        if n:
            rows.append(
                {
                    "benchmark": BENCH,
                    "metric": f"{name} click {k} obeyed",
                    "value": round(share, 4),
                    "unit": "share",
                }
            )
    return rows


def run(quick: bool = False) -> list[dict]:
    import torch

    from sam_engine.evaluation.grabcut import GrabCutPredictor
    from sam_engine.evaluation.interactive import ClickProtocol
    from sam_engine.evaluation.real_photos import DEFAULT_COCO, coco_objects, run_protocol
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import load_model
    from sam_engine.predictor import EmbeddingCache
    from sam_engine.threads import configure_torch_threads
    from sam_engine.zoom import interactive_predictor

    configure_torch_threads()
    path, desc = _checkpoint()
    model = (load_model(path) if path else build_sam("tiny_conv", seed=0)).eval()
    clicks = 3 if quick else 20
    # mIoU at 10 and 20 clicks too: does it keep rising to the last click?
    report = tuple(k for k in (1, 3, 5, 10, 20) if k <= clicks)
    protocol = ClickProtocol(max_clicks=clicks, stop_early=False, report_clicks=report)
    rows = []
    with torch.inference_mode():
        predictor = interactive_predictor(model, cache=EmbeddingCache(8), zoom=True, snap=True)
        # what `make annotate` serves: the version's first-click output choice when one is recorded beside it
        served = _served(predictor, path)
        gold = gold_objects(6 if quick else GOLD_OBJECTS)
        for name, p in served:
            rows += _rows(f"gold ({desc}{name})", run_protocol(p, gold, protocol), clicks)
        if not Path(DEFAULT_COCO).is_dir():
            print(f"bench_quality: {DEFAULT_COCO} absent; real-photo rows skipped", file=sys.stderr)
            return rows
        n = 3 if quick else int(os.environ.get("SAM_ENGINE_BENCH_COCO_OBJECTS", COCO_OBJECTS)) or None
        objects = coco_objects(DEFAULT_COCO, "val2017", n)
        grabcut = run_protocol(GrabCutPredictor(), objects, protocol)
        rows += _rows("coco_tiny val GrabCut", grabcut, clicks)
        for name, p in served:
            photos = run_protocol(p, objects, protocol)
            rows += _rows(f"coco_tiny val ({desc}{name})", photos, clicks, baseline=grabcut)
    return rows


def _served(predictor, checkpoint: Path | None) -> list[tuple[str, object]]:
    """(row suffix, predictor) pairs: the IoU head's first-click pick, and the output choice recorded beside a
    model-store checkpoint when there is one."""
    from sam_engine.output_choice import ChoicePredictor, recorded_output_choice

    choice = recorded_output_choice(checkpoint) if checkpoint is not None else None
    out: list[tuple[str, object]] = [("", predictor)]
    if choice is not None:
        out.append((", output choice", ChoicePredictor(predictor, choice)))
    return out


if __name__ == "__main__":
    from benchmarks.run_all import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
