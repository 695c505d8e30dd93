"""Run the click protocol on a folder benchmark (GrabCut / Berkeley / DAVIS / SBD-style layouts).

Layout: ``--images DIR`` holds the images, ``--masks DIR`` the masks, matched by file stem (``x.jpg`` with
``x.png`` / ``x.bmp``; several masks of one image as ``x_1.png``, ``x#002.png``, ``x-3.png``). Mask files are
read as:

- ``binary``: one object per file; 0 background, values above 128 the object, exactly 128 an ignored band
  (GrabCut's boundary) and 1 the object when the file only holds 0/1;
- ``instance``: one object per id 1..254 (DAVIS / SBD / VOC palette PNGs); 255 is void (ignored);
- ``auto`` (default): ``binary`` when the values are a subset of {0, 255}, {0, 1} or {0, 128, 255}, else ``instance``.

Usage::

    python -m sam_engine.evaluation.benchmark_folder --images DIR --masks DIR --checkpoint PATH --out DIR

writes ``per_object.csv`` and ``summary.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.errors import DataError
from ..data.images import IMAGE_SUFFIXES, load_image
from ..io import atomic_write_json, atomic_write_text
from .interactive import ClickProtocol, EvalObject, evaluate_objects, summarize

MASK_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".gif"}
_SUFFIX_RE = re.compile(r"^(?P<stem>.+?)[_#-](?P<idx>\d+)$")


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as an HxW integer array (palette indices kept; equal-channel RGB reduced to one channel)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, path.name, "mask", f"cannot read mask: {e}") from e
    if arr.ndim == 3:
        arr = arr[..., :3]
        if not (np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 0] == arr[..., 2])):
            raise DataError(
                path, path.name, "mask", "colour mask: save it as grayscale or palette-indexed PNG"
            )
        arr = arr[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(path, path.name, "mask", f"unexpected mask shape {arr.shape}")
    return arr.astype(np.int64)


def mask_objects(
    arr: np.ndarray, mask_format: str = "auto", source: str | Path = ""
) -> list[tuple[int, np.ndarray, np.ndarray | None]]:
    """Split one mask array into (object id, object mask, ignore mask or None) per object."""
    values = set(np.unique(arr).tolist())
    if mask_format == "auto":
        binary = values <= {0, 255} or values <= {0, 1} or values <= {0, 128, 255}
        mask_format = "binary" if binary else "instance"
    if mask_format == "binary":
        obj = arr == 1 if values <= {0, 1} else arr > 128
        ignore = arr == 128
        return [(1, obj, ignore if ignore.any() else None)] if obj.any() else []
    if mask_format == "instance":
        ignore = arr == 255
        ids = sorted(v for v in values if v not in (0, 255))
        if any(v < 0 or v > 255 for v in ids):
            raise DataError(source, Path(source).name, "mask", f"instance ids outside 0..255: {ids[:5]}")
        return [(int(i), arr == i, ignore if ignore.any() else None) for i in ids]
    raise ValueError(f"unknown mask format {mask_format!r}; expected auto, binary or instance")


def match_masks(images_dir: Path, masks_dir: Path) -> tuple[list[tuple[Path, list[Path]]], list[Path]]:
    """Pair each image with its mask files by stem; returns (pairs, masks without an image)."""
    for folder, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not folder.is_dir():
            raise DataError(folder, "-", what, "folder does not exist")
    images = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(images_dir, "-", "images", "no image files in the folder")
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            raise DataError(images_dir, p.name, "file_name", f"two images share the stem {p.stem!r}")
        by_stem[p.stem] = p
    masks = sorted(p for p in masks_dir.iterdir() if p.is_file() and p.suffix.lower() in MASK_SUFFIXES)
    if not masks:
        raise DataError(masks_dir, "-", "masks", "no mask files in the folder")
    found: dict[str, list[Path]] = {}
    orphans: list[Path] = []
    for m in masks:
        stem = m.stem
        if stem not in by_stem:
            hit = _SUFFIX_RE.match(stem)
            stem = hit.group("stem") if hit and hit.group("stem") in by_stem else None
        if stem is None:
            orphans.append(m)
        else:
            found.setdefault(stem, []).append(m)
    pairs = [(by_stem[s], sorted(found[s])) for s in sorted(found)]
    return pairs, orphans


def folder_objects(
    images_dir: str | Path, masks_dir: str | Path, mask_format: str = "auto"
) -> tuple[list[EvalObject], list[Path]]:
    """Every object of a folder benchmark, grouped by image, and the orphan mask files."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    pairs, orphans = match_masks(images_dir, masks_dir)
    objects: list[EvalObject] = []
    for image_path, mask_paths in pairs:
        img = load_image(image_path)
        for mpath in mask_paths:
            arr = read_mask(mpath)
            if arr.shape != img.shape[:2]:
                raise DataError(
                    mpath,
                    mpath.name,
                    "size",
                    f"mask is {arr.shape[1]}x{arr.shape[0]}, image {image_path.name} is "
                    f"{img.shape[1]}x{img.shape[0]}",
                )
            for oid, obj, ignore in mask_objects(arr, mask_format, mpath):
                objects.append(
                    EvalObject(
                        image_key=image_path.name,
                        image=img,
                        gt=obj,
                        ignore=ignore,
                        image_id=image_path.name,
                        object_id=f"{mpath.name}:{oid}",
                    )
                )
    return objects, orphans


def _subsample(objects: list[EvalObject], max_objects: int | None, seed: int) -> list[EvalObject]:
    if max_objects is None or len(objects) <= max_objects:
        return objects
    pick = np.random.default_rng(seed).choice(len(objects), size=max_objects, replace=False)
    return [objects[i] for i in sorted(pick)]


def run_benchmark(
    predictor: Any,
    images_dir: str | Path,
    masks_dir: str | Path,
    out_dir: str | Path,
    protocol: ClickProtocol | None = None,
    mask_format: str = "auto",
    max_objects: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate ``predictor`` on a folder benchmark; writes ``per_object.csv`` + ``summary.json``; returns the summary."""
    protocol = protocol or ClickProtocol()
    objects, orphans = folder_objects(images_dir, masks_dir, mask_format)
    if not objects:
        raise DataError(masks_dir, "-", "masks", "no objects found in the mask files")
    objects = _subsample(objects, max_objects, seed)
    df = evaluate_objects(predictor, objects, protocol)
    summary = summarize(df, protocol)
    summary["unmatched_masks"] = [p.name for p in orphans]
    summary["protocol"] = {
        "max_clicks": protocol.max_clicks,
        "multimask": protocol.multimask,
        "thresholds": list(protocol.thresholds),
        "report_clicks": list(protocol.report_clicks),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = df.drop(columns=["region"]).rename(columns={"image_id": "image"})
    table["ious"] = [" ".join(f"{v:.4f}" for v in row) for row in table["ious"]]
    table["clicks"] = [json.dumps(row) for row in table["clicks"]]
    atomic_write_text(out / "per_object.csv", table.to_csv(index=False))
    atomic_write_json(out / "summary.json", summary, indent=2)
    return summary


def load_predictor(
    checkpoint: str | Path | None,
    model: str = "tiny",
    device: str = "cpu",
    zoom: bool = True,
    snap: bool = True,
) -> Any:
    """The interactive predictor (``sam_engine.zoom``; ``zoom`` off: SAM's single pass) over a checkpoint (own
    format or official SAM), or an untrained ``model``."""
    from ..model import build_sam
    from ..zoom import interactive_predictor

    if checkpoint is None:
        sam = build_sam(model, seed=0)
    else:
        from ..model.checkpoint import load_model

        sam = load_model(checkpoint)
    sam.eval().to(device)
    return interactive_predictor(sam, zoom=zoom, snap=snap)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sam_engine.evaluation.benchmark_folder", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--images", required=True, type=Path, help="folder of images")
    ap.add_argument("--masks", required=True, type=Path, help="folder of mask files")
    ap.add_argument(
        "--checkpoint", type=Path, default=None, help="model checkpoint (own format or official SAM)"
    )
    ap.add_argument("--model", default="tiny", help="model config when no checkpoint is given")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--mask-format", choices=("auto", "binary", "instance"), default="auto")
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--multimask", choices=("first", "always", "never"), default="first")
    ap.add_argument("--max-objects", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--no-zoom", action="store_true", help="SAM's single pass on the whole image (no zoom-in)"
    )
    ap.add_argument("--no-snap", action="store_true", help="no region snapping (sam_engine/snap.py)")
    args = ap.parse_args(argv)
    protocol = ClickProtocol(max_clicks=args.max_clicks, multimask=args.multimask)
    try:
        predictor = load_predictor(
            args.checkpoint, args.model, args.device, zoom=not args.no_zoom, snap=not args.no_snap
        )
        summary = run_benchmark(
            predictor,
            args.images,
            args.masks,
            args.out,
            protocol,
            args.mask_format,
            args.max_objects,
            args.seed,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = [k for k in summary if k.startswith(("miou", "oracle_miou", "noc", "nof", "n_"))]
    print(json.dumps({k: summary[k] for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
