"""COCO instances: a writer, and a validating reader that quarantines bad records and keeps the rest.

The reader accepts polygons, compressed RLE and uncompressed (crowd) RLE and normalises every
segmentation to compressed RLE with ``str`` counts. A record is quarantined, never silently dropped, when
it is malformed: missing keys, wrong types, duplicate ids, an annotation whose image is missing or was
quarantined, an RLE whose size differs from its image, a polygon of fewer than 3 points, a bbox outside the
image, an empty mask, or a ``file_name`` that escapes the dataset folder. Image files are checked too
(missing, truncated or corrupt, zero-size, over the pixel limit, size differing from the JSON).
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage
from ..io import atomic_write_json
from . import rle as rle_utils
from .corpus import ImageRecord, MaskCorpus
from .errors import DataError, Quarantine
from .images import DEFAULT_MAX_PIXELS, open_regular, safe_join

CATEGORIES = [{"id": 1, "name": "object", "supercategory": "object"}]


def write_coco(
    path: str | Path,
    images: list[dict],
    annotations: list[dict],
    categories: list[dict] | None = None,
    info: dict | None = None,
) -> None:
    """Write a COCO instances file atomically."""
    doc: dict[str, Any] = {
        "info": info or {"description": "sam-engine corpus"},
        "images": images,
        "annotations": annotations,
        "categories": categories or CATEGORIES,
    }
    atomic_write_json(path, doc)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)


def _check_image(
    file: str,
    rec: Any,
    idx: int,
    images_dir: Path | str,
    max_pixels: int,
    verify: bool,
    cache_dir: str | Path | None = None,
) -> ImageRecord:
    if not isinstance(rec, dict):
        raise DataError(file, f"images[{idx}]", "images", f"expected an object, got {type(rec).__name__}")
    for key in ("id", "file_name", "width", "height"):
        if key not in rec:
            raise DataError(file, f"images[{idx}]", key, "missing key")
    rid = rec["id"]
    if not _is_int(rid):
        raise DataError(file, f"images[{idx}]", "id", f"expected an integer, got {rid!r}")
    where = f"image {rid}"
    if not isinstance(rec["file_name"], str):
        raise DataError(file, where, "file_name", f"expected a string, got {type(rec['file_name']).__name__}")
    for key in ("width", "height"):
        if not _is_int(rec[key]) or rec[key] <= 0:
            raise DataError(file, where, key, f"expected a positive integer, got {rec[key]!r}")
    remote = isinstance(images_dir, str)  # a URL (local folders are Paths here)
    try:
        path = (
            storage.safe_join_url(images_dir, rec["file_name"])
            if remote
            else safe_join(images_dir, rec["file_name"])
        )
    except DataError as e:
        raise DataError(file, where, "file_name", e.message) from e
    try:
        w, h = storage.image_size_at(path, max_pixels, cache_dir)
        if verify:
            storage.load_image_at(path, max_pixels, cache_dir)
    except DataError as e:
        raise DataError(path, where, e.field, e.message) from e
    if (w, h) != (rec["width"], rec["height"]):
        raise DataError(
            file,
            where,
            "width/height",
            f"JSON says {rec['width']}x{rec['height']} but the image file is {w}x{h}",
        )
    region = rec.get("region")
    return ImageRecord(
        image_id=int(rid),
        path=path,
        width=w,
        height=h,
        file_name=rec["file_name"],
        region=region if isinstance(region, str) else None,
    )


def _normalise_segmentation(file: str, where: str, seg: Any, h: int, w: int) -> dict:
    if isinstance(seg, list):
        if not seg:
            raise DataError(file, where, "segmentation", "empty polygon list")
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_num(v) for v in poly):
                raise DataError(file, where, f"segmentation[{k}]", "polygon must be a list of numbers")
            if len(poly) < 6 or len(poly) % 2:
                raise DataError(
                    file,
                    where,
                    f"segmentation[{k}]",
                    f"polygon needs at least 3 (x, y) points, got {len(poly) / 2:g}",
                )
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < -1 or max(xs) > w + 1 or min(ys) < -1 or max(ys) > h + 1:
                # refused before rasterising: a far-away vertex makes pycocotools allocate a huge buffer
                raise DataError(file, where, f"segmentation[{k}]", f"polygon leaves the {w}x{h} image")
        return rle_utils.polygons_to_rle(seg, h, w)
    if isinstance(seg, dict):
        try:
            rle_utils.check_rle(seg, h, w)
        except rle_utils.RleError as e:
            raise DataError(file, where, e.field, e.message) from None
        if isinstance(seg["counts"], list):
            return rle_utils.encode(rle_utils.decode({"size": [h, w], "counts": seg["counts"]}))
        return {"size": [h, w], "counts": seg["counts"]}
    raise DataError(file, where, "segmentation", f"expected polygons or RLE, got {type(seg).__name__}")


def check_compressed_rle(file: str, where: str, rle: dict) -> None:
    """Reject a compressed RLE that pycocotools would read otherwise or whose runs do not cover the image."""
    h, w = rle["size"]
    try:
        rle_utils.check_rle(rle, h, w)
    except rle_utils.RleError as e:
        raise DataError(file, where, e.field, e.message) from None


def _check_annotation(file: str, ann: Any, idx: int, images: dict[int, ImageRecord]) -> dict:
    if not isinstance(ann, dict):
        raise DataError(
            file, f"annotations[{idx}]", "annotations", f"expected an object, got {type(ann).__name__}"
        )
    for key in ("id", "image_id", "segmentation"):
        if key not in ann:
            raise DataError(file, f"annotations[{idx}]", key, "missing key")
    if not _is_int(ann["id"]):
        raise DataError(file, f"annotations[{idx}]", "id", f"expected an integer, got {ann['id']!r}")
    where = f"annotation {ann['id']}"
    if not _is_int(ann["image_id"]):
        raise DataError(file, where, "image_id", f"expected an integer, got {ann['image_id']!r}")
    image = images.get(int(ann["image_id"]))
    if image is None:
        raise DataError(
            file, where, "image_id", f"points at image {ann['image_id']}, which is missing or quarantined"
        )
    h, w = image.height, image.width
    try:
        rle = _normalise_segmentation(file, where, ann["segmentation"], h, w)
    except DataError as e:
        raise DataError(file, where, e.field, e.message) from e
    area = rle_utils.area(rle)
    if area <= 0:
        raise DataError(file, where, "segmentation", "mask is empty (area 0)")
    bbox = ann.get("bbox")
    if bbox is not None:
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
            raise DataError(file, where, "bbox", f"expected [x, y, width, height], got {bbox!r}")
        x, y, bw, bh = bbox
        tol = 1.0
        if bw < 0 or bh < 0 or x < -tol or y < -tol or x + bw > w + tol or y + bh > h + tol:
            raise DataError(file, where, "bbox", f"{bbox} lies outside the {w}x{h} image")
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd is None:
        iscrowd = 0
    if not _is_int(iscrowd) and not isinstance(iscrowd, bool) or int(iscrowd) not in (0, 1):
        raise DataError(file, where, "iscrowd", f"expected 0 or 1, got {iscrowd!r}")
    out = {k: v for k, v in ann.items() if k != "segmentation"}
    out.update(
        {
            "id": int(ann["id"]),
            "image_id": int(ann["image_id"]),
            "segmentation": rle,
            "area": area,
            "bbox": rle_utils.bbox_xywh(rle),
            "iscrowd": int(iscrowd),
        }
    )
    return out


def load_coco(
    annotations_json: str | Path,
    images_dir: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    verify_images: bool = True,
    quarantine: Quarantine | None = None,
    cache_dir: str | Path | None = None,
) -> MaskCorpus:
    """Read a COCO instances file with validation.

    Valid records are returned in a :class:`MaskCorpus`; every bad record goes to ``corpus.quarantine`` with
    a :class:`DataError` naming the file, the record and the field. A file that is not JSON, or whose top
    level lacks ``images`` / ``annotations`` lists, raises :class:`DataError` (nothing in it can be trusted).

    ``annotations_json`` and ``images_dir`` may be fsspec URLs: remote images are checked through the local
    cache ``cache_dir`` (``storage.default_cache_dir()`` when None) and their records' ``path`` is the URL.
    """
    remote_json = not storage.is_local(annotations_json)
    file = str(storage.upath(annotations_json)) if remote_json else str(storage.local_path(annotations_json))
    if storage.is_local(images_dir):
        images_dir = storage.local_path(images_dir)
    else:
        images_dir = str(storage.upath(images_dir))
    q = quarantine if quarantine is not None else Quarantine()
    try:
        if remote_json:
            raw = storage.read_bytes(annotations_json)
        else:
            with open_regular(file, field="file") as f:  # a named pipe is refused, never read
                raw = f.read()
        doc = json.loads(raw.decode("utf-8-sig"))  # a leading UTF-8 BOM is allowed
    except FileNotFoundError as e:
        raise DataError(file, None, "file", "annotation file not found") from e
    except DataError as e:
        raise DataError(file, None, e.field, e.message) from e
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise DataError(file, None, "json", f"not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise DataError(file, None, "json", f"top level must be an object, got {type(doc).__name__}")
    for key in ("images", "annotations"):
        if key not in doc:
            raise DataError(file, None, key, "missing top-level key")
        if not isinstance(doc[key], list):
            raise DataError(file, None, key, f"expected a list, got {type(doc[key]).__name__}")

    images: dict[int, ImageRecord] = {}
    seen_image_ids: set[int] = set()
    for idx, rec in enumerate(doc["images"]):
        rid = rec.get("id") if isinstance(rec, dict) else None
        if _is_int(rid) and rid in seen_image_ids:
            q.add(DataError(file, f"image {rid}", "id", "duplicate image id (first occurrence kept)"))
            continue
        try:
            image = _check_image(file, rec, idx, images_dir, max_pixels, verify_images, cache_dir)
        except DataError as e:
            q.add(e)
            if _is_int(rid):
                seen_image_ids.add(rid)
            continue
        seen_image_ids.add(image.image_id)
        images[image.image_id] = image

    by_image: dict[int, list[dict]] = {}
    seen_ann_ids: set[int] = set()
    for idx, ann in enumerate(doc["annotations"]):
        aid = ann.get("id") if isinstance(ann, dict) else None
        if _is_int(aid) and aid in seen_ann_ids:
            q.add(
                DataError(file, f"annotation {aid}", "id", "duplicate annotation id (first occurrence kept)")
            )
            continue
        if _is_int(aid):
            seen_ann_ids.add(aid)
        try:
            clean = _check_annotation(file, ann, idx, images)
        except DataError as e:
            q.add(e)
            continue
        by_image.setdefault(clean["image_id"], []).append(clean)
    ordered = sorted(images.values(), key=lambda r: r.image_id)
    return MaskCorpus(images=ordered, annotations=by_image, quarantine=q, source=file)


def corpus_to_coco(corpus: MaskCorpus) -> dict:
    """The COCO document for a corpus (images with their region, annotations as compressed RLE)."""
    images = []
    for im in corpus.images:
        rec = {
            "id": im.image_id,
            "file_name": im.file_name or storage.upath(im.path).name,
            "width": im.width,
            "height": im.height,
        }
        if im.region is not None:
            rec["region"] = im.region
        images.append(rec)
    anns = [a for im in corpus.images for a in corpus.masks_for(im.image_id)]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}
