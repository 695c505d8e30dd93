"""Stage 3: fully automatic masks for a fixed set of images, written as one SA-1B tar shard per call.

``write_shard`` is what one orchestrator partition runs: load the shard's images, blur faces (optional), run the
automatic mask generator, and write ``sa_<index:06d>.tar`` atomically, then record it in ``manifest.json``
(shard -> image ids, mask counts, sha256, model fingerprint, seed, AMG settings), also atomically and under a
file lock so partitions can run side by side. The same images, model and seed give a byte-identical tar.

``write_shard_to`` writes to any location (:mod:`sam_engine.storage`): on a remote one the shard is written to a
local staging folder exactly as locally (byte-identical tar), then uploaded with its manifest entry as
``manifest.d/<shard>.json``. Each partition writes only its own entry, so runs on different machines never
contend for one manifest file; ``read_manifest`` merges the entries.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sam_engine import storage
from sam_engine.amg import AmgParams, AutomaticMaskGenerator
from sam_engine.data import sa1b
from sam_engine.data.corpus import ImageRecord
from sam_engine.data.errors import DataError
from sam_engine.data.images import load_image
from sam_engine.io import atomic_write_json, sha256_file
from sam_engine.privacy import BlurStep

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sam-engine/sa1b-shards/1"
MANIFEST_ENTRIES = "manifest.d"  # a remote folder's per-shard manifest entries (write_shard_to)
ANN_IDS_PER_IMAGE = 100_000  # annotation id = image_id * ANN_IDS_PER_IMAGE + k


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``sa_000042.tar``."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"sa_{index:06d}.tar"


def plan_shards(records: Sequence[ImageRecord], images_per_shard: int) -> list[list[ImageRecord]]:
    """Split images, ordered by image id, into shards of ``images_per_shard`` (the last may be smaller).

    The plan depends only on the set of image ids, so shard ``i`` always holds the same images.
    """
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    ordered = sorted(records, key=lambda r: r.image_id)
    return [ordered[i : i + images_per_shard] for i in range(0, len(ordered), images_per_shard)]


@dataclass(frozen=True)
class ShardResult:
    """What one ``write_shard`` call produced."""

    index: int
    path: Path
    sha256: str
    num_bytes: int
    image_ids: list[int]
    mask_counts: list[int]
    blurred_boxes: int

    @property
    def num_masks(self) -> int:
        return sum(self.mask_counts)


def model_fingerprint(model: object) -> str:
    """sha256 over the model's parameter names, shapes and values (identifies 'the same model')."""
    module = getattr(model, "model", model)
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):  # type: ignore[union-attr]
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _as_record(item: ImageRecord | str | Path) -> ImageRecord:
    if isinstance(item, ImageRecord):
        return item
    path = Path(item)
    m = re.search(r"(\d+)$", path.stem)
    if not m:
        raise DataError(
            path, path.name, "file_name", "cannot derive an image id (no trailing digits in the name)"
        )
    return ImageRecord(int(m.group(1)), path.resolve(), 0, 0, path.name)


def encode_image(image: np.ndarray, image_format: str = "jpg", quality: int = 95) -> bytes:
    """Deterministic JPEG (quality ``quality``) or PNG bytes of an RGB image."""
    buf = io.BytesIO()
    pil = Image.fromarray(image)
    if image_format == "jpg":
        pil.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    elif image_format == "png":
        pil.save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    return buf.getvalue()


def _blur_step(blur: bool | BlurStep | None) -> BlurStep | None:
    if blur is None or blur is False:
        return None
    if blur is True:
        return BlurStep()
    return blur


def build_items(
    records: Sequence[ImageRecord],
    generator: AutomaticMaskGenerator,
    blur: BlurStep | None,
    image_format: str,
    images_per_call: int,
) -> tuple[list[sa1b.ShardItem], int]:
    """Per-image SA-1B items (blurred image bytes + document) and the number of blurred boxes; the chunks of
    ``images_per_call`` images are spread over worker processes (:func:`~sam_engine.parallel.fork_map`)."""
    from .parallel import fork_map

    chunks = [records[start : start + images_per_call] for start in range(0, len(records), images_per_call)]
    done = fork_map(lambda chunk: _chunk_items(chunk, generator, blur, image_format), chunks)
    items = [item for chunk_items, _ in done for item in chunk_items]
    return items, sum(blurred for _, blurred in done)


def _chunk_items(
    chunk: Sequence[ImageRecord],
    generator: AutomaticMaskGenerator,
    blur: BlurStep | None,
    image_format: str,
) -> tuple[list[sa1b.ShardItem], int]:
    items: list[sa1b.ShardItem] = []
    blurred = 0
    images = []
    for rec in chunk:
        image = load_image(rec.path)
        if blur is not None:
            image, boxes = blur(image)
            blurred += len(boxes)
        images.append(image)
    for rec, image, masks in zip(chunk, images, generator.generate_batch(images), strict=True):
        h, w = image.shape[:2]
        img_name, _ = sa1b.member_names(rec.image_id, image_format)
        anns = [
            sa1b.annotation(
                rec.image_id * ANN_IDS_PER_IMAGE + k,
                m["segmentation"],
                m["bbox"],
                m["area"],
                m["predicted_iou"],
                m["stability_score"],
                m["crop_box"],
                m["point_coords"],
            )
            for k, m in enumerate(masks)
        ]
        doc = sa1b.image_json(rec.image_id, w, h, img_name, anns)
        items.append(sa1b.ShardItem(doc, encode_image(image, image_format), image_format))
    return items, blurred


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".manifest.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _read_local_manifest(out_dir: str | Path) -> dict:
    """The shard manifest of the local folder ``out_dir`` (an empty one when none exists yet)."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {"format": MANIFEST_FORMAT, "shards": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, MANIFEST, "json", f"invalid manifest: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), dict):
        raise DataError(path, MANIFEST, "shards", "manifest has no 'shards' object")
    return manifest


def write_shard(
    shard_index: int,
    image_records: Sequence[ImageRecord | str | Path],
    model: object,
    amg_params: AmgParams | None,
    out_dir: str | Path,
    seed: int = 0,
    blur: bool | BlurStep | None = True,
    image_format: str = "jpg",
    images_per_call: int | None = None,
) -> ShardResult:
    """Generate masks for ``image_records`` and write shard ``shard_index`` to ``out_dir``; update the manifest.

    ``model`` is a Sam model or a SamPredictor. ``blur`` True uses the default face blur, a BlurStep its own
    detectors, False / None none; masks are generated on the image as stored (blurred). Re-running with the
    same inputs, model and seed rewrites a byte-identical tar.
    """
    out_dir = Path(out_dir)
    params = amg_params or AmgParams()
    records = [_as_record(r) for r in image_records]
    ids = [r.image_id for r in records]
    if len(set(ids)) != len(ids):
        raise DataError(
            out_dir / shard_name(shard_index), shard_index, "image_id", "repeated image id in shard"
        )
    generator = AutomaticMaskGenerator(model, params)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        items, blurred = build_items(
            records, generator, _blur_step(blur), image_format, images_per_call or params.encoder_batch_size
        )
    info = sa1b.write_shard(out_dir / shard_name(shard_index), items)
    result = ShardResult(
        shard_index, info.path, info.sha256, info.num_bytes, info.image_ids, info.mask_counts, blurred
    )
    entry = {
        "index": shard_index,
        "image_ids": result.image_ids,
        "mask_counts": result.mask_counts,
        "num_images": len(result.image_ids),
        "num_masks": result.num_masks,
        "sha256": result.sha256,
        "bytes": result.num_bytes,
        "blurred_boxes": blurred,
        "seed": seed,
        "model": model_fingerprint(model),
        "amg_params": params.model_dump(mode="json"),
        "image_format": image_format,
    }
    with _locked(out_dir):
        manifest = _read_local_manifest(out_dir)
        manifest["shards"][info.path.name] = entry
        manifest["shards"] = dict(sorted(manifest["shards"].items()))
        atomic_write_json(out_dir / MANIFEST, manifest, indent=1)
    return result


def shard_paths(out_dir: str | Path) -> list[Path]:
    """The shards the manifest lists that exist on disk, by index."""
    out_dir = Path(out_dir)
    shards = _read_local_manifest(out_dir)["shards"]
    return [out_dir / name for name in sorted(shards) if (out_dir / name).exists()]


def verify_shard(out_dir: str | Path, name: str) -> bool:
    """True when shard ``name`` exists and its sha256 matches the manifest."""
    out_dir = Path(out_dir)
    entry = _read_local_manifest(out_dir)["shards"].get(name)
    path = out_dir / name
    if entry is None or not path.exists():
        return False
    return sha256_file(path) == entry["sha256"]


# ------------------------------------------------------------------------------- any location (fsspec)
def publish_shard(staging_dir: storage.Location, shard_file: str, dest: storage.Location) -> dict[str, Any]:
    """Upload ``staging_dir/shard_file`` and its manifest entry to ``dest``; returns the entry.

    The upload is verified: the remote sha256 must equal the manifest's.
    """
    staging = storage.local_path(staging_dir)
    entry = _read_local_manifest(staging)["shards"].get(shard_file)
    if entry is None:
        raise FileNotFoundError(f"{staging}: manifest has no entry for {shard_file}")
    target = storage.join(dest, shard_file)
    storage.upload(staging / shard_file, target)
    got = storage.sha256(target)
    if got != entry["sha256"]:
        raise OSError(f"{target}: uploaded sha256 {got} differs from the manifest's {entry['sha256']}")
    storage.write_json(storage.join(dest, MANIFEST_ENTRIES, f"{shard_file}.json"), entry)
    return entry


def read_manifest(location: storage.Location) -> dict[str, Any]:
    """The shard manifest of a local or remote shard folder.

    Remote folders: ``manifest.json`` (if any) merged with the per-shard ``manifest.d/*.json`` entries.
    """

    if storage.is_local(location):
        manifest = _read_local_manifest(storage.local_path(location))
    else:
        p = storage.upath(location)
        manifest = {"format": MANIFEST_FORMAT, "shards": {}}
        if (p / MANIFEST).exists():
            manifest = json.loads((p / MANIFEST).read_bytes())
    entries = storage.upath(location) / MANIFEST_ENTRIES
    if entries.exists():
        for item in sorted(entries.iterdir(), key=lambda x: x.name):
            if item.name.endswith(".json"):
                try:
                    manifest["shards"][item.name[: -len(".json")]] = json.loads(item.read_bytes())
                except json.JSONDecodeError as e:
                    raise DataError(str(item), item.name, "json", f"invalid manifest entry: {e}") from e
    manifest["shards"] = dict(sorted(manifest["shards"].items()))
    return manifest


def write_shard_to(
    dest: storage.Location,
    shard_index: int,
    image_records: Sequence[Any],
    model: object,
    amg_params: Any = None,
    *,
    seed: int = 0,
    staging_dir: storage.Location | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``write_shard`` to any location: local writes in place; a remote ``dest`` gets the tar written in a
    local staging folder, then published with its manifest entry (see the module doc).

    Image records whose ``path`` is a URL are fetched through the cache first. Returns the manifest entry
    plus ``path`` (where the tar now is).
    """
    records = []
    for r in image_records:
        if isinstance(r, ImageRecord) and not storage.is_local(r.path):
            r = replace(r, path=storage.cached_local(r.path))
        records.append(r)
    name = shard_name(shard_index)
    if storage.is_local(dest):
        out = storage.local_path(dest)
        write_shard(shard_index, records, model, amg_params, out, seed=seed, **kwargs)
        return {**_read_local_manifest(out)["shards"][name], "path": str(out / name)}
    with tempfile.TemporaryDirectory(dir=staging_dir, prefix="shard-staging-") as tmp:
        write_shard(shard_index, records, model, amg_params, tmp, seed=seed, **kwargs)
        entry = publish_shard(tmp, name, dest)
    return {**entry, "path": storage.join(dest, name)}
