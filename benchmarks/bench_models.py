"""The old CPU default (``tiny``: ViT, 64x64 masks) against the new one (``tiny_conv``) at equal CPU time.

Both train for ``SAM_ENGINE_BENCH_MINUTES`` minutes (default 15; quick: a few seconds) from scratch on the same
public corpus (the data folder's, generated when absent) with their own recipes (``tiny``: the recipe it
shipped with; ``tiny_conv``: the engine's), then run the 20-click protocol on the same gold objects and, when
``../shared/data/coco_tiny`` is there, the same real-photo objects, with the engine's zoomed-in predictor.
Rows: mIoU@1 and NoC@90 per model and corpus, the new model's as a ratio to the old one's, and both with
region snapping (:mod:`sam_engine.snap`) for the new model.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

BENCH = "models"
OLD_RECIPE = {
    "masks_per_image": 8,
    "prompts_per_mask": 2,
    "zoom_prob": 0.0,
    "schedule": {"ungraded_rounds_max": 4, "mask_only_rounds": 0, "center_prob": 0.0},
}


def _train(name: str, corpus, out: Path, minutes: float, recipe: dict) -> Path:
    from sam_engine.training.train import train_model

    result = train_model(
        corpus,
        name,
        out,
        max_minutes=minutes,
        max_steps=100_000,
        batch_size=8,
        lr=1e-3,
        warmup_steps=30,
        val_corpus=None,
        val_fraction=0.0,
        progress_bar=False,
        final_eval_clicks=1,
        **recipe,
    )
    return result.checkpoint


def run(quick: bool = False) -> list[dict]:
    from benchmarks.bench_quality import gold_objects
    from sam_engine.config import load_config
    from sam_engine.data.corpora import generate_corpora, load_public
    from sam_engine.evaluation.interactive import ClickProtocol
    from sam_engine.evaluation.real_photos import DEFAULT_COCO, coco_objects, run_protocol
    from sam_engine.model.checkpoint import load_model
    from sam_engine.predictor import EmbeddingCache
    from sam_engine.threads import configure_torch_threads
    from sam_engine.training.train import recipe_from_config
    from sam_engine.zoom import interactive_predictor

    configure_torch_threads()
    minutes = 0.05 if quick else float(os.environ.get("SAM_ENGINE_BENCH_MINUTES", 15))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("smoke" if quick else "default", {"data_dir": tmp} if quick else None)
        generate_corpora(cfg)
        corpus = load_public(cfg, "train")
        new_recipe = recipe_from_config(load_config("default").train)
        checkpoints = {
            "tiny": _train("tiny", corpus, Path(tmp) / "tiny", minutes, OLD_RECIPE),
            "tiny_conv": _train("tiny_conv", corpus, Path(tmp) / "conv", minutes, new_recipe),
        }
        models = {name: load_model(path).eval() for name, path in checkpoints.items()}
    clicks = 3 if quick else 20
    protocol = ClickProtocol(max_clicks=clicks)
    corpora = {"gold": gold_objects(6 if quick else 150)}
    if Path(DEFAULT_COCO).is_dir():
        corpora["coco_tiny val"] = coco_objects(DEFAULT_COCO, "val2017", 3 if quick else 150)
    else:
        print(f"bench_models: {DEFAULT_COCO} absent; real-photo rows skipped", file=sys.stderr)
    rows = []
    for corpus_name, objects in corpora.items():
        results = {}
        for name, model in models.items():
            for snap in (False, True) if name == "tiny_conv" else (False,):
                predictor = interactive_predictor(model, cache=EmbeddingCache(8), zoom=True, snap=snap)
                results[name + (" + snap" if snap else "")] = run_protocol(predictor, objects, protocol)[
                    "summary"
                ]
        old = results["tiny"]
        for label, s in results.items():
            for metric, unit, high in (("miou@1", "IoU", True), ("noc@90", "clicks", False)):
                row = {
                    "benchmark": BENCH,
                    "metric": f"{corpus_name} {label} {metric} ({minutes:g} min)",
                    "value": round(float(s[metric]), 4),
                    "unit": unit,
                }
                if label != "tiny":
                    b, v = float(old[metric]), float(s[metric])
                    row["baseline"] = round(b, 4)
                    if b > 0 and v > 0:  # a ratio against nothing, or of nothing, says nothing
                        row["ratio"] = round(v / b if high else b / v, 4)
                rows.append(row)
    return rows


if __name__ == "__main__":
    from benchmarks.run_all import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
