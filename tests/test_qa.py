"""QA sampling, verdicts, Wilson interval and the simulated reviewer."""

from __future__ import annotations

import numpy as np
import pytest

from sam_engine.data import rle as rle_utils
from sam_engine.data import sa1b
from sam_engine.qa import (
    QaItem,
    SimulatedQaJudge,
    VerdictCollector,
    review,
    sample_documents,
    sample_shard,
    wilson_interval,
)


def _square(h: int, w: int, x0: int, y0: int, side: int) -> dict:
    m = np.zeros((h, w), dtype=bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return rle_utils.encode(m)


def _docs(n_images: int, masks_per_image: int) -> list[dict]:
    docs = []
    for i in range(n_images):
        anns = []
        for j in range(masks_per_image):
            seg = _square(20, 30, j, j, 5)
            anns.append(
                sa1b.annotation(j, seg, [j, j, 4, 4], 25, 0.9, 0.96, [0, 0, 30, 20], [[j + 2, j + 2]])
            )
        docs.append(sa1b.image_json(i, 30, 20, f"sa_{i}.png", anns))
    return docs


def test_wilson_interval_hand_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_sampling_is_seeded_and_without_repeats():
    docs = _docs(10, 8)
    a = sample_documents(docs, "sa_000000.tar", 20, seed=1)
    b = sample_documents(docs, "sa_000000.tar", 20, seed=1)
    c = sample_documents(docs, "sa_000000.tar", 20, seed=2)
    d = sample_documents(docs, "sa_000001.tar", 20, seed=1)
    assert [i.key for i in a] == [i.key for i in b]
    assert [i.key for i in a] != [i.key for i in c]
    assert [(i.image_id, i.annotation_id) for i in a] != [(i.image_id, i.annotation_id) for i in d]
    assert len({i.key for i in a}) == 20
    assert len(sample_documents(docs, "s", 1000, seed=0)) == 80
    assert sample_documents(docs, "s", 0, seed=0) == []


def test_sample_shard_reads_tar(tmp_path):
    items = [sa1b.ShardItem(d, b"png-bytes", "png") for d in _docs(3, 4)]
    path = sa1b.write_shard(tmp_path / "sa_000007.tar", items).path
    sample = sample_shard(path, 5, seed=0)
    assert len(sample) == 5 and all(s.shard == "sa_000007.tar" for s in sample)


def test_simulated_reviewer_and_estimate():
    gt = {0: [_square(40, 40, 10, 10, 10)]}
    good = QaItem("s", 0, 1, _square(40, 40, 10, 10, 10), 0.9, 0.95)
    near = QaItem("s", 0, 2, _square(40, 40, 11, 10, 10), 0.9, 0.95)  # IoU 90/110 = 0.82
    bad = QaItem("s", 0, 3, _square(40, 40, 13, 10, 10), 0.9, 0.95)  # IoU 70/130 = 0.54
    other = QaItem("s", 5, 4, _square(40, 40, 13, 10, 10), 0.9, 0.95)  # no GT for image 5
    reviewer = SimulatedQaJudge(gt, threshold=0.75)
    assert reviewer.best_iou(near) == pytest.approx(90 / 110)
    verdicts = review([good, near, bad, other], reviewer)
    assert [v["good"] for v in verdicts.records()] == [True, True, False, False]
    est = verdicts.estimate()
    assert (est.reviewed, est.good, est.share) == (4, 2, 0.5)
    assert (est.low, est.high) == pytest.approx(wilson_interval(2, 4))
    assert est.low < 0.5 < est.high


def test_collector_keeps_latest_verdict_per_reviewer():
    item = QaItem("s", 0, 1, _square(10, 10, 0, 0, 3), 0.9, 0.95)
    col = VerdictCollector()
    col.add(item, False, "ann")
    col.add(item, True, "ann")
    col.add(item, False, "other")
    assert len(col) == 2
    assert sorted((r["reviewer"], r["good"]) for r in col.records()) == [("ann", True), ("other", False)]
    assert set(col.by_shard()) == {"s"}
