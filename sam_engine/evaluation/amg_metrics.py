"""Automatic-mask-generation quality against ground truth.

- recall of GT objects at mask IoU 0.5 and 0.75 and AR@100 / AR@1000 (IoU 0.50:0.95), from pycocotools'
  COCOeval run class-agnostic (``segm``, ``useCats=0``, ``maxDets=[1, 100, 1000]``, score = ``predicted_iou``,
  area range ``all``); recall at one IoU uses the largest ``maxDets``;
- the share of generated masks whose IoU with their best-matching GT mask exceeds 0.9 (SAM reports 94 %
  against professionally corrected masks).

Inputs map image id to a list of records with a compressed-RLE ``segmentation``; generated records also need
a score (``predicted_iou`` unless ``score_key`` says otherwise).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam_engine.data import rle as rle_utils

MAX_DETS = (1, 100, 1000)


def _segmentation(rec: dict) -> dict:
    return rec["segmentation"] if "segmentation" in rec else rec


def _coco_seg(seg: dict) -> dict:
    counts = seg["counts"]
    return {
        "size": list(seg["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def _coco_ground_truth(gt: dict[int, list[dict]]) -> COCO:
    images, anns = [], []
    for image_id in sorted(gt):
        recs = gt[image_id]
        size = None
        for rec in recs:
            seg = _segmentation(rec)
            size = seg["size"]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": int(image_id),
                    "category_id": 1,
                    "segmentation": _coco_seg(seg),
                    "area": float(rle_utils.area(seg)),
                    "bbox": rle_utils.bbox_xywh(seg),
                    "iscrowd": 0,
                }
            )
        h, w = size if size is not None else (0, 0)
        images.append({"id": int(image_id), "height": int(h), "width": int(w)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_recall(
    pred: dict[int, list[dict]],
    gt: dict[int, list[dict]],
    score_key: str = "predicted_iou",
    max_dets: tuple[int, ...] = MAX_DETS,
) -> dict[str, float]:
    """Class-agnostic COCOeval recall: ``recall@0.5``, ``recall@0.75`` (at ``max(max_dets)``), ``AR@k`` per k."""
    image_ids = sorted(gt)
    if not image_ids or not any(gt.values()):
        raise ValueError("coco_recall: ground truth has no masks")
    coco_gt = _coco_ground_truth(gt)
    dets = []
    for image_id in image_ids:
        for rec in pred.get(image_id, []):
            seg = _segmentation(rec)
            dets.append(
                {
                    "image_id": int(image_id),
                    "category_id": 1,
                    "segmentation": _coco_seg(seg),
                    "score": float(rec[score_key]),
                }
            )
    out: dict[str, float] = {}
    if not dets:
        out.update({"recall@0.5": 0.0, "recall@0.75": 0.0})
        out.update({f"AR@{k}": 0.0 for k in max_dets})
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.imgIds = image_ids
        ev.params.useCats = 0
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
    recall = ev.eval["recall"]  # (T iou thresholds, K categories, A area ranges, M maxDets); -1 = no GT
    thresholds = ev.params.iouThrs
    all_area = 0

    def at(t_index: slice | int, m_index: int) -> float:
        r = np.asarray(recall[t_index, :, all_area, m_index], dtype=np.float64)
        r = r[r > -1]
        return float(r.mean()) if r.size else 0.0

    last = len(max_dets) - 1
    for thr in (0.5, 0.75):
        t = int(np.argmin(np.abs(thresholds - thr)))
        out[f"recall@{thr}"] = at(t, last)
    for m, k in enumerate(max_dets):
        out[f"AR@{k}"] = at(slice(None), m)
    return out


def best_gt_iou(pred: dict[int, list[dict]], gt: dict[int, list[dict]]) -> np.ndarray:
    """For every generated mask (images in sorted order), its IoU with the best-matching GT mask (0 if none)."""
    out = []
    for image_id in sorted(pred):
        p = [_segmentation(r) for r in pred[image_id]]
        g = [_segmentation(r) for r in gt.get(image_id, [])]
        if not p:
            continue
        if not g:
            out.append(np.zeros(len(p)))
            continue
        out.append(rle_utils.iou_matrix(p, g).max(axis=1))
    return np.concatenate(out) if out else np.zeros(0)


def share_above(pred: dict[int, list[dict]], gt: dict[int, list[dict]], threshold: float = 0.9) -> float:
    """Share of generated masks whose best-matching GT IoU exceeds ``threshold`` (0 when there are none)."""
    best = best_gt_iou(pred, gt)
    return float((best > threshold).mean()) if best.size else 0.0


def evaluate_amg(
    pred: dict[int, list[dict]], gt: dict[int, list[dict]], score_key: str = "predicted_iou"
) -> dict[str, float]:
    """All AMG metrics in one dict: COCOeval recalls and ARs, ``share_iou>0.9``, mask counts per image."""
    metrics = coco_recall(pred, gt, score_key)
    metrics["share_iou>0.9"] = share_above(pred, gt, 0.9)
    n_images = max(len(gt), 1)
    metrics["masks_per_image"] = sum(len(pred.get(i, [])) for i in gt) / n_images
    metrics["gt_per_image"] = sum(len(v) for v in gt.values()) / n_images
    return metrics
