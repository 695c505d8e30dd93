"""The engine wired to sam_engine.storage, devices and scale settings (issue #7).

Stage-3 shards through ``shards_url`` (``memory://`` here, ``s3://`` / ``gs://`` in production), checkpoints
through ``models_url``, ``train.device`` resolution, and ``train_version`` choosing DDP from the settings.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pytest
import torch

from sam_engine import storage
from sam_engine.config import load_config
from sam_engine.data.corpus import ImageRecord, MaskCorpus
from sam_engine.engine.workspace import CHECKPOINT_URL, Workspace
from sam_engine.model_store import ModelRef, file_sha256


@pytest.fixture
def mem():
    """A fresh ``memory://`` root, removed afterwards (the memory filesystem is process-global)."""
    root = f"memory://engine-{uuid.uuid4().hex[:10]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root[len("memory://") :]):
        fs.rm(root[len("memory://") :], recursive=True)


@pytest.fixture(autouse=True)
def _no_cache_env(monkeypatch):
    monkeypatch.delenv("SAM_ENGINE_CACHE_DIR", raising=False)
    monkeypatch.delenv("SAM_ENGINE_OVERRIDES", raising=False)


def _cfg(smoke_cfg, data_dir: Path, **update):
    """The smoke config on its own data folder that shares the session's generated corpora."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "corpora").symlink_to(smoke_cfg.corpora_dir, target_is_directory=True)
    return smoke_cfg.model_copy(update={"data_dir": data_dir, **update})


def _model_ref(tmp_path: Path, name: str = "model_v2", seed: int = 0) -> ModelRef:
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import save_checkpoint

    path = save_checkpoint(build_sam("tiny", seed=seed), tmp_path / f"{name}.pt")
    return ModelRef(name=name, checkpoint=str(path), sha256=file_sha256(path))


# --------------------------------------------------------------------------------------------- shards
def test_engine_shard_to_url_matches_local_and_reads_back(smoke_cfg, smoke_corpora, tmp_path, mem):
    from sam_engine.data.sa1b import read_shards
    from sam_engine.engine import report
    from sam_engine.engine.fully_automatic import qa_shard, write_engine_shard
    from sam_engine.engine.splits import shard_images, stage_split
    from sam_engine.stage3 import read_manifest

    local_ws = Workspace(_cfg(smoke_cfg, tmp_path / "local"))
    remote_ws = Workspace(_cfg(smoke_cfg, tmp_path / "remote", shards_url=f"{mem}/shards"))
    assert local_ws.shards_location == str(local_ws.cfg.shards_dir)
    ref = _model_ref(tmp_path)
    index, images = shard_images(stage_split(local_ws.pool, local_ws.cfg)[3], local_ws.cfg, "shard_00000")
    assert images

    local = write_engine_shard(local_ws, index, images, ref)
    remote = write_engine_shard(remote_ws, index, images, ref)

    tar = Path(local["path"])
    assert tar == local_ws.cfg.shards_dir / "sa_000000.tar"
    assert remote["path"] == f"{mem}/shards/sa_000000.tar"
    assert storage.read_bytes(remote["path"]) == tar.read_bytes()  # byte-identical shard
    assert local["masks"] > 0 and local["images"] == len(images)
    assert {k: v for k, v in remote.items() if k != "path"} == {k: v for k, v in local.items() if k != "path"}
    assert not (remote_ws.cfg.shards_dir).exists()  # nothing written to the remote run's local shards/
    assert not list((remote_ws.cfg.data_dir / "shard_staging").iterdir())  # staging cleaned up

    # The manifest reads back through storage, entry for entry the local one.
    want = read_manifest(local_ws.cfg.shards_dir)["shards"]
    assert remote_ws.shard_manifest()["shards"] == want
    assert local_ws.shard_manifest()["shards"] == want
    assert (
        json.loads(storage.read_bytes(f"{mem}/shards/manifest.d/sa_000000.tar.json")) == want["sa_000000.tar"]
    )

    # Downstream readers (QA, drift, model_v3's corpus) see the same shard through the cache.
    paths = remote_ws.shard_paths()
    assert [p.name for p in paths] == ["sa_000000.tar"] and paths[0].read_bytes() == tar.read_bytes()
    assert paths[0].is_relative_to(remote_ws.cache_dir)
    assert local_ws.shard_paths() == [tar]
    assert qa_shard(remote_ws, remote["path"]) == qa_shard(local_ws, local["path"])
    a, b = read_shards(paths), read_shards([tar])
    assert [im.image_id for im in a.images] == [im.image_id for im in b.images] == remote["image_ids"]
    assert a.annotations == b.annotations
    shard = {**remote, "qa": {"share_good": 0.5}}
    drift = report.shard_drift(remote_ws, [shard, shard], paths)
    assert drift["drifted"] is False and drift["baseline"] == "sa_000000.tar"


def test_shards_url_from_env_overrides(monkeypatch, tmp_path):
    from sam_engine.training.distributed import scale_settings

    over = {
        "shards_url": "s3://bucket/sam/shards",
        "models_url": "gs://bucket/sam/models",
        "train": {"device": "cpu", "strategy": "ddp_spawn", "devices": 2},
    }
    monkeypatch.setenv("SAM_ENGINE_OVERRIDES", json.dumps(over))
    cfg = load_config("smoke", {"data_dir": str(tmp_path)})
    assert cfg.shards_url == over["shards_url"] and cfg.models_url == over["models_url"]
    assert Workspace(cfg).shards_location == "s3://bucket/sam/shards"
    s = scale_settings(cfg)
    assert s.distributed and (s.accelerator, s.devices, s.strategy) == ("cpu", 2, "ddp_spawn")
    monkeypatch.delenv("SAM_ENGINE_OVERRIDES")
    default = load_config("smoke", {"data_dir": str(tmp_path)})
    assert default.shards_url is None and default.models_url is None
    assert not scale_settings(default).distributed
    with pytest.raises(ValueError, match="strategy"):
        load_config("smoke", {"data_dir": str(tmp_path), "train": {"strategy": "horovod"}})


# --------------------------------------------------------------------------------------------- device
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fall-back")
def test_device_auto_is_cpu_and_explicit_cuda_fails_clearly(smoke_cfg, tmp_path):
    from sam_engine.engine.fully_automatic import stage3_amg
    from sam_engine.engine.models import amg_params

    ws = Workspace(smoke_cfg)
    assert smoke_cfg.train.device == "auto" and ws.device == torch.device("cpu")
    model = ws.load_model(_model_ref(tmp_path).checkpoint)
    assert next(model.parameters()).device.type == "cpu" and not model.training
    assert stage3_amg(ws) == (amg_params(ws), None)  # CPU: the writer's default batching, unchanged

    for name in ("cuda", "cuda:0"):
        bad = Workspace(
            smoke_cfg.model_copy(update={"train": smoke_cfg.train.model_copy(update={"device": name})})
        )
        with pytest.raises(ValueError, match=r"train\.device.*CUDA"):
            _ = bad.device
    bogus = Workspace(
        smoke_cfg.model_copy(update={"train": smoke_cfg.train.model_copy(update={"device": "tpu9"})})
    )
    with pytest.raises(ValueError, match="tpu9"):
        _ = bogus.device


def test_gpu_batches_several_images_per_encoder_call(smoke_cfg):
    """On a GPU the shard writer hands ``amg_gpu_images_per_call`` images to each ``generate_batch`` call."""
    from sam_engine.engine.fully_automatic import stage3_amg
    from sam_engine.engine.models import amg_params

    cfg = smoke_cfg.model_copy(
        update={"stages": smoke_cfg.stages.model_copy(update={"amg_gpu_images_per_call": 6})}
    )
    ws = Workspace(cfg)
    ws.__dict__["device"] = torch.device("cuda")  # what a GPU machine resolves "auto" to
    params, per_call = stage3_amg(ws)
    assert per_call == 6 and params.encoder_batch_size == 6
    base = amg_params(ws)
    assert params.model_dump(exclude={"encoder_batch_size"}) == base.model_dump(
        exclude={"encoder_batch_size"}
    )


# --------------------------------------------------------------------------------------------- training
def _corpus() -> MaskCorpus:
    rle = {"size": [4, 4], "counts": "04L4"}
    return MaskCorpus(
        images=[ImageRecord(1, Path("/nonexistent/img_1.png"), 4, 4, "img_1.png")],
        annotations={1: [{"segmentation": rle, "area": 4, "bbox": [0, 0, 4, 1]}]},
    )


def _fake_trainers(monkeypatch, calls: list):
    """Record train_distributed / train_model calls; each writes a real tiny checkpoint to out_dir/model.pt."""
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import save_checkpoint
    from sam_engine.training import distributed, train

    def fake_distributed(corpus, start, out_dir, *, settings=None, **kw):
        calls.append(("distributed", start, settings, kw))
        ckpt = save_checkpoint(build_sam("tiny", seed=1), Path(out_dir) / "model.pt")
        return distributed.DistributedTrainResult(ckpt, kw["max_steps"], 2, 0.0, {"train/loss": 0.5})

    def fake_train_model(corpus, start, out_dir, **kw):
        calls.append(("single", start, None, kw))
        ckpt = save_checkpoint(build_sam("tiny", seed=2), Path(out_dir) / "model.pt")
        return train.TrainResult(ckpt, Path(out_dir) / "last.ckpt", {"train/loss": 0.4}, kw["max_steps"])

    monkeypatch.setattr(distributed, "train_distributed", fake_distributed)
    monkeypatch.setattr(train, "train_model", fake_train_model)


def test_train_version_takes_the_distributed_path_when_settings_say_so(tmp_path, monkeypatch):
    from sam_engine.engine.models import train_version

    calls: list = []
    _fake_trainers(monkeypatch, calls)
    cfg = load_config("smoke", {"data_dir": str(tmp_path), "train": {"strategy": "ddp_spawn", "devices": 2}})
    ws = Workspace(cfg)
    ref, trained = train_version(ws, "model_v0", _corpus(), None)
    assert trained and [c[0] for c in calls] == ["distributed"]
    _, start, settings, kw = calls[0]
    assert start == cfg.model.name and settings.distributed
    assert (settings.strategy, settings.devices, settings.accelerator) == ("ddp_spawn", 2, "cpu")
    assert kw["max_steps"] == cfg.train.max_steps and kw["batch_size"] == cfg.train.batch_size
    assert ref.data["steps"] == cfg.train.max_steps and ref.metrics["world_size"] == 2.0
    assert ref.mlflow_run_id is None and Path(ref.checkpoint).is_file()

    again, trained_again = train_version(ws, "model_v0", _corpus(), None)  # same inputs: reused
    assert not trained_again and len(calls) == 1 and again.sha256 == ref.sha256

    child, _ = train_version(ws, "model_v1", _corpus(), ref)  # a fine-tune starts from the parent's file
    assert calls[-1][0] == "distributed" and calls[-1][1] == ref.checkpoint
    assert calls[-1][3]["max_steps"] == cfg.train.finetune_steps and child.parent == "model_v0"


def test_train_version_default_is_one_process(tmp_path, monkeypatch):
    from sam_engine.engine.models import train_version

    calls: list = []
    _fake_trainers(monkeypatch, calls)
    ws = Workspace(load_config("smoke", {"data_dir": str(tmp_path)}))
    ref, trained = train_version(ws, "model_v0", _corpus(), None)
    assert trained and [c[0] for c in calls] == ["single"]
    kw = calls[0][3]
    assert "accelerator" not in kw and kw["resume"] is True and kw["run_name"] == "model_v0"  # as before
    assert CHECKPOINT_URL not in ref.data  # no models_url: nothing published


def test_models_url_publishes_and_loads_back(tmp_path, monkeypatch, mem):
    from sam_engine.engine.models import train_version

    calls: list = []
    _fake_trainers(monkeypatch, calls)
    ws = Workspace(load_config("smoke", {"data_dir": str(tmp_path / "a"), "models_url": f"{mem}/models"}))
    ref, _ = train_version(ws, "model_v0", _corpus(), None)
    url = f"{mem}/models/model_v0/model.pt"
    assert ref.data[CHECKPOINT_URL] == url and storage.sha256(url) == ref.sha256
    assert ws.model_store.get("model_v0").data[CHECKPOINT_URL] == url
    meta = json.loads(storage.read_bytes(f"{mem}/models/model_v0/meta.json"))
    assert meta["sha256"] == ref.sha256

    # A worker without the training machine's model store loads the published copy.
    other = Workspace(load_config("smoke", {"data_dir": str(tmp_path / "b"), "models_url": f"{mem}/models"}))
    moved = ModelRef(**{**ref.to_dict(), "checkpoint": str(tmp_path / "elsewhere" / "model.pt")})
    local = other.checkpoint(moved)
    assert local.is_relative_to(other.cache_dir) and file_sha256(local) == ref.sha256
    want = ws.load_model(ref).state_dict()
    got = other.load_model(moved).state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
