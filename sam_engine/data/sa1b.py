"""SA-1B format: per-image JSON (validating reader and writer) and deterministic, atomic tar shards.

Per-image JSON::

    {"image": {"image_id", "width", "height", "file_name"},
     "annotations": [{"id", "segmentation": {"size": [h, w], "counts": str}, "bbox": [x, y, w, h], "area",
                      "predicted_iou", "stability_score", "crop_box": [x, y, w, h], "point_coords": [[x, y]]}]}

A shard is a tar of ``sa_<id>.jpg|png`` + ``sa_<id>.json`` pairs. Shards are written with sorted members and
fixed metadata (mtime 0, uid/gid 0, mode 0644), so the same inputs give the same bytes, into a hidden temp
file that is renamed into place only when complete. Readers refuse unsafe member names and quarantine bad
records while keeping the valid ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .corpus import ImageRecord, MaskCorpus
from .errors import DataError, Quarantine

IMAGE_EXTS = ("jpg", "png")
MEMBER_RE = re.compile(r"^sa_(\d+)\.(jpg|png|json)$")
TAR_MTIME = 0
TAR_MODE = 0o644
# Test hook: seconds to sleep after half of a shard's members are written (to test killed writes).
PAUSE_ENV = "SAM_ENGINE_SA1B_WRITE_PAUSE"
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


def rle_string_counts(counts: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (the inverse of pycocotools' string encoding)."""
    out: list[int] = []
    p = 0
    n = len(counts)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("truncated RLE string")
            c = ord(counts[p]) - 48
            if c < 0 or c > 63:
                raise ValueError(f"invalid RLE character {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


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
    size = seg["size"]
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) for v in size):
        raise DataError(file, rid, "segmentation.size", f"expected [h, w] integers, got {size!r}")
    if size != [height, width]:
        raise DataError(file, rid, "segmentation.size", f"RLE size {size} != image size [{height}, {width}]")
    if not isinstance(seg["counts"], str):
        raise DataError(file, rid, "segmentation.counts", "expected a compressed RLE string")
    try:
        runs = rle_string_counts(seg["counts"])
    except ValueError as e:
        raise DataError(file, rid, "segmentation.counts", str(e)) from e
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise DataError(file, rid, "segmentation.counts", f"run lengths do not cover {height}x{width} pixels")
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
        doc = json.loads(path.read_bytes())
    except FileNotFoundError as e:
        raise DataError(path, path.name, "file", "file not found") from e
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError, huge ints, deep nesting
        raise DataError(path, path.name, "json", f"invalid JSON: {e}") from e
    return validate_image_json(doc, path, quarantine)


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
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    try:
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for i, (name, data) in enumerate(members):
                    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
                    if pause and i == len(members) // 2:
                        f.flush()
                        time.sleep(pause)
            f.flush()
            os.fsync(f.fileno())
        digest = hashlib.sha256()
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        num_bytes = os.path.getsize(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return ShardInfo(
        path=path,
        sha256=digest.hexdigest(),
        num_bytes=num_bytes,
        image_ids=[int(it.doc["image"]["image_id"]) for it in items],
        mask_counts=[len(it.doc["annotations"]) for it in items],
    )


def _safe_member(tar_path: str, member: tarfile.TarInfo) -> str:
    name = member.name
    pure = PurePosixPath(name)
    if (
        name.startswith(("/", "\\"))
        or pure.is_absolute()
        or ".." in pure.parts
        or "\\" in name
        or ":" in name
    ):
        raise DataError(tar_path, name, "member", "unsafe member name (absolute or '..')")
    if not member.isfile():
        raise DataError(tar_path, name, "member", "not a regular file (links and devices are refused)")
    return name


def iter_shard(path: str | Path, quarantine: Quarantine | None = None) -> Iterator[tuple[dict, str, bytes]]:
    """Yield ``(document, image member name, image bytes)`` for each valid image of a shard, by image id.

    Unsafe member names raise DataError. Unpaired members, unknown names and bad documents go to
    ``quarantine`` (raised when it is None).
    """
    path = Path(path)
    tar_path = str(path)
    q = quarantine

    def reject(err: DataError) -> None:
        if q is None:
            raise err
        q.add(err)

    try:
        tar = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError) as e:
        raise DataError(tar_path, path.name, "file", f"cannot open tar: {e}") from e
    with tar:
        images: dict[int, tarfile.TarInfo] = {}
        jsons: dict[int, tarfile.TarInfo] = {}
        for member in tar.getmembers():
            name = _safe_member(tar_path, member)
            m = MEMBER_RE.match(name)
            if not m:
                reject(DataError(tar_path, name, "member", "not an sa_<id>.jpg|png|json member"))
                continue
            image_id = int(m.group(1))
            target = jsons if m.group(2) == "json" else images
            if image_id in target:
                reject(DataError(tar_path, name, "member", "duplicate member for this image id"))
                continue
            target[image_id] = member
        for image_id in sorted(set(images) | set(jsons)):
            if image_id not in jsons or image_id not in images:
                missing = "json" if image_id not in jsons else "image"
                reject(DataError(tar_path, f"sa_{image_id}", missing, f"{missing} member missing"))
                continue
            jname = jsons[image_id].name
            where = f"{tar_path}:{jname}"
            try:
                raw = tar.extractfile(jsons[image_id]).read()  # type: ignore[union-attr]
                try:
                    doc = json.loads(raw)
                except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError, huge ints, deep nesting
                    raise DataError(where, jname, "json", f"invalid JSON: {e}") from e
                doc = validate_image_json(doc, where, q)
                if doc["image"]["image_id"] != image_id:
                    raise DataError(where, image_id, "image.image_id", "does not match the member name")
                if doc["image"]["file_name"] != images[image_id].name:
                    raise DataError(where, image_id, "image.file_name", "does not match the image member")
            except DataError as e:
                reject(e)
                continue
            data = tar.extractfile(images[image_id]).read()  # type: ignore[union-attr]
            yield doc, images[image_id].name, data


def read_shard_records(path: str | Path, quarantine: Quarantine | None = None) -> list[dict]:
    """The valid per-image documents of a shard, by image id."""
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
    path: str | Path, cache_dir: str | Path | None = None, quarantine: Quarantine | None = None
) -> MaskCorpus:
    """Read a shard into a MaskCorpus, extracting its images to ``cache_dir`` (see :func:`default_cache_dir`)."""
    from sam_engine.io import atomic_write_bytes

    path = Path(path)
    q = quarantine if quarantine is not None else Quarantine()
    out = Path(cache_dir) if cache_dir is not None else default_cache_dir(path)
    out.mkdir(parents=True, exist_ok=True)
    images: list[ImageRecord] = []
    annotations: dict[int, list[dict]] = {}
    for doc, name, data in iter_shard(path, q):
        target = out / name
        if not target.exists() or target.stat().st_size != len(data) or target.read_bytes() != data:
            atomic_write_bytes(target, data)
        img = doc["image"]
        images.append(ImageRecord(img["image_id"], target.resolve(), img["width"], img["height"], name))
        annotations[img["image_id"]] = _corpus_annotations(doc)
    return MaskCorpus(images=images, annotations=annotations, quarantine=q, source=str(path))


def read_folder_records(folder: str | Path, quarantine: Quarantine | None = None) -> list[tuple[dict, Path]]:
    """Valid ``(document, image path)`` pairs of a folder of ``sa_<id>.json`` + image files, by image id."""
    folder = Path(folder)
    q = quarantine
    out = []
    jsons = sorted(folder.glob("sa_*.json"), key=lambda p: (len(p.stem), p.stem))
    for jpath in jsons:
        try:
            doc = read_image_json(jpath, q)
            name = doc["image"]["file_name"]
            ipath = folder / name
            if not ipath.is_file():
                raise DataError(
                    jpath, doc["image"]["image_id"], "image.file_name", f"image {name!r} not found"
                )
        except DataError as e:
            if q is None:
                raise
            q.add(e)
            continue
        out.append((doc, ipath.resolve()))
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
    """Read several shards into one MaskCorpus; a repeated image id is quarantined."""
    q = quarantine if quarantine is not None else Quarantine()
    images: list[ImageRecord] = []
    annotations: dict[int, list[dict]] = {}
    sources = []
    for p in paths:
        sub = read_shard(p, None if cache_dir is None else Path(cache_dir) / Path(p).stem, q)
        sources.append(str(p))
        for rec in sub.images:
            if rec.image_id in annotations:
                q.add(DataError(p, rec.image_id, "image.image_id", "image id already seen in another shard"))
                continue
            images.append(rec)
            annotations[rec.image_id] = sub.annotations[rec.image_id]
    return MaskCorpus(images=images, annotations=annotations, quarantine=q, source=";".join(sources))
