"""Pictures of a model version for its asset page and MLflow run: its masks on a few gold images (one click per
object, the click protocol's first click) and its training curve.

Pictures are written once per checkpoint under ``<data>/pictures/`` and reused (the model asset and its
evaluation show the same file).
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from ..data import rle
from ..evaluation.clicks import first_click
from ..model_store import ModelRef
from ..visualize import grid, overlay, png_bytes
from .models import version_predictor
from .workspace import Workspace

CURVE_KEYS = ("train/loss", "train/iou_1", "val/miou_1")


def pictures_dir(ws: Workspace) -> Path:
    return ws.cfg.data_dir / "pictures"


def gold_overlays(ws: Workspace, ref: ModelRef, images: int = 4, objects: int = 5) -> np.ndarray:
    """The model's one-click masks on the first ``images`` gold images (their ``objects`` largest objects,
    clicked where the click protocol clicks first; green dots are the clicks)."""
    predictor = version_predictor(ws, ref)
    tiles = []
    for rec in ws.gold.images[:images]:
        image = ws.load(rec.image_id)
        anns = sorted(ws.gold.masks_for(rec.image_id), key=lambda a: -float(a.get("area") or 0.0))
        predictor.set_image(image)
        masks, clicks = [], []
        for ann in anns[:objects]:
            gt = rle.decode(ann["segmentation"]).astype(bool)
            if gt.shape != image.shape[:2] or not gt.any():
                continue
            c = first_click(gt)
            out, scores, _ = predictor.predict(
                np.array([[c.x, c.y]], dtype=np.float32), np.array([1]), multimask_output=True
            )
            masks.append(out[int(np.argmax(scores))])
            clicks.append((c.x, c.y, 1))
        tiles.append(overlay(image, masks, points=clicks) if masks else image)
    return grid(tiles, cols=min(4, max(1, len(tiles))))


def training_curve(ws: Workspace, ref: ModelRef, path: Path) -> Path | None:
    """The training run's loss and IoU curves (from MLflow) as a PNG at ``path``; None without a curve
    (no run, or a version carried forward without training)."""
    from .. import tracking

    if not ref.mlflow_run_id or ref.data.get("carried_from"):
        return None
    history = tracking.metric_history(ws.tracking, ref.mlflow_run_id, CURVE_KEYS)
    if not any(len(v) > 1 for v in history.values()):
        return None
    return tracking.plot_curves(history, path, title=ref.name)


def model_pictures(ws: Workspace, ref: ModelRef) -> dict[str, Path]:
    """``{"gold_overlays": png, "training_curve": png}`` for ``ref`` (the curve only where there is one),
    made once per checkpoint; new pictures are also logged to the model's MLflow run under ``pictures/``."""
    folder = pictures_dir(ws)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{ref.name}_{ref.sha256[:12]}"
    out: dict[str, Path] = {}
    made: list[Path] = []
    overlays = folder / f"{stem}_gold.png"
    if not overlays.exists():
        _write_png(gold_overlays(ws, ref), overlays)
        made.append(overlays)
    out["gold_overlays"] = overlays
    curve = folder / f"{stem}_curve.png"
    if not curve.exists() and training_curve(ws, ref, curve) is not None:
        made.append(curve)
    if curve.exists():
        out["training_curve"] = curve
    if made and ref.mlflow_run_id:
        from .. import tracking

        for p in made:
            tracking.log_artifact(ws.tracking, ref.mlflow_run_id, p, "pictures")
    return out


def _write_png(image: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(png_bytes(image))
    tmp.replace(path)


def markdown_png(path: Path, title: str = "") -> str:
    """A Markdown image of a PNG file, inlined as a base64 data URI (Dagster's UI renders it)."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode('ascii')})"
