"""Official SamAutomaticMaskGenerator vs sam_engine.amg: speed and agreement on the same weights and images.

Run with the reference environment (official segment-anything + torchvision)::

    /work/main/.refenv/bin/python tools/bench_official_amg.py [--checkpoint PATH] [--images N]
        [--points-per-side 32] [--relaxed] [--json OUT]

The official side builds the official ``Sam`` with the tiny configuration, loads the official-layout checkpoint
(default: tests/fixtures/official_tiny/sam_official_tiny.pth; a sam-engine checkpoint {config, state_dict}
works too; when absent, random-init tiny weights, seed 0, exported by the main venv) and times the official generator on the images. The images and settings go into a
shared .npz; ours runs in a subprocess with the main venv (``--ours`` mode of this file), times itself on the
same images and computes agreement: the share of official masks matched by one of ours at mask IoU > 0.95,
and vice versa. Speed is reported as wall-clock and as process CPU time (steadier when other work shares
the cores). Both sides use one warm-up image, the same torch thread count, and no crop layers unless
``--crop-n-layers`` is given. ``--relaxed`` lowers pred_iou_thresh / stability thresholds in BOTH generators
(random weights give no confident masks otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MAIN_PY = ROOT / ".venv" / "bin" / "python"
FIXTURE = ROOT / "tests" / "fixtures" / "official_tiny" / "sam_official_tiny.pth"
IMAGES_DIR = Path("/work/shared/data/coco_tiny/val2017")
RELAXED = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.05, "stability_score_offset": 0.02}


# ------------------------------------------------------------------------------------------ shared
def _settings(args: argparse.Namespace) -> dict:
    s = {
        "points_per_side": args.points_per_side,
        "points_per_batch": 64,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "stability_score_offset": 1.0,
        "box_nms_thresh": 0.7,
        "crop_n_layers": args.crop_n_layers,
        "min_mask_region_area": 0,
    }
    if args.relaxed:
        s.update(RELAXED)
    return s


def _load_images(n: int, max_side: int) -> list[np.ndarray]:
    from PIL import Image

    files = sorted(IMAGES_DIR.glob("*.jpg"))[:n]
    if not files:
        raise SystemExit(f"no images in {IMAGES_DIR}")
    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        scale = max_side / max(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        out.append(np.asarray(im).copy())
    return out


# ------------------------------------------------------------------------------------------ official side
def _official_sam(args: argparse.Namespace, work: Path):
    """The official Sam with the checkpoint's configuration and weights: (model, config, state path, label)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    ckpt = Path(args.checkpoint) if args.checkpoint else FIXTURE
    weights = str(ckpt)
    # The main venv resolves the weights: the checkpoint (official layout, or sam-engine's {config, state_dict})
    # or, when there is none, random-init tiny weights (seed 0); it writes a plain state dict and the config.
    cfg_path = work / "config.json"
    state_path = work / "state.pth"
    cmd = [
        str(MAIN_PY),
        str(Path(__file__).resolve()),
        "--export",
        str(ckpt) if ckpt.exists() else "",
        "--checkpoint",
        str(state_path),
        "--config",
        str(cfg_path),
    ]
    subprocess.run(cmd, check=True)
    if not ckpt.exists():
        weights = "random-init tiny (seed 0); no checkpoint found"
    cfg = json.loads(cfg_path.read_text())

    from functools import partial

    grid = cfg["img_size"] // cfg["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg["encoder_depth"],
            embed_dim=cfg["encoder_embed_dim"],
            img_size=cfg["img_size"],
            mlp_ratio=cfg["encoder_mlp_ratio"],
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg["encoder_num_heads"],
            patch_size=cfg["patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(cfg["encoder_global_attn_indexes"]),
            window_size=cfg["encoder_window_size"],
            out_chans=cfg["out_chans"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg["out_chans"],
            image_embedding_size=(grid, grid),
            input_image_size=(cfg["img_size"], cfg["img_size"]),
            mask_in_chans=cfg["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=cfg["decoder_depth"],
                embedding_dim=cfg["out_chans"],
                mlp_dim=cfg["decoder_mlp_dim"],
                num_heads=cfg["decoder_num_heads"],
            ),
            transformer_dim=cfg["out_chans"],
            iou_head_depth=cfg["iou_head_depth"],
            iou_head_hidden_dim=cfg["iou_head_hidden_dim"],
        ),
        pixel_mean=list(cfg["pixel_mean"]),
        pixel_std=list(cfg["pixel_std"]),
    )
    sam.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    sam.eval()
    return sam, cfg, state_path, weights


def _official_main(args: argparse.Namespace) -> None:
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="amg_official_"))
    if args.model == "fake":
        sys.path.insert(0, str(ROOT / "tools"))
        from amg_fake_sam import FakeSam, scene

        sam, cfg, state_path = FakeSam(), {"model": "fake"}, work / "none"
        weights = "fake colour-segment model (tools/amg_fake_sam.py)"
        images = [scene(480, 640, seed=i) for i in range(args.images)]
    else:
        sam, cfg, state_path, weights = _official_sam(args, work)
        images = _load_images(args.images, args.max_side)
    settings = _settings(args)
    inputs = work / "inputs.npz"
    np.savez(inputs, **{f"image_{i}": im for i, im in enumerate(images)}, settings=json.dumps(settings))

    gen = SamAutomaticMaskGenerator(sam, output_mode="uncompressed_rle", **settings)
    gen.generate(images[0])  # warm-up
    results, per_image = [], []
    start, cpu = time.perf_counter(), time.process_time()
    for im in images:
        t0 = time.perf_counter()
        results.append(gen.generate(im))
        per_image.append(time.perf_counter() - t0)
    official_s = time.perf_counter() - start
    official_cpu = time.process_time() - cpu
    official = {
        "seconds": official_s,
        "cpu_seconds": official_cpu,
        "per_image": per_image,
        "masks": [
            [{"counts": r["segmentation"]["counts"], "size": r["segmentation"]["size"]} for r in res]
            for res in results
        ],
    }
    official_path = work / "official.json"
    official_path.write_text(json.dumps(official))
    (work / "config.json").write_text(json.dumps(cfg))

    cmd = [
        str(MAIN_PY),
        str(Path(__file__).resolve()),
        "--ours",
        str(inputs),
        "--official",
        str(official_path),
        "--checkpoint",
        str(state_path),
        "--config",
        str(work / "config.json"),
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"our generator failed (exit {proc.returncode}); inputs kept in {work}")
    ours = json.loads(proc.stdout.strip().splitlines()[-1])
    n = len(images)
    report = {
        "weights": weights,
        "settings": settings,
        "relaxed_thresholds": bool(args.relaxed),
        "images": n,
        "image_sizes": [list(im.shape[:2]) for im in images],
        "threads": args.threads,
        "official_images_per_s": n / official_s,
        "ours_images_per_s": n / ours["seconds"],
        "ours_batch_images_per_s": n / ours["batch_seconds"],
        "speed_ratio": official_s / ours["seconds"],
        "cpu_time_ratio": official_cpu / ours["cpu_seconds"],
        "speed_ratio_batch": official_s / ours["batch_seconds"],
        "official_masks": sum(len(m) for m in official["masks"]),
        "ours_masks": ours["num_masks"],
        "official_matched_by_ours@0.95": ours["official_matched"],
        "ours_matched_by_official@0.95": ours["ours_matched"],
        "mean_best_iou_official": ours["mean_best_iou_official"],
    }
    report["config"] = cfg
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


# ------------------------------------------------------------------------------------------ our side
def _export_main(args: argparse.Namespace) -> None:
    """Write the weights as a plain state dict and their config (random-init tiny, seed 0, without a checkpoint)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from sam_engine.model import MODEL_CONFIGS, build_sam

    cfg, state = MODEL_CONFIGS["tiny"].to_dict(), None
    if args.export:
        raw = torch.load(args.export, map_location="cpu", weights_only=True)
        sidecar = Path(args.export).with_name(
            "config.json"
        )  # the official fixture keeps its config beside it
        if isinstance(raw, dict) and "state_dict" in raw:
            cfg = raw.get("config") or cfg
            raw = raw["state_dict"]
        elif sidecar.exists() and "config" in json.loads(sidecar.read_text()):
            cfg = json.loads(sidecar.read_text())["config"]
        state = raw
    model = build_sam(cfg, seed=0)
    if state is not None:
        model.load_state_dict(state)
    torch.save(model.state_dict(), args.checkpoint)
    Path(args.config).write_text(json.dumps(cfg))


def _ours_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    from pycocotools import mask as mask_utils

    from sam_engine.amg import AmgParams, AutomaticMaskGenerator
    from sam_engine.model import build_sam

    torch.set_num_threads(args.threads)
    data = np.load(args.ours)
    settings = json.loads(str(data["settings"]))
    images = [data[f"image_{i}"] for i in range(len([k for k in data.files if k.startswith("image_")]))]
    cfg = json.loads(Path(args.config).read_text())
    if cfg.get("model") == "fake":
        sys.path.insert(0, str(ROOT / "tools"))
        from amg_fake_sam import FakeSam

        model = FakeSam()
    else:
        model = build_sam(cfg)
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    # same algorithm settings; the 95 % area filter is not in the official generator, so it is off here
    params = AmgParams(**settings, max_mask_area_ratio=None, encoder_batch_size=len(images))
    gen = AutomaticMaskGenerator(model, params)
    gen.generate(images[0])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    results = [gen.generate(im) for im in images]
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    start = time.perf_counter()
    gen.generate_batch(images)
    batch_seconds = time.perf_counter() - start

    official = json.loads(Path(args.official).read_text())["masks"]
    matched_o = matched_u = total_o = total_u = 0
    best_o: list[float] = []
    for ours_recs, off in zip(results, official, strict=True):
        a = [
            {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
            for r in ours_recs
        ]
        b = [mask_utils.frPyObjects(o, o["size"][0], o["size"][1]) for o in off]
        total_o += len(b)
        total_u += len(a)
        if not a or not b:
            best_o.extend([0.0] * len(b))
            continue
        iou = np.asarray(mask_utils.iou(a, b, [0] * len(b)))  # (ours, official)
        matched_o += int((iou.max(axis=0) > 0.95).sum())
        matched_u += int((iou.max(axis=1) > 0.95).sum())
        best_o.extend(iou.max(axis=0).tolist())
    out = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "batch_seconds": batch_seconds,
        "num_masks": total_u,
        "official_matched": matched_o / total_o if total_o else None,
        "ours_matched": matched_u / total_u if total_u else None,
        "mean_best_iou_official": float(np.mean(best_o)) if best_o else None,
    }
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--relaxed", action="store_true")
    ap.add_argument("--model", choices=["sam", "fake"], default="sam")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("AMG_BENCH_THREADS", "2")))
    ap.add_argument("--json", default=None)
    ap.add_argument("--ours", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--official", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--export", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.export is not None:
        _export_main(args)
    elif args.ours:
        _ours_main(args)
    else:
        _official_main(args)


if __name__ == "__main__":
    main()
