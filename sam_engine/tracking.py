"""MLflow helpers: runs on a local SQLite store, params / curves / metrics, artifacts, plots, model registry.

Every trained model version is one MLflow run (params, per-step curves through Lightning's ``MLFlowLogger``,
final metrics, the checkpoint, sample overlays and a curves plot) and one new version of a single
registered model. Plots use matplotlib's Agg canvas directly (no pyplot global state).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException

from .data.images import save_png

DEFAULT_EXPERIMENT = "sam-engine"
DEFAULT_REGISTERED_MODEL = "sam-engine-model"
_PARAM_MAX = 6000
# MLflow's experiment kind: its UI offers the model-training view (runs, metrics, registered models) for this
# kind, the GenAI view (traces, sessions, assistant) for "genai_development"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# MLflow 3.x's UI picks its view from a `workflowType` query parameter (else the browser's last choice,
# GenAI at first): links to the experiment carry it
TRAINING_VIEW_QUERY = "workflowType=machine_learning"


@dataclass
class TrackingSettings:
    """Where and under which names to track: a tracking URI (``sqlite:///...``) and a local artifact folder."""

    tracking_uri: str
    artifact_dir: str | Path
    experiment: str = DEFAULT_EXPERIMENT
    registered_model: str = DEFAULT_REGISTERED_MODEL
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> TrackingSettings:
        """Settings from an :class:`~sam_engine.config.EngineConfig` (its MLflow URI and artifact folder)."""
        values: dict[str, Any] = {
            "tracking_uri": cfg.mlflow_tracking_uri,
            "artifact_dir": cfg.mlflow_artifact_dir,
        }
        values.update(overrides)
        return cls(**values)

    def client(self) -> MlflowClient:
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def ensure_experiment(settings: TrackingSettings, client: MlflowClient | None = None) -> str:
    """The experiment's id, created with its artifacts under ``settings.artifact_dir`` when missing; either
    way tagged as a model-training experiment (:data:`EXPERIMENT_KIND_TAG`), not a GenAI one."""
    client = client or settings.client()
    exp = client.get_experiment_by_name(settings.experiment)
    if exp is None:
        location = (Path(settings.artifact_dir).resolve() / settings.experiment).as_uri()
        Path(settings.artifact_dir).mkdir(parents=True, exist_ok=True)
        try:
            exp_id = client.create_experiment(
                settings.experiment,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
            )
            return exp_id
        except MlflowException:  # created concurrently
            exp = client.get_experiment_by_name(settings.experiment)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:  # made before the tag, or by another tool
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return exp.experiment_id


def experiment_url(settings: TrackingSettings, ui_url: str) -> str:
    """The experiment's page in the MLflow UI at ``ui_url``, in the model-training view (runs, not traces)."""
    exp_id = ensure_experiment(settings)
    return f"{ui_url.rstrip('/')}/#/experiments/{exp_id}?{TRAINING_VIEW_QUERY}"


def registered_model_url(settings: TrackingSettings, ui_url: str) -> str:
    """The registered model's page (its versions and aliases) in the MLflow UI at ``ui_url``."""
    return f"{ui_url.rstrip('/')}/#/models/{settings.registered_model}?{TRAINING_VIEW_QUERY}"


def start_run(
    settings: TrackingSettings, run_name: str | None = None, tags: Mapping[str, str] | None = None
) -> str:
    """Open a run in the settings' experiment; returns its id."""
    client = settings.client()
    exp_id = ensure_experiment(settings, client)
    all_tags = {**settings.tags, **(tags or {})}
    run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()})
    return run.info.run_id


def end_run(settings: TrackingSettings, run_id: str, failed: bool = False) -> None:
    status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
    settings.client().set_terminated(run_id, status=status)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts to dotted keys; values as strings (JSON for lists), cut to MLflow's length limit."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
            continue
        if isinstance(value, list | tuple):
            text = json.dumps(list(value), default=str)
        else:
            text = str(value)
        out[name] = text[:_PARAM_MAX]
    return out


def log_params(settings: TrackingSettings, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, v) for k, v in flatten(params).items()]
    client = settings.client()
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def metric_name(name: str) -> str:
    """An MLflow-legal metric name: ``val/miou@1`` -> ``val/miou_at_1``, ``share_iou>0.9`` -> ``share_iou_gt_0.9``."""
    return name.replace("@", "_at_").replace(">", "_gt_").replace("<", "_lt_")


def log_metrics(settings: TrackingSettings, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log finite numeric metrics (others are skipped); names are made MLflow-legal with :func:`metric_name`."""
    import time

    now = int(time.time() * 1000)
    items = [
        Metric(metric_name(k), float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, int | float | np.floating | np.integer) and np.isfinite(v)
    ]
    client = settings.client()
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i : i + 500])


def log_artifact(
    settings: TrackingSettings, run_id: str, path: str | Path, artifact_path: str | None = None
) -> None:
    settings.client().log_artifact(run_id, str(path), artifact_path)


def log_dict(settings: TrackingSettings, run_id: str, data: Any, artifact_file: str) -> None:
    settings.client().log_dict(run_id, data, artifact_file)


def metric_history(
    settings: TrackingSettings, run_id: str, keys: Iterable[str]
) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs per metric key, sorted by step."""
    client = settings.client()
    out = {}
    for key in keys:
        hist = client.get_metric_history(run_id, key)
        out[key] = sorted((m.step, m.value) for m in hist)
    return out


def overlay(
    image: np.ndarray,
    mask: np.ndarray | None,
    clicks: Sequence[tuple[float, float, int]] = (),
    color: tuple[int, int, int] = (30, 144, 255),
    alpha: float = 0.5,
) -> np.ndarray:
    """The image with the mask tinted and its outline drawn; clicks (x, y, label) as green (1) / red (0) dots."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    out = np.asarray(image, dtype=np.float32).copy()
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        out[mask] = out[mask] * (1 - alpha) + np.array(color, np.float32) * alpha
        edge = mask & ~ndimage.binary_erosion(mask)
        out[edge] = color
    img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = max(2, round(min(img.size) / 80))
    for x, y, label in clicks:
        fill = (40, 220, 60) if int(label) == 1 else (230, 40, 40)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255))
    return np.asarray(img)


def log_overlays(
    settings: TrackingSettings,
    run_id: str,
    samples: Iterable[tuple[np.ndarray, np.ndarray | None, Sequence[tuple[float, float, int]]]],
    artifact_path: str = "overlays",
) -> int:
    """Log (image, predicted mask, clicks) samples as PNG overlays; returns how many were logged."""
    with tempfile.TemporaryDirectory() as tmp:
        n = 0
        for i, (image, mask, clicks) in enumerate(samples):
            save_png(overlay(image, mask, clicks), Path(tmp) / f"sample_{i:03d}.png")
            n += 1
        if n:
            settings.client().log_artifacts(run_id, tmp, artifact_path)
    return n


def plot_curves(
    history: Mapping[str, Sequence[tuple[int, float]]], path: str | Path, title: str = ""
) -> Path:
    """One panel per metric (value vs step) written as a PNG with matplotlib's Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [k for k, v in history.items() if len(v)]
    n = max(1, len(keys))
    fig = Figure(figsize=(4.2 * n, 3.2))
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, n, i + 1)
        steps, values = zip(*history[key], strict=True)
        ax.plot(steps, values, lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(path)
    return path


def log_curves_png(
    settings: TrackingSettings,
    run_id: str,
    keys: Iterable[str],
    artifact_path: str = "plots",
    file_name: str = "curves.png",
) -> bool:
    """Plot the run's metric histories for ``keys`` and log the PNG; False when no key has data."""
    history = metric_history(settings, run_id, keys)
    if not any(history.values()):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        out = plot_curves(history, Path(tmp) / file_name)
        log_artifact(settings, run_id, out, artifact_path)
    return True


def register_model_version(
    settings: TrackingSettings,
    run_id: str,
    artifact_path: str,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
) -> str:
    """Register the run's ``artifact_path`` as a new version of the registered model; returns the version."""
    client = settings.client()
    name = name or settings.registered_model
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException:  # created concurrently
            pass
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = client.create_model_version(
        name,
        source=source,
        run_id=run_id,
        tags={k: str(v) for k, v in (tags or {}).items()},
        description=description,
    )
    return str(mv.version)


def set_version_alias(settings: TrackingSettings, version: str, alias: str, name: str | None = None) -> None:
    """Point ``alias`` of the registered model at ``version`` (``models:/<name>@<alias>`` then loads it)."""
    settings.client().set_registered_model_alias(name or settings.registered_model, alias, str(version))


def version_by_alias(settings: TrackingSettings, alias: str, name: str | None = None) -> str | None:
    """The version ``alias`` points at, or None when the alias (or the registered model) does not exist."""
    try:
        mv = settings.client().get_model_version_by_alias(name or settings.registered_model, alias)
    except MlflowException:
        return None
    return str(mv.version)


def download_version(
    settings: TrackingSettings, alias: str, dst: str | Path, name: str | None = None
) -> Path:
    """Download the file a registered version was registered from (the engine's checkpoint) into ``dst``;
    ``alias`` is an alias (``champion``, ``model_v2``) or a version number. (``models:/<name>@<alias>`` names
    the version in MLflow; MLflow's own download of it expects a folder, the engine registers a file.)"""
    import mlflow.artifacts

    client = settings.client()
    name = name or settings.registered_model
    mv = (
        client.get_model_version(name, alias)
        if alias.isdigit()
        else client.get_model_version_by_alias(name, alias)
    )
    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst)))


def version_description(settings: TrackingSettings, version: str, name: str | None = None) -> str:
    """A registered version's description ("" when it has none)."""
    mv = settings.client().get_model_version(name or settings.registered_model, str(version))
    return mv.description or ""


def set_version_description(
    settings: TrackingSettings, version: str, description: str, name: str | None = None
) -> None:
    settings.client().update_model_version(name or settings.registered_model, str(version), description)


def set_version_tag(
    settings: TrackingSettings, version: str, key: str, value: str, name: str | None = None
) -> None:
    settings.client().set_model_version_tag(name or settings.registered_model, str(version), key, str(value))


def lightning_logger(settings: TrackingSettings, run_id: str) -> Any:
    """Lightning's ``MLFlowLogger`` attached to an existing run (per-step curves go there)."""
    from lightning.pytorch.loggers import MLFlowLogger

    ensure_experiment(settings)
    return MLFlowLogger(
        experiment_name=settings.experiment,
        tracking_uri=settings.tracking_uri,
        run_id=run_id,
        artifact_location=(Path(settings.artifact_dir).resolve() / settings.experiment).as_uri(),
    )
