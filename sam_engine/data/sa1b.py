"""SA-1B format: per-image JSON (validating reader and writer) and deterministic, atomic tar shards.

Per-image JSON::

    {"image": {"image_id", "width", "height", "file_name"},
     "annotations": [{"id", "segmentation": {"size": [h, w], "counts": str}, "bbox": [x, y, w, h], "area",
                      "predicted_iou", "stability_score", "crop_box": [x, y, w, h], "point_coords": [[x, y]]}]}

A shard is a tar of ``sa_<id>.jpg|png`` + ``sa_<id>.json`` pairs. Shards are written with sorted members and
fixed metadata (mtime 0, uid/gid 0, mode 0644), so the same inputs give the same bytes, into a hidden temp
file that is renamed into place only when complete. Readers stream a shard in one pass within
:class:`ShardLimits`, quarantine unsafe, oversized or bad members and records while keeping the valid ones,
check image members as images, and report a truncated shard as one error after the records read whole.
"""

from __future__ import annotations

import bz2
import filecmp
import gzip
import hashlib
import io
import json
import lzma
import math
import os
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from ..io import sha256_file
from . import rle as rle_utils
from .corpus import ImageRecord, MaskCorpus
from .errors import DataError, Quarantine
from .images import DEFAULT_MAX_PIXELS, image_size, load_image, open_regular

IMAGE_EXTS = ("jpg", "png")
MEMBER_RE = re.compile(r"^sa_(\d+)\.(jpg|png|json)$")
TAR_MTIME = 0
TAR_MODE = 0o644
ANNOTATION_FIELDS = (
    "id",
    "segmentation",
    "bbox",
    "area",
    "predicted_iou",
    "stability_score",
    "crop_box",
    "point_coords",
)


# ---------------------------------------------------------------------------------------------- records
def member_names(image_id: int, image_ext: str = "jpg") -> tuple[str, str]:
    """The image and JSON member names of one image: ``sa_<id>.<ext>``, ``sa_<id>.json``."""
    if image_ext not in IMAGE_EXTS:
        raise ValueError(f"image_ext must be one of {IMAGE_EXTS}, got {image_ext!r}")
    return f"sa_{int(image_id)}.{image_ext}", f"sa_{int(image_id)}.json"


def image_json(image_id: int, width: int, height: int, file_name: str, annotations: list[dict]) -> dict:
    """One SA-1B per-image document."""
    return {
        "image": {
            "image_id": int(image_id),
            "width": int(width),
            "height": int(height),
            "file_name": file_name,
        },
        "annotations": list(annotations),
    }


def annotation(
    ann_id: int,
    segmentation: dict,
    bbox: list[float],
    area: int,
    predicted_iou: float,
    stability_score: float,
    crop_box: list[float],
    point_coords: list[list[float]],
) -> dict:
    """One SA-1B annotation with plain JSON types; scores are clipped to [0, 1] (the IoU head is unbounded)."""
    return {
        "id": int(ann_id),
        "segmentation": {
            "size": [int(v) for v in segmentation["size"]],
            "counts": str(segmentation["counts"]),
        },
        "bbox": [float(v) for v in bbox],
        "area": int(area),
        "predicted_iou": min(max(float(predicted_iou), 0.0), 1.0),
        "stability_score": min(max(float(stability_score), 0.0), 1.0),
        "crop_box": [float(v) for v in crop_box],
        "point_coords": [[float(x), float(y)] for x, y in point_coords],
    }


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_box(
    file: str, rid: object, name: str, box: object, width: int, height: int, tol: float = 1.0
) -> None:
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise DataError(file, rid, name, f"expected 4 finite numbers [x, y, w, h], got {box!r}")
    x, y, w, h = box
    if w < 0 or h < 0:
        raise DataError(file, rid, name, f"negative width/height in {box!r}")
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise DataError(file, rid, name, f"box {box!r} is outside the {width}x{height} image")


def validate_annotation(ann: object, width: int, height: int, file: str, index: int) -> dict:
    """Check one annotation against its image; raises DataError naming the field. Returns it unchanged."""
    if not isinstance(ann, dict):
        raise DataError(file, index, "annotations", "annotation is not an object")
    rid = ann.get("id", f"#{index}")
    missing = [f for f in ANNOTATION_FIELDS if f not in ann]
    if missing:
        raise DataError(file, rid, missing[0], "missing field")
    if not _is_int(ann["id"]):
        raise DataError(file, rid, "id", f"expected an integer, got {ann['id']!r}")
    seg = ann["segmentation"]
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        raise DataError(file, rid, "segmentation", "expected compressed RLE {size, counts}")
    if not isinstance(seg["counts"], str):
        raise DataError(file, rid, "segmentation.counts", "expected a compressed RLE string")
    try:
        rle_utils.check_rle(seg, height, width)
    except rle_utils.RleError as e:
        raise DataError(file, rid, e.field, e.message) from None
    _check_box(file, rid, "bbox", ann["bbox"], width, height)
    area = ann["area"]
    if not _is_number(area) or area <= 0:
        raise DataError(file, rid, "area", f"expected a positive number, got {area!r}")
    for name in ("predicted_iou", "stability_score"):
        v = ann[name]
        if not _is_number(v) or not 0.0 <= v <= 1.0:
            raise DataError(file, rid, name, f"expected a number in [0, 1], got {v!r}")
    _check_box(file, rid, "crop_box", ann["crop_box"], width, height)
    pts = ann["point_coords"]
    if not isinstance(pts, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in pts
    ):
        raise DataError(file, rid, "point_coords", f"expected [[x, y], ...], got {pts!r}")
    return ann


def validate_image_json(doc: object, file: str | Path, quarantine: Quarantine | None = None) -> dict:
    """Validate one per-image document.

    A bad ``image`` header raises DataError (the whole file is unusable). Bad annotations go to
    ``quarantine`` (raised when it is None); the returned document keeps the valid ones, in order.
    """
    file = str(file)
    if not isinstance(doc, dict) or not isinstance(doc.get("image"), dict):
        raise DataError(file, "image", "image", "expected an object with an 'image' object")
    img = doc["image"]
    rid = img.get("image_id", "image")
    for name in ("image_id", "width", "height"):
        if not _is_int(img.get(name)):
            raise DataError(file, rid, f"image.{name}", f"expected an integer, got {img.get(name)!r}")
    if img["width"] <= 0 or img["height"] <= 0:
        raise DataError(file, rid, "image.width", f"non-positive image size {img['width']}x{img['height']}")
    name = img.get("file_name")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise DataError(file, rid, "image.file_name", f"expected a plain file name, got {name!r}")
    anns = doc.get("annotations")
    if not isinstance(anns, list):
        raise DataError(file, rid, "annotations", "expected a list")
    kept = []
    seen: set[int] = set()
    for i, ann in enumerate(anns):
        try:
            validate_annotation(ann, img["width"], img["height"], file, i)
            if ann["id"] in seen:
                raise DataError(file, ann["id"], "id", "duplicate annotation id in this image")
        except DataError as e:
            if quarantine is None:
                raise
            quarantine.add(e)
            continue
        seen.add(ann["id"])
        kept.append(ann)
    return {"image": dict(img), "annotations": kept}


def dumps(doc: dict) -> bytes:
    """Canonical JSON bytes of a document (compact separators, key order as built)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")


def write_image_json(path: str | Path, doc: dict) -> None:
    """Validate and write one per-image JSON atomically."""
    from sam_engine.io import atomic_write_bytes

    validate_image_json(doc, path)
    atomic_write_bytes(path, dumps(doc))


def read_image_json(path: str | Path, quarantine: Quarantine | None = None) -> dict:
    """Read and validate one per-image JSON file (see :func:`validate_image_json`)."""
    path = Path(path)
    try:
        with open_regular(path, field="file") as f:  # a named pipe or device is refused before reading
            doc = _loads(f.read())
    except FileNotFoundError as e:
        raise DataError(path, path.name, "file", "file not found") from e
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError, huge ints, deep nesting
        if isinstance(e, DataError):
            raise
        raise DataError(path, path.name, "json", f"invalid JSON: {e}") from e
    return validate_image_json(doc, path, quarantine)


def _loads(raw: bytes) -> object:
    """JSON from UTF-8 bytes; a leading byte-order mark is allowed."""
    return json.loads(raw.decode("utf-8-sig"))


# ---------------------------------------------------------------------------------------------- shards
@dataclass(frozen=True)
class ShardItem:
    """One image of a shard: its encoded bytes (``image_ext`` jpg/png) and its per-image document."""

    doc: dict
    image_bytes: bytes
    image_ext: str = "jpg"


@dataclass(frozen=True)
class ShardInfo:
    """What :func:`write_shard` wrote."""

    path: Path
    sha256: str
    num_bytes: int
    image_ids: list[int]
    mask_counts: list[int]


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _shard_members(items: Iterable[ShardItem]) -> list[tuple[str, bytes]]:
    members: dict[str, bytes] = {}
    for item in items:
        image_id = item.doc["image"]["image_id"]
        img_name, json_name = member_names(image_id, item.image_ext)
        if item.doc["image"]["file_name"] != img_name:
            raise DataError(json_name, image_id, "image.file_name", f"must be {img_name!r} inside a shard")
        validate_image_json(item.doc, json_name)
        if json_name in members:
            raise DataError(json_name, image_id, "image.image_id", "duplicate image id in shard")
        members[img_name] = item.image_bytes
        members[json_name] = dumps(item.doc)
    return sorted(members.items())


def remove_stale_temps(path: str | Path) -> None:
    """Delete temp files a killed :func:`write_shard` left beside ``path`` (never the shard itself)."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def write_shard(path: str | Path, items: Iterable[ShardItem]) -> ShardInfo:
    """Write a tar shard deterministically and atomically; returns its sha256 and contents."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    items = list(items)
    members = _shard_members(items)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for name, data in members:
                    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
            f.flush()
            os.fsync(f.fileno())
        sha256 = sha256_file(tmp)
        num_bytes = os.path.getsize(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return ShardInfo(
        path=path,
        sha256=sha256,
        num_bytes=num_bytes,
        image_ids=[int(it.doc["image"]["image_id"]) for it in items],
        mask_counts=[len(it.doc["annotations"]) for it in items],
    )


# ---------------------------------------------------------------------------------------------- reading
MAX_JSON_MEMBER_BYTES = 64 << 20
MAX_IMAGE_MEMBER_BYTES = 256 << 20
MAX_SHARD_BYTES = 64 << 30  # SA-1B's own shards hold about 11 GB
MAX_SHARD_MEMBERS = 1_000_000  # SA-1B's own shards hold about 22 000
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_IMAGE_SIGNATURES = {"png": b"\x89PNG\r\n\x1a\n", "jpg": b"\xff\xd8\xff"}


@dataclass(frozen=True)
class ShardLimits:
    """What reading one shard may cost: bytes per JSON and per image member, bytes of the whole shard after
    decompression (member headers included), members per shard, and pixels per image."""

    json_member_bytes: int = MAX_JSON_MEMBER_BYTES
    image_member_bytes: int = MAX_IMAGE_MEMBER_BYTES
    shard_bytes: int = MAX_SHARD_BYTES
    members: int = MAX_SHARD_MEMBERS
    max_pixels: int = DEFAULT_MAX_PIXELS


class _TarInfo(tarfile.TarInfo):
    """Remembers on its archive why reading headers stopped: only a zero block is a proper end of archive
    (``tarfile`` ends silently on a missing or cut header, which is how a truncated shard looks)."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.HeaderError as e:
            tarfile_.stop_reason = e  # type: ignore[attr-defined]
            raise


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member must not be read (None when it is a plainly named regular file)."""
    name = member.name
    pure = PurePosixPath(name)
    if (
        name.startswith(("/", "\\"))
        or pure.is_absolute()
        or ".." in pure.parts
        or "\\" in name
        or ":" in name
    ):
        return "unsafe member name (absolute or '..')"
    if not member.isfile() or member.issparse():
        return "not a regular file (links, devices and folders are refused)"
    return None


def _decompressed(f: IO[bytes]) -> IO[bytes]:
    """The tar stream inside a plain, gzip, bzip2 or xz file. The standard readers return at most what is
    asked for, so a highly compressed member never expands in memory at once (``tarfile``'s own stream mode
    decompresses each block whole)."""
    magic = f.read(6)
    f.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(f, mode="rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f, mode="rb")
    return f


def _spool(src: IO[bytes], folder: Path, name: str, size: int, head: bytes) -> Path:
    """Copy one member (``head``: its first bytes, already read) into a hidden temp file in ``folder``;
    ReadError if fewer than ``size`` bytes arrive."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    copied = len(head)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            while copied < size:
                chunk = src.read(min(1 << 20, size - copied))
                if not chunk:
                    break
                f.write(chunk)
                copied += len(chunk)
        if copied != size:
            raise tarfile.ReadError("unexpected end of data")
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


class _ShardScan:
    """One streaming pass over a shard: members are read in archive order, each within its bound, and a record
    is checked as soon as both its JSON and its image have arrived."""

    def __init__(
        self,
        path: Path,
        quarantine: Quarantine | None,
        spool_dir: Path | None,
        limits: ShardLimits,
        verify_images: bool,
    ) -> None:
        self.path = path
        self.shard = str(path)
        self.q = quarantine
        self.spool_dir = spool_dir
        self.limits = limits
        self.verify = verify_images
        self.jsons: dict[int, tuple[str, bytes]] = {}
        self.images: dict[int, tuple[str, Path | None]] = {}
        self.refused: set[int] = set()  # ids with a member refused (unsafe, oversized, duplicate)
        self.done: list[tuple[int, dict, str, Path | None]] = []
        self.last: str | None = None  # the last member read whole

    def reject(self, err: DataError) -> None:
        if self.q is None:
            raise err
        self.q.add(err)

    def spooled(self) -> list[Path]:
        paths = [p for _, _, _, p in self.done] + [p for _, p in self.images.values()]
        return [p for p in paths if p is not None]

    def run(self) -> list[tuple[int, dict, str, Path | None]]:
        try:
            with open_regular(self.path, field="file") as f:
                self._read(f)
        except FileNotFoundError as e:
            raise DataError(self.shard, self.path.name, "file", "shard not found") from e
        except OSError as e:
            raise DataError(self.shard, self.path.name, "file", f"cannot open shard: {e}") from e
        except BaseException:
            for p in self.spooled():
                p.unlink(missing_ok=True)
            raise
        for image_id in sorted(set(self.jsons) | set(self.images)):
            missing = "json" if image_id not in self.jsons else "image"
            why = "refused (see its member error)" if image_id in self.refused else "missing"
            self.reject(DataError(self.shard, f"sa_{image_id}", missing, f"{missing} member {why}"))
        for _, spool in self.images.values():
            if spool is not None:
                spool.unlink(missing_ok=True)
        self.jsons.clear()
        self.images.clear()
        return sorted(self.done, key=lambda d: d[0])

    def _read(self, f: IO[bytes]) -> None:
        try:
            tar = tarfile.open(fileobj=_decompressed(f), mode="r|", tarinfo=_TarInfo)
        except _TAR_ERRORS as e:
            self.reject(DataError(self.shard, self.path.name, "file", f"not a readable tar: {e}"))
            return
        with tar:
            try:
                complete = self._members(tar)
                if complete and not isinstance(getattr(tar, "stop_reason", None), tarfile.EOFHeaderError):
                    raise tarfile.ReadError("the archive ends without its end-of-archive block")
            except _TAR_ERRORS as e:
                where = f"after member {self.last!r}" if self.last else "before its first member"
                record = self.last or self.path.name
                self.reject(
                    DataError(self.shard, record, "file", f"truncated or unreadable tar {where}: {e}")
                )

    def _members(self, tar: tarfile.TarFile) -> bool:
        """Read every member; False when a bound stopped the pass early (the end is then not checked)."""
        lim = self.limits
        total = count = 0
        seen: set[str] = set()
        while (member := tar.next()) is not None:
            tar.members.clear()  # a stream pass needs no index of what it has read
            name = member.name
            count += 1
            total += tarfile.BLOCKSIZE + member.size
            if count > lim.members or total > lim.shard_bytes:
                bound = f"{lim.members} members" if count > lim.members else f"{lim.shard_bytes} bytes"
                self.reject(DataError(self.shard, name, "file", f"shard over {bound}: the rest is not read"))
                return False
            m = MEMBER_RE.match(name)
            problem = _member_problem(member)
            if problem is None and m is None:
                problem = "not an sa_<id>.jpg|png|json member"
            elif problem is None and name in seen:
                problem = "duplicate member (the first one is kept)"
            elif problem is None and m is not None:
                limit = lim.json_member_bytes if m.group(2) == "json" else lim.image_member_bytes
                if member.size > limit:
                    problem = f"member of {member.size} bytes, over the {limit}-byte limit for its kind"
            if problem is not None or m is None:
                owner = MEMBER_RE.match(PurePosixPath(name).name)
                if owner is not None and name not in seen:
                    self.refused.add(int(owner.group(1)))
                self.reject(DataError(self.shard, name, "member", problem or "not an sa_<id> member"))
                continue
            seen.add(name)
            image_id = int(m.group(1))
            src = tar.extractfile(member)
            if src is None:  # not reached: regular files always have a reader
                raise tarfile.ReadError(f"no data for member {name!r}")
            if m.group(2) == "json":
                data = src.read(member.size)
                if len(data) != member.size:
                    raise tarfile.ReadError("unexpected end of data")
                self.jsons[image_id] = (name, data)
            elif self.spool_dir is None:  # records only: the image is not read
                self.images[image_id] = (name, None)
            else:
                signature = _IMAGE_SIGNATURES[m.group(2)]
                head = src.read(len(signature))
                if head != signature:  # e.g. a run of zeros: refused before it costs disk or memory
                    self.refused.add(image_id)
                    self.reject(DataError(self.shard, name, "image", f"not a {m.group(2).upper()} file"))
                    continue
                self.images[image_id] = (name, _spool(src, self.spool_dir, name, member.size, head))
            self.last = name
            if image_id in self.jsons and image_id in self.images:
                self._record(image_id)
        return True

    def _record(self, image_id: int) -> None:
        jname, raw = self.jsons.pop(image_id)
        iname, spool = self.images.pop(image_id)
        where = f"{self.shard}:{jname}"
        try:
            try:  # JSONDecodeError, huge ints and deep nesting are all "invalid JSON"
                doc = _loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                raise DataError(where, jname, "json", f"invalid JSON: {e}") from e
            doc = validate_image_json(doc, where, self.q)
            if doc["image"]["image_id"] != image_id:
                raise DataError(where, image_id, "image.image_id", "does not match the member name")
            if doc["image"]["file_name"] != iname:
                raise DataError(where, image_id, "image.file_name", "does not match the image member")
            if spool is not None:
                self._check_image(iname, spool, doc)
        except DataError as e:
            if spool is not None:
                spool.unlink(missing_ok=True)
            self.reject(e)
            return
        self.done.append((image_id, doc, iname, spool))

    def _check_image(self, name: str, spool: Path, doc: dict) -> None:
        """The image rules of every reader (header, pixel limit, optionally a full decode), on the spooled copy."""
        where = f"{self.shard}:{name}"
        image_id = doc["image"]["image_id"]
        try:
            w, h = image_size(spool, self.limits.max_pixels)
            if self.verify:
                load_image(spool, self.limits.max_pixels)
        except DataError as e:
            raise DataError(where, image_id, e.field, e.message.replace(str(spool), name)) from None
        if (w, h) != (doc["image"]["width"], doc["image"]["height"]):
            raise DataError(
                where,
                image_id,
                "image.width/height",
                f"JSON says {doc['image']['width']}x{doc['image']['height']} but the image is {w}x{h}",
            )


def iter_shard(
    path: str | Path,
    quarantine: Quarantine | None = None,
    *,
    spool_dir: str | Path | None = None,
    limits: ShardLimits = ShardLimits(),
    verify_images: bool = False,
) -> Iterator[tuple[dict, str, Path | None]]:
    """Yield ``(document, image member name, spooled image file or None)`` for each valid image, by image id.

    The shard (plain, gzip, bzip2 or xz tar) is read as a stream in one pass, every member within ``limits``.
    With ``spool_dir`` each image member is copied there (a hidden temp file the caller moves or deletes) and
    checked like any image (header, pixel limit, size against its JSON; a full decode with ``verify_images``);
    without it images are skipped unread. Unsafe members (absolute, ``..``, links, devices), oversized, unknown
    or duplicate members, unpaired members, bad documents and bad images go to ``quarantine`` and the other
    records are kept; a truncated or corrupt archive is one more quarantined error after the records read
    whole before it. With ``quarantine`` None the first problem raises; a shard file that is missing or not a
    regular file (a named pipe) always raises. Every error names shard and member.
    """
    scan = _ShardScan(
        Path(path), quarantine, None if spool_dir is None else Path(spool_dir), limits, verify_images
    )
    done = scan.run()
    try:
        for _, doc, name, spool in done:
            yield doc, name, spool
    finally:
        for _, _, _, spool in done:
            if spool is not None:
                spool.unlink(missing_ok=True)  # a spool the caller did not take


def read_shard_records(path: str | Path, quarantine: Quarantine | None = None) -> list[dict]:
    """The valid per-image documents of a shard, by image id (image members are not read)."""
    return [doc for doc, _, _ in iter_shard(path, quarantine)]


def _corpus_annotations(doc: dict) -> list[dict]:
    image_id = doc["image"]["image_id"]
    return [{**ann, "image_id": image_id, "category_id": 1, "iscrowd": 0} for ann in doc["annotations"]]


def default_cache_dir(path: str | Path) -> Path:
    """Where :func:`read_shard` extracts images by default: a per-shard folder under the system temp dir."""
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "sam_engine_sa1b" / f"{path.stem}-{key}"


def read_shard(
    path: str | Path,
    cache_dir: str | Path | None = None,
    quarantine: Quarantine | None = None,
    *,
    limits: ShardLimits = ShardLimits(),
    verify_images: bool = False,
) -> MaskCorpus:
    """Read a shard into a MaskCorpus, its checked images moved into ``cache_dir`` (see :func:`default_cache_dir`).

    Bad members and records, and a shard that is not a readable tar, go to the quarantine (see
    :func:`iter_shard`); a shard file that is missing or not a regular file raises DataError. Only images that
    passed the checks reach the cache, each by an atomic rename.
    """
    path = Path(path)
    q = quarantine if quarantine is not None else Quarantine()
    try:
        out = Path(cache_dir) if cache_dir is not None else default_cache_dir(path)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(path, path.name, "file", f"cannot read shard or make its cache: {e}") from e
    images: list[ImageRecord] = []
    annotations: dict[int, list[dict]] = {}
    for doc, name, spool in iter_shard(path, q, spool_dir=out, limits=limits, verify_images=verify_images):
        assert spool is not None
        target = out / name
        if target.is_file() and not target.is_symlink() and filecmp.cmp(target, spool, shallow=False):
            spool.unlink()  # the cache already holds these bytes
        else:
            os.replace(spool, target)
        img = doc["image"]
        images.append(ImageRecord(img["image_id"], target.resolve(), img["width"], img["height"], name))
        annotations[img["image_id"]] = _corpus_annotations(doc)
    return MaskCorpus(images=images, annotations=annotations, quarantine=q, source=str(path))


def _inside(root: Path, path: Path, file: Path, record: object, field: str) -> Path:
    """``path`` resolved; DataError when it (a symbolic link) leads out of ``root``."""
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise DataError(file, record, field, f"{path.name!r} is a symbolic link out of the folder")
    return resolved


def read_folder_records(
    folder: str | Path, quarantine: Quarantine | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[tuple[dict, Path]]:
    """Valid ``(document, image path)`` pairs of a folder of ``sa_<id>.json`` + image files, by image id.

    Files are read only when they are regular files inside the folder (a symbolic link out of it, a named
    pipe or a device is refused), and each image is checked like any image (header, pixel limit, size
    against its JSON).
    """
    folder = Path(folder)
    root = folder.resolve()
    q = quarantine
    out = []
    jsons = sorted(folder.glob("sa_*.json"), key=lambda p: (len(p.stem), p.stem))
    for jpath in jsons:
        try:
            _inside(root, jpath, jpath, jpath.name, "file")
            doc = read_image_json(jpath, q)
            image_id, name = doc["image"]["image_id"], doc["image"]["file_name"]
            ipath = _inside(root, folder / name, jpath, image_id, "image.file_name")
            if not ipath.exists():
                raise DataError(jpath, image_id, "image.file_name", f"image {name!r} not found")
            try:
                w, h = image_size(ipath, max_pixels)
            except DataError as e:
                raise DataError(ipath, image_id, e.field, e.message) from None
            if (w, h) != (doc["image"]["width"], doc["image"]["height"]):
                raise DataError(
                    jpath,
                    image_id,
                    "image.width/height",
                    f"JSON says {doc['image']['width']}x{doc['image']['height']} but {name!r} is {w}x{h}",
                )
        except DataError as e:
            if q is None:
                raise
            q.add(e)
            continue
        out.append((doc, ipath))
    return out


def read_folder(folder: str | Path, quarantine: Quarantine | None = None) -> MaskCorpus:
    """Read a folder of SA-1B pairs into a MaskCorpus (images stay where they are)."""
    q = quarantine if quarantine is not None else Quarantine()
    images: list[ImageRecord] = []
    annotations: dict[int, list[dict]] = {}
    for doc, ipath in read_folder_records(folder, q):
        img = doc["image"]
        if img["image_id"] in annotations:
            q.add(DataError(folder, img["image_id"], "image.image_id", "duplicate image id in folder"))
            continue
        images.append(ImageRecord(img["image_id"], ipath, img["width"], img["height"], img["file_name"]))
        annotations[img["image_id"]] = _corpus_annotations(doc)
    return MaskCorpus(images=images, annotations=annotations, quarantine=q, source=str(folder))


def read_shards(
    paths: Iterable[str | Path], cache_dir: str | Path | None = None, quarantine: Quarantine | None = None
) -> MaskCorpus:
    """Read several shards into one MaskCorpus; a repeated image id is quarantined, and so is a shard that
    cannot be opened at all (the other shards are still read)."""
    q = quarantine if quarantine is not None else Quarantine()
    images: list[ImageRecord] = []
    annotations: dict[int, list[dict]] = {}
    sources = []
    for p in paths:
        try:
            sub = read_shard(p, None if cache_dir is None else Path(cache_dir) / Path(p).stem, q)
        except DataError as e:
            q.add(e)
            continue
        sources.append(str(p))
        for rec in sub.images:
            if rec.image_id in annotations:
                q.add(DataError(p, rec.image_id, "image.image_id", "image id already seen in another shard"))
                continue
            images.append(rec)
            annotations[rec.image_id] = sub.annotations[rec.image_id]
    return MaskCorpus(images=images, annotations=annotations, quarantine=q, source=";".join(sources))
