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
