"""Checkpoint I/O: the engine's own format, official SAM state dicts, strict key checks, hashing.

Own format (one ``torch.save`` file, tensors and plain Python values only)::

    {"format": "sam-engine/checkpoint/v1", "config": SamConfig.to_dict(), "state_dict": {...},
     "metadata": {...JSON-able...}}

An official SAM checkpoint is a plain state dict (``sam_vit_b_01ec64.pth`` etc.). Everything loads with
``torch.load(..., weights_only=True)``: a file that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sam_engine.data.errors import DataError
from sam_engine.io import atomic_write_bytes
from sam_engine.model.build import MODEL_CONFIGS, SamConfig, build_sam, get_config
from sam_engine.model.sam import Sam

FORMAT_TAG = "sam-engine/checkpoint/v1"
_LIST_LIMIT = 20


class CheckpointError(DataError):
    """A checkpoint file that cannot be read or does not fit the model; names the file and field."""

    def __init__(self, file: str | Path, field: str, message: str):
        super().__init__(str(file), "checkpoint", field, message)


@dataclass
class Checkpoint:
    """A checkpoint read from disk: config, weights, metadata, and whether it was an official file."""

    config: SamConfig
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    official: bool = False
    path: str = ""


def _model_config(model: Sam) -> SamConfig:
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, SamConfig):
        raise ValueError("model has no SamConfig in .config; build it with build_sam or pass config=")
    return cfg


def save_checkpoint(
    model: Sam,
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
    config: SamConfig | None = None,
) -> Path:
    """Write ``model`` to ``path`` in the own format, atomically. ``metadata`` must be JSON-able.

    The argument order follows ``torch.save(obj, f)``; ``save_checkpoint(path, model)`` is accepted too.
    """
    if isinstance(model, str | Path) and isinstance(path, torch.nn.Module):
        model, path = path, model
    path = Path(path)
    cfg = config or _model_config(model)
    meta = dict(metadata or {})
    try:
        meta = json.loads(json.dumps(meta))  # plain values only, so weights_only loading accepts it
    except (TypeError, ValueError) as e:
        raise CheckpointError(path, "metadata", f"metadata must be JSON-able: {e}") from e
    payload = {
        "format": FORMAT_TAG,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "metadata": meta,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(path, "file", "no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            path, "pickle", f"refused: the file holds objects that are not plain tensors/values ({first})"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(path, "file", f"not a readable torch checkpoint: {e}") from e


def _tensor_dict(path: Path, obj: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, where, f"expected a mapping of tensors, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(path, where, f"non-tensor entries: {bad[:_LIST_LIMIT]}")
    return dict(obj)


def _shapes_of(config: SamConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_sam(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def match_official_config(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the ``MODEL_CONFIGS`` entry whose keys and shapes equal ``state_dict``'s, if any."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name, cfg in MODEL_CONFIGS.items():
        if _shapes_of(cfg) == shapes:
            return name
    return None


def check_state_dict(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]
) -> None:
    """Strict check: same keys and shapes, else a CheckpointError listing what is missing/unexpected."""
    have = set(state_dict)
    want = set(expected)
    missing = sorted(want - have)
    unexpected = sorted(have - want)
    mismatched = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k])}"
        for k in have & want
        if tuple(state_dict[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                more = f" ... (+{len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else ""
                parts.append(f"{label} ({len(items)}): {items[:_LIST_LIMIT]}{more}")
        raise CheckpointError(path, "state_dict", "does not fit the model config: " + "; ".join(parts))


def read_checkpoint(path: str | Path, config: str | SamConfig | dict[str, Any] | None = None) -> Checkpoint:
    """Read an own-format or official checkpoint and check its keys/shapes strictly.

    For an official (plain state dict) file, ``config`` names the configuration; when omitted it is
    inferred by matching keys and shapes against ``MODEL_CONFIGS``. For an own-format file the stored
    config is used, and a ``config`` given as well must equal it.
    """
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_TAG:
        try:
            cfg = SamConfig.from_dict(dict(obj["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path, "config", f"bad model config: {e}") from e
        if config is not None and get_config(config) != cfg:
            raise CheckpointError(
                path, "config", f"file config {cfg} differs from requested {get_config(config)}"
            )
        state = _tensor_dict(path, obj.get("state_dict"), "state_dict")
        metadata = obj.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise CheckpointError(path, "metadata", "metadata must be a dict")
        official = False
    elif isinstance(obj, Mapping) and "format" in obj:
        raise CheckpointError(
            path, "format", f"unknown checkpoint format {obj['format']!r}; expected {FORMAT_TAG!r}"
        )
    else:
        state = _tensor_dict(path, obj, "state_dict")
        if config is None:
            name = match_official_config(state)
            if name is None:
                raise CheckpointError(
                    path,
                    "state_dict",
                    f"matches none of the known configs {sorted(MODEL_CONFIGS)}; pass config=",
                )
            config = name
        cfg = get_config(config)
        metadata = {}
        official = True
    check_state_dict(path, state, _shapes_of(cfg))
    return Checkpoint(config=cfg, state_dict=state, metadata=metadata, official=official, path=str(path))


def load_model(path: str | Path, config: str | SamConfig | dict[str, Any] | None = None) -> Sam:
    """Build the model a checkpoint describes and load its weights (strict). Returns it on the CPU."""
    ckpt = read_checkpoint(path, config)
    model = build_sam(ckpt.config)
    model.load_state_dict(ckpt.state_dict, strict=True)
    model.checkpoint_metadata = ckpt.metadata  # type: ignore[assignment]
    return model


def load_official_checkpoint(path: str | Path, config: str | SamConfig | None = None) -> Sam:
    """Load an official SAM state dict (e.g. ``sam_vit_b_01ec64.pth``) into the matching configuration."""
    ckpt = read_checkpoint(path, config)
    if not ckpt.official:
        raise CheckpointError(path, "format", "this is an own-format checkpoint, not an official state dict")
    model = build_sam(ckpt.config)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model
