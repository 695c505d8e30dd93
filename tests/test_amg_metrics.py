"""AMG metrics on hand-made cases (COCOeval class-agnostic recall / AR, share of masks with IoU > 0.9)."""

from __future__ import annotations

import numpy as np
import pytest

from sam_engine.data import rle as rle_utils
from sam_engine.evaluation.amg_metrics import best_gt_iou, coco_recall, evaluate_amg, share_above


def _sq(x0: int, y0: int, side: int = 10, h: int = 60, w: int = 60) -> dict:
    m = np.zeros((h, w), dtype=bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return {"segmentation": rle_utils.encode(m)}


def _pred(x0: int, y0: int, score: float) -> dict:
    return {**_sq(x0, y0), "predicted_iou": score}


@pytest.fixture
def case():
    gt = {1: [_sq(0, 0), _sq(20, 0), _sq(40, 40)], 2: [_sq(5, 5)]}
    # image 1: A exact, B shifted 2 px (IoU 80 / 120 = 2/3), C missed; image 2: nothing generated
    pred = {1: [_pred(0, 0, 0.9), _pred(22, 0, 0.8)], 2: []}
    return pred, gt


def test_coco_recall_hand_case(case):
    pred, gt = case
    m = coco_recall(pred, gt)
    assert m["recall@0.5"] == pytest.approx(2 / 4)
    assert m["recall@0.75"] == pytest.approx(1 / 4)
    # AR over IoU 0.50:0.95 (10 thresholds): A at all 10, B at 0.50..0.65 (4 of them), of 4 GT masks
    assert m["AR@100"] == pytest.approx((10 + 4) / 4 / 10)
    assert m["AR@1000"] == pytest.approx(m["AR@100"])
    # one detection per image: only A in image 1
    assert m["AR@1"] == pytest.approx(10 / 4 / 10)


def test_score_orders_detections_for_max_dets(case):
    pred, gt = case
    swapped = {1: [_pred(0, 0, 0.1), _pred(22, 0, 0.8)], 2: []}
    assert coco_recall(swapped, gt)["AR@1"] == pytest.approx(4 / 4 / 10)
    assert coco_recall(pred, gt)["AR@1"] != coco_recall(swapped, gt)["AR@1"]


def test_share_above_and_best_iou(case):
    pred, gt = case
    np.testing.assert_allclose(best_gt_iou(pred, gt), [1.0, 2 / 3])
    assert share_above(pred, gt, 0.9) == 0.5
    assert share_above(pred, gt, 0.6) == 1.0
    # a prediction on an image without GT counts as unmatched
    pred3 = {**pred, 3: [_pred(0, 0, 0.5)]}
    assert share_above(pred3, gt, 0.9) == pytest.approx(1 / 3)


def test_no_predictions_and_no_gt():
    gt = {1: [_sq(0, 0)]}
    m = evaluate_amg({}, gt)
    assert m["recall@0.5"] == 0.0 and m["AR@1000"] == 0.0 and m["share_iou>0.9"] == 0.0
    with pytest.raises(ValueError):
        coco_recall({}, {1: []})


def test_evaluate_amg_counts(case):
    pred, gt = case
    m = evaluate_amg(pred, gt)
    assert m["masks_per_image"] == 1.0 and m["gt_per_image"] == 2.0
    assert m["share_iou>0.9"] == 0.5
