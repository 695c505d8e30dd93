"""The released public-data checkpoint: written with its recipe and sha256, verified at load, refused clearly."""

from __future__ import annotations

import json

import pytest

from sam_engine.model import build_sam
from sam_engine.release import ReleaseError, read_release, recipe_differences, release_recipe, write_release


@pytest.fixture
def release_dir(tmp_path, smoke_cfg, smoke_corpora):
    model = build_sam(smoke_cfg.model.name, seed=0)
    manifest = json.loads((smoke_cfg.corpora_dir / "manifest.json").read_text())
    meta = {
        "recipe": release_recipe(smoke_cfg),
        "public_train_sha256": manifest["sha256"]["public/train.json"],
        "steps": 3,
        "metrics": {"val/miou@1": 0.5},
        "code_version": "test",
    }
    write_release(model, meta, tmp_path)
    return tmp_path


def test_a_matching_release_loads_as_float16_weights(release_dir, smoke_cfg):
    import torch

    from sam_engine.model.checkpoint import load_model, read_checkpoint

    release = read_release(smoke_cfg, release_dir)
    assert release.meta["steps"] == 3
    stored = read_checkpoint(release.checkpoint).state_dict
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    model = load_model(release.checkpoint)  # loads into the float32 model
    assert next(model.parameters()).dtype == torch.float32


def test_a_changed_checkpoint_is_refused_by_its_sha256(release_dir, smoke_cfg):
    ckpt = release_dir / "public_v0.pt"
    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match="sha256") as err:
        read_release(smoke_cfg, release_dir)
    assert "public_v0.pt" in str(err.value)


def test_another_recipe_is_refused_naming_the_field(release_dir, smoke_cfg):
    other = smoke_cfg.model_copy(update={"train": smoke_cfg.train.model_copy(update={"zoom_prob": 0.9})})
    with pytest.raises(ReleaseError, match=r"recipe.*train\.zoom_prob: release 0\.5, here 0\.9"):
        read_release(other, release_dir)
    other_seed = smoke_cfg.model_copy(update={"seed": 7})
    with pytest.raises(ReleaseError, match="corpus.seed"):
        read_release(other_seed, release_dir)


def test_another_public_corpus_is_refused(release_dir, smoke_cfg):
    meta_path = release_dir / "public_v0.json"
    meta = json.loads(meta_path.read_text())
    meta["public_train_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ReleaseError, match="public_train_sha256"):
        read_release(smoke_cfg, release_dir)


def test_no_release_and_real_data_are_refused(tmp_path, smoke_cfg):
    with pytest.raises(ReleaseError, match="make pretrain"):
        read_release(smoke_cfg, tmp_path)
    real = smoke_cfg.model_copy(
        update={"corpus": smoke_cfg.corpus.model_copy(update={"public_coco_json": "/x/instances.json"})}
    )
    assert release_recipe(real) is None
    with pytest.raises(ReleaseError, match="real data"):
        read_release(real, tmp_path)


def test_recipe_differences_name_every_changed_path():
    a = {"model": {"img_size": 256}, "train": {"steps": 10, "lr": 1e-3}}
    b = {"model": {"img_size": 256}, "train": {"steps": 20, "lr": 1e-3, "new": 1}}
    assert recipe_differences(a, b) == ["train.new: release None, here 1", "train.steps: release 10, here 20"]
    assert recipe_differences(a, a) == []


@pytest.mark.slow
def test_the_engine_starts_v0_from_a_matching_release_once(release_dir, smoke_cfg, monkeypatch, tmp_path):
    import sam_engine.release as release_mod
    from sam_engine.engine.models import released_version
    from sam_engine.engine.workspace import Workspace

    monkeypatch.setattr(release_mod, "RELEASE_DIR", release_dir)
    cfg = smoke_cfg.model_copy(update={"data_dir": tmp_path / "engine"})  # its own model store and MLflow
    ws = Workspace(cfg)
    said: list[str] = []
    ref, stored = released_version(ws, "model_v0", log_fn=said.append)
    assert stored and ref.data["released"] == "public_v0" and ref.registered_version
    assert ref.data["release_sha256"] == json.loads((release_dir / "public_v0.json").read_text())["sha256"]
    again, stored_again = released_version(ws, "model_v0", log_fn=said.append)
    assert not stored_again and again.sha256 == ref.sha256  # idempotent
    off = cfg.model_copy(update={"train": cfg.train.model_copy(update={"use_release": False})})
    assert released_version(Workspace(off), "model_v0", log_fn=said.append) is None
    assert "use_release is off" in said[-1]
