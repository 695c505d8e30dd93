"""``train_model``: train or fine-tune a SAM model on a mask corpus with Lightning, resumable, tracked.

Pretraining (v0) and fine-tuning (v1, v2, ...) are the same call: a config name starts from random weights,
a checkpoint path (own format or official SAM) starts from those weights (use a lower ``lr``). Progress is
checkpointed to ``out_dir/checkpoints/last.ckpt`` every ``checkpoint_every_n_steps`` steps, and a call
with ``resume=True`` continues from it (optimizer, scheduler, step, elapsed time). The final weights are
exported in the model package's own checkpoint format to ``out_dir/model.pt``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ..data.corpus import MaskCorpus
from ..evaluation.interactive import ClickProtocol, evaluate_objects, run_clicks, summarize
from ..io import atomic_write_json
from ..model import MODEL_CONFIGS, get_config
from .datamodule import MaskDataModule
from .module import SamModule
from .progress import ProgressLines, is_terminal
from .prompts import PromptSchedule
from .quiet import quiet_lightning

log = logging.getLogger(__name__)

LAST_CKPT = "last.ckpt"
MODEL_FILE = "model.pt"
CURVE_KEYS = ("train/loss", "train/iou_1", "train/iou_last", "val/miou_1")


@dataclass
class TrainResult:
    """What a training call produced."""

    checkpoint: Path  # exported weights (model package's own format)
    lightning_checkpoint: Path  # resumable Lightning state
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    resumed_from_step: int | None = None
    run_id: str | None = None
    model_version: str | None = None


def recipe_from_config(t: Any) -> dict[str, Any]:
    """The interactive-training recipe of a :class:`~sam_engine.config.TrainSection` as ``train_model``
    keyword arguments (the engine's versions and the released pretrain use the same)."""
    schedule = PromptSchedule(
        ungraded_rounds_max=t.ungraded_rounds_max,
        mask_only_rounds=t.mask_only_rounds,
        center_prob=t.center_prob,
    )
    return {
        "masks_per_image": t.masks_per_image,
        "prompts_per_mask": t.prompts_per_mask,
        "zoom_prob": t.zoom_prob,
        "schedule": asdict(schedule),
        "loss_weights": {"iou": t.iou_loss_weight},
    }


def _load_start(
    model_name_or_checkpoint: str | Path | Any,
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None, str]:
    """(model config dict, starting state dict or None, description) for a config name or a checkpoint."""
    if isinstance(model_name_or_checkpoint, str) and model_name_or_checkpoint in MODEL_CONFIGS:
        return get_config(model_name_or_checkpoint).to_dict(), None, model_name_or_checkpoint
    if isinstance(model_name_or_checkpoint, dict):
        return get_config(model_name_or_checkpoint).to_dict(), None, "custom"
    from ..model.checkpoint import load_model

    path = Path(model_name_or_checkpoint)
    model = load_model(path)
    return model.config.to_dict(), model.state_dict(), str(path)


def wise_ft(model: torch.nn.Module, start_state: dict[str, torch.Tensor], alpha: float) -> None:
    """WiSE-FT (Wortsman et al., 2022): set ``model``'s floating-point weights and buffers to
    ``start + alpha * (trained - start)`` in place; integer buffers (BatchNorm's step counts) stay as trained."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"wise_ft_alpha must lie in [0, 1], got {alpha}")
    state = model.state_dict()
    differ = sorted(set(state) ^ set(start_state))
    if differ:
        raise ValueError(f"WiSE-FT needs the start's parameters; these differ: {differ[:5]}")
    with torch.no_grad():
        for key, value in state.items():
            if value.is_floating_point():
                value.copy_(torch.lerp(start_state[key].to(value), value, alpha))


def _export(model: torch.nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    from ..model.checkpoint import save_checkpoint

    save_checkpoint(model, path, metadata=metadata)


def _step_of(ckpt: Path) -> int | None:
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a torn file from a killed run: start over
        log.warning("cannot read %s (%s); starting from scratch", ckpt, e)
        return None
    return int(state.get("global_step", 0))


def final_evaluation(
    model: torch.nn.Module, dm: MaskDataModule, max_clicks: int = 20, zoom: bool = True
) -> tuple[dict[str, Any], list[tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]]]:
    """Click-protocol metrics on the validation slice, and a few overlay samples (image, 3-click mask, clicks).

    The protocol runs with the engine's interactive predictor (``zoom``: zoomed in, ``sam_engine/zoom.py``);
    with ``zoom`` the model alone (one pass on the whole image) is scored on the first click as well, as
    ``val/single_pass_miou@1`` and ``val/single_pass_oracle_miou@1``.
    """
    from ..predictor import EmbeddingCache, SamPredictor
    from ..zoom import interactive_predictor

    objects = [o for group in dm.val_groups for o in group]
    if not objects:
        return {}, []
    was_training = model.training
    model.eval()
    try:
        protocol = ClickProtocol(max_clicks=max_clicks)
        with torch.no_grad():
            predictor = interactive_predictor(model, cache=EmbeddingCache(8), zoom=zoom)
            df = evaluate_objects(predictor, objects, protocol)
            single = None
            if zoom:
                one = ClickProtocol(max_clicks=1, report_clicks=(1,), thresholds=())
                single = evaluate_objects(SamPredictor(model, cache=EmbeddingCache(4)), objects, one)
            samples = []
            for obj in objects[:6]:
                image = obj.image() if callable(obj.image) else obj.image
                gt = obj.gt() if callable(obj.gt) else obj.gt
                predictor.set_image(image)
                res = run_clicks(predictor, gt, obj.ignore, ClickProtocol(max_clicks=3, stop_early=False))
                samples.append((image, res.final_mask, [(c.x, c.y, c.label) for c in res.clicks]))
    finally:
        model.train(was_training)
    summary = summarize(df, protocol)
    metrics = {f"val/{k}": v for k, v in summary.items() if isinstance(v, int | float)}
    if single is not None:
        one_summary = summarize(single, one)
        metrics["val/single_pass_miou@1"] = one_summary["miou@1"]
        metrics["val/single_pass_oracle_miou@1"] = one_summary["oracle_miou@1"]
    return metrics, samples


def train_model(
    corpus: MaskCorpus,
    model_name_or_checkpoint: str | Path | dict[str, Any] = "tiny",
    out_dir: str | Path = "model_out",
    max_steps: int = 4000,
    max_minutes: float | None = 10.0,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    val_corpus: MaskCorpus | None = None,
    resume: bool = True,
    mlflow: Any = None,
    *,
    masks_per_image: int = 8,
    prompts_per_mask: int = 2,
    zoom_prob: float = 0.0,
    attention_init_gain: float | None = 3.0,
    attention_init_both: bool = True,
    weight_decay: float = 0.05,
    warmup_steps: int = 100,
    decay_at: tuple[float, ...] = (0.85, 0.95),
    schedule: PromptSchedule | dict[str, Any] | None = None,
    loss_weights: dict[str, float] | None = None,
    num_workers: int = 0,
    val_fraction: float = 0.05,
    val_max_objects: int = 64,
    val_every_n_steps: int = 200,
    checkpoint_every_n_steps: int = 25,
    final_eval_clicks: int = 20,
    zoom_eval: bool = True,
    accelerator: str = "auto",
    precision: str = "32-true",
    gradient_clip_val: float | None = 1.0,
    wise_ft_alpha: float = 1.0,
    progress_bar: bool = True,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrainResult:
    """Train (or fine-tune) and export a model; see the module docstring.

    ``mlflow``: a :class:`~sam_engine.tracking.TrackingSettings` (or ``None`` for no tracking). When set,
    the run gets params, per-step curves, final metrics, the exported checkpoint, overlays and a curves
    plot, and the checkpoint is registered as a new model version.
    """
    quiet_lightning()
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last = ckpt_dir / LAST_CKPT
    L.seed_everything(seed, workers=True, verbose=False)

    model_config, start_state, start_desc = _load_start(model_name_or_checkpoint)
    if isinstance(schedule, PromptSchedule):
        schedule = asdict(schedule)
    module = SamModule(
        model_config=model_config,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        max_steps=max_steps,
        max_minutes=max_minutes,
        decay_at=list(decay_at),
        schedule=schedule,
        loss_weights=loss_weights,
        seed=seed,
        prompts_per_mask=prompts_per_mask,
        attention_init_gain=attention_init_gain if start_state is None else None,
        attention_init_both=attention_init_both,
    )
    resume_step = _step_of(last) if (resume and last.exists()) else None
    if resume_step is None and start_state is not None:
        module.model.load_state_dict(start_state)

    dm = MaskDataModule(
        corpus,
        module.model.img_size,
        batch_size=batch_size,
        masks_per_image=masks_per_image,
        val_corpus=val_corpus,
        val_fraction=val_fraction if val_corpus is None else 0.0,
        val_max_objects=val_max_objects,
        seed=seed,
        num_workers=num_workers,
        zoom_prob=zoom_prob,
    )
    dm.setup("fit")

    run_id = None
    loggers: list[Any] = [CSVLogger(str(out), name="logs")]  # a new version folder per call (resumes too)
    run_file = out / "mlflow_run.json"
    if mlflow is not None:
        from .. import tracking

        if resume_step is not None and run_file.exists():
            run_id = json.loads(run_file.read_text())["run_id"]
        else:
            run_id = tracking.start_run(
                mlflow,
                run_name=run_name or out.name,
                tags={"sam_engine.out_dir": str(out.resolve()), **(tags or {})},
            )
            atomic_write_json(run_file, {"run_id": run_id})
        loggers.append(tracking.lightning_logger(mlflow, run_id))
        params = {
            "start": start_desc,
            "model_config": model_config,
            "max_steps": max_steps,
            "max_minutes": max_minutes,
            "batch_size": batch_size,
            "masks_per_image": masks_per_image,
            "prompts_per_mask": prompts_per_mask,
            "zoom_prob": zoom_prob,
            "attention_init_gain": attention_init_gain if start_state is None else None,
            "lr": lr,
            "weight_decay": weight_decay,
            "warmup_steps": warmup_steps,
            "decay_at": list(decay_at),
            "seed": seed,
            "wise_ft_alpha": wise_ft_alpha,
            "train_images": len(dm.train_set),
            "val_objects": sum(len(g) for g in dm.val_groups),
            "corpus_source": corpus.source,
            **module.describe(),
        }
        if resume_step is None:
            tracking.log_params(mlflow, run_id, params)

    checkpointing = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="step{step:06d}",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=checkpoint_every_n_steps,
        auto_insert_metric_name=False,
    )
    has_val = bool(dm.val_groups)
    # a terminal gets Lightning's bar; a log (pipe, file) gets a short progress line every few seconds
    bar = progress_bar and is_terminal()
    lines = [ProgressLines(run_name or out.name)] if progress_bar and not bar else []
    trainer = L.Trainer(
        max_steps=max_steps,
        max_time=timedelta(minutes=max_minutes) if max_minutes else None,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        gradient_clip_val=gradient_clip_val,
        callbacks=[checkpointing, *lines],
        logger=loggers,
        log_every_n_steps=5,
        val_check_interval=val_every_n_steps if has_val else None,
        check_val_every_n_epoch=None if has_val else 1,
        limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0,
        enable_progress_bar=bar,
        enable_model_summary=False,
        default_root_dir=str(out),
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume_step is not None else None)
    train_seconds = time.perf_counter() - t0
    trainer.save_checkpoint(str(last))  # as trained: a resumed run goes on from here, and blends again
    if start_state is not None and wise_ft_alpha != 1.0:
        wise_ft(module.model, start_state, wise_ft_alpha)

    metrics, samples = final_evaluation(module.model, dm, final_eval_clicks, zoom=zoom_eval)
    metrics.update(
        {
            "train/steps": float(trainer.global_step),
            "train/seconds_this_call": train_seconds,
        }
    )
    for key in ("train/loss", "train/iou_1", "train/iou_last"):
        if key in trainer.callback_metrics:
            metrics[f"{key}_final"] = float(trainer.callback_metrics[key])
    exported = out / MODEL_FILE
    _export(
        module.model.cpu(),
        exported,
        {
            "steps": trainer.global_step,
            "start": start_desc,
            "metrics": metrics,
            "seed": seed,
            "wise_ft_alpha": wise_ft_alpha,
        },
    )
    atomic_write_json(out / "metrics.json", metrics, indent=2)

    version = None
    if mlflow is not None and run_id is not None:
        from .. import tracking

        tracking.log_metrics(mlflow, run_id, metrics, step=trainer.global_step)
        tracking.log_artifact(mlflow, run_id, exported, "model")
        tracking.log_overlays(mlflow, run_id, samples)
        tracking.log_curves_png(mlflow, run_id, CURVE_KEYS)
        version = tracking.register_model_version(mlflow, run_id, f"model/{MODEL_FILE}", tags=tags)
        tracking.end_run(mlflow, run_id)
    return TrainResult(
        checkpoint=exported,
        lightning_checkpoint=last,
        metrics=metrics,
        steps=int(trainer.global_step),
        resumed_from_step=resume_step,
        run_id=run_id,
        model_version=version,
    )
