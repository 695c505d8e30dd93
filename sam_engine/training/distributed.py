"""Training on several processes, devices or nodes with Lightning's DDP strategies, and device selection.

The default stays one CPU process. ``scale_settings(cfg)`` turns a config into Lightning's ``accelerator``,
``devices``, ``num_nodes`` and ``strategy``: the ``scale`` profile trains with DDP on every visible GPU
(NCCL), other profiles on one CPU process, and ``train.strategy`` / ``train.devices`` / ``train.num_nodes`` /
``train.accelerator`` in the config (when present) override either.

Strategies, and where each one is safe:

- ``ddp_spawn``: Lightning starts the extra processes itself (``multiprocessing`` spawn) and hands rank 0's
  weights back to the calling process. Safe inside a Dagster step, a test or a notebook.
- ``ddp``: Lightning re-runs the current command line for every extra local rank, or an external launcher
  (``torchrun``, SLURM, a Kubernetes PyTorchJob) starts one process per device and node and sets
  ``MASTER_ADDR`` / ``WORLD_SIZE`` / ``NODE_RANK``. Use it from a training script, never from a process that
  must not run twice (a Dagster run worker re-executed would run the whole step again).

``batch_size`` is per process: the global batch is ``batch_size * devices * num_nodes``. Each process sees a
disjoint share of every epoch (Lightning wraps the seeded epoch sampler in a distributed sampler).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy

from ..config import EngineConfig
from ..data.corpus import MaskCorpus
from ..device import resolve_device  # noqa: F401  (re-exported)
from ..io import atomic_write_json
from .datamodule import MaskDataModule
from .module import SamModule
from .train import _load_start, wise_ft

MODEL_FILE = "model.pt"
STRATEGIES = ("auto", "single", "ddp", "ddp_spawn", "ddp_fork")


@dataclass(frozen=True)
class ScaleSettings:
    """Where training runs: Lightning's ``accelerator``, ``devices``, ``num_nodes`` and ``strategy``."""

    accelerator: str = "cpu"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {self.num_nodes}")
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError(f"devices must be >= 1 (or 'auto'), got {self.devices}")

    @property
    def distributed(self) -> bool:
        return self.strategy.startswith("ddp")

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``lightning.Trainer``."""
        strategy: Any = self.strategy
        if self.strategy == "single":
            strategy = "auto"
        elif self.distributed:
            backend = "nccl" if self.accelerator in ("gpu", "cuda") else "gloo"
            start = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork"}[self.strategy]
            strategy = DDPStrategy(process_group_backend=backend, start_method=start)
        return {
            "accelerator": self.accelerator,
            "devices": self.devices,
            "num_nodes": self.num_nodes,
            "strategy": strategy,
            "precision": self.precision,
        }


def scale_settings(cfg: EngineConfig) -> ScaleSettings:
    """Training placement for ``cfg``: one CPU process, except the ``scale`` profile (DDP on all GPUs).

    An explicit ``train.device`` sets the accelerator (``cpu`` keeps a ``scale`` run off the GPUs); the
    ``train.accelerator`` / ``devices`` / ``num_nodes`` / ``strategy`` / ``precision`` fields, when not None,
    override the result.
    """
    t = cfg.train
    device = str(getattr(t, "device", None) or "auto").strip().lower()
    gpus = torch.cuda.device_count()
    if cfg.profile == "scale" and gpus > 0 and (device == "auto" or device.startswith("cuda")):
        base: dict[str, Any] = {
            "accelerator": "gpu",
            "devices": gpus,
            "strategy": "ddp_spawn" if gpus > 1 else "auto",
        }
        base["precision"] = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    else:
        base = {"accelerator": "cpu", "devices": 1, "strategy": "auto"}
    if device != "auto":
        base["accelerator"] = "gpu" if device.startswith("cuda") else device
    for key in ("accelerator", "devices", "num_nodes", "strategy", "precision"):
        value = getattr(t, key, None)
        if value is not None:
            base[key] = value
    return ScaleSettings(**base)


class _StepCounter(L.Callback):
    """Logs the optimizer step count, so it comes back to the calling process with the metrics (``ddp_spawn``
    returns weights and logged metrics from rank 0, not the trainer's loop state)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        pl_module.log("trainer/steps", float(trainer.global_step), batch_size=1, rank_zero_only=True)


@dataclass
class DistributedTrainResult:
    """What a distributed training call produced."""

    checkpoint: Path
    steps: int
    world_size: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


def train_distributed(
    corpus: MaskCorpus,
    model_name_or_checkpoint: str | Path | dict[str, Any] = "tiny",
    out_dir: str | Path = "model_out",
    *,
    settings: ScaleSettings | None = None,
    max_steps: int = 100,
    batch_size: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_steps: int = 10,
    masks_per_image: int = 8,
    prompts_per_mask: int = 2,
    zoom_prob: float = 0.0,
    schedule: dict[str, Any] | None = None,
    loss_weights: dict[str, float] | None = None,
    attention_init_gain: float | None = 3.0,
    attention_init_both: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    wise_ft_alpha: float = 1.0,
    progress_bar: bool = False,
) -> DistributedTrainResult:
    """Train (or fine-tune) on ``settings`` (default: ``ddp_spawn`` on 2 CPU processes) and export
    ``out_dir/model.pt`` in the model package's format from rank 0.

    The lean path for scale-out: no validation loop, MLflow or resume (``train_model`` has those, on one
    device). Gradients are averaged across processes by DDP, so every rank holds the same weights. The recipe
    keywords (``masks_per_image`` … ``attention_init_both``) mean what they mean for ``train_model``, so both
    paths train a version the same way (``recipe_from_config``).
    """
    settings = settings or ScaleSettings(accelerator="cpu", devices=2, strategy="ddp_spawn")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, workers=True, verbose=False)
    model_config, start_state, start_desc = _load_start(model_name_or_checkpoint)
    module = SamModule(
        model_config=model_config,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        max_steps=max_steps,
        schedule=schedule,
        loss_weights=loss_weights,
        seed=seed,
        prompts_per_mask=prompts_per_mask,
        attention_init_gain=attention_init_gain if start_state is None else None,
        attention_init_both=attention_init_both,
    )
    if start_state is not None:
        module.model.load_state_dict(start_state)
    dm = MaskDataModule(
        corpus,
        module.model.img_size,
        batch_size=batch_size,
        masks_per_image=masks_per_image,
        val_fraction=0.0,
        val_max_objects=0,
        seed=seed,
        num_workers=num_workers,
        zoom_prob=zoom_prob,
    )
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=CSVLogger(str(out), name="logs", version=0),
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=str(out),
        use_distributed_sampler=True,
        callbacks=[_StepCounter()],
        **settings.trainer_kwargs(),
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    steps = max(int(trainer.global_step), int(metrics.pop("trainer/steps", 0)))
    exported = out / MODEL_FILE
    if trainer.is_global_zero:
        from ..model.checkpoint import save_checkpoint

        if start_state is not None and wise_ft_alpha != 1.0:
            wise_ft(module.model, start_state, wise_ft_alpha)

        meta = {
            "steps": steps,
            "start": start_desc,
            "seed": seed,
            "world_size": int(trainer.world_size),
            "strategy": settings.strategy,
            "wise_ft_alpha": wise_ft_alpha,
            "metrics": metrics,
        }
        save_checkpoint(module.model.cpu(), exported, metadata=meta)
        atomic_write_json(out / "metrics.json", {**metrics, "world_size": trainer.world_size}, indent=2)
    return DistributedTrainResult(exported, steps, int(trainer.world_size), seconds, metrics)
