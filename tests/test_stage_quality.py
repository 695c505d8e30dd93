"""quality_by_stage: what counts as accepted automatically (no person saw it) and what a reviewer accepted."""

from __future__ import annotations

import numpy as np
import pytest

from sam_engine.data import rle as rle_utils
from sam_engine.engine.quality import quality_by_stage
from sam_engine.quality.store import QualityStore


def _rle(x0: int) -> dict:
    m = np.zeros((12, 16), dtype=bool)
    m[2:6, x0 : x0 + 4] = True
    return rle_utils.encode(m)


@pytest.fixture
def store(tmp_path):
    s = QualityStore(tmp_path / "q.duckdb")
    s.add_images(
        [{"image_id": 1, "file_name": "a.png", "width": 16, "height": 12, "region": "r1", "source": "pool"}]
    )
    s.add_annotator("alice")
    s.add_annotator("rita")
    yield s
    s.close()


def test_a_reviewer_accepted_model_mask_is_reviewed_not_automatic(store):
    common = {"task_id": None, "image_id": 1, "stage": 2, "predicted_iou": 0.9}
    model = {"annotator_id": None, "source": "model", "clicks": 0, "seconds": 0.0, **common}
    store.commit_mask(rle=_rle(0), **model)  # auto-accepted
    pending = store.commit_mask(rle=_rle(4), status="pending_review", **model)
    store.review(pending, "rita", "accept")
    store.commit_mask(annotator_id="alice", source="human", rle=_rle(8), clicks=2, seconds=3.0, **common)

    row = quality_by_stage(store).set_index("stage").loc[2]
    assert row["masks"] == 3 and row["human_masks"] == 1
    assert row["auto_accept_share"] == pytest.approx(1 / 3)
    assert row["review_accept_share"] == pytest.approx(1 / 3)


def test_auto_accept_precision_scores_the_automatic_masks_against_the_hidden_ground_truth(store):
    common = {"task_id": None, "image_id": 1, "stage": 2, "predicted_iou": 0.9}
    model = {"annotator_id": None, "source": "model", "clicks": 0, "seconds": 0.0, **common}
    store.commit_mask(rle=_rle(0), **model)  # auto-accepted, matches a ground-truth mask exactly
    store.commit_mask(rle=_rle(5), **model)  # auto-accepted, one column off: IoU 0.6
    pending = store.commit_mask(rle=_rle(8), status="pending_review", **model)
    store.review(pending, "rita", "accept")  # reviewed: not part of the automatic masks' precision
    store.commit_mask(annotator_id="alice", source="human", rle=_rle(12), clicks=2, seconds=3.0, **common)
    truth = {1: [{"segmentation": _rle(0)}, {"segmentation": _rle(4)}, {"segmentation": _rle(8)}]}

    rows = quality_by_stage(store, ground_truth=truth).set_index("stage")
    assert rows.loc[2, "auto_accept_precision"] == pytest.approx(1 / 2)
    assert np.isnan(rows.loc[1, "auto_accept_precision"])  # stage 1 accepted nothing automatically
    # without ground truth (people's own pool) there is nothing to score against
    assert np.isnan(quality_by_stage(store).set_index("stage").loc[2, "auto_accept_precision"])


def test_the_stage3_audit_scores_every_kept_mask_and_pools_the_shards():
    from sam_engine.engine.quality import stage3_audit

    shards = [
        {"path": "/s/sa_000000.tar", "image_ids": [1, 2], "qa": {"reviewed": 4, "good": 3}},
        {"path": "/s/sa_000001.tar", "image_ids": [3], "qa": {"reviewed": 2, "good": 2}},
    ]
    masks = {1: [{"segmentation": _rle(0)}, {"segmentation": _rle(5)}], 3: [{"segmentation": _rle(8)}]}
    truth = {1: [{"segmentation": _rle(0)}, {"segmentation": _rle(4)}], 3: []}  # image 3: no ground truth
    audit = stage3_audit(shards, masks, truth).set_index("shard")
    assert audit.loc["sa_000000.tar", "masks"] == 2 and audit.loc["sa_000000.tar", "images"] == 2
    assert audit.loc["sa_000000.tar", "share_iou>0.9"] == pytest.approx(1 / 2)
    assert audit.loc["sa_000001.tar", "share_iou>0.9"] == 0.0  # a mask nothing can confirm is not good
    assert audit.loc["all", "share_iou>0.9"] == pytest.approx(1 / 3) and audit.loc["all", "images"] == 3
    assert audit.loc["all", "qa_share_good"] == pytest.approx(5 / 6)
