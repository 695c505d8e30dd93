"""The model against OpenCV's GrabCut on real photos, driven by the same clicks, with click compliance.

``python -m sam_engine.evaluation.real_photos --checkpoint PATH [--coco DIR] [--objects N]`` runs the standard
20-click protocol on the non-crowd objects of at least 32x32 px area of a COCO split (by default
``../shared/data/coco_tiny`` val2017: real photos the engine never trains on), once with the engine's
interactive predictor and once with :class:`~sam_engine.evaluation.grabcut.GrabCutPredictor`, on the same
objects, and prints mIoU at 1/3/5 clicks, NoC@85/90, NoF and, per click number, the share of clicks whose
pixel ends on the right side of the returned mask (compliance).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import REPO_ROOT
from .interactive import (
    ClickProtocol,
    EvalObject,
    compliance_by_click,
    corpus_objects,
    evaluate_objects,
    summarize,
)

DEFAULT_COCO = REPO_ROOT.parent / "shared" / "data" / "coco_tiny"
MIN_AREA = 32 * 32


def coco_objects(
    coco_dir: str | Path = DEFAULT_COCO,
    split: str = "val2017",
    max_objects: int | None = None,
    seed: int = 0,
    min_area: int = MIN_AREA,
) -> list[EvalObject]:
    """The non-crowd objects of at least ``min_area`` px of a COCO split laid out as COCO ships it
    (``annotations/instances_<split>.json``, ``<split>/``), optionally a seeded subsample."""
    from ..data.coco import load_coco

    root = Path(coco_dir)
    corpus = load_coco(root / "annotations" / f"instances_{split}.json", root / split)
    return corpus_objects(corpus, max_objects=max_objects, seed=seed, min_area=min_area)


def run_protocol(predictor: Any, objects: list[EvalObject], protocol: ClickProtocol) -> dict[str, Any]:
    """Summary, compliance per click number and seconds of one predictor on ``objects`` (images spread over
    worker processes, :func:`~sam_engine.parallel.fork_map`)."""
    t0 = time.perf_counter()
    df = evaluate_objects(predictor, objects, protocol, workers=None)
    return {
        "summary": {k: v for k, v in summarize(df, protocol).items() if isinstance(v, int | float)},
        "compliance": {str(k): v for k, v in compliance_by_click(df, protocol.max_clicks).items()},
        "seconds": time.perf_counter() - t0,
        "per_object": df,
    }


def compliance_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Click number x predictor: compliance share (and clicks counted)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, res in results.items():
        for k, (share, n) in res["compliance"].items():
            rows.setdefault(k, {"click": int(k)})[name] = f"{share:.3f} ({n})"
    return pd.DataFrame(sorted(rows.values(), key=lambda r: r["click"]))


def main(argv: list[str] | None = None) -> int:
    from ..model.checkpoint import load_model
    from ..predictor import EmbeddingCache
    from ..zoom import interactive_predictor
    from .grabcut import GrabCutPredictor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--coco", default=str(DEFAULT_COCO))
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--objects", type=int, default=0, help="seeded subsample (0: all)")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--no-zoom", action="store_true")
    parser.add_argument("--no-snap", action="store_true")
    parser.add_argument("--no-grabcut", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    objects = coco_objects(args.coco, args.split, args.objects or None)
    protocol = ClickProtocol(max_clicks=args.clicks, stop_early=False)
    model = load_model(args.checkpoint).eval()
    predictors = {
        "model": interactive_predictor(
            model, cache=EmbeddingCache(4), zoom=not args.no_zoom, snap=not args.no_snap
        )
    }
    if not args.no_grabcut:
        predictors["grabcut"] = GrabCutPredictor()
    results = {name: run_protocol(p, objects, protocol) for name, p in predictors.items()}
    print(f"{len(objects)} objects of {args.coco} {args.split}, {args.clicks} clicks")
    for name, res in results.items():
        s = res["summary"]
        print(
            f"{name:8s} mIoU@1 {s['miou@1']:.3f}  mIoU@5 {s['miou@5']:.3f}  NoC@85 {s['noc@85']:.2f}  "
            f"NoC@90 {s['noc@90']:.2f}  NoF@90 {s['nof@90']}  ({res['seconds']:.0f} s)"
        )
    print(compliance_table(results).to_string(index=False))
    if args.json:
        out = {n: {k: v for k, v in r.items() if k != "per_object"} for n, r in results.items()}
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
