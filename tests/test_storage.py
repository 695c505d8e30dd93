"""sam_engine.storage: local folders and fsspec URLs (``memory://`` here; s3:// / gs:// take the same path)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from sam_engine import stage3, storage
from sam_engine.data.corpus import ImageRecord
from sam_engine.data.errors import DataError


@pytest.fixture
def mem():
    """A fresh ``memory://`` root, removed afterwards (the memory filesystem is process-global)."""
    root = f"memory://t-{uuid.uuid4().hex[:10]}"
    yield root
    fs = fsspec.filesystem("memory")
    path = root[len("memory://") :]
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _listing(root: str) -> list[str]:
    fs = fsspec.filesystem("memory")
    return sorted(p.rsplit("/", 1)[-1] for p in fs.find(root[len("memory://") :]))


def test_locations_local_and_remote(tmp_path, mem):
    assert (
        storage.is_local(tmp_path) and storage.is_local(str(tmp_path)) and storage.is_local("file:///tmp/x")
    )
    assert not storage.is_local(mem) and not storage.is_local("s3://bucket/key")
    assert storage.local_path("file:///tmp/x") == Path("/tmp/x")
    with pytest.raises(ValueError, match="memory://"):
        storage.local_path(mem + "/a")
    assert storage.join(tmp_path, "a", "b.txt") == str(tmp_path / "a" / "b.txt")
    assert storage.join(mem, "a", "b.txt") == f"{mem}/a/b.txt"


@pytest.mark.parametrize("remote", [False, True])
def test_write_read_atomic_without_leftovers(tmp_path, mem, remote):
    root = mem if remote else str(tmp_path)
    target = storage.join(root, "sub", "x.bin")
    storage.write_bytes(target, b"first")
    storage.write_bytes(target, b"second")
    assert storage.read_bytes(target) == b"second"
    names = _listing(root) if remote else sorted(p.name for p in (tmp_path / "sub").iterdir())
    assert names == ["x.bin"]  # no temporary file left behind
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read_bytes(storage.join(root, "missing.bin"))


def test_upload_sha_and_cache_refresh(tmp_path, mem, monkeypatch):
    src = tmp_path / "blob.bin"
    src.write_bytes(b"abc" * 1000)
    url = storage.upload(src, f"{mem}/blobs/blob.bin")
    assert storage.sha256(url) == hashlib.sha256(src.read_bytes()).hexdigest()

    cache = tmp_path / "cache"
    calls = []
    fs = fsspec.filesystem("memory")
    real_get = fs.get_file
    monkeypatch.setattr(fs, "get_file", lambda *a, **k: (calls.append(a), real_get(*a, **k))[1])
    first = storage.cached_local(url, cache)
    again = storage.cached_local(url, cache)
    assert first == again and first.read_bytes() == src.read_bytes() and len(calls) == 1
    assert first.is_relative_to(cache)

    storage.write_bytes(url, b"changed")  # a new remote version invalidates the cached copy
    assert storage.cached_local(url, cache).read_bytes() == b"changed" and len(calls) == 2
    assert storage.cached_local(src, cache) == src  # local files are used in place
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.cached_local(f"{mem}/nope.bin", cache)


def test_checkpoint_round_trip_through_url(tmp_path, mem):
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import save_checkpoint

    model = build_sam("tiny", seed=3)
    local = save_checkpoint(model, tmp_path / "model.pt", metadata={"k": 1})
    url = storage.upload(local, f"{mem}/models/model_v2/model.pt")
    loaded = storage.load_model(url, cache_dir=tmp_path / "cache")
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def _scene(seed: int, h: int = 72, w: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40, np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        img[y : y + 20, x : x + 24] = rng.integers(60, 255, 3)
    return img


def test_image_through_url_matches_local(tmp_path, mem):
    from sam_engine.data.images import load_image, save_png

    path = tmp_path / "img_7.png"
    save_png(_scene(7), path)
    url = storage.upload(path, f"{mem}/images/img_7.png")
    np.testing.assert_array_equal(storage.load_image_at(url, cache_dir=tmp_path / "c"), load_image(path))


def test_shard_to_url_is_byte_identical_and_listed(tmp_path, mem):
    from sam_engine.amg import AmgParams
    from sam_engine.data.images import save_png
    from sam_engine.model import build_sam

    records, remote_records = [], []
    for i in (11, 12):
        path = tmp_path / "images" / f"img_{i}.png"
        save_png(_scene(i), path)
        records.append(ImageRecord(i, path, 96, 72, path.name))
        url = storage.upload(path, f"{mem}/pool/{path.name}")
        remote_records.append(ImageRecord(i, url, 96, 72, path.name))  # path given as a URL string
    model = build_sam("tiny", seed=0).eval()
    params = AmgParams(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)

    local = stage3.write_shard_to(tmp_path / "shards", 3, records, model, params, seed=5, blur=False)
    remote = stage3.write_shard_to(
        f"{mem}/shards", 3, remote_records, model, params, seed=5, blur=False, staging_dir=tmp_path
    )
    assert remote["path"] == f"{mem}/shards/sa_000003.tar"
    assert storage.read_bytes(remote["path"]) == Path(local["path"]).read_bytes()
    assert remote["sha256"] == local["sha256"] == storage.sha256(remote["path"])
    assert remote["image_ids"] == [11, 12]

    manifest = stage3.read_manifest(f"{mem}/shards")
    assert list(manifest["shards"]) == ["sa_000003.tar"]
    assert manifest["shards"]["sa_000003.tar"]["sha256"] == local["sha256"]
    assert stage3.read_manifest(tmp_path / "shards")["shards"]["sa_000003.tar"]["sha256"] == local["sha256"]
    assert not list(tmp_path.glob("shard-staging-*"))  # the staging folder is gone

    storage.write_bytes(f"{mem}/shards/manifest.d/sa_000004.tar.json", b"{not json")
    with pytest.raises(DataError, match="sa_000004"):
        stage3.read_manifest(f"{mem}/shards")


def test_dagster_fs_io_manager_accepts_a_url(mem):
    """The documented cluster setting: the default IO manager with an object-store ``base_dir``."""
    from dagster import FilesystemIOManager, asset, materialize

    @asset
    def ref_like() -> dict:
        return {"checkpoint": "s3://bucket/models/model_v2/model.pt"}

    result = materialize([ref_like], resources={"io_manager": FilesystemIOManager(base_dir=f"{mem}/io")})
    assert result.success
    assert "ref_like" in _listing(mem)
