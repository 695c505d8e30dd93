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


def mask_iou(a: np.ndarray, b: np.ndarray, *, empty: float, ignore: np.ndarray | None = None) -> float:
    """IoU of two boolean masks of the same shape, over the pixels outside ``ignore`` when given.

    ``empty`` is the answer when both masks are empty there (no union), which callers must choose: 1.0 where two
    empty masks agree (the click protocol: nothing to find, nothing found), 0.0 where an empty mask matches
    nothing (a proposal against an object).
    """
    inter = np.logical_and(a, b)
    union = np.logical_or(a, b)
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        inter &= keep
        union &= keep
    u = int(union.sum())
    return float(inter.sum()) / u if u else float(empty)


# ------------------------------------------------------------------------------------------ validation
# pycocotools' C reader (``rleFrString``) shifts each 5-bit group into an ``int`` and stores the run as a 32-bit
# ``uint``. Up to six characters (30 bits) per value that is exact; a longer value overflows, so pycocotools reads
# other run lengths than the text says. Such values never come out of pycocotools' own encoder for images under
# 2**29 pixels; they are refused, as are runs that are negative or do not fit a ``uint``.
MAX_VARINT_CHARS = 6
MAX_RLE_PIXELS = 2**32 - 1


class RleError(ValueError):
    """An RLE that pycocotools would not read as written; ``field`` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def counts_runs(counts: str | bytes) -> list[int]:
    """Run lengths of a compressed counts string, exactly as pycocotools reads them.

    Raises :class:`RleError` for characters outside COCO's alphabet (``0`` .. ``o``), a truncated last value,
    a value longer than :data:`MAX_VARINT_CHARS` characters (pycocotools would overflow it), or a run that is
    negative or over ``2**32 - 1`` (pycocotools stores runs as 32-bit unsigned ints).
    """
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise RleError(
                "segmentation.counts", "not a COCO compressed RLE string (non-ASCII bytes)"
            ) from None
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        start = p
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise RleError("segmentation.counts", f"truncated RLE string (value {len(out)} has no end)")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise RleError(
                    "segmentation.counts",
                    f"invalid character {counts[p]!r} at {p}: not a COCO compressed RLE string",
                )
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if k > MAX_VARINT_CHARS:
            raise RleError(
                "segmentation.counts",
                f"value {len(out)} at {start} takes {k} characters, over {MAX_VARINT_CHARS}: pycocotools would "
                "overflow it and read other run lengths",
            )
        if len(out) > 2:
            x += out[-2]
        if not 0 <= x <= MAX_RLE_PIXELS:
            raise RleError(
                "segmentation.counts", f"run {len(out)} has length {x}, outside 0..{MAX_RLE_PIXELS}"
            )
        out.append(x)
    return out


def _strict_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def check_rle(rle: object, height: int, width: int) -> list[int]:
    """The one RLE check of every entry point: return the run lengths of ``rle`` or raise :class:`RleError`.

    ``rle`` must be ``{"size": [height, width], "counts": ...}`` with compressed counts (``str`` / ``bytes``) that
    pycocotools decodes exactly as written (see :func:`counts_runs`) or uncompressed counts (a list of
    non-negative ints), and its runs must cover exactly ``height * width`` pixels. Such a mask decodes, and its
    area, box and IoU are computed by pycocotools without surprises.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise RleError("segmentation", "expected a COCO RLE object with 'size' and 'counts'")
    size = rle["size"]
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(_strict_int(v) for v in size)):
        raise RleError("segmentation.size", f"expected [height, width] integers, got {size!r}")
    if [int(size[0]), int(size[1])] != [height, width]:
        raise RleError(
            "segmentation.size",
            f"RLE size {list(size)} differs from the image's [height, width] [{height}, {width}]",
        )
    if height <= 0 or width <= 0 or height * width > MAX_RLE_PIXELS:
        raise RleError("segmentation.size", f"an RLE of {height}x{width} pixels is beyond pycocotools")
    counts = rle["counts"]
    if isinstance(counts, str | bytes):
        runs = counts_runs(counts)
    elif isinstance(counts, list):
        if not all(_strict_int(v) and 0 <= v <= MAX_RLE_PIXELS for v in counts):
            raise RleError("segmentation.counts", f"uncompressed counts must be ints in 0..{MAX_RLE_PIXELS}")
        runs = [int(v) for v in counts]
    else:
        raise RleError(
            "segmentation.counts", f"expected a string or a list of ints, got {type(counts).__name__}"
        )
    total = sum(runs)
    if total != height * width:
        raise RleError("segmentation.counts", f"runs cover {total} pixels, the image has {height * width}")
    return runs
