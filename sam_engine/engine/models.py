"""Model versions: train or fine-tune, evaluate on held-out data, put in the model store, register in MLflow."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.corpus import MaskCorpus
from ..model_store import ModelRef
from . import registry
from .workspace import Workspace

if TYPE_CHECKING:
    from ..config import TrainSection
    from ..output_choice import OutputChoice

log = logging.getLogger(__name__)


def corpus_hash(corpus: MaskCorpus) -> str:
    """Content hash of a training corpus: image ids, sizes and every mask's RLE."""
    h = hashlib.sha256()
    for im in sorted(corpus.images, key=lambda r: r.image_id):
        h.update(f"{im.image_id}:{im.width}x{im.height};".encode())
        for ann in corpus.masks_for(im.image_id):
            h.update(json.dumps(ann["segmentation"], sort_keys=True).encode())
    return h.hexdigest()


def _recorded(ws: Workspace, ref: ModelRef) -> ModelRef:
    """``ref`` published (``models_url``) and named in the MLflow registry (alias ``model_vN``, description)."""
    ref = ws.publish_model(ref)
    registry.record_version(ws, ref)
    return ref


def _stored_with_key(ws: Workspace, name: str, key: str) -> ModelRef | None:
    """The stored version ``name`` when it was made from the inputs hashed as ``key``, else None."""
    try:
        existing = ws.model_store.get(name)
    except FileNotFoundError:
        return None
    return existing if existing.data.get("train_key") == key else None


def finetune_steps(train: TrainSection, images: int, name: str | None = None) -> int:
    """Steps of version ``name``'s fine-tune on ``images`` images: ``train.finetune_steps`` times the version's
    ``finetune_step_scale`` (at least 1), or with ``train.finetune_epochs`` set enough steps for that many passes
    over the images, never fewer."""
    steps = max(1, math.ceil(round(train.finetune_steps * train.finetune_step_scale.get(name or "", 1.0), 6)))
    if train.finetune_epochs is None:
        return steps
    return max(steps, math.ceil(train.finetune_epochs * images / train.batch_size))


def train_version(
    ws: Workspace,
    name: str,
    corpus: MaskCorpus,
    parent: ModelRef | None,
    *,
    val_corpus: MaskCorpus | None = None,
    log_fn: Callable[[str], None] | None = None,
) -> tuple[ModelRef, bool]:
    """Train model ``name`` on ``corpus`` (from scratch when ``parent`` is None, else fine-tune it).

    The training folder is keyed by the data hash, the parent's checkpoint hash, the seed and the training
    settings (a changed recipe or step count trains again): the same inputs reuse the
    finished checkpoint (re-materializing is idempotent), an interrupted run resumes from its last
    checkpoint, and new data starts a new run that becomes a new registered model version.
    Where it trains comes from :func:`~sam_engine.training.distributed.scale_settings`: one process with
    ``train_model`` (validation, MLflow, resume), or, when the settings are distributed (``scale`` profile on
    several GPUs, or ``train.strategy`` / ``devices`` / ``num_nodes`` set), ``train_distributed`` (DDP; no
    validation loop, MLflow run or resume). With ``models_url`` set the new version is also published there.
    Returns (ref, trained_now).
    """
    from ..training import distributed

    cfg = ws.cfg
    data_hash = corpus_hash(corpus)
    # what shapes the weights: the data, the start, the seed and the training settings (not where it runs)
    # (an unset finetune_epochs is left out, so versions trained before the field existed keep their keys)
    unset = {"finetune_epochs"} if cfg.train.finetune_epochs is None else set()
    recipe = cfg.train.model_dump(mode="json", exclude={"num_workers", "device", *unset})
    recipe_hash = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    key = hashlib.sha256(
        f"{data_hash}:{parent.sha256 if parent else cfg.model.name}:{cfg.seed}:{recipe_hash}".encode()
    ).hexdigest()
    out_dir = cfg.data_dir / "training" / name / key[:16]
    t = cfg.train
    finetune = parent is not None
    exported = out_dir / "model.pt"
    data = {
        "images": len(corpus.images),
        "masks": corpus.num_masks,
        "data_sha256": data_hash,
        "parent": parent.name if parent else None,
        "parent_sha256": parent.sha256 if parent else None,
    }
    existing = _stored_with_key(ws, name, key)
    if exported.exists() and existing is not None:
        if log_fn:
            log_fn(f"{name}: same data and parent as the stored version; reusing {existing.checkpoint}")
        return _recorded(ws, existing), False
    settings = distributed.scale_settings(cfg)
    start = str(ws.checkpoint(parent)) if parent else cfg.model.name
    common = {
        "max_steps": finetune_steps(t, len(corpus.images), name) if finetune else t.max_steps,
        "wise_ft_alpha": t.finetune_wise_ft_alpha.get(name, 1.0) if finetune else 1.0,
        "batch_size": t.batch_size,
        "lr": t.finetune_lr if finetune else t.lr,
        "seed": cfg.seed,
        "warmup_steps": t.warmup_steps if not finetune else max(1, t.warmup_steps // 4),
        "weight_decay": t.weight_decay,
        "num_workers": t.num_workers,
        "progress_bar": True,
    }
    from ..training.train import recipe_from_config

    recipe = recipe_from_config(t)
    if settings.distributed:
        if log_fn:
            log_fn(
                f"{name}: distributed training, {settings.strategy} on {settings.devices} "
                f"{settings.accelerator} device(s) x {settings.num_nodes} node(s)"
            )
        dist = distributed.train_distributed(corpus, start, out_dir, settings=settings, **common, **recipe)
        checkpoint, steps, run_id, version = dist.checkpoint, dist.steps, None, None
        metrics: dict[str, Any] = {**dist.metrics, "world_size": dist.world_size}
    else:
        from ..training.train import train_model

        extra = {} if t.device in (None, "", "auto") else {"accelerator": settings.accelerator}
        result = train_model(
            corpus,
            start,
            out_dir,
            max_minutes=t.finetune_minutes if finetune else t.max_minutes,
            val_corpus=val_corpus,
            resume=True,
            mlflow=ws.tracking,
            # a fine-tune's own validation slice is a monitor (the gold evaluation judges it): kept small
            val_max_objects=cfg.eval.finetune_val_objects if finetune else cfg.eval.public_val_objects,
            final_eval_clicks=min(5, cfg.eval.max_clicks) if finetune else cfg.eval.max_clicks,
            zoom_eval=cfg.model.zoom_in,
            run_name=name,
            tags={"engine_model": name, "train_key": key},
            **common,
            **recipe,
            **extra,
        )
        checkpoint, steps, metrics = result.checkpoint, result.steps, result.metrics
        run_id, version = result.run_id, result.model_version
    data.update({"train_key": key, "steps": steps})
    ref = ws.model_store.put(
        name,
        checkpoint,
        parent=parent.name if parent else None,
        mlflow_run_id=run_id,
        registered_version=version,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and np.isfinite(v)},
        data=data,
    )
    return _recorded(ws, ref), True


def _register_untrained(
    ws: Workspace,
    name: str,
    checkpoint: Path,
    tags: dict[str, str],
    params: dict[str, Any],
    description: str,
    metrics: dict[str, float] | None = None,
) -> tuple[str, str | None]:
    """An MLflow run and registered model version for weights made without training here; (run, version)."""
    from .. import tracking

    run_id = tracking.start_run(ws.tracking, run_name=name, tags=tags)
    tracking.log_params(ws.tracking, run_id, params)
    if metrics:
        tracking.log_metrics(ws.tracking, run_id, metrics)
    tracking.log_artifact(ws.tracking, run_id, checkpoint, "model")
    version = tracking.register_model_version(
        ws.tracking, run_id, f"model/{Path(checkpoint).name}", tags=tags, description=description or None
    )
    tracking.end_run(ws.tracking, run_id)
    return run_id, version


def carry_forward(
    ws: Workspace,
    name: str,
    parent: ModelRef,
    reason: str,
    *,
    log_fn: Callable[[str], None] | None = None,
) -> tuple[ModelRef, bool]:
    """Make ``parent``'s weights version ``name`` without training (there is no new data to learn from).

    The version is stored and registered like a trained one (an MLflow run tagged ``carried_from``, a new
    registered model version), so the lineage stays one version per model asset. Idempotent as
    :func:`train_version`: the same parent and reason reuse the stored version. Returns (ref, stored_now).
    """
    key = hashlib.sha256(f"carry:{parent.sha256}:{reason}:{ws.cfg.seed}".encode()).hexdigest()
    existing = _stored_with_key(ws, name, key)
    if existing is not None:
        if log_fn:
            log_fn(f"{name}: {parent.name} already carried forward; reusing {existing.checkpoint}")
        return _recorded(ws, existing), False
    checkpoint = ws.checkpoint(parent)
    tags = {"engine_model": name, "train_key": key, "carried_from": parent.name}
    run_id, version = _register_untrained(
        ws, name, checkpoint, tags, {"carried_from": parent.name, "reason": reason}, ""
    )
    if log_fn:
        log_fn(f"{name}: {parent.name}'s weights carried forward without training: {reason}")
    ref = ws.model_store.put(
        name,
        checkpoint,
        parent=parent.name,
        mlflow_run_id=run_id,
        registered_version=version,
        data={
            **{k: parent.data.get(k) for k in ("images", "masks", "data_sha256")},
            "parent": parent.name,
            "parent_sha256": parent.sha256,
            "carried_from": parent.name,
            "reason": reason,
            "train_key": key,
            "steps": 0,
        },
    )
    return _recorded(ws, ref), True


def released_version(
    ws: Workspace, name: str, *, log_fn: Callable[[str], None] | None = None
) -> tuple[ModelRef, bool] | None:
    """Version ``name`` from the released public-data checkpoint (:mod:`sam_engine.release`) when it fits
    this configuration, else None with the reason logged (the caller then trains from scratch). Stored and
    registered like a trained version (an MLflow run tagged ``released``); idempotent. Returns (ref, stored_now).
    """
    from ..model.checkpoint import load_model, save_checkpoint
    from ..release import NAME, ReleaseError, read_release

    say = log_fn or log.info
    if not ws.cfg.train.use_release:
        say(f"{name}: train.use_release is off; training from scratch")
        return None
    try:
        release = read_release(ws.cfg)
    except ReleaseError as e:
        say(f"{name}: released checkpoint refused, training from scratch instead: {e}")
        return None
    meta = release.meta
    key = hashlib.sha256(f"release:{meta['sha256']}:{ws.cfg.seed}".encode()).hexdigest()
    existing = _stored_with_key(ws, name, key)
    if existing is not None:
        say(f"{name}: the released checkpoint is already this version; reusing {existing.checkpoint}")
        return _recorded(ws, existing), False
    out_dir = ws.cfg.data_dir / "training" / name / key[:16]
    checkpoint = save_checkpoint(
        load_model(release.checkpoint), out_dir / "model.pt", metadata={"release": meta["sha256"]}
    )
    metrics = {k: float(v) for k, v in meta.get("metrics", {}).items()}
    tags = {"engine_model": name, "train_key": key, "released": NAME}
    params = {
        "released": NAME,
        "release_sha256": meta["sha256"],
        "code_version": meta.get("code_version", ""),
        "steps": meta.get("steps", 0),
        "recipe": json.dumps(meta.get("recipe"), sort_keys=True)[:5000],
    }
    description = (
        f"released public-data checkpoint {NAME} ({meta.get('steps')} steps, {meta.get('code_version')})"
    )
    run_id, version = _register_untrained(ws, name, checkpoint, tags, params, description, metrics)
    say(f"{name}: started from the released checkpoint ({description})")
    ref = ws.model_store.put(
        name,
        checkpoint,
        parent=None,
        mlflow_run_id=run_id,
        registered_version=version,
        metrics=metrics,
        data={
            "released": NAME,
            "release_sha256": meta["sha256"],
            "public_train_sha256": meta.get("public_train_sha256"),
            "train_key": key,
            "steps": meta.get("steps", 0),
        },
    )
    return _recorded(ws, ref), True


def evaluate_version(
    ws: Workspace, ref: ModelRef, *, with_amg: bool = True, log_fn: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Held-out evaluation on the gold set: click-protocol metrics, per region, automatic-mask recall, and
    the per-object table (``per_object``) that the no-regression verdict pairs.

    Results are kept under ``<data_dir>/evaluations/`` by checkpoint hash and evaluation settings, so the
    same weights (a re-materialization, a carried-forward version) are not evaluated twice.
    """
    from ..io import atomic_write_json

    cached = _evaluation_path(ws, ref, with_amg)
    metrics = _read_evaluation(cached)
    if metrics is not None:
        if log_fn:
            log_fn(
                f"{ref.name}: same weights and settings as an earlier evaluation ({cached.name}); reusing it"
            )
    else:
        metrics = _evaluate_on_gold(ws, ref, with_amg)
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cached, metrics)
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    if log_fn:
        log_fn(f"{ref.name}: {json.dumps({k: round(v, 4) for k, v in scalars.items()})}")
    if ref.mlflow_run_id:
        from ..tracking import log_metrics

        log_metrics(ws.tracking, ref.mlflow_run_id, {k.replace(">", "_gt_"): v for k, v in scalars.items()})
    # the choice beside the checkpoint too, for whoever serves it (the annotation server's --checkpoint)
    data = {**ws.model_store.get(ref.name).data, "output_choice": metrics.get("output_choice")}
    ws.model_store.update(ref.name, metrics={**ref.metrics, **scalars}, data=data)
    registry.record_gold(ws, ref, scalars)
    return metrics


def stored_evaluation(ws: Workspace, ref: ModelRef, *, with_amg: bool = True) -> dict[str, Any] | None:
    """The kept result of :func:`evaluate_version` for these weights and settings, or None; no side effects."""
    return _read_evaluation(_evaluation_path(ws, ref, with_amg))


def _read_evaluation(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _evaluation_path(ws: Workspace, ref: ModelRef, with_amg: bool) -> Path:
    cfg = ws.cfg
    settings = {
        # the gate's tolerances do not change what an evaluation measures
        "eval": cfg.eval.model_dump(exclude={"regression_tolerance", "noc_tolerance", "regression_z"}),
        "zoom": [cfg.model.zoom_in, cfg.model.zoom_expansion],
        "seed": cfg.seed,
        "amg": amg_params(ws).model_dump() if with_amg else None,
        "corpus": cfg.corpus.model_dump(),
        "per_object": 1,  # results carry the per-object table
        "calibration": calibration_targets(ws) if with_amg else None,
        "snap": cfg.model.snap,
    }
    key = hashlib.sha256(f"{ref.sha256}:{json.dumps(settings, sort_keys=True, default=str)}".encode())
    return cfg.data_dir / "evaluations" / f"{key.hexdigest()[:24]}.json"


def _evaluate_on_gold(ws: Workspace, ref: ModelRef, with_amg: bool) -> dict[str, Any]:
    from ..evaluation.interactive import ClickProtocol, evaluate_corpus
    from ..evaluation.regression import per_object_table

    cfg = ws.cfg
    protocol = ClickProtocol(max_clicks=cfg.eval.max_clicks)
    predictor = ws.predictor(ref)
    choice = fit_people_choice(ws, predictor)
    if choice is not None:
        from ..output_choice import ChoicePredictor

        predictor = ChoicePredictor(predictor, choice)
    per_object, summary = evaluate_corpus(
        predictor, ws.gold, protocol, max_objects=cfg.eval.gold_objects, seed=cfg.seed, min_area=16
    )
    metrics: dict[str, Any] = {
        f"gold/{k}": float(v) for k, v in summary.items() if isinstance(v, int | float)
    }
    metrics["output_choice"] = None if choice is None else choice.as_dict()
    if with_amg:
        calibration, amg = amg_calibration(ws, ref)
        metrics.update({f"gold_amg/{k}": float(v) for k, v in amg.items()})
        metrics["calibration"] = calibration
        for name, c in calibration.items():
            metrics[f"calibration/{name}_heldout_precision"] = float(c["heldout_precision"])
            metrics[f"calibration/{name}_heldout_masks_per_image"] = float(c["heldout_masks_per_image"])
    metrics["by_region"] = summary.get("by_region") or {}
    metrics["per_object"] = per_object_table(per_object)
    return metrics


def fit_people_choice(ws: Workspace, predictor: Any) -> OutputChoice | None:
    """The output choice (:mod:`sam_engine.output_choice`) of ``predictor`` fitted on first clicks at the masks
    people made in stages 1-2 (``eval.output_choice_objects`` of them, seeded); None without a store, with
    too few such masks, or with the setting at 0."""
    from ..output_choice import fit_output_choice
    from .training_data import store_masks_corpus

    n = ws.cfg.eval.output_choice_objects
    if n <= 0 or not ws.cfg.duckdb_path.exists():
        return None
    corpus = store_masks_corpus(ws, [1, 2], people_only=True)
    return fit_output_choice(predictor, corpus, n, seed=ws.cfg.seed + 23) if corpus.images else None


def version_predictor(ws: Workspace, ref: ModelRef):
    """The interactive predictor the engine serves for ``ref`` (:meth:`Workspace.predictor`), its first clicks
    scored by the output choice ``ref``'s gold evaluation fitted, where it has one."""
    return ws.predictor(ref, stored_output_choice(ws, ref))


def stored_output_choice(ws: Workspace, ref: ModelRef) -> OutputChoice | None:
    """The output choice ``ref``'s gold evaluation fitted and used, or None (none fitted, or not evaluated)."""
    from ..output_choice import OutputChoice

    ev = stored_evaluation(ws, ref) or stored_evaluation(ws, ref, with_amg=False) or {}
    return OutputChoice.from_dict(ev["output_choice"]) if ev.get("output_choice") else None


def amg_params(ws: Workspace):
    """The configured automatic-mask settings (thresholds as configured; :func:`calibrated_amg_params` has a
    version's own)."""
    from ..amg.params import AmgParams

    s = ws.cfg.stages
    return AmgParams(
        points_per_side=s.amg_points_per_side,
        points_per_batch=s.amg_points_per_batch,
        pred_iou_thresh=s.amg_pred_iou_thresh,
        stability_score_thresh=s.amg_stability_score_thresh,
        top_points_fraction=s.amg_top_points_fraction,
        crop_n_layers=s.amg_crop_n_layers,
        crop_n_points_downscale_factor=s.amg_crop_points_downscale,
        snap_scale=SNAP_SCALE if ws.cfg.model.snap else None,
    )


SNAP_SCALE = 100.0  # the over-segmentation scale of sam_engine.snap.SnapParams


def calibration_targets(ws: Workspace) -> dict[str, float]:
    """Named target precisions every version's thresholds are calibrated for (stage 3, stage-2 routing)."""
    s = ws.cfg.stages
    return {
        "stage3": s.amg_target_precision,
        "stage2_accept": s.stage2_accept_precision,
        "stage2_review": s.stage2_review_precision,
    }


def amg_calibration(ws: Workspace, ref: ModelRef) -> tuple[dict[str, Any], dict[str, float]]:
    """Calibrate ``ref``'s automatic-mask thresholds on a seeded slice of the gold set (half to choose, half
    to measure); returns (calibrations by target name, recall metrics of the held-out stage-3 run)."""
    from ..amg.calibration import Thresholds, calibrate
    from ..amg.generator import AutomaticMaskGenerator
    from ..evaluation.amg_metrics import evaluate_amg

    gold = ws.gold
    rng = np.random.default_rng(ws.cfg.seed + 17)
    n = min(ws.cfg.eval.gold_amg_images, len(gold.images))
    pick = sorted(rng.choice(len(gold.images), size=n, replace=False))
    model = ws.load_model(ref)
    images = [(ws.load(gold.images[i].image_id), gold.masks_for(gold.images[i].image_id)) for i in pick]
    pred: dict[int, list[dict]] = {}
    gt: dict[int, list[dict]] = {}

    def held_out(name: str, records: list[dict], truth: list[dict]) -> None:
        if name == "stage3":
            k = len(pred)
            pred[k], gt[k] = records, list(truth)

    params = amg_params(ws)
    relaxed = Thresholds(min(0.0, params.pred_iou_thresh), min(0.5, params.stability_score_thresh))
    cals = calibrate(
        lambda p: AutomaticMaskGenerator(model, p).generate,
        images,
        params,
        calibration_targets(ws),
        relaxed=relaxed,
        seed=ws.cfg.seed,
        held_out=held_out,
    )
    return {k: c.as_dict() for k, c in cals.items()}, evaluate_amg(pred, gt) if gt else {}


def calibrated_amg_params(ws: Workspace, ref: ModelRef, target: str = "stage3"):
    """``ref``'s automatic-mask settings with the thresholds calibrated for ``target`` on gold (its stored
    evaluation), or the configured thresholds when it has none."""
    from ..amg.calibration import Calibration

    ev = stored_evaluation(ws, ref)
    cal = (ev or {}).get("calibration", {}).get(target)
    params = amg_params(ws)
    if not cal:
        return params
    return Calibration.from_dict(cal).apply(params)
