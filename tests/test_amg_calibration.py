"""Calibrated automatic-mask thresholds: chosen on one half of gold, measured on the other."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sam_engine.amg.calibration import (
    FEATURES,
    QualityModel,
    Thresholds,
    calibrate,
    choose_threshold,
    choose_thresholds,
    precision_at,
    split_halves,
)
from sam_engine.amg.params import AmgParams
from sam_engine.data import rle as rle_utils


def _scored(n: int, seed: int) -> pd.DataFrame:
    """Candidates whose chance of being right rises with predicted IoU and stability."""
    rng = np.random.default_rng(seed)
    piou = rng.uniform(0, 1, n)
    stab = rng.uniform(0.4, 1, n)
    right = rng.uniform(0, 1, n) < np.clip(1.4 * piou * stab - 0.1, 0, 1)
    best = np.where(right, rng.uniform(0.9, 1.0, n), rng.uniform(0.0, 0.9, n))
    return pd.DataFrame(
        {"image": rng.integers(0, 20, n), "predicted_iou": piou, "stability": stab, "best_iou": best}
    )


def test_chosen_thresholds_reach_the_target_on_held_out_candidates():
    calib, held = _scored(4000, 0), _scored(4000, 1)
    for target in (0.7, 0.85, 0.95):
        thr, prec, kept = choose_thresholds(calib, target)
        assert prec >= target and kept >= 5
        assert precision_at(calib, thr) == (prec, kept)
        held_prec, held_kept = precision_at(held, thr)
        assert held_prec >= target - 0.05 and held_kept > 0  # it carries over to unseen candidates
    # a stricter target keeps fewer masks
    assert choose_thresholds(calib, 0.95)[2] < choose_thresholds(calib, 0.7)[2]


def test_the_most_correct_masks_are_kept_at_the_target():
    df = pd.DataFrame(
        {
            "image": 0,
            "predicted_iou": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
            "stability": [0.95] * 6,
            "best_iou": [0.95, 0.95, 0.5, 0.95, 0.95, 0.1],
        }
    )
    thr, prec, kept = choose_thresholds(df, 0.8, min_kept=1, stability_grid=(0.9,))
    assert (kept, prec) == (5, 0.8) and thr == Thresholds(0.4, 0.9)
    # unreachable target: the strictest thresholds, and the precision they really have
    thr, prec, kept = choose_thresholds(df.assign(best_iou=0.1), 0.8, min_kept=1, stability_grid=(0.9,))
    assert kept == 1 and prec == 0.0


def test_calibrate_measures_the_held_out_half_with_a_real_generator_run():
    # images are indices; each "image" has one GT square, and the fake generator returns it (right) and a
    # shifted copy (wrong) with scores that separate them
    sq = np.zeros((20, 20), dtype=bool)
    sq[5:15, 5:15] = True
    gt = [{"segmentation": rle_utils.encode(sq)}]
    wrong = np.roll(sq, 6, axis=1)
    calls = []

    def generator_for(params: AmgParams):
        calls.append((params.pred_iou_thresh, params.stability_score_thresh))

        def generate(image):
            recs = [
                {
                    "segmentation": rle_utils.encode(sq),
                    "predicted_iou": 0.9,
                    "stability_score": 0.97,
                    "area": 100,
                },
                {
                    "segmentation": rle_utils.encode(wrong),
                    "predicted_iou": 0.6,
                    "stability_score": 0.97,
                    "area": 80,
                },
            ]
            return [r for r in recs if r["predicted_iou"] > params.pred_iou_thresh]

        return generate

    images = [(i, gt) for i in range(10)]
    seen = []
    cals = calibrate(generator_for, images, AmgParams(), {"strict": 0.9}, held_out=lambda *a: seen.append(a))
    cal = cals["strict"]
    assert len(seen) == 5 and seen[0][0] == "strict" and len(seen[0][1]) == 1
    assert cal.calibration_images == cal.heldout_images == 5
    assert cal.calibration_precision == 1.0 and cal.heldout_precision == 1.0
    assert cal.heldout_masks_per_image == 1.0 and 0.6 <= cal.thresholds.pred_iou < 0.9
    assert calls[0] == (0.3, 0.5) and calls[1] == (cal.thresholds.pred_iou, cal.thresholds.stability)
    a, b = split_halves(10, 0)
    assert (
        sorted(a + b) == list(range(10)) and split_halves(10, 0) == (a, b) and split_halves(10, 1) != (a, b)
    )


def test_the_quality_model_learns_which_candidates_are_right_and_its_cut_carries_over():
    rng = np.random.default_rng(0)

    def draw(n):
        # right candidates agree with the image's regions and are stable; the predicted IoU is noise
        right = rng.uniform(0, 1, n) < 0.3
        x = np.column_stack(
            [
                rng.uniform(0.2, 0.4, n),
                np.clip(rng.normal(np.where(right, 0.8, 0.6), 0.1), 0, 1),
                np.clip(rng.normal(np.where(right, 0.95, 0.7), 0.08), 0, 1),
                rng.normal(-5, 1, n),
            ]
        )
        # right ones stand out from their surroundings more often (log edge contrast)
        x = np.column_stack([x, x[:, 3] ** 2, rng.normal(np.where(right, 1.0, 0.0), 1.0)])
        return x, right

    x, y = draw(3000)
    model = QualityModel.fit(x, y, features=FEATURES[:6])
    assert model.features == FEATURES[:6]
    with pytest.raises(ValueError, match="6 feature columns for 10 names"):
        QualityModel.fit(x, y)
    # agreement, stability and contrast raise the quality
    assert model.weights[2] > 0 and model.weights[1] > 0 and model.weights[5] > 0
    again = QualityModel.from_dict(model.as_dict())
    np.testing.assert_allclose(again.score(x[:5]), model.score(x[:5]))
    cut, precision, kept = choose_threshold(model.score(x), y, 0.9)
    assert precision >= 0.9 and kept > 100
    x2, y2 = draw(3000)
    held = model.score(x2) >= cut
    assert y2[held].mean() >= 0.85  # the cut holds on unseen candidates


def test_choose_threshold_keeps_the_most_right_candidates_at_the_target():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    good = np.array([True, True, False, True, True, False])
    assert choose_threshold(scores, good, 0.8, min_kept=1) == (0.5, 0.8, 5)
    assert choose_threshold(scores, good, 1.0, min_kept=1) == (0.8, 1.0, 2)
    assert choose_threshold(scores, ~good & False, 0.8, min_kept=1)[2] == 1  # unreachable: keep the top one


def test_a_stored_quality_model_scores_records_on_its_own_features():
    records = [
        {
            "predicted_iou": 0.9,
            "stability_score": 0.95,
            "region_agreement": 0.9,
            "area": 400,
            "edge_contrast": 4.0,
        },
        {
            "predicted_iou": 0.9,
            "stability_score": 0.95,
            "region_agreement": 0.9,
            "area": 400,
            "edge_contrast": 0.1,
        },
    ]
    contrast_only = QualityModel((0.0,) * 5 + (2.0,), 0.0, (0.0,) * 6, (1.0,) * 6, FEATURES[:6])
    high, low = contrast_only.score_records(records, 64 * 64)
    assert high > 0.9 > 0.2 > low
    # a model on every feature reads the shape: a mask in pieces scores lower than the same mask whole;
    # a record without shape measurements is taken as one solid piece
    pieces = [{**records[0], "components": 4.0, "main_component_share": 0.4}, records[0]]
    weights = (0.0,) * 6 + (-2.0, 2.0, 0.0, 0.0)
    shaped = QualityModel(weights, 0.0, (0.0,) * 10, (1.0,) * 10)
    in_pieces, whole = shaped.score_records(pieces, 64 * 64)
    assert in_pieces < 0.2 < whole
    assert (
        whole == shaped.score_records([{**records[0], "components": 1, "main_component_share": 1}], 64**2)[0]
    )
    # an evaluation stored before edge contrast existed has five weights and no feature list: it still
    # scores, on the five features it was fitted on (the contrast does not move it)
    old = {"weights": [0.0, 0.0, 3.0, 0.0, 0.0], "bias": [0.0], "mean": [0.0] * 5, "std": [1.0] * 5}
    before = QualityModel.from_dict(old)
    assert before.features == FEATURES[:5]
    a, b = before.score_records(records, 64 * 64)
    assert a == b > 0.9
    with pytest.raises(ValueError, match="4 weights"):
        QualityModel.from_dict({**old, "weights": [0.0] * 4})
    with pytest.raises(ValueError, match="5 feature columns for 10 names"):
        QualityModel.fit(np.zeros((10, 5)), np.arange(10) % 2 == 0)
