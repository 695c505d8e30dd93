"""Where images, shards and checkpoints live, as bytes: a local folder by default, any fsspec URL otherwise.

A *location* is a local path (``data/shards``) or a URL (``s3://bucket/shards``, ``gs://...``,
``memory://...`` in tests); the protocol's fsspec package (s3fs, gcsfs, ...) must be installed, nothing else
changes. Local locations keep the library's local behaviour (atomic rename, file locks).

- Reads of remote files go through a local cache (``cached_local``), because PIL, ``torch.load`` and
  tarfile want seekable local files; a cached copy is reused while the remote file's fsspec checksum
  (size / ETag / mtime) is unchanged. The engine's cache is ``data_cache_dir(data_dir)``.
- Images (``load_image_at``, ``image_size_at``) are ``sam_engine.data.images``' loaders at any location;
  their ``DataError`` names the URL, not the cached copy.
- Writes are atomic: a local file is renamed into place; an object store PUT is atomic by itself; other
  filesystems get a temporary name and a move.
- Stage-3 shards use these calls to reach a remote location (``sam_engine.stage3.write_shard_to``); this
  module knows nothing of shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from upath import UPath

from .data import images
from .data.errors import DataError
from .io import atomic_write_bytes, sha256_stream

Location = str | os.PathLike
# Protocols whose single PUT is atomic (an object appears whole or not at all).
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss"})
CACHE_ENV = "SAM_ENGINE_CACHE_DIR"


def upath(location: Location) -> UPath:
    """The location as a UPath (a local ``PosixUPath`` for plain paths and ``file://`` URLs)."""
    if isinstance(location, UPath):
        return location
    return UPath(location if isinstance(location, str) else os.fspath(location))


def is_local(location: Location) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return upath(location).protocol in ("", "file", "local")


def local_path(location: Location) -> Path:
    """A local location as a ``pathlib.Path``; a clear error for a remote one."""
    if not is_local(location):
        raise ValueError(f"{location}: a local path is needed here (got a {upath(location).protocol}:// URL)")
    return Path(upath(location).path)


def join(location: Location, *parts: str) -> str:
    """``location / part / ...`` as a string (a path or a URL)."""
    p = upath(location)
    for part in parts:
        p = p / part
    return str(p) if not is_local(p) else str(local_path(p))


def safe_join_url(root: str, file_name: str) -> str:
    """``sam_engine.data.images.safe_join`` for a remote folder (an fsspec URL): the same refusals; returns the
    file's URL."""
    images.check_file_name(root, file_name)
    norm = posixpath.normpath(file_name)
    if norm in (".", "..") or norm.startswith("../"):
        raise DataError(root, file_name, "file_name", "file name escapes the dataset folder")
    return join(root, *norm.split("/"))


def exists(location: Location) -> bool:
    return upath(location).exists()


def read_bytes(location: Location) -> bytes:
    """All bytes of a file; ``FileNotFoundError`` names the location."""
    p = upath(location)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{location}: no such file") from None


def _tmp_name(p: UPath) -> UPath:
    return p.parent / f".{p.name}.{uuid.uuid4().hex[:12]}.tmp"


def write_bytes(location: Location, data: bytes) -> None:
    """Write ``data`` atomically (readers see the old file or the new one, never a part)."""
    p = upath(location)
    if is_local(p):
        atomic_write_bytes(local_path(p), data)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.protocol in OBJECT_STORES:
        p.fs.pipe_file(p.path, data)
        return
    tmp = _tmp_name(p)
    try:
        p.fs.pipe_file(tmp.path, data)
        p.fs.mv(tmp.path, p.path)
    finally:
        if p.fs.exists(tmp.path):
            p.fs.rm(tmp.path)


def write_json(location: Location, obj: Any, indent: int | None = 1) -> None:
    write_bytes(location, json.dumps(obj, indent=indent).encode("utf-8"))


def upload(local: Location, location: Location) -> str:
    """Copy a local file to ``location`` atomically; returns the location as a string."""
    src = local_path(local)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file to upload")
    p = upath(location)
    if is_local(p):
        dst = local_path(p)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return str(dst)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.protocol in OBJECT_STORES:
        p.fs.put_file(str(src), p.path)
        return str(p)
    tmp = _tmp_name(p)
    try:
        p.fs.put_file(str(src), tmp.path)
        p.fs.mv(tmp.path, p.path)
    finally:
        if p.fs.exists(tmp.path):
            p.fs.rm(tmp.path)
    return str(p)


def sha256(location: Location, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    with upath(location).open("rb") as f:
        return sha256_stream(f, chunk_size)


def default_cache_dir() -> Path:
    """``$SAM_ENGINE_CACHE_DIR`` or ``~/.cache/sam-engine/storage``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "sam-engine" / "storage"


def data_cache_dir(data_dir: Location) -> Path:
    """The engine's cache of remote files: ``$SAM_ENGINE_CACHE_DIR`` or ``<data_dir>/storage_cache``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(data_dir) / "storage_cache"


def cached_local(location: Location, cache_dir: Location | None = None) -> Path:
    """A local file with the content of ``location``: the path itself when local, else a cached download.

    The cached copy is refreshed when the remote file's fsspec checksum changes.
    """
    p = upath(location)
    if is_local(p):
        return local_path(p)
    try:
        token = str(p.fs.checksum(p.path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{location}: no such file") from None
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(str(p).encode()).hexdigest()[:24]
    target = root / key / p.name
    stamp = target.with_name(target.name + ".source.json")
    if target.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("checksum") == token:
                return target
        except (OSError, json.JSONDecodeError):
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        p.fs.get_file(p.path, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    atomic_write_bytes(stamp, json.dumps({"source": str(p), "checksum": token}).encode())
    return target


def _image_call(fn, location: Location, max_pixels: int | None, cache_dir: Location | None):
    """``fn(local file, max_pixels)`` on a local or cached image; a remote image's ``DataError`` names its URL."""
    limit = max_pixels or images.DEFAULT_MAX_PIXELS
    if isinstance(location, Path):  # a local path (remote UPaths are not pathlib Paths): no URL parsing
        return fn(location, limit)
    if is_local(location):
        return fn(local_path(location), limit)
    try:
        local = cached_local(location, cache_dir)
    except FileNotFoundError as e:
        raise DataError(str(location), upath(location).name, "file_name", "image file not found") from e
    try:
        return fn(local, limit)
    except DataError as e:
        message = e.message.replace(str(local), str(location))
        raise DataError(str(location), e.record, e.field, message) from e


def load_image_at(location: Location, max_pixels: int | None = None, cache_dir: Location | None = None):
    """HxWx3 uint8 RGB pixels of a local or remote image (``sam_engine.data.images.load_image`` rules)."""
    return _image_call(images.load_image, location, max_pixels, cache_dir)


def image_size_at(
    location: Location, max_pixels: int | None = None, cache_dir: Location | None = None
) -> tuple[int, int]:
    """(width, height) of a local or remote image (``sam_engine.data.images.image_size`` rules)."""
    return _image_call(images.image_size, location, max_pixels, cache_dir)


def load_model(location: Location, cache_dir: Location | None = None):
    """A model from a local or remote checkpoint (weights-only load, as ``sam_engine.model.checkpoint``)."""
    from .model.checkpoint import load_model as _load

    return _load(cached_local(location, cache_dir))
