"""COCO RLE helpers on top of pycocotools: encode, decode, area, bbox, IoU, polygons."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def encode(mask: np.ndarray) -> dict:
    """Encode one HxW boolean mask as compressed COCO RLE with a ``str`` counts field (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"]}


def encode_batch(masks: np.ndarray) -> list[dict]:
    """Encode N x H x W masks in one pycocotools call."""
    if len(masks) == 0:
        return []
    arr = np.asfortranarray(np.transpose(masks.astype(np.uint8), (1, 2, 0)))
    out = []
    for rle in mask_utils.encode(arr):
        out.append(
            {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}
        )
    return out


def _to_coco(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return mask_utils.frPyObjects(rle, rle["size"][0], rle["size"][1])
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": list(rle["size"]), "counts": counts}


def decode(rle: dict) -> np.ndarray:
    """Decode compressed or uncompressed COCO RLE to an HxW bool mask."""
    return mask_utils.decode(_to_coco(rle)).astype(bool)


def decode_batch(rles: list[dict]) -> np.ndarray:
    """Decode RLEs of one image size to an N x H x W bool array."""
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    arr = mask_utils.decode([_to_coco(r) for r in rles])
    return np.transpose(arr, (2, 0, 1)).astype(bool)


def area(rle: dict) -> int:
    return int(mask_utils.area(_to_coco(rle)))


# pycocotools' ``area`` sizes its result array with a uint8 (``np.array((n,), dtype=np.uint8)``): under
# NumPy 2 a list of more than 255 RLEs raises OverflowError. Chunks of at most 255 give the same result.
_AREA_CHUNK = 255


def areas(coco_rles: list[dict]) -> np.ndarray:
    """Pixel areas (int64) of many pycocotools-format RLEs (``counts`` bytes), in chunks pycocotools accepts."""
    if not coco_rles:
        return np.zeros(0, dtype=np.int64)
    parts = [
        np.asarray(mask_utils.area(coco_rles[i : i + _AREA_CHUNK]), dtype=np.int64)
        for i in range(0, len(coco_rles), _AREA_CHUNK)
    ]
    return np.concatenate(parts)


def bbox_xywh(rle: dict) -> list[float]:
    return [float(v) for v in mask_utils.toBbox(_to_coco(rle))]


def iou_matrix(a: list[dict], b: list[dict]) -> np.ndarray:
    """Mask IoU between every RLE of ``a`` and every RLE of ``b`` (len(a) x len(b))."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou([_to_coco(r) for r in a], [_to_coco(r) for r in b], [0] * len(b)))


def polygons_to_rle(polygons: list[list[float]], height: int, width: int) -> dict:
    """Merge COCO polygons into one compressed RLE."""
    rles = mask_utils.frPyObjects(polygons, height, width)
    merged = mask_utils.merge(rles)
    return {
        "size": [int(merged["size"][0]), int(merged["size"][1])],
        "counts": merged["counts"].decode("ascii"),
    }


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of the same shape (1.0 when both are empty)."""
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return float(inter / union) if union else 1.0
