"""A folder of images as a target pool (optionally with COCO ground truth for evaluation)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .corpus import ImageRecord, MaskCorpus
from .errors import DataError, Quarantine
from .images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, image_size, load_image


def stable_image_id(relative_path: str) -> int:
    """A stable 48-bit id from the image's path relative to the folder (adding images keeps old ids)."""
    return int(hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:12], 16)


def load_image_folder(
    folder: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, verify_images: bool = True
) -> MaskCorpus:
    """Every image under ``folder`` (PNG / JPEG / WebP / BMP / TIFF), sorted by relative path.

    The first sub-folder name, when there is one, becomes the image's ``region`` (so a pool organised as
    ``pool/<region>/*.jpg`` gets region coverage for free). Width and height are after EXIF orientation.
    Unreadable images are quarantined with the reason; the others are kept.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise DataError(root, None, "folder", "image folder not found")
    q = Quarantine()
    images: list[ImageRecord] = []
    seen: dict[int, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        if path.is_symlink() and root not in path.resolve().parents:
            q.add(DataError(path, path.name, "file_name", "symbolic link points outside the folder"))
            continue
        rel = path.relative_to(root).as_posix()
        try:
            if verify_images:
                arr = load_image(path, max_pixels)
                h, w = arr.shape[:2]
            else:
                w, h = image_size(path, max_pixels)
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
    return MaskCorpus(images=images, annotations={}, quarantine=q, source=str(root))


def attach_ground_truth(pool: MaskCorpus, gt: MaskCorpus) -> MaskCorpus:
    """Match a COCO ground truth to a folder pool by file name; GT images not in the pool are quarantined."""
    by_name = {im.file_name: im for im in pool.images}
    anns: dict[int, list[dict]] = {}
    q = Quarantine(list(pool.quarantine.errors))
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
