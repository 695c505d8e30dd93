"""Engine model versions in a tracking store, made through the engine's own registration code (no training)."""

from __future__ import annotations

from pathlib import Path


def engine_versions(ws, tmp_path: Path) -> dict:
    """v0 registered as a trained version would be, v1..v3 carried forward from it (each a registered version)."""
    from sam_engine.engine import models

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    tags = {"engine_model": "model_v0"}
    run_id, version = models._register_untrained(ws, "model_v0", ckpt, tags, {}, "")
    data = {"images": 40, "masks": 310, "data_sha256": "ab" * 32, "parent": None, "steps": 100}
    v0 = ws.model_store.put("model_v0", ckpt, mlflow_run_id=run_id, registered_version=version, data=data)
    v0 = models._recorded(ws, v0)
    refs = {"v0": v0}
    for k in (1, 2, 3):
        refs[f"v{k}"], _ = models.carry_forward(ws, f"model_v{k}", refs[f"v{k - 1}"], f"test {k}")
    return refs
