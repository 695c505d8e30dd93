"""Gold honeypots: best-match scoring (near the click), feedback, recording, accuracy and weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sam_engine.data import rle as rle_utils
from sam_engine.workforce.gold import (
    GoldStandard,
    annotator_weights,
    best_match,
    feedback_message,
    first_positive_point,
    gold_accuracy,
)

H, W = 60, 80


def gold_objects() -> dict[int, np.ndarray]:
    whole = np.zeros((H, W), bool)
    whole[10:50, 10:50] = True
    part = np.zeros((H, W), bool)
    part[10:30, 10:50] = True  # the top half of the whole
    other = np.zeros((H, W), bool)
    other[20:40, 60:75] = True
    return {1: whole, 2: part, 3: other}


def gold_anns() -> list[dict]:
    return [{"id": k, "segmentation": rle_utils.encode(m)} for k, m in gold_objects().items()]


def test_best_match_over_all_objects_and_near_the_click():
    objs = gold_objects()
    shrunk = objs[2].copy()
    shrunk[10:12] = False  # a slightly short "part"
    gid, iou = best_match(rle_utils.encode(shrunk), gold_anns())
    assert gid == 2 and iou == pytest.approx(rle_utils.mask_iou(shrunk, objs[2], empty=0.0))
    # A click in the lower half lies in the whole only: the mask is judged against the whole.
    gid, iou = best_match(rle_utils.encode(shrunk), gold_anns(), point=(30, 45))
    assert gid == 1 and iou < 0.5
    # A click on no object falls back to all objects.
    assert best_match(rle_utils.encode(shrunk), gold_anns(), point=(2, 2))[0] == 2
    assert best_match(rle_utils.encode(shrunk), []) == (None, 0.0)


def test_feedback_bands():
    messages = [feedback_message(v) for v in (0.95, 0.8, 0.6, 0.1)]
    assert len(set(messages)) == 4
    assert feedback_message(0.9) == messages[0] and feedback_message(0.0) == messages[3]


def test_first_positive_point():
    assert first_positive_point('{"points": [[1, 2, 0], [3.5, 4, 1]], "box": null}') == (3.5, 4.0)
    assert first_positive_point({"points": [[1, 2, 0]]}) is None
    assert first_positive_point(None) is None


@pytest.fixture
def store(tmp_path):
    from sam_engine.quality.store import QualityStore

    s = QualityStore(tmp_path / "q.duckdb")
    s.add_images([{"image_id": 7, "file_name": "g.png", "width": W, "height": H, "source": "gold"}])
    s.add_annotator("good")
    s.add_annotator("poor")
    yield s
    s.close()


def test_score_records_and_gives_feedback(store):
    gold = GoldStandard({7: gold_anns()})
    objs = gold_objects()
    (task,) = store.create_tasks([{"image_id": 7, "stage": 1, "kind": "honeypot", "annotator_id": "good"}])
    ok = store.commit_mask(
        task_id=task,
        image_id=7,
        annotator_id="good",
        stage=1,
        source="human",
        rle=rle_utils.encode(objs[3]),
        predicted_iou=0.9,
        clicks=1,
        seconds=5.0,
        prompt={"points": [[67, 30, 1]], "box": None},
    )
    off = np.roll(objs[1], 15, axis=1)
    bad = store.commit_mask(
        task_id=task,
        image_id=7,
        annotator_id="good",
        stage=1,
        source="human",
        rle=rle_utils.encode(off),
        predicted_iou=0.9,
        clicks=1,
        seconds=5.0,
    )
    feedback = {f.mask_id: f for f in gold.score_task(store, task)}
    assert feedback[ok].iou == pytest.approx(1.0) and feedback[ok].passed and feedback[ok].gold_ann_id == 3
    assert not feedback[bad].passed and feedback[bad].message != feedback[ok].message
    scores = store.gold_scores()
    assert sorted(scores["mask_id"]) == sorted([ok, bad]) and set(scores["annotator_id"]) == {"good"}
    assert gold.score_task(store, task) == []  # already scored: nothing twice
    with pytest.raises(KeyError, match="not in the gold set"):
        gold.score(store, mask_id=ok, image_id=99, annotator_id="good", rle=rle_utils.encode(objs[3]))


def test_recall_counts_matched_objects():
    gold = GoldStandard({7: gold_anns()})
    objs = gold_objects()
    both = [rle_utils.encode(objs[1]), rle_utils.encode(objs[3])]
    assert gold.recall(both, 7, iou=0.75) == pytest.approx(2 / 3)
    assert gold.recall(both, 7, iou=0.5) == 1.0  # the part has IoU 0.5 with the whole
    assert gold.recall([], 7) == 0.0
    assert gold.is_gold(7) and not gold.is_gold(8) and gold.image_ids == [7]


def test_accuracy_and_shrunk_weights():
    scores = pd.DataFrame(
        {
            "annotator_id": ["good"] * 10 + ["lucky"] + ["poor"] * 10,
            "mask_id": range(21),
            "iou": [0.95] * 10 + [1.0] + [0.55] * 10,
        }
    )
    acc = gold_accuracy(scores).set_index("annotator_id")
    assert acc.loc["good", "gold_n"] == 10 and acc.loc["good", "gold_iou"] == pytest.approx(0.95)
    assert acc.loc["good", "gold_pass_rate"] == 1.0 and acc.loc["poor", "gold_pass_rate"] == 0.0
    w = annotator_weights(scores, prior_mean=0.7, prior_n=3)
    assert w["good"] > w["lucky"] > w["poor"]  # one perfect honeypot counts for less than ten good ones
    assert w["lucky"] == pytest.approx((1.0 + 3 * 0.7) / 4)
    assert annotator_weights(scores.iloc[:0]) == {}
    assert list(gold_accuracy(scores.iloc[:0]).columns) == list(acc.reset_index().columns)
