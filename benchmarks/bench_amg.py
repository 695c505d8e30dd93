"""AMG speed: images/s and masks/s of sam_engine.amg with the "tiny" model on this CPU, against a naive
reference-structured generator run in the same process.

The naive generator follows SAM's reference flow step by step: every mask of a batch is upsampled to full
size before any filter, the stability score is summed per row, boxes come from per-mask reductions, RLE runs
are found with a per-mask loop and compressed one mask at a time, and NMS is a Python greedy loop.

Weights: a trained tiny checkpoint when ``SAM_ENGINE_AMG_CHECKPOINT`` points at one (an official-layout or
plain state dict), otherwise random-init weights (seed 0). Random weights give flat logits, so with the
default thresholds no mask survives the IoU filter; the "relaxed" rows lower the thresholds (IoU filter off,
stability offset 0.02, threshold 0.05) so that masks flow through every stage.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from pycocotools import mask as mask_utils

from sam_engine.amg import AmgParams, AutomaticMaskGenerator
from sam_engine.amg.crops import generate_crop_boxes
from sam_engine.amg.grid import scale_grid
from sam_engine.model import build_sam

RELAXED = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.05, "stability_score_offset": 0.02}


def _model() -> tuple[torch.nn.Module, str]:
    model = build_sam("tiny", seed=0)
    ckpt = os.environ.get("SAM_ENGINE_AMG_CHECKPOINT")
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        model.load_state_dict(state)
        return model.eval(), os.path.basename(ckpt)
    return model.eval(), "random-init seed 0"


def _images(quick: bool) -> list[np.ndarray]:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    if quick:
        return [photos[0][::4, ::4].copy()]
    return photos


# ------------------------------------------------------------------------------------------ naive AMG
def _naive_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        ok = True
        for j in kept:
            ix = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            iy = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = ix * iy
            a = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            b = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if a + b - inter > 0 and inter / (a + b - inter) > thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def _naive_rle(mask: torch.Tensor) -> dict:
    h, w = mask.shape
    flat = mask.t().reshape(-1)
    change = torch.nonzero(flat[1:] != flat[:-1]).flatten() + 1
    bounds = [0, *change.tolist(), h * w]
    counts = [] if not bool(flat[0]) else [0]
    counts += [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def naive_generate(gen: AutomaticMaskGenerator, image: np.ndarray) -> list[dict]:
    """Reference-structured AMG (whole-image crop only) for speed comparison."""
    p, model = gen.params, gen.model
    h, w = image.shape[:2]
    assert generate_crop_boxes(h, w, p.crop_n_layers, p.crop_overlap_ratio)[0] == [[0, 0, w, h]]
    with torch.inference_mode():
        emb, sizes = gen._embed([image])
        points = scale_grid(gen.grids[0], h, w)
        coords = torch.as_tensor(gen.transform.apply_coords(points, (h, w)))
        rles, boxes, ious, stabs, pts = [], [], [], [], []
        for s in range(0, len(points), p.points_per_batch):
            c = coords[s : s + p.points_per_batch]
            labels = torch.ones(len(c), 1, dtype=torch.int64)
            low, iou = model.decode(emb, c[:, None, :], labels, multimask_output=True)
            logits = model.postprocess_masks(low, sizes[0], (h, w))  # every mask, full size
            for b in range(logits.shape[0]):
                for k in range(logits.shape[1]):
                    lg = logits[b, k]
                    if p.pred_iou_thresh > 0 and float(iou[b, k]) <= p.pred_iou_thresh:
                        continue
                    hi = int((lg > p.stability_score_offset).sum())
                    lo = int((lg > -p.stability_score_offset).sum())
                    stab = hi / lo if lo else 0.0
                    if p.stability_score_thresh > 0 and stab < p.stability_score_thresh:
                        continue
                    m = lg > 0
                    ys, xs = torch.nonzero(m, as_tuple=True)
                    if len(ys) == 0:
                        continue
                    rles.append(_naive_rle(m))
                    boxes.append([int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())])
                    ious.append(float(iou[b, k]))
                    stabs.append(stab)
                    pts.append(points[s + b].tolist())
        keep = _naive_nms(
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(ious), p.box_nms_thresh
        )
    out = []
    for i in keep:
        x0, y0, x1, y1 = boxes[i]
        area = int(mask_utils.area({"size": [h, w], "counts": rles[i]["counts"].encode()}))
        if p.max_mask_area_ratio is not None and area >= p.max_mask_area_ratio * h * w:
            continue
        out.append(
            {
                "segmentation": rles[i],
                "area": area,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "predicted_iou": ious[i],
                "point_coords": [pts[i]],
                "stability_score": stabs[i],
                "crop_box": [0, 0, w, h],
            }
        )
    return out


# ------------------------------------------------------------------------------------------- benchmark
def _time(fn, images: list[np.ndarray]) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, masks); CPU time is steadier when other work shares the cores."""
    start, cpu = time.perf_counter(), time.process_time()
    n = 0
    for im in images:
        n += len(fn(im))
    return time.perf_counter() - start, time.process_time() - cpu, n


def run(quick: bool = False) -> list[dict]:
    threads = torch.get_num_threads()
    # One thread: on a shared 2-core machine two torch threads spin against other work and time erratically.
    torch.set_num_threads(int(os.environ.get("SAM_ENGINE_BENCH_THREADS", "1")))
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool) -> list[dict]:
    model, weights = _model()
    images = _images(quick)
    side = 4 if quick else 32
    rows: list[dict] = []
    for label, extra in (("default", {}), ("relaxed", RELAXED)):
        gen = AutomaticMaskGenerator(model, AmgParams(points_per_side=side, **extra))
        gen.generate(images[0])  # warm-up
        ours_s, ours_cpu, ours_n = _time(gen.generate, images)
        naive_s, naive_cpu, naive_n = _time(lambda im, g=gen: naive_generate(g, im), images)
        batch_s, _, _ = _time(lambda ims, g=gen: [r for rs in g.generate_batch(ims) for r in rs], [images])
        n_img = len(images)
        note = (
            f"tiny, {weights}, {side}x{side} points, {n_img} skimage photos, torch threads "
            f"{torch.get_num_threads()}; CPU-time ratio {naive_cpu / ours_cpu:.2f}"
        )
        rows.append(
            {
                "benchmark": "amg",
                "metric": f"images_per_s[{label}]",
                "value": n_img / ours_s,
                "unit": "images/s",
                "baseline": n_img / naive_s,
                "ratio": naive_s / ours_s,
                "note": note,
            }
        )
        masks_row = {
            "benchmark": "amg",
            "metric": f"masks_per_s[{label}]",
            "value": ours_n / ours_s,
            "unit": "masks/s",
            "note": f"{ours_n} masks ours, {naive_n} naive",
        }
        if naive_n and ours_n:
            masks_row.update(baseline=naive_n / naive_s, ratio=(ours_n / ours_s) / (naive_n / naive_s))
        rows.append(masks_row)
        rows.append(
            {
                "benchmark": "amg",
                "metric": f"masks_per_image[{label}]",
                "value": ours_n / n_img,
                "unit": "masks",
                "note": f"generate_batch of all {n_img} images: {n_img / batch_s:.3f} images/s",
            }
        )
    return rows


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
