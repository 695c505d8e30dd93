"""Stage-3 scale-out: shard throughput (images/s) through Dagster on a Dask cluster with 1 and 2 workers, the
AMG cost per image on this CPU, and the FLOP counts the SA-1B-scale estimate in docs/scaling.md starts from.

- ``stage3_in_process_sequential``: the same partitions materialized one after another in this process
  (default executor, torch's default thread count): the single-machine reference.
- ``stage3_dask_*``: the ``stage3_shards_dask`` job (jobs/executors.py) over 4 shard partitions of 3 smoke
  images each (AMG 8 points per side, random-init tiny model), runs submitted 2 at a time to one
  ``LocalCluster`` with 1, then 2 worker processes (1 thread each). Workers are warmed first (imports, one
  AMG call), so cluster start-up is not counted; Dagster's per-run overhead is. The ratio is 2 workers
  against 1 on the same shards in the same process.
- ``amg_s_per_image``: ``write_shard`` in process with the ``default`` profile's AMG settings on default-size
  pool scenes (192-320 px), tiny model, this CPU.
- ``flops_*``: operation counts of our SAM implementation (torch's FlopCounterMode on meta tensors, nothing
  computed): the ViT-H image encoder at 1024 px and the mask decoder per prompt point.

``quick=True`` skips Dask and Dagster: one small image through ``write_shard`` in process, and the tiny
model's FLOP counts (seconds).

``prepare_stage3`` (the upstream a stage-3 run needs, without training anything) is shared with
tests/test_scaleout.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH = "scaleout"
# Published figure the GPU estimate is calibrated on: SAM's ViT-H image encoder takes ~0.15 s per image on an
# NVIDIA A100 (segment-anything.com FAQ; Kirillov et al. 2023, "Segment Anything").
A100_VIT_H_ENCODER_S = 0.15
SA1B_IMAGES = 11_000_000


@dataclass
class Stage3Setup:
    """A data folder and persistent Dagster instance with everything ``sa1b_shards`` reads, and its plan."""

    root: Path
    instance: Any  # DagsterInstance
    profile: str
    overrides: dict[str, Any]
    partitions: list[str]

    @property
    def cfg(self):
        from sam_engine.config import load_config

        return load_config(self.profile, self.overrides)


def prepare_stage3(
    root: str | Path,
    *,
    stage3_images: int = 6,
    images_per_shard: int = 2,
    profile: str = "smoke",
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> Stage3Setup:
    """Generate the corpora, store a seeded random-init tiny model as ``model_v2``, and materialize
    ``stage3_plan`` (registering the shard partitions) on a persistent instance under ``root/dagster_home``.

    ``model_v2`` / ``eval_model_v2`` are stand-in assets with the real keys, so the fs IO manager holds the
    ``ModelRef`` that ``sa1b_shards`` loads, as after a full engine run.
    """
    from dagster import DagsterInstance, asset, materialize

    from assets.fully_automatic import stage3_plan
    from assets.resources import EngineResource
    from sam_engine.config import load_config
    from sam_engine.data.corpora import generate_corpora
    from sam_engine.engine.workspace import Workspace
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import save_checkpoint

    root = Path(root)
    overrides: dict[str, Any] = {
        "data_dir": str(root / "data"),
        "seed": seed,
        "stages": {"stage3_images": stage3_images, "images_per_shard": images_per_shard},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(overrides.get(key), dict):
            overrides[key] = {**overrides[key], **value}
        else:
            overrides[key] = value
    cfg = load_config(profile, overrides)
    generate_corpora(cfg, workers=1)
    ws = Workspace(cfg)
    init = root / "model_init.pt"
    save_checkpoint(build_sam(cfg.model.name, seed=seed), init, metadata={"note": "random init, seed"})
    ref = ws.model_store.put("model_v2", init)

    @asset(name="model_v2")
    def model_v2_standin():
        return ref

    @asset(name="eval_model_v2")
    def eval_model_v2_standin() -> dict:
        return {}

    (root / "dagster_home").mkdir(parents=True, exist_ok=True)
    instance = DagsterInstance.local_temp(tempdir=str(root / "dagster_home"))
    engine = EngineResource(profile=profile, overrides=json.dumps(overrides))
    result = materialize(
        [model_v2_standin, eval_model_v2_standin, stage3_plan],
        instance=instance,
        resources={"engine": engine},
    )
    if not result.success:
        raise RuntimeError("stage3_plan did not materialize")
    plan = result.output_for_node("stage3_plan")
    return Stage3Setup(root, instance, profile, overrides, sorted(plan))


def materialize_in_process(setup: Stage3Setup, partition: str):
    """One ``sa1b_shards`` partition with the default (in-process) execution, as ``make run`` does."""
    from dagster import AssetSelection, materialize

    from assets.resources import EngineResource
    from jobs.definitions import defs

    return materialize(
        list(defs.assets or []) + list(defs.asset_checks or []),
        instance=setup.instance,
        resources={"engine": EngineResource(profile=setup.profile, overrides=json.dumps(setup.overrides))},
        partition_key=partition,
        selection=AssetSelection.assets("sa1b_shards"),
    )


def _warm_worker() -> int:
    """Imports and one AMG call on a Dask worker, so a timing does not count them."""
    from jobs.backfill import stage3_shards_dask
    from sam_engine.amg import AmgParams, AutomaticMaskGenerator
    from sam_engine.model import build_sam

    stage3_shards_dask()
    image = np.zeros((48, 64, 3), np.uint8)
    AutomaticMaskGenerator(build_sam("tiny", seed=0), AmgParams(points_per_side=2)).generate(image)
    return os.getpid()


def dask_throughput(setup: Stage3Setup, n_workers: int, max_concurrent: int = 2) -> dict[str, float]:
    """Images/s of a backfill over all of ``setup``'s partitions on a fresh LocalCluster of ``n_workers``."""
    from dask.distributed import Client, LocalCluster

    from jobs.backfill import backfill_stage3
    from jobs.executors import stage3_dask_run_config

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True) as cluster:
        with Client(cluster) as client:
            client.run(_warm_worker)
        run_config = stage3_dask_run_config(
            cluster.scheduler_address, profile=setup.profile, overrides=setup.overrides
        )
        t0 = time.perf_counter()
        results = backfill_stage3(setup.instance, setup.partitions, run_config, max_concurrent=max_concurrent)
        seconds = time.perf_counter() - t0
    if not all(r.success for r in results.values()):
        raise RuntimeError(f"stage-3 Dask runs failed: {[k for k, r in results.items() if not r.success]}")
    images = sum(len(v) for v in _plan(setup).values())
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds}


def _plan(setup: Stage3Setup) -> dict[str, list[int]]:
    from sam_engine.engine.splits import shard_images, stage_split
    from sam_engine.engine.workspace import Workspace

    ws = Workspace(setup.cfg)
    stage3 = stage_split(ws.pool, ws.cfg)[3]
    return {k: [r.image_id for r in shard_images(stage3, ws.cfg, k)[1]] for k in setup.partitions}


def amg_seconds_per_image(profile: str = "default", n_images: int = 4, seed: int = 0) -> dict[str, float]:
    """In-process ``write_shard`` seconds per image with ``profile``'s AMG settings and pool image sizes."""
    import torch

    from sam_engine.config import load_config
    from sam_engine.data.corpus import ImageRecord
    from sam_engine.data.images import save_png
    from sam_engine.data.synthetic import pool_scene
    from sam_engine.engine.models import amg_params
    from sam_engine.engine.workspace import Workspace
    from sam_engine.model import build_sam
    from sam_engine.stage3 import write_shard

    cfg = load_config(profile, {"data_dir": tempfile.gettempdir()})
    params = amg_params(Workspace(cfg))
    model = build_sam(cfg.model.name, seed=seed).eval()
    with tempfile.TemporaryDirectory() as tmp:
        records = []
        for i in range(n_images):
            scene = pool_scene(seed, i, cfg.corpus.pool_size, cfg.corpus.regions)
            path = Path(tmp) / f"pool_{i}.png"
            save_png(scene.image, path)
            h, w = scene.image.shape[:2]
            records.append(ImageRecord(i, path, w, h, path.name))
        write_shard(0, records[:1], model, params, Path(tmp) / "warm", seed=seed)  # warm-up
        t0 = time.perf_counter()
        result = write_shard(1, records, model, params, Path(tmp) / "shards", seed=seed)
        seconds = time.perf_counter() - t0
    return {
        "seconds_per_image": seconds / n_images,
        "masks_per_image": result.num_masks / n_images,
        "points_per_side": float(params.points_per_side or 0),
        "torch_threads": float(torch.get_num_threads()),
    }


def flop_counts(model_name: str = "vit_h") -> dict[str, float]:
    """GFLOPs of the image encoder (one image at the model's input size) and of the decoder per point."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sam_engine.model.build import _build, get_config

    cfg = get_config(model_name)
    with torch.device("meta"):
        model = _build(cfg)
    model.eval().requires_grad_(False)
    n = 16
    with torch.inference_mode():
        x = torch.zeros(1, 3, cfg.img_size, cfg.img_size, device="meta")
        with FlopCounterMode(display=False) as enc:
            emb = model.image_encoder(x)
        pts = torch.zeros(n, 1, 2, device="meta")
        labels = torch.ones(n, 1, dtype=torch.int64, device="meta")
        with FlopCounterMode(display=False) as dec:
            model.decode(emb, pts, labels, multimask_output=True)
    return {
        "encoder_gflop": enc.get_total_flops() / 1e9,
        "decoder_gflop_per_point": dec.get_total_flops() / 1e9 / n,
        "img_size": float(cfg.img_size),
    }


def sa1b_gpu_hours(
    encoder_gflop: float,
    decoder_gflop_per_point: float,
    points_per_side: int = 32,
    crops: int = 4,
    crop_points_per_side: int = 16,
    images: int = SA1B_IMAGES,
    encoder_seconds: float = A100_VIT_H_ENCODER_S,
    decoder_efficiency: float = 1.0,
) -> dict[str, float]:
    """A100-hours for AMG over ``images``: encoder time from the published figure, decoder time from its FLOP
    count at the encoder's effective FLOP rate times ``decoder_efficiency`` (an estimate, not a measurement)."""
    rate = encoder_gflop / encoder_seconds  # GFLOP/s the published encoder time implies
    points = points_per_side**2 + crops * crop_points_per_side**2
    per_image = (1 + crops) * encoder_seconds + points * decoder_gflop_per_point / (rate * decoder_efficiency)
    return {"seconds_per_image": per_image, "gpu_hours": per_image * images / 3600.0, "points": float(points)}


def _quick_rows() -> list[dict]:
    from sam_engine.amg import AmgParams
    from sam_engine.data.corpus import ImageRecord
    from sam_engine.data.images import save_png
    from sam_engine.model import build_sam
    from sam_engine.stage3 import write_shard

    model = build_sam("tiny", seed=0).eval()
    params = AmgParams(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "img_1.png"
        save_png(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8), path)
        rec = ImageRecord(1, path, 64, 48, path.name)
        write_shard(0, [rec], model, params, Path(tmp) / "warm", seed=0, blur=False)
        t0 = time.perf_counter()
        write_shard(0, [rec], model, params, Path(tmp) / "shards", seed=0, blur=False)
        seconds = time.perf_counter() - t0
    flops = flop_counts("tiny")
    return [
        {
            "benchmark": BENCH,
            "metric": "stage3_in_process_tiny_quick",
            "value": 1 / seconds,
            "unit": "images/s",
        },
        {
            "benchmark": BENCH,
            "metric": "flops_encoder_tiny_256px",
            "value": flops["encoder_gflop"],
            "unit": "GFLOP",
        },
    ]


def run(quick: bool = False) -> list[dict]:
    if quick:
        return _quick_rows()
    rows: list[dict] = []
    root = Path(tempfile.mkdtemp(prefix="bench_scaleout_"))
    setup = None
    try:
        setup = prepare_stage3(root, stage3_images=12, images_per_shard=3)
        for key in setup.partitions[:1]:  # warm-up: imports, first AMG call
            materialize_in_process(setup, key)
        t0 = time.perf_counter()
        for key in setup.partitions:
            if not materialize_in_process(setup, key).success:
                raise RuntimeError(f"in-process run for {key} failed")
        in_process = sum(len(v) for v in _plan(setup).values()) / (time.perf_counter() - t0)
        one = dask_throughput(setup, 1)
        two = dask_throughput(setup, 2)
        rows.append(
            {
                "benchmark": BENCH,
                "metric": "stage3_in_process_sequential",
                "value": in_process,
                "unit": "images/s",
            }
        )
        rows.append(
            {
                "benchmark": BENCH,
                "metric": "stage3_dask_1_worker",
                "value": one["images_per_s"],
                "unit": "images/s",
            }
        )
        rows.append(
            {
                "benchmark": BENCH,
                "metric": "stage3_dask_2_workers",
                "value": two["images_per_s"],
                "unit": "images/s",
                "baseline": one["images_per_s"],
                "ratio": two["images_per_s"] / one["images_per_s"],
            }
        )
    finally:
        if setup is not None:
            setup.instance.dispose()
        shutil.rmtree(root, ignore_errors=True)
    amg = amg_seconds_per_image("default")
    rows.append(
        {
            "benchmark": BENCH,
            "metric": "amg_s_per_image_default_profile_tiny_cpu",
            "value": amg["seconds_per_image"],
            "unit": "s/image",
        }
    )
    vit_h = flop_counts("vit_h")
    rows.append(
        {
            "benchmark": BENCH,
            "metric": "flops_encoder_vit_h_1024px",
            "value": vit_h["encoder_gflop"],
            "unit": "GFLOP",
        }
    )
    rows.append(
        {
            "benchmark": BENCH,
            "metric": "flops_decoder_per_point",
            "value": vit_h["decoder_gflop_per_point"],
            "unit": "GFLOP",
        }
    )
    est = sa1b_gpu_hours(vit_h["encoder_gflop"], vit_h["decoder_gflop_per_point"])
    rows.append(
        {
            "benchmark": BENCH,
            "metric": "sa1b_amg_estimate_not_measured",
            "value": est["gpu_hours"],
            "unit": "A100-hours",
        }
    )
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--amg-only", action="store_true", help="only the AMG cost and FLOP rows")
    args = parser.parse_args()
    if args.amg_only:
        print(
            json.dumps(
                {"amg_default": amg_seconds_per_image("default"), "vit_h": flop_counts("vit_h")}, indent=1
            )
        )
    else:
        for row in run(quick=args.quick):
            print(json.dumps(row))
