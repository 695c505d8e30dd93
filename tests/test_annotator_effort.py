"""Annotator effort per model: a better predictor costs fewer clicks and fixes; rows are seeded; IoU is vs GT.

The good predictor is the colour-region fake of ``annotation_fixtures`` on flat-colour scenes (one click finds
the object exactly). The poor one returns the same masks pooled to a coarse grid (like a low-resolution mask
decoder): clicks cannot repair the blocky edges, so small objects end in manual fixes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from annotation_fixtures import FakePredictor, make_scene

from sam_engine.evaluation.annotator_effort import main, measure_effort
from sam_engine.evaluation.interactive import EvalObject
from sam_engine.workforce.simulated import PROFILES, AnnotatorProfile

torch.set_num_threads(1)


class CoarsePredictor(FakePredictor):
    """The colour-region fake with its masks pooled to ``cell`` x ``cell`` blocks (majority vote)."""

    def __init__(self, cell: int = 8) -> None:
        super().__init__()
        self.cell = cell

    def predict(self, *args, **kwargs):
        masks, scores, low = super().predict(*args, **kwargs)
        k, h, w = masks.shape
        c = self.cell
        hp, wp = -(-h // c) * c, -(-w // c) * c
        padded = np.zeros((k, hp, wp), dtype=np.float32)
        padded[:, :h, :w] = masks
        blocks = padded.reshape(k, hp // c, c, wp // c, c).mean(axis=(2, 4)) >= 0.5
        return np.repeat(np.repeat(blocks, c, axis=1), c, axis=2)[:, :h, :w], scores, low


class FixedPredictor(FakePredictor):
    """Always answers with one given mask (3 times)."""

    def __init__(self, mask: np.ndarray) -> None:
        super().__init__()
        self.mask = mask

    def predict(self, *args, **kwargs):
        _, scores, low = super().predict(*args, **kwargs)
        return np.stack([self.mask] * 3), scores, low


def scene_objects(seeds=(1, 2, 3)) -> list[EvalObject]:
    objects = []
    for s in seeds:
        img, masks = make_scene(seed=s)
        for name, gt in masks.items():
            objects.append(EvalObject(image_key=s, image=img, gt=gt, image_id=s, object_id=name))
    return objects


def test_better_predictor_needs_fewer_clicks_and_fixes():
    objects = scene_objects()
    good = measure_effort(FakePredictor(), objects, seed=0)
    poor = measure_effort(CoarsePredictor(cell=4), objects, seed=0)
    assert good.summary["n_objects"] == poor.summary["n_objects"] == len(objects)
    assert good.summary["clicks_per_mask"] == 1.0  # the flat-colour region is the object
    assert good.summary["reached_share"] == 1.0 and good.summary["manual_fix_share"] == 0.0
    assert poor.summary["clicks_per_mask"] > good.summary["clicks_per_mask"] + 1.0
    assert 0.2 < poor.summary["manual_fix_share"] < 1.0  # some objects reached, others fixed by hand
    assert poor.summary["reached_share"] == pytest.approx(1.0 - poor.summary["manual_fix_share"])
    assert poor.summary["mean_model_iou"] < good.summary["mean_model_iou"] == 1.0
    assert poor.summary["seconds_per_mask"] > good.summary["seconds_per_mask"]
    for row in poor.rows:
        assert row["reached"] == (not row["manual_fix"])
        assert row["reached"] == (row["model_iou"] >= PROFILES["reference"].iou_target)
        if row["reached"]:  # the submitted mask is the model's best one
            assert row["iou"] == pytest.approx(row["model_iou"]) and row["iou"] < 1.0
    coarser = measure_effort(CoarsePredictor(cell=8), objects, seed=0)
    assert coarser.summary["clicks_per_mask"] > poor.summary["clicks_per_mask"]


def test_same_seed_same_rows():
    objects = scene_objects()
    a = measure_effort(CoarsePredictor(cell=4), objects, seed=3)
    b = measure_effort(CoarsePredictor(cell=4), objects, seed=3)
    assert a.rows == b.rows and a.summary == b.summary
    assert measure_effort(CoarsePredictor(cell=4), objects, max_objects=5, seed=3).rows == a.rows[:5]


def test_submitted_iou_is_against_the_ground_truth():
    gt = np.zeros((96, 128), dtype=bool)
    gt[30:40, 20:40] = True  # 200 px
    shifted = np.zeros_like(gt)
    shifted[30:40, 22:42] = True  # 180 px shared, 220 px union
    img = np.full((96, 128, 3), 200, dtype=np.uint8)
    obj = [EvalObject(image_key=7, image=img, gt=gt, image_id=7, object_id=1)]
    lenient = AnnotatorProfile(click_noise_px=0.0, iou_target=0.8)
    row = measure_effort(FixedPredictor(shifted), obj, lenient).rows[0]
    assert row["clicks"] == 1 and row["reached"] and not row["manual_fix"]
    assert row["iou"] == pytest.approx(180 / 220) and row["model_iou"] == pytest.approx(180 / 220)
    strict = AnnotatorProfile(click_noise_px=0.0, iou_target=0.9, patience=2)
    row = measure_effort(FixedPredictor(shifted), obj, strict).rows[0]
    assert row["manual_fix"] and row["clicks"] == 3  # the first click, then `patience` without progress
    assert row["model_iou"] == pytest.approx(180 / 220)
    assert row["iou"] == pytest.approx(1.0)  # a rectangle traced as a polygon is the rectangle


def test_empty_objects_are_skipped():
    img, masks = make_scene(seed=1)
    objects = [
        EvalObject(image_key=1, image=img, gt=np.zeros_like(masks["disc"]), image_id=1, object_id="none"),
        EvalObject(image_key=1, image=img, gt=masks["disc"], image_id=1, object_id="disc"),
    ]
    result = measure_effort(FakePredictor(), objects)
    assert [r["object_id"] for r in result.rows] == ["disc"]


@pytest.mark.slow
def test_cli_on_smoke_gold_with_a_real_model(smoke_cfg, smoke_corpora, tmp_path, monkeypatch, capsys):
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import save_checkpoint

    monkeypatch.setenv("SAM_ENGINE_DATA_DIR", str(smoke_cfg.data_dir))
    ckpt = save_checkpoint(build_sam("tiny", seed=0), tmp_path / "v0.pt")
    out = tmp_path / "effort.json"
    argv = ["--profile", "smoke", "--objects", "3", "--threads", "1", "--json", str(out)]
    rc = main(["--checkpoints", f"a={ckpt}", f"b={ckpt}", *argv])
    assert rc == 0
    text = capsys.readouterr().out
    assert "clicks_per_mask" in text and "change a -> b" in text
    assert "per-object clicks: +0 (paired se 0, 3 objects)" in text  # same weights: no change on any object
    data = json.loads(out.read_text())
    assert data["summary"]["a"] == data["summary"]["b"]  # same weights, same seed
    assert data["summary"]["a"]["n_objects"] == 3
    for row in data["rows"]["a"]:
        assert 1 <= row["clicks"] <= PROFILES["reference"].click_cap and 0.0 <= row["iou"] <= 1.0

    missing = tmp_path / "nope.pt"
    assert main(["--checkpoints", f"a={ckpt}", f"v1={missing}", *argv]) == 2
    err = capsys.readouterr().err
    assert "checkpoint v1" in err and str(missing) in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--checkpoints", f"v0={bad}", *argv]) == 2
    assert str(bad) in capsys.readouterr().err


def test_paired_change_matches_objects_by_id():
    from sam_engine.evaluation.annotator_effort import paired_change

    base = [{"image_id": 1, "object_id": k, "clicks": c} for k, c in enumerate([5, 7, 9])]
    cur = [{"image_id": 1, "object_id": k, "clicks": c} for k, c in [(2, 8), (0, 4), (1, 6), (9, 1)]]
    diff, se, n = paired_change(base, cur, "clicks")
    assert (diff, se, n) == (-1.0, 0.0, 3)  # every shared object one click fewer; object 9 is not paired
