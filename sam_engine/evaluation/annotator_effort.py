"""Annotator effort per model: a simulated annotator's clicks, manual fixes and mask quality on gold objects.

:func:`measure_effort` runs :meth:`~sam_engine.workforce.simulated.ClickWorker.segment_object` (the click loop
the engine's simulated annotators use) through a real :class:`~sam_engine.annotation.session.AnnotationSession`
of a :class:`~sam_engine.annotation.session.SegmentationService` on a seeded sample of objects, one row each:

- ``clicks``: clicks the annotator gave the model (undone ones included, as in the store);
- ``reached``: the model's mask reached the profile's ``iou_target`` (no manual fix needed);
- ``manual_fix``: the annotator gave up on the model and traced the object (the submitted mask is then the
  polygon-simplified GT);
- ``model_iou``: best IoU vs GT of any mask the model showed; ``iou``: IoU vs GT of the submitted mask;
- ``seconds``: the time model's seconds for the mask (manual fixes cost the most).

The summary averages them (``clicks_per_mask``, ``reached_share``, ``manual_fix_share``, ``mean_iou``,
``mean_model_iou``, ``seconds_per_mask``). Every random draw comes from ``seeded_rng(seed, image, object)``, so
the same inputs give the same rows. Command line (one table per checkpoint, then the change against the first)::

    python -m sam_engine.evaluation.annotator_effort --checkpoints v0=PATH v1=PATH --objects 150 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation.session import SegmentationService
from ..data.corpus import MaskCorpus
from ..workforce.simulated import PROFILES, AnnotatorProfile, ClickWorker, seeded_rng
from ..workforce.timing import DEFAULT_TIME_MODEL, TimeModel
from .interactive import EvalObject, corpus_objects, iou

_NUMERIC = ("clicks", "reached", "manual_fix", "iou", "model_iou", "seconds")
SUMMARY_KEYS = (
    "n_objects",
    "clicks_per_mask",
    "reached_share",
    "manual_fix_share",
    "mean_iou",
    "mean_model_iou",
    "seconds_per_mask",
)


@dataclass
class EffortResult:
    """Per-object rows and their summary (see the module docstring for the fields)."""

    rows: list[dict[str, Any]]
    summary: dict[str, float]
    profile: AnnotatorProfile


class _Watch:
    """Passes every call to a real session and keeps the best IoU vs ``target`` of any mask it returned."""

    def __init__(self, session: Any, target: np.ndarray) -> None:
        self._session = session
        self._target = target
        self.best_iou = 0.0

    def add_point(self, x: float, y: float, positive: bool) -> Any:
        result = self._session.add_point(x, y, positive)
        for m in np.asarray(result.masks, dtype=bool):
            self.best_iou = max(self.best_iou, iou(self._target, m))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _resolve(value: np.ndarray | Callable[[], np.ndarray]) -> np.ndarray:
    return value() if callable(value) else value


def summarize_effort(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means over the rows (``n_objects`` 0 and no other key when there are none)."""
    if not rows:
        return {"n_objects": 0}
    col = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in _NUMERIC}
    return {
        "n_objects": len(rows),
        "clicks_per_mask": float(col["clicks"].mean()),
        "reached_share": float(col["reached"].mean()),
        "manual_fix_share": float(col["manual_fix"].mean()),
        "mean_iou": float(col["iou"].mean()),
        "mean_model_iou": float(col["model_iou"].mean()),
        "seconds_per_mask": float(col["seconds"].mean()),
    }


def measure_effort(
    predictor: Any,
    objects: MaskCorpus | Sequence[EvalObject],
    profile: AnnotatorProfile | None = None,
    *,
    max_objects: int | None = None,
    seed: int = 0,
    min_area: int = 16,
    time_model: TimeModel = DEFAULT_TIME_MODEL,
) -> EffortResult:
    """Let a simulated annotator (``profile``, default ``reference``) segment each object with ``predictor``.

    ``objects``: a corpus (its non-crowd objects of area >= ``min_area``, a seeded sample of ``max_objects``,
    as :func:`~sam_engine.evaluation.interactive.corpus_objects` draws it) or ready :class:`EvalObject` s
    (``max_objects`` then keeps the first ones; ``image_id``, else ``image_key``, must be an int image id).
    Objects with an empty GT mask are skipped.
    """
    profile = profile or PROFILES["reference"]
    if isinstance(objects, MaskCorpus):
        objs = corpus_objects(objects, max_objects, seed, min_area)
    else:
        objs = list(objects)[:max_objects]
    loaders = {obj.image_id if obj.image_id is not None else obj.image_key: obj.image for obj in objs}
    service = SegmentationService(predictor, lambda image_id: _resolve(loaders[image_id]), cache_size=2)
    worker = ClickWorker(profile, time_model)
    rows: list[dict[str, Any]] = []
    try:
        for obj in objs:
            image_id = obj.image_id if obj.image_id is not None else obj.image_key
            gt = np.asarray(_resolve(obj.gt), dtype=bool)
            if not gt.any():
                continue
            session = _Watch(service.open_session(image_id), gt)
            sub = worker.segment_object(session, gt, seeded_rng(seed, image_id, obj.object_id))
            rows.append(
                {
                    "image_id": image_id,
                    "object_id": obj.object_id,
                    "region": obj.region,
                    "area": int(gt.sum()),
                    "clicks": int(sub.clicks),
                    "reached": not sub.manual_fix,
                    "manual_fix": bool(sub.manual_fix),
                    "iou": iou(gt, sub.mask),
                    "model_iou": session.best_iou,
                    "seconds": float(sub.seconds),
                    "predicted_iou": sub.predicted_iou,
                }
            )
    finally:
        service.close()
    return EffortResult(rows, summarize_effort(rows), profile)


# ------------------------------------------------------------------------------------------- command line
def _parse_checkpoints(items: Sequence[str]) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--checkpoints: expected NAME=PATH, got {item!r}")
        if any(name == n for n, _ in out):
            raise SystemExit(f"--checkpoints: name {name!r} given twice")
        out.append((name, Path(path)))
    return out


def paired_change(base: list[dict], current: list[dict], column: str) -> tuple[float, float, int]:
    """Mean per-object change of ``column`` from ``base`` to ``current`` rows, its standard error, and count."""
    from .regression import paired_difference

    def by_object(rows: list[dict]) -> dict:
        return {(r["image_id"], r["object_id"]): r[column] for r in rows}

    return paired_difference(by_object(base), by_object(current))


def _table(name: str, summary: dict[str, float]) -> str:
    lines = [f"{name}:"]
    for key in SUMMARY_KEYS:
        value = summary.get(key)
        if value is not None:
            lines.append(f"  {key:<18} {value:.4g}" if key != "n_objects" else f"  {key:<18} {int(value)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each checkpoint on the gold set with one annotator profile; print tables and the change."""
    parser = argparse.ArgumentParser(
        prog="python -m sam_engine.evaluation.annotator_effort",
        description="Simulated-annotator effort (clicks per mask, manual fixes, IoU) per model on gold objects.",
    )
    parser.add_argument("--checkpoints", nargs="+", required=True, metavar="NAME=PATH")
    parser.add_argument("--objects", type=int, default=150, help="gold objects sampled (default 150)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--annotator", choices=sorted(PROFILES), default="reference")
    parser.add_argument("--min-area", type=int, default=16)
    parser.add_argument("--no-zoom", action="store_true", help="plain SamPredictor (no zoom-in refinement)")
    parser.add_argument("--no-snap", action="store_true", help="no region snapping (sam_engine/snap.py)")
    parser.add_argument("--profile", default=None, help="engine config profile (default $SAM_ENGINE_PROFILE)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write summaries and rows here")
    args = parser.parse_args(argv)
    if args.objects < 1:
        parser.error("--objects must be at least 1")
    checkpoints = _parse_checkpoints(args.checkpoints)

    import torch

    from ..config import load_config
    from ..data.corpora import load_gold
    from ..device import resolve_device
    from ..model.checkpoint import load_model
    from ..predictor import EmbeddingCache
    from ..zoom import interactive_predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models = {}
    for name, path in checkpoints:  # load all first: a bad file fails before any measuring
        try:
            models[name] = load_model(path)
        except ValueError as e:  # CheckpointError names the file and field
            print(f"error: checkpoint {name}: {e}", file=sys.stderr)
            return 2
    gold = load_gold(load_config(args.profile))
    profile = PROFILES[args.annotator]
    results: dict[str, EffortResult] = {}
    for name, model in models.items():
        model.to(device).eval()
        with torch.inference_mode():
            results[name] = measure_effort(
                interactive_predictor(
                    model, cache=EmbeddingCache(16), zoom=not args.no_zoom, snap=not args.no_snap
                ),
                gold,
                profile,
                max_objects=args.objects,
                seed=args.seed,
                min_area=args.min_area,
            )
        print(_table(name, results[name].summary), flush=True)
    names = list(results)
    base = results[names[0]].summary
    for name in names[1:]:
        cur = results[name].summary
        print(f"change {names[0]} -> {name}:")
        for key in SUMMARY_KEYS[1:]:
            if key in base and key in cur:
                print(f"  {key:<18} {cur[key] - base[key]:+.4g}")
        for column in ("clicks", "seconds"):
            diff, se, n = paired_change(results[names[0]].rows, results[name].rows, column)
            print(f"  per-object {column}: {diff:+.4g} (paired se {se:.3g}, {n} objects)")
    if args.json:
        payload = {
            "annotator": profile.as_dict(),
            "objects": args.objects,
            "seed": args.seed,
            "checkpoints": {n: str(p) for n, p in checkpoints},
            "summary": {n: r.summary for n, r in results.items()},
            "rows": {n: r.rows for n, r in results.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
