"""Write the embedded default corpora to disk, and load any corpus (generated or real) back.

Layout under ``<data_dir>/corpora`` (see docs/architecture.md):
``public/`` (COCO: images + train.json + val.json), ``target_pool/`` (images + images.json, no masks),
``target_pool_gt/annotations.json`` (hidden ground truth), ``gold/`` (images + annotations.json),
``manifest.json`` (what was generated, with which seed and settings).

Generation is idempotent: when the manifest matches the requested settings nothing is rewritten.
Each dataset is built in a staging folder and renamed into place, so a killed run leaves the previous
complete dataset (or none), never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from .. import storage
from ..config import CorpusConfig, EngineConfig
from ..io import atomic_write_json
from .coco import load_coco, write_coco
from .corpus import MaskCorpus
from .folder import attach_ground_truth, load_image_folder
from .images import save_png
from .synthetic import (
    DOMAIN_GOLD,
    DOMAIN_POOL,
    DOMAIN_PUBLIC,
    GENERATOR_VERSION,
    ID_OFFSETS,
    pool_scene,
    public_scene,
)

PUBLIC, POOL, POOL_GT, GOLD = "public", "target_pool", "target_pool_gt", "gold"


def _settings(cfg: CorpusConfig, seed: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "public_images": cfg.public_images,
        "pool_images": cfg.pool_images,
        "gold_images": cfg.gold_images,
        "public_size": list(cfg.public_size),
        "pool_size": list(cfg.pool_size),
        "regions": cfg.regions,
        "public_val_fraction": cfg.public_val_fraction,
    }


def _job(args: tuple) -> tuple[dict, list[dict]]:
    kind, seed, index, size, regions, images_dir = args
    domain = {PUBLIC: DOMAIN_PUBLIC, GOLD: DOMAIN_GOLD}.get(kind, DOMAIN_POOL)
    if domain == DOMAIN_PUBLIC:
        scene = public_scene(seed, index, size)
    else:
        scene = pool_scene(seed, index, size, regions, domain)
    image_id = ID_OFFSETS[domain] + index
    h, w = scene.image.shape[:2]
    file_name = f"{image_id}.png"
    save_png(scene.image, Path(images_dir) / file_name)
    rec = {"id": image_id, "file_name": file_name, "width": w, "height": h}
    if scene.region is not None:
        rec["region"] = scene.region
    return rec, scene.annotations


def _run_jobs(jobs: list[tuple], workers: int, desc: str) -> list[tuple[dict, list[dict]]]:
    if workers <= 1 or len(jobs) < 64:
        return [_job(j) for j in tqdm(jobs, desc=desc, leave=False, disable=None)]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pool = ctx.Pool(workers, initializer=_plain_signals)
    try:
        out = list(
            tqdm(pool.imap(_job, jobs, chunksize=16), total=len(jobs), desc=desc, leave=False, disable=None)
        )
    except BaseException:
        pool.terminate()
        raise
    pool.close()  # workers exit on their own; terminate() would signal them
    pool.join()
    return out


def _plain_signals() -> None:
    """Workers forked from a Dagster step must not run the step's signal handlers."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _staging(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.staging")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    return tmp


def _swap_in(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate_corpora(
    cfg: EngineConfig, workers: int | None = None, log: Callable[[str], None] | None = None
) -> dict:
    """Generate the public corpus, target pool (+ hidden GT) and gold set; return the manifest."""
    root = cfg.corpora_dir
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    settings = _settings(cfg.corpus, cfg.seed)
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("settings") == settings and all(
            (root / d).is_dir() for d in (PUBLIC, POOL, POOL_GT, GOLD)
        ):
            if log:
                log("corpora already generated with these settings; nothing rewritten")
            return manifest
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    c = cfg.corpus
    counts: dict[str, dict] = {}

    # public corpus (domain A), split by index into train / val
    tmp = _staging(root / PUBLIC)
    results = _run_jobs(
        [
            (PUBLIC, cfg.seed, i, tuple(c.public_size), c.regions, tmp / "images")
            for i in range(c.public_images)
        ],
        workers,
        "public corpus",
    )
    n_val = max(1, int(round(c.public_images * c.public_val_fraction)))
    train, val = results[:-n_val], results[-n_val:]
    for name, part in (("train", train), ("val", val)):
        write_coco(tmp / f"{name}.json", [r for r, _ in part], [a for _, anns in part for a in anns])
    counts[PUBLIC] = {
        "images": len(results),
        "train_images": len(train),
        "val_images": len(val),
        "masks": sum(len(a) for _, a in results),
    }
    _swap_in(tmp, root / PUBLIC)
    if log:
        log(f"public corpus: {counts[PUBLIC]}")

    # target pool (domain B): images + region metadata; the ground truth goes to a separate folder
    tmp = _staging(root / POOL)
    results = _run_jobs(
        [(POOL, cfg.seed, i, tuple(c.pool_size), c.regions, tmp / "images") for i in range(c.pool_images)],
        workers,
        "target pool",
    )
    write_coco(tmp / "images.json", [r for r, _ in results], [])
    gt_tmp = root / f".{POOL_GT}.staging"
    if gt_tmp.exists():
        shutil.rmtree(gt_tmp)
    gt_tmp.mkdir(parents=True)
    write_coco(gt_tmp / "annotations.json", [r for r, _ in results], [a for _, anns in results for a in anns])
    counts[POOL] = {"images": len(results), "regions": _region_counts(r for r, _ in results)}
    counts[POOL_GT] = {"masks": sum(len(a) for _, a in results)}
    _swap_in(tmp, root / POOL)
    _swap_in(gt_tmp, root / POOL_GT)
    if log:
        log(f"target pool: {counts[POOL]}")

    # gold set (held-out domain B with ground truth)
    tmp = _staging(root / GOLD)
    results = _run_jobs(
        [(GOLD, cfg.seed, i, tuple(c.pool_size), c.regions, tmp / "images") for i in range(c.gold_images)],
        workers,
        "gold set",
    )
    write_coco(tmp / "annotations.json", [r for r, _ in results], [a for _, anns in results for a in anns])
    counts[GOLD] = {
        "images": len(results),
        "masks": sum(len(a) for _, a in results),
        "whole_objects": sum(1 for _, anns in results for a in anns if a["level"] == "whole"),
    }
    _swap_in(tmp, root / GOLD)
    if log:
        log(f"gold set: {counts[GOLD]}")

    files = {
        "public/train.json": _sha(root / PUBLIC / "train.json"),
        "public/val.json": _sha(root / PUBLIC / "val.json"),
        "target_pool/images.json": _sha(root / POOL / "images.json"),
        "target_pool_gt/annotations.json": _sha(root / POOL_GT / "annotations.json"),
        "gold/annotations.json": _sha(root / GOLD / "annotations.json"),
    }
    manifest = {"settings": settings, "counts": counts, "sha256": files}
    atomic_write_json(manifest_path, manifest, indent=2)
    return manifest


def extra_public_images(cfg: EngineConfig, count: int, folder: Path) -> tuple[Path | None, str | None]:
    """``count`` more domain-A images, at indices after the engine's public corpus (so the public validation
    split stays held out), written as COCO to ``folder`` (``annotations.json`` + ``images/``); reused when
    already written with these settings. Returns (annotations path, its sha256), or (None, None) for 0."""
    if count <= 0:
        return None, None
    c = cfg.corpus
    settings = {**_settings(c, cfg.seed), "extra_start": c.public_images, "extra_count": count}
    folder = Path(folder)
    marker = folder / "settings.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return folder / "annotations.json", _sha(folder / "annotations.json")
    tmp = _staging(folder)
    start = c.public_images
    results = _run_jobs(
        [
            (PUBLIC, cfg.seed, i, tuple(c.public_size), c.regions, tmp / "images")
            for i in range(start, start + count)
        ],
        min(2, os.cpu_count() or 1),
        "extra public images",
    )
    write_coco(tmp / "annotations.json", [r for r, _ in results], [a for _, anns in results for a in anns])
    atomic_write_json(tmp / "settings.json", settings)
    _swap_in(tmp, folder)
    return folder / "annotations.json", _sha(folder / "annotations.json")


def _region_counts(records: Iterable[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r.get("region") or "none"] = out.get(r.get("region") or "none", 0) + 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------------- loading


def load_public(cfg: EngineConfig, split: str = "train", verify_images: bool = False) -> MaskCorpus:
    """The public corpus: the user's COCO dataset when configured, else the generated one."""
    c = cfg.corpus
    if c.public_coco_json:
        return load_coco(
            c.public_coco_json,
            c.public_images_dir or Path(c.public_coco_json).parent,
            max_pixels=c.max_pixels,
            verify_images=verify_images,
        )
    return load_coco(
        cfg.corpora_dir / PUBLIC / f"{split}.json",
        cfg.corpora_dir / PUBLIC / "images",
        max_pixels=c.max_pixels,
        verify_images=verify_images,
    )


def load_pool(cfg: EngineConfig, verify_images: bool = False) -> MaskCorpus:
    """The target pool's images (no masks): a user's image folder when configured, else the generated pool.

    ``corpus.pool_images_dir`` may be an fsspec URL (``s3://``, ``gs://``...): its images are read through the
    engine's cache (``storage.data_cache_dir(data_dir)``) and their records' ``path`` is the URL.
    """
    c = cfg.corpus
    if c.pool_images_dir:
        return load_image_folder(
            c.pool_images_dir,
            max_pixels=c.max_pixels,
            verify_images=verify_images,
            cache_dir=storage.data_cache_dir(cfg.data_dir),
        )
    return load_coco(
        cfg.corpora_dir / POOL / "images.json",
        cfg.corpora_dir / POOL / "images",
        max_pixels=c.max_pixels,
        verify_images=verify_images,
    )


def load_pool_ground_truth(cfg: EngineConfig) -> MaskCorpus | None:
    """Hidden ground truth of the pool, for simulated annotators and evaluation only (None if there is none)."""
    c = cfg.corpus
    if c.pool_images_dir:
        if not c.pool_gt_json:
            return None
        gt = load_coco(
            c.pool_gt_json,
            c.pool_images_dir,
            max_pixels=c.max_pixels,
            verify_images=False,
            cache_dir=storage.data_cache_dir(cfg.data_dir),
        )
        return attach_ground_truth(load_pool(cfg), gt)
    return load_coco(
        cfg.corpora_dir / POOL_GT / "annotations.json",
        cfg.corpora_dir / POOL / "images",
        max_pixels=c.max_pixels,
        verify_images=False,
    )


def load_gold(cfg: EngineConfig) -> MaskCorpus:
    """The gold set: expert ground truth, held out from every training set."""
    return load_coco(
        cfg.corpora_dir / GOLD / "annotations.json",
        cfg.corpora_dir / GOLD / "images",
        max_pixels=cfg.corpus.max_pixels,
        verify_images=False,
    )
