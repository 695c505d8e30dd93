"""The model store: checkpoints per model version in a folder (local by default), never in the IO manager.

Each version lives at ``<root>/<name>/model.pt`` with ``<root>/<name>/meta.json`` (sha256, data counts,
metrics, MLflow run id and registered version). Writes are atomic: a version appears complete or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .io import atomic_write_json, sha256_file


@dataclass
class ModelRef:
    """What a model asset hands downstream: where the checkpoint is and what it is."""

    name: str
    checkpoint: str
    sha256: str
    parent: str | None = None
    mlflow_run_id: str | None = None
    registered_version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelStore:
    """A folder of model versions."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name / "model.pt"

    def put(self, name: str, checkpoint: str | Path, **meta: Any) -> ModelRef:
        """Copy ``checkpoint`` in as version ``name`` (replacing an older one atomically)."""
        final = self.root / name
        staging = self.root / f".{name}.staging"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        shutil.copyfile(checkpoint, staging / "model.pt")
        ref = ModelRef(
            name=name, checkpoint=str(final / "model.pt"), sha256=sha256_file(staging / "model.pt"), **meta
        )
        atomic_write_json(staging / "meta.json", ref.to_dict(), indent=2)
        if final.exists():
            old = self.root / f".{name}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old)
        else:
            os.replace(staging, final)
        return ref

    def get(self, name: str) -> ModelRef:
        meta = self.root / name / "meta.json"
        if not meta.exists():
            raise FileNotFoundError(f"model store {self.root}: no version {name!r}")
        ref = ModelRef(**json.loads(meta.read_text()))
        ref.checkpoint = str(self.path(name))
        return ref

    def update(self, name: str, **meta: Any) -> ModelRef:
        """Record more metadata (metrics, registry version) for an existing version."""
        ref = self.get(name)
        for key, value in meta.items():
            setattr(ref, key, value)
        atomic_write_json(self.root / name / "meta.json", ref.to_dict(), indent=2)
        return ref

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
