"""Small helpers shared by the asset modules (metadata formatting, workspace from the resource)."""

import math

import pandas as pd
from dagster import MetadataValue

from assets.resources import EngineResource
from sam_engine.engine.workspace import Workspace
from sam_engine.model_store import ModelRef


def workspace(engine: EngineResource) -> Workspace:
    """The step's workspace; also sets the step's torch threads (steps run one at a time: every core, or
    ``torch_threads``)."""
    from sam_engine.threads import configure_torch_threads

    cfg = engine.config()
    configure_torch_threads(threads=cfg.torch_threads)
    return Workspace(cfg)


def table_md(df: pd.DataFrame, digits: int = 3) -> MetadataValue:
    """A DataFrame as a Markdown table (numbers rounded)."""
    if df.empty:
        return MetadataValue.md("_empty_")
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append("nan" if math.isnan(v) else f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return MetadataValue.md("\n".join(lines))


def model_metadata(ref: ModelRef) -> dict:
    """What a model asset shows: MLflow run, registered version, data counts and hashes, metrics."""
    meta = {
        "checkpoint": MetadataValue.path(ref.checkpoint),
        "checkpoint_sha256": ref.sha256,
        "parent": ref.parent or "none (from scratch)",
        "mlflow_run_id": ref.mlflow_run_id or "",
        "registered_version": ref.registered_version or "",
        "train_images": int(ref.data.get("images", 0)),
        "train_masks": int(ref.data.get("masks", 0)),
        "data_sha256": ref.data.get("data_sha256", ""),
    }
    for k, v in ref.metrics.items():
        if isinstance(v, int | float) and math.isfinite(v):
            meta[k] = float(v)
    return meta


def picture_metadata(ws: Workspace, ref: ModelRef, log=None) -> dict:
    """The model's pictures as Markdown images: its masks on gold images, its training curve where there is one
    (``sam_engine.engine.model_pictures``). A picture that cannot be made is logged and left out."""
    from sam_engine.engine.model_pictures import markdown_png, model_pictures

    try:
        pictures = model_pictures(ws, ref)
    except Exception as exc:  # a picture must never fail the model it shows
        if log is not None:
            log.warning(f"{ref.name}: no pictures ({exc!r})")
        return {}
    titles = {"gold_overlays": f"{ref.name} on gold images", "training_curve": f"{ref.name} training"}
    return {k: MetadataValue.md(markdown_png(p, titles[k])) for k, p in pictures.items()}


def numeric(d: dict) -> dict:
    """Only the finite numeric entries of a dict (for metadata)."""
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float) and math.isfinite(float(v))}
