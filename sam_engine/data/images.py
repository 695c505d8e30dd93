"""Safe image loading: pixel limit, truncation, EXIF orientation, mode conversion to 8-bit RGB."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
DEFAULT_MAX_PIXELS = 64_000_000
_BAND_PIXELS = 1 << 20  # high-bit-depth images are converted in bands of about this many pixels


def open_regular(path: str | Path, field: str = "file_name") -> BinaryIO:
    """Open a local file for reading, refusing (DataError) anything that is not a regular file.

    The file is opened non-blocking and checked on the open descriptor, so a named pipe, a device or a folder is
    refused before any read (a FIFO would block a plain ``open`` until a writer comes). Raises
    FileNotFoundError when nothing is there.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "a named pipe"
                if stat.S_ISFIFO(mode)
                else "a folder"
                if stat.S_ISDIR(mode)
                else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket"
                if stat.S_ISSOCK(mode)
                else "not a regular file"
            )
            raise DataError(path, path.name, field, f"{kind}, not a regular file: refused before reading")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _high_depth_to_rgb8(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def _high_depth_to_rgb8(img: Image.Image) -> np.ndarray:
    """16-bit, 32-bit int or float grayscale to 8-bit RGB in row bands, so memory stays near the 3-byte output
    (a float64 copy of a 64 MP image alone would be 512 MB)."""
    w, h = img.size
    out = np.empty((h, w, 3), dtype=np.uint8)
    if w == 0 or h == 0:
        return out
    lo_hi = img.getextrema()
    hi = float(lo_hi[1]) if isinstance(lo_hi, tuple) else 0.0
    scale = 65535.0 if img.mode.startswith("I;16") or hi > 255 else 255.0
    rows = max(1, _BAND_PIXELS // w)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        band = np.array(img.crop((0, y0, w, y1)), dtype=np.float64)
        band /= scale
        band *= 255.0
        band += 0.5
        np.clip(band, 0, 255, out=band)
        out[y0:y1] = band.astype(np.uint8)[:, :, None]
    return out


def image_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) after EXIF orientation, reading only the header; raises DataError on bad files."""
    path = Path(path)
    try:
        with open_regular(path) as f, Image.open(f) as img:
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
        with open_regular(path) as f, Image.open(f) as img:
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


def check_file_name(root: object, file_name: object) -> None:
    """Refuse an empty, NUL-bearing or absolute file name (a ``DataError`` naming ``root`` and the name)."""
    if not isinstance(file_name, str) or not file_name or "\x00" in file_name:
        raise DataError(root, file_name, "file_name", "empty or invalid file name")
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")):
        raise DataError(root, file_name, "file_name", "absolute file name is not allowed")


def safe_join(root: str | Path, file_name: str) -> Path:
    """Join ``file_name`` under ``root``, refusing absolute paths and anything that escapes ``root``."""
    root = Path(root).resolve()
    check_file_name(root, file_name)
    candidate = (root / file_name).resolve()
    if candidate != root and root not in candidate.parents:
        raise DataError(root, file_name, "file_name", "file name escapes the dataset folder")
    return candidate


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write an image atomically (temp file + rename) as PNG; deterministic bytes for the same array."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG", compress_level=6)
    os.replace(tmp, path)
