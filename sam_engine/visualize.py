"""Pictures people look at: mask overlays, image grids, and PNGs embedded in Markdown metadata."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
from PIL import Image

from . import storage
from .data import rle as rle_utils
from .data.corpus import MaskCorpus


def colors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct bright colours (deterministic)."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(n) * 0.618033988749895 + rng.random()) % 1.0
    out = []
    for h in hues:
        i = int(h * 6)
        f = h * 6 - i
        q, t = 1 - f, f
        r, g, b = [(1, t, 0), (q, 1, 0), (0, 1, t), (0, q, 1), (t, 0, 1), (1, 0, q)][i % 6]
        out.append((int(255 * r), int(255 * g), int(255 * b)))
    return np.asarray(out, dtype=np.float32).reshape(-1, 3)


def overlay(
    image: np.ndarray,
    masks: list[np.ndarray] | np.ndarray,
    alpha: float = 0.5,
    points: list[tuple[float, float, int]] | None = None,
) -> np.ndarray:
    """Draw masks (largest first, so small ones stay visible) and optional clicks (x, y, label) on an image."""
    out = image.astype(np.float32).copy()
    masks = list(masks)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    palette = colors(max(1, len(masks)))
    for k, i in enumerate(order):
        m = masks[i].astype(bool)
        out[m] = out[m] * (1 - alpha) + palette[k] * alpha
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out[edge] = palette[k]
    for x, y, label in points or []:
        xi, yi = int(round(x)), int(round(y))
        color = (0, 255, 0) if label == 1 else (255, 0, 0)
        out[max(0, yi - 2) : yi + 3, max(0, xi - 2) : xi + 3] = color
    return np.clip(out, 0, 255).astype(np.uint8)


def grid(images: list[np.ndarray], cols: int = 3, cell: int = 192, pad: int = 4) -> np.ndarray:
    """Tile images (each fitted into ``cell`` x ``cell``) into one picture."""
    rows = max(1, -(-len(images) // cols))
    canvas = np.full((rows * (cell + pad) + pad, cols * (cell + pad) + pad, 3), 255, dtype=np.uint8)
    for k, im in enumerate(images):
        scale = cell / max(im.shape[:2])
        small = np.asarray(
            Image.fromarray(im).resize(
                (max(1, int(im.shape[1] * scale)), max(1, int(im.shape[0] * scale))), Image.BILINEAR
            )
        )
        r, c = divmod(k, cols)
        y, x = pad + r * (cell + pad), pad + c * (cell + pad)
        canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
    return canvas


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def markdown_image(image: np.ndarray, title: str = "") -> str:
    """A Markdown image with the PNG inlined as base64 (Dagster's UI renders it in metadata)."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(png_bytes(image)).decode('ascii')})"


def corpus_preview(
    corpus: MaskCorpus, n: int = 6, cols: int = 3, cache_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """A grid of the first ``n`` images with their masks overlaid (remote images through the ``cache_dir``
    cache of ``sam_engine.storage``)."""
    tiles = []
    for im in corpus.images[:n]:
        arr = storage.load_image_at(im.path, cache_dir=cache_dir)
        anns = corpus.masks_for(im.image_id)
        masks = [rle_utils.decode(a["segmentation"]) for a in anns]
        tiles.append(overlay(arr, masks) if masks else arr)
    return grid(tiles, cols=cols)


def corpus_preview_markdown(
    corpus: MaskCorpus, n: int = 6, cache_dir: str | os.PathLike | None = None
) -> str:
    return markdown_image(corpus_preview(corpus, n, cache_dir=cache_dir), "preview")
