"""Official SamAutomaticMaskGenerator vs sam_engine.amg: speed and agreement on the same weights and images.

Run with the reference environment (official segment-anything + torchvision)::

    /work/main/.refenv/bin/python tools/bench_official_amg.py [--model sam|fake] [--checkpoint PATH]
        [--images N] [--images-dir DIR] [--points-per-side 32] [--crop-n-layers 0]
        [--pred-iou-thresh 0.88] [--stability-score-thresh 0.95] [--relaxed] [--json OUT]

``--model sam`` (default): the official ``Sam`` is built with the checkpoint's configuration and weights
(default checkpoint: tests/fixtures/official_tiny/sam_official_tiny.pth with its config.json; a sam-engine
checkpoint {config, state_dict} works too; without one, random-init tiny weights, seed 0), on COCO photos
from /work/shared/data/coco_tiny (or the .jpg / .jpeg / .png images of ``--images-dir``, in name order).
``--model fake``: a deterministic colour-segment stand-in for a trained SAM (below) on flat-colour scenes,
so both generators see meaningful, overlapping masks without trained weights.

The images and settings go into a shared .npz; ours runs in a subprocess with the main venv (``--ours`` mode
of this file), times itself on the same images and computes agreement: the share of official masks matched by
one of ours at mask IoU > 0.95, and vice versa. Speed is reported as wall-clock and as process CPU time
(steadier when other work shares the cores). Both sides use one warm-up image and the same torch thread count.
``--pred-iou-thresh`` / ``--stability-score-thresh`` replace the official defaults (0.88 / 0.95) in BOTH
generators (e.g. the engine's stage-3 0.88 / 0.92); ``--relaxed`` lowers pred_iou_thresh / stability
thresholds further in both (random weights give no confident masks otherwise). Our 95 % area filter is off
here (the official generator has none).
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
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
MAIN_PY = ROOT / ".venv" / "bin" / "python"
FIXTURE = ROOT / "tests" / "fixtures" / "official_tiny" / "sam_official_tiny.pth"
IMAGES_DIR = Path("/work/shared/data/coco_tiny/val2017")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
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
    if args.pred_iou_thresh is not None:
        s["pred_iou_thresh"] = args.pred_iou_thresh
    if args.stability_score_thresh is not None:
        s["stability_score_thresh"] = args.stability_score_thresh
    if args.relaxed:
        s.update(RELAXED)
    return s


def _load_images(n: int, max_side: int, images_dir: Path = IMAGES_DIR) -> list[np.ndarray]:
    from PIL import Image

    files = sorted(f for f in images_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:n]
    if not files:
        raise SystemExit(f"no images in {images_dir}")
    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        scale = max_side / max(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        out.append(np.asarray(im).copy())
    return out


# ------------------------------------------------------------------------------------------ fake model
# A deterministic stand-in for a trained SAM (``--model fake``), served to both generators.
#
# A deterministic stand-in for a trained SAM, usable by the official generator and by sam_engine's.
#
# It lets the two automatic mask generators be compared on meaningful, overlapping masks without trained
# weights. The "encoder" average-pools the normalized image to the low-res mask grid; for a point, mask k is
# the set of low-res cells whose colour is within ``TOLERANCES[k]`` of the colour under the point (logit
# ``SCALE * (tol - distance)``), and its predicted IoU is a fixed hash of that colour and k. On flat-colour
# scenes (``scene``) this gives object-like masks with soft, bilinearly upsampled edges. Only torch is needed,
# so the official (torchvision) environment and the main venv import the same file.
#
# Both APIs are served: the official predictor's (``prompt_encoder`` / ``mask_decoder`` / ``postprocess_masks``)
# and sam_engine's (``decode``).

TOLERANCES = (0.35, 0.9, 1.8)
SCALE = 20.0


class _Encoder(nn.Module):
    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 4)  # (B, 3, S/4, S/4): one colour per low-res mask cell


class _PromptEncoder(nn.Module):
    def forward(self, points=None, boxes=None, masks=None):
        coords, _ = points
        return coords.to(torch.float32), torch.zeros(coords.shape[0], 1)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1)


class _MaskDecoder(nn.Module):
    def forward(
        self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output
    ):
        emb = image_embeddings[0]  # (3, h, w)
        pts = sparse_prompt_embeddings[:, 0, :]  # (B, 2) in the input frame
        h, w = emb.shape[-2:]
        ix = (pts[:, 0] / 4).floor().long().clamp(0, w - 1)
        iy = (pts[:, 1] / 4).floor().long().clamp(0, h - 1)
        colour = emb[:, iy, ix].t()  # (B, 3)
        dist = (emb[None] - colour[:, :, None, None]).pow(2).sum(1).sqrt()  # (B, h, w)
        tol = torch.tensor(TOLERANCES)
        logits = SCALE * (tol[None, :, None, None] - dist[:, None])
        k = torch.arange(3, dtype=torch.float32)
        seed = colour @ torch.tensor([12.9898, 78.233, 37.719]) + 0.7
        frac = torch.frac(torch.sin(seed[:, None] * (k[None] + 1.0)) * 43758.5453).abs()
        iou = 0.80 + 0.19 * frac
        if not multimask_output:
            return logits[:, :1], iou[:, :1]
        return logits, iou


class FakeSam(nn.Module):
    """The stand-in model (see the module docstring)."""

    mask_threshold = 0.0
    image_format = "RGB"

    def __init__(self, img_size: int = 256) -> None:
        super().__init__()
        self.image_encoder = _Encoder(img_size)
        self.prompt_encoder = _PromptEncoder()
        self.mask_decoder = _MaskDecoder()
        self.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(self, masks, input_size, original_size):
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def decode(
        self, image_embeddings, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True
    ):
        sparse, dense = self.prompt_encoder(points=(point_coords, point_labels))
        return self.mask_decoder(image_embeddings, None, sparse, dense, multimask_output)


def scene(height: int, width: int, seed: int, n_objects: int = 14) -> np.ndarray:
    """A flat-colour scene of overlapping rectangles and discs (some with a differently coloured part)."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = rng.integers(0, 256, size=3)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(n_objects):
        colour = rng.integers(0, 256, size=3)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        size = rng.uniform(0.04, 0.25) * min(height, width)
        if rng.random() < 0.5:
            inside = (np.abs(xx - cx) < size) & (np.abs(yy - cy) < size * rng.uniform(0.4, 1.6))
        else:
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 < size**2
        img[inside] = colour
        if rng.random() < 0.4:  # a part of the object in a nearby colour
            part = inside & (yy < cy)
            img[part] = np.clip(colour.astype(int) + rng.integers(-40, 40, size=3), 0, 255)
    return img


# ------------------------------------------------------------------------------------------ official side
def _official_sam(args: argparse.Namespace, work: Path):
    """The official Sam with the checkpoint's configuration and weights: (model, config, state path, label)."""
    from make_official_fixture import build_official  # this folder: the one official-Sam builder

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

    sam = build_official(cfg)
    sam.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    sam.eval()
    return sam, cfg, state_path, weights


def _official_main(args: argparse.Namespace) -> None:
    from segment_anything import SamAutomaticMaskGenerator

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="amg_official_"))
    if args.model == "fake":
        sam, cfg, state_path = FakeSam(), {"model": "fake"}, work / "none"
        weights = "fake colour-segment model (tools/amg_fake_sam.py)"
        images = [scene(480, 640, seed=i) for i in range(args.images)]
    else:
        sam, cfg, state_path, weights = _official_sam(args, work)
        images = _load_images(args.images, args.max_side, Path(args.images_dir))
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
        "images_dir": None if args.model == "fake" else str(args.images_dir),
        "images": n,
        "image_sizes": [list(im.shape[:2]) for im in images],
        "threads": args.threads,
        "official_seconds": official_s,
        "official_cpu_seconds": official_cpu,
        "ours_seconds": ours["seconds"],
        "ours_cpu_seconds": ours["cpu_seconds"],
        "ours_batch_seconds": ours["batch_seconds"],
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
        "official_matched_count": ours["official_matched_count"],
        "ours_matched_count": ours["ours_matched_count"],
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
    from pycocotools import mask as mask_utils

    from sam_engine.amg import AmgParams, AutomaticMaskGenerator
    from sam_engine.model import build_sam

    torch.set_num_threads(args.threads)
    data = np.load(args.ours)
    settings = json.loads(str(data["settings"]))
    images = [data[f"image_{i}"] for i in range(len([k for k in data.files if k.startswith("image_")]))]
    cfg = json.loads(Path(args.config).read_text())
    if cfg.get("model") == "fake":
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
        "official_matched_count": matched_o,
        "ours_matched_count": matched_u,
        "official_matched": matched_o / total_o if total_o else None,
        "ours_matched": matched_u / total_u if total_u else None,
        "mean_best_iou_official": float(np.mean(best_o)) if best_o else None,
    }
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--images-dir", default=str(IMAGES_DIR), help="folder of .jpg / .jpeg / .png images")
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--pred-iou-thresh", type=float, default=None, help="default: official 0.88")
    ap.add_argument("--stability-score-thresh", type=float, default=None, help="default: official 0.95")
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
