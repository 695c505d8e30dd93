"""A folder of images as a target pool (optionally with COCO ground truth for evaluation).

The folder is a local path or any fsspec URL (``s3://bucket/pool``, ``gs://...``, ``memory://...``): remote
images are listed with one ``find`` and read through ``sam_engine.storage``'s local cache; their records keep
the URL as ``path``.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator
from pathlib import Path

from .. import storage
from .corpus import ImageRecord, MaskCorpus
from .errors import DataError, Quarantine
from .images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES


def stable_image_id(relative_path: str) -> int:
    """A stable 48-bit id from the image's path relative to the folder (adding images keeps old ids)."""
    return int(hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:12], 16)


def _local_files(root: Path) -> Iterator[tuple[str, Path] | DataError]:
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        if path.is_symlink() and root not in path.resolve().parents:
            yield DataError(path, path.name, "file_name", "symbolic link points outside the folder")
            continue
        yield path.relative_to(root).as_posix(), path


def _remote_files(root: str) -> Iterator[tuple[str, str] | DataError]:
    """(relative name, URL) of every image under a remote folder, in the order of the local listing."""
    base = storage.upath(root)
    prefix = base.path.rstrip("/") + "/"
    rels = [f[len(prefix) :] for f in base.fs.find(base.path) if f.startswith(prefix)]
    rels = [r for r in rels if posixpath.splitext(r)[1].lower() in IMAGE_SUFFIXES]
    for rel in sorted(rels, key=lambda r: r.split("/")):  # as pathlib sorts: part by part
        url = storage.join(root, rel)
        if any(part in ("", ".", "..") for part in rel.split("/")):
            yield DataError(url, rel, "file_name", "not a plain relative name under the folder")
            continue
        yield rel, url


def load_image_folder(
    folder: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    verify_images: bool = True,
    cache_dir: str | Path | None = None,
) -> MaskCorpus:
    """Every image under ``folder`` (PNG / JPEG / WebP / BMP / TIFF), sorted by relative path.

    The first sub-folder name, when there is one, becomes the image's ``region`` (so a pool organised as
    ``pool/<region>/*.jpg`` gets region coverage for free). Width and height are after EXIF orientation.
    Unreadable images are quarantined with the reason; the others are kept. ``folder`` may be an fsspec URL:
    its images are read through the local cache ``cache_dir`` (``storage.default_cache_dir()`` when None) and
    their records' ``path`` is the image's URL.
    """
    files: Iterator[tuple[str, Path] | tuple[str, str] | DataError]
    if storage.is_local(folder):
        root = storage.local_path(folder).resolve()
        if not root.is_dir():
            raise DataError(root, None, "folder", "image folder not found")
        source, files = str(root), _local_files(root)
    else:
        source = str(storage.upath(folder))
        if not storage.upath(source).is_dir():
            raise DataError(source, None, "folder", "image folder not found")
        files = _remote_files(source)

    def size(path: Path | str) -> tuple[int, int]:
        if verify_images:
            h, w = storage.load_image_at(path, max_pixels, cache_dir).shape[:2]
            return w, h
        return storage.image_size_at(path, max_pixels, cache_dir)

    q = Quarantine()
    images: list[ImageRecord] = []
    seen: dict[int, str] = {}
    for item in files:
        if isinstance(item, DataError):
            q.add(item)
            continue
        rel, path = item
        try:
            w, h = size(path)
        except DataError as e:
            q.add(e)
            continue
        image_id = stable_image_id(rel)
        if image_id in seen:
            q.add(DataError(path, rel, "id", f"id collides with {seen[image_id]}"))
            continue
        seen[image_id] = rel
        parts = rel.split("/")
        images.append(
            ImageRecord(
                image_id=image_id,
                path=path,
                width=w,
                height=h,
                file_name=rel,
                region=parts[0] if len(parts) > 1 else None,
            )
        )
    return MaskCorpus(images=images, annotations={}, quarantine=q, source=source)


def attach_ground_truth(pool: MaskCorpus, gt: MaskCorpus) -> MaskCorpus:
    """Match a COCO ground truth to a folder pool by file name; GT images not in the pool are quarantined, and
    the records the COCO reader quarantined stay in the quarantine."""
    by_name = {im.file_name: im for im in pool.images}
    anns: dict[int, list[dict]] = {}
    q = Quarantine(list(pool.quarantine.errors) + list(gt.quarantine.errors))
    for gim in gt.images:
        im = by_name.get(gim.file_name)
        if im is None:
            q.add(
                DataError(
                    gt.source,
                    f"image {gim.image_id}",
                    "file_name",
                    f"{gim.file_name!r} is not in the image folder",
                )
            )
            continue
        anns[im.image_id] = [dict(a, image_id=im.image_id) for a in gt.masks_for(gim.image_id)]
    return MaskCorpus(images=pool.images, annotations=anns, quarantine=q, source=pool.source)
