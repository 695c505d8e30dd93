"""Safe image loading: pixel limit, truncation, EXIF orientation, mode conversion to 8-bit RGB."""

from __future__ import annotations

import os
import posixpath
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
DEFAULT_MAX_PIXELS = 64_000_000


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        scale = 65535.0 if img.mode.startswith("I;16") or hi > 255 else 255.0
        arr8 = np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr8[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def image_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) after EXIF orientation, reading only the header; raises DataError on bad files."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            _check_dims(path, w, h, max_pixels)  # before anything that could decode pixels
            orientation = _orientation(img)
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DataError(path, path.name, "file_name", "image file not found") from e
    except Image.DecompressionBombError as e:
        raise DataError(path, path.name, "size", f"decompression bomb: {e}") from e
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise DataError(path, path.name, "image", f"cannot read image header: {e}") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _orientation(img: Image.Image) -> int:
    """EXIF orientation without decoding pixels (PNG keeps EXIF in its info dict)."""
    if img.format == "PNG":
        raw = img.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(0x0112, 1))
    return int(img.getexif().get(0x0112, 1))


def _check_dims(path: Path, w: int, h: int, max_pixels: int) -> None:
    if w <= 0 or h <= 0:
        raise DataError(path, path.name, "size", f"zero-size image ({w}x{h})")
    if w * h > max_pixels:
        raise DataError(path, path.name, "size", f"image has {w * h} pixels, over the limit of {max_pixels}")


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load an image as HxWx3 uint8 RGB.

    EXIF orientation is applied; grayscale, palette, RGBA (composited on white) and 16-bit images are
    converted. Truncated or corrupt files, zero-size images and images over ``max_pixels`` raise
    :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            _check_dims(path, img.size[0], img.size[1], max_pixels)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb8(img)
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DataError(path, path.name, "file_name", "image file not found") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(path, path.name, "size", f"decompression bomb: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise DataError(path, path.name, "image", f"corrupt or truncated image: {e}") from e


def _check_file_name(root: object, file_name: object) -> None:
    if not isinstance(file_name, str) or not file_name or "\x00" in file_name:
        raise DataError(root, file_name, "file_name", "empty or invalid file name")
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")):
        raise DataError(root, file_name, "file_name", "absolute file name is not allowed")


def safe_join(root: str | Path, file_name: str) -> Path:
    """Join ``file_name`` under ``root``, refusing absolute paths and anything that escapes ``root``."""
    root = Path(root).resolve()
    _check_file_name(root, file_name)
    candidate = (root / file_name).resolve()
    if candidate != root and root not in candidate.parents:
        raise DataError(root, file_name, "file_name", "file name escapes the dataset folder")
    return candidate


def safe_join_url(root: str, file_name: str) -> str:
    """:func:`safe_join` for a remote folder (an fsspec URL): the same refusals; returns the file's URL."""
    from .. import storage

    _check_file_name(root, file_name)
    norm = posixpath.normpath(file_name)
    if norm in (".", "..") or norm.startswith("../"):
        raise DataError(root, file_name, "file_name", "file name escapes the dataset folder")
    return storage.join(root, *norm.split("/"))


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write an image atomically (temp file + rename) as PNG; deterministic bytes for the same array."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG", compress_level=6)
    os.replace(tmp, path)
