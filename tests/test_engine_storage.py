"""The engine wired to sam_engine.storage, devices and scale settings (issue #7).

Stage-3 shards through ``shards_url`` (``memory://`` here, ``s3://`` / ``gs://`` in production), checkpoints
through ``models_url``, target-pool images through ``corpus.pool_images_dir`` (+ ``pool_gt_json``) as a URL,
``train.device`` resolution, and ``train_version`` choosing DDP from the settings.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from sam_engine import storage
from sam_engine.config import load_config
from sam_engine.data.corpus import ImageRecord, MaskCorpus
from sam_engine.engine.workspace import CHECKPOINT_URL, Workspace
from sam_engine.io import sha256_file
from sam_engine.model_store import ModelRef


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
    return ModelRef(name=name, checkpoint=str(path), sha256=sha256_file(path))


# --------------------------------------------------------------------------------------------- shards
@pytest.mark.slow
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


# --------------------------------------------------------------------------------------------- pool images
def _png(h: int, w: int, seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# relative name -> (height, width): two regions (first-level sub-folders), one image without a region
POOL_FILES = {
    "forest/a.png": (24, 32),
    "forest/deep/b.png": (20, 16),
    "lake/c.png": (30, 18),
    "d.png": (12, 40),
}


def _pool_cfg(smoke_cfg, data_dir: Path, pool: str, gt: str | None = None):
    cfg = _cfg(smoke_cfg, data_dir)
    corpus = cfg.corpus.model_copy(update={"pool_images_dir": pool, "pool_gt_json": gt})
    return cfg.model_copy(update={"corpus": corpus})


def _write_pool(local: Path, url: str, files: dict[str, bytes]) -> None:
    """The same image bytes in a local folder and under a URL."""
    for rel, data in files.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
        storage.write_bytes(f"{url}/{rel}", data)


def test_pool_images_from_url_match_the_local_folder(smoke_cfg, smoke_corpora, tmp_path, mem):
    from sam_engine.annotation.service import ImageResolver
    from sam_engine.data import rle as rle_utils
    from sam_engine.data.coco import write_coco
    from sam_engine.data.corpora import load_pool, load_pool_ground_truth
    from sam_engine.engine.human_stage import register_images
    from sam_engine.quality.store import QualityStore

    files = {rel: _png(h, w, k) for k, (rel, (h, w)) in enumerate(POOL_FILES.items())}
    files["lake/notes.txt"] = b"not an image"  # skipped by suffix, as locally
    _write_pool(tmp_path / "pool", f"{mem}/pool", files)
    # Ground truth (one box per image), matched to the pool by file name, next to the images.
    gt_images = [
        {"id": k + 1, "file_name": rel, "width": w, "height": h}
        for k, (rel, (h, w)) in enumerate(POOL_FILES.items())
    ]
    anns = []
    for im in gt_images:
        mask = np.zeros((im["height"], im["width"]), dtype=bool)
        mask[2:8, 3:9] = True
        anns.append(
            {"id": im["id"], "image_id": im["id"], "segmentation": rle_utils.encode(mask), "iscrowd": 0}
        )
    write_coco(tmp_path / "gt.json", gt_images, anns)
    storage.upload(tmp_path / "gt.json", f"{mem}/gt.json")

    local_ws = Workspace(
        _pool_cfg(smoke_cfg, tmp_path / "a", str(tmp_path / "pool"), str(tmp_path / "gt.json"))
    )
    remote_ws = Workspace(_pool_cfg(smoke_cfg, tmp_path / "b", f"{mem}/pool", f"{mem}/gt.json"))
    local, remote = load_pool(local_ws.cfg), load_pool(remote_ws.cfg)

    def rows(corpus):
        return [(im.image_id, im.width, im.height, im.file_name, im.region) for im in corpus.images]

    assert len(local.quarantine) == len(remote.quarantine) == 0, remote.quarantine.summary()
    assert rows(remote) == rows(local) and len(remote.images) == len(POOL_FILES)
    assert {im.file_name: (im.height, im.width) for im in remote.images} == POOL_FILES
    assert {im.file_name: im.region for im in remote.images} == {
        "forest/a.png": "forest",
        "forest/deep/b.png": "forest",
        "lake/c.png": "lake",
        "d.png": None,
    }
    assert [im.path for im in remote.images] == [f"{mem}/pool/{im.file_name}" for im in remote.images]
    assert remote.source == f"{mem}/pool"
    assert all(isinstance(im.path, Path) for im in local.images)  # local records stay local paths

    # The engine's image loading path: same pixels; remote ones cached under the data folder.
    for im in local.images:
        got = remote_ws.load(im.image_id)
        assert got.dtype == np.uint8 and np.array_equal(got, local_ws.load(im.image_id))
        cached = remote_ws.localize(remote_ws.record(im.image_id)).path
        assert cached.is_relative_to(remote_ws.cache_dir) and cached.read_bytes() == im.path.read_bytes()
        assert local_ws.localize(local_ws.record(im.image_id)).path == im.path
    assert remote_ws.cache_dir == remote_ws.cfg.data_dir / "storage_cache"

    # Optional COCO ground truth at a URL, attached by file name exactly as locally.
    gt_local, gt_remote = load_pool_ground_truth(local_ws.cfg), load_pool_ground_truth(remote_ws.cfg)
    assert len(gt_remote.quarantine) == 0, gt_remote.quarantine.summary()
    assert gt_remote.annotations == gt_local.annotations and gt_remote.num_masks == len(POOL_FILES)

    # The annotation server's resolver serves a remote dataset folder from the cache.
    with QualityStore(tmp_path / "q.duckdb") as store:
        register_images(store, remote.images, "stage1", "pool")
        resolver = ImageResolver(store, {"pool": f"{mem}/pool"}, cache_dir=tmp_path / "server_cache")
        for im in local.images:
            assert np.array_equal(resolver.load(im.image_id), local_ws.load(im.image_id))
            assert resolver.path(im.image_id).is_relative_to(tmp_path / "server_cache")


def test_corrupt_remote_pool_image_is_quarantined(smoke_cfg, tmp_path, mem):
    from sam_engine.data.corpora import load_pool, load_pool_ground_truth
    from sam_engine.data.errors import DataError

    good = _png(16, 20, 0)
    for name, data in (("forest/good.png", good), ("forest/broken.png", b"\x89PNG\r\n\x1a\n broken")):
        storage.write_bytes(f"{mem}/pool/{name}", data)
    gt = {
        "images": [
            {"id": 1, "file_name": "forest/good.png", "width": 20, "height": 16},
            {"id": 2, "file_name": "forest/missing.png", "width": 20, "height": 16},
        ],
        "annotations": [],
        "categories": [],
    }
    storage.write_json(f"{mem}/gt.json", gt)
    cfg = _pool_cfg(smoke_cfg, tmp_path, f"{mem}/pool", f"{mem}/gt.json")
    for verify in (False, True):
        pool = load_pool(cfg, verify_images=verify)
        assert [im.file_name for im in pool.images] == ["forest/good.png"]  # the valid record is kept
        [err] = pool.quarantine.errors
        url = f"{mem}/pool/forest/broken.png"
        assert (err.file, err.record, err.field) == (url, "broken.png", "image")
        assert str(err).startswith(f"{url}: record 'broken.png': field 'image': ")
        assert str(cfg.data_dir) not in str(err)  # named by its URL, not by the cached copy
        assert pool.quarantine.as_records()[0]["file"] == url

    # A ground-truth record whose image is missing at the URL is quarantined, the rest attached.
    gt_corpus = load_pool_ground_truth(cfg)
    missing = [e for e in gt_corpus.quarantine.errors if e.record == "image 2"]
    assert [(e.file, e.field) for e in missing] == [(f"{mem}/pool/forest/missing.png", "file_name")]
    assert [im.file_name for im in gt_corpus.images] == ["forest/good.png"]

    with pytest.raises(DataError, match="folder"):
        load_pool(_pool_cfg(smoke_cfg, tmp_path / "other", f"{mem}/no-such-pool"))


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


def test_amg_crop_layer_comes_from_the_stages_config(smoke_cfg):
    """The stages' crop settings reach the generator: the default config prompts one layer of crops with half
    the points per side; the smoke profile none."""
    from sam_engine.config import EngineConfig
    from sam_engine.engine.models import amg_params

    assert amg_params(Workspace(smoke_cfg)).crop_n_layers == 0
    default = amg_params(Workspace(EngineConfig(data_dir=smoke_cfg.data_dir)))
    assert (default.crop_n_layers, default.crop_n_points_downscale_factor) == (1, 2)
    assert [len(g) for g in default.layer_grids()] == [16 * 16, 8 * 8]
    cfg = smoke_cfg.model_copy(
        update={
            "stages": smoke_cfg.stages.model_copy(
                update={"amg_crop_n_layers": 2, "amg_crop_points_downscale": 4}
            )
        }
    )
    params = amg_params(Workspace(cfg))
    assert (params.crop_n_layers, params.crop_n_points_downscale_factor) == (2, 4)


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
    from sam_engine.training.train import recipe_from_config

    recipe = recipe_from_config(cfg.train)  # the interactive recipe: the same on both paths
    assert {k: kw[k] for k in recipe} == recipe
    assert ref.data["steps"] == cfg.train.max_steps and ref.metrics["world_size"] == 2.0
    assert ref.mlflow_run_id is None and Path(ref.checkpoint).is_file()

    again, trained_again = train_version(ws, "model_v0", _corpus(), None)  # same inputs: reused
    assert not trained_again and len(calls) == 1 and again.sha256 == ref.sha256

    # a changed training setting is a new recipe: trained again, not the stored version reused
    ws_more = Workspace(cfg.model_copy(update={"train": cfg.train.model_copy(update={"finetune_steps": 7})}))
    _, trained_more = train_version(ws_more, "model_v0", _corpus(), None)
    assert trained_more and len(calls) == 2

    child, _ = train_version(ws, "model_v1", _corpus(), ref)  # a fine-tune starts from the parent's file
    assert calls[-1][0] == "distributed" and calls[-1][1] == ref.checkpoint
    # v1's steps: smoke's 5 fine-tune steps x v1's step scale 0.75, rounded up
    assert calls[-1][3]["max_steps"] == 4 and child.parent == "model_v0"
    _, again_child = train_version(ws, "model_v1", _corpus(), ref)
    assert not again_child


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


def _images_corpus(n: int) -> MaskCorpus:
    one = _corpus()
    return MaskCorpus(
        images=[
            ImageRecord(i, Path(f"/nonexistent/img_{i}.png"), 4, 4, f"img_{i}.png") for i in range(1, n + 1)
        ],
        annotations={i: one.annotations[1] for i in range(1, n + 1)},
    )


def test_finetune_epochs_scale_a_finetune_with_its_images(tmp_path, monkeypatch):
    from sam_engine.engine.models import finetune_steps, train_version

    calls: list = []
    _fake_trainers(monkeypatch, calls)
    cfg = load_config("smoke", {"data_dir": str(tmp_path), "train": {"batch_size": 4, "finetune_steps": 5}})
    assert cfg.train.finetune_epochs is None and finetune_steps(cfg.train, 1000) == 5  # off: fixed steps
    ws = Workspace(cfg)
    v0, _ = train_version(ws, "model_v0", _images_corpus(2), None)
    assert calls[-1][3]["max_steps"] == cfg.train.max_steps  # from scratch: epochs do not apply

    epochs = cfg.train.model_copy(update={"finetune_epochs": 3.0})
    ws_epochs = Workspace(cfg.model_copy(update={"train": epochs}))
    train_version(ws_epochs, "model_v3", _images_corpus(2), v0)  # 3 x 2 / 4 rounds up to 2: the floor holds
    assert calls[-1][3]["max_steps"] == 5
    train_version(ws_epochs, "model_v2", _images_corpus(30), v0)  # 3 x 30 / 4 = 22.5: 23 steps
    assert calls[-1][3]["max_steps"] == 23
    _, again = train_version(ws_epochs, "model_v2", _images_corpus(30), v0)
    assert not again

    # the same data without epochs is another recipe: trained again, with v2's fixed steps (5 x 2.25, up)
    _, trained = train_version(ws, "model_v2", _images_corpus(30), v0)
    assert trained and calls[-1][3]["max_steps"] == 12
    with pytest.raises(ValueError, match="finetune_epochs"):
        load_config("smoke", {"train": {"finetune_epochs": 0}})


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
    assert local.is_relative_to(other.cache_dir) and sha256_file(local) == ref.sha256
    want = ws.load_model(ref).state_dict()
    got = other.load_model(moved).state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_each_version_gets_its_share_of_steps_and_its_wise_ft_alpha(tmp_path, monkeypatch):
    from sam_engine.engine.models import train_version

    calls: list = []
    _fake_trainers(monkeypatch, calls)
    train = {
        "finetune_steps": 10,
        "finetune_step_scale": {"model_v1": 0.5, "model_v2": 2.5},
        "finetune_wise_ft_alpha": {"model_v3": 0.25},
    }
    ws = Workspace(load_config("smoke", {"data_dir": str(tmp_path), "train": train}))
    v0, _ = train_version(ws, "model_v0", _corpus(), None)
    assert calls[-1][3]["wise_ft_alpha"] == 1.0  # from scratch: nothing to blend with
    seen = {}
    for name in ("model_v1", "model_v2", "model_v3"):
        train_version(ws, name, _corpus(), v0)
        seen[name] = (calls[-1][3]["max_steps"], calls[-1][3]["wise_ft_alpha"])
    assert seen == {"model_v1": (5, 1.0), "model_v2": (25, 1.0), "model_v3": (10, 0.25)}
    with pytest.raises(ValueError, match="finetune_step_scale"):
        load_config("smoke", {"data_dir": str(tmp_path), "train": {"finetune_step_scale": {"model_v2": 0}}})
