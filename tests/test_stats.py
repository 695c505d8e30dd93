"""Annotator statistics: per-annotator and per-period figures, gold and agreement joins, schema."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pandera.errors
import pytest

from sam_engine.data import rle as rle_utils
from sam_engine.workforce.stats import (
    ANNOTATOR_STATS_SCHEMA,
    agreement_with_consensus,
    annotator_stats,
    compute_annotator_stats,
)

H, W = 40, 50


def box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def masks_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "mask_id": [1, 2, 3, 4, 5],
            "annotator_id": ["a", "a", "a", "b", "b"],
            "task_id": [10, 10, 11, 12, 12],
            "clicks": [2, 4, 6, 10, 8],
            "seconds": [7.0, 11.0, 15.0, 48.0, 40.0],
            "manual_fix": [False, False, False, True, False],
            "created_at": pd.to_datetime(
                [
                    "2024-01-01 10:00",
                    "2024-01-01 11:00",
                    "2024-01-02 09:00",
                    "2024-01-01 10:00",
                    "2024-01-02 10:00",
                ]
            ),
        }
    )


def test_overall_figures():
    gold = pd.DataFrame({"mask_id": [3, 5], "iou": [0.9, 0.6], "annotator_id": ["a", "b"]})
    agree = pd.DataFrame({"mask_id": [1, 4], "annotator_id": ["a", "b"], "agreement": [0.8, 0.5]})
    df = compute_annotator_stats(masks_frame(), gold, agree).set_index("annotator_id")
    assert df.loc["a", "masks"] == 3 and df.loc["b", "masks"] == 2
    assert df.loc["a", "clicks_per_mask"] == pytest.approx(4.0)
    assert df.loc["b", "seconds_per_mask"] == pytest.approx(44.0)
    assert df.loc["b", "manual_fix_rate"] == pytest.approx(0.5)
    assert df.loc["a", "gold_iou"] == pytest.approx(0.9) and df.loc["a", "gold_n"] == 1
    assert df.loc["b", "agreement"] == pytest.approx(0.5)
    assert set(df["period"]) == {"all"}


def test_by_batch_and_day():
    tasks = pd.DataFrame({"task_id": [10, 11, 12], "batch": ["b1", "b2", "b1"]})
    by_batch = compute_annotator_stats(masks_frame(), tasks=tasks, by="batch")
    a = by_batch[by_batch["annotator_id"] == "a"].set_index("period")
    assert a.loc["b1", "masks"] == 2 and a.loc["b2", "masks"] == 1
    assert a.loc["b2", "clicks_per_mask"] == pytest.approx(6.0)
    by_day = compute_annotator_stats(masks_frame(), by="day")
    assert set(by_day["period"]) == {"2024-01-01", "2024-01-02"}
    assert by_day["masks"].sum() == 5
    assert by_day["gold_n"].sum() == 0 and by_day["gold_iou"].isna().all()
    with pytest.raises(ValueError, match="by must be"):
        compute_annotator_stats(masks_frame(), by="week")


def test_schema_rejects_bad_tables():
    good = compute_annotator_stats(masks_frame())
    ANNOTATOR_STATS_SCHEMA.validate(good)
    bad = good.copy()
    bad.loc[0, "manual_fix_rate"] = 1.5
    with pytest.raises(pandera.errors.SchemaError):
        ANNOTATOR_STATS_SCHEMA.validate(bad)
    dup = pd.concat([good, good.iloc[:1]], ignore_index=True)
    with pytest.raises(pandera.errors.SchemaError):
        ANNOTATOR_STATS_SCHEMA.validate(dup)
    empty = compute_annotator_stats(masks_frame().iloc[:0])
    assert len(empty) == 0 and list(empty.columns) == list(good.columns)


def test_agreement_with_consensus():
    cons = box(5, 25, 5, 25)
    rows = [
        (1, 1, "a", "human", box(5, 25, 5, 25)),
        (2, 1, "b", "human", box(5, 25, 10, 30)),
        (3, 1, None, "consensus", cons),
        (4, 2, "a", "human", box(0, 10, 0, 10)),  # image without consensus: left out
    ]
    df = pd.DataFrame(
        [
            {"mask_id": m, "image_id": i, "annotator_id": a, "source": s, "segmentation": rle_utils.encode(x)}
            for m, i, a, s, x in rows
        ]
    )
    out = agreement_with_consensus(df).set_index("mask_id")
    assert list(out.index) == [1, 2]
    assert out.loc[1, "agreement"] == pytest.approx(1.0)
    assert out.loc[2, "agreement"] == pytest.approx(rle_utils.mask_iou(box(5, 25, 10, 30), cons, empty=0.0))


def test_from_the_store(tmp_path):
    from sam_engine.quality.store import QualityStore

    with QualityStore(tmp_path / "q.duckdb") as store:
        store.add_images([{"image_id": 1, "file_name": "1.png", "width": W, "height": H}])
        for a in ("a", "b"):
            store.add_annotator(a)
        t1, t2 = store.create_tasks(
            [{"image_id": 1, "stage": 1, "annotator_id": a, "batch": "b1"} for a in ("a", "b")]
        )
        ids = {}
        for a, t, m, clicks in (("a", t1, box(5, 25, 5, 25), 3), ("b", t2, box(5, 25, 8, 28), 5)):
            ids[a] = store.commit_mask(
                task_id=t,
                image_id=1,
                annotator_id=a,
                stage=1,
                source="human",
                rle=rle_utils.encode(m),
                predicted_iou=0.9,
                clicks=clicks,
                seconds=10.0,
            )
        store.commit_mask(
            task_id=None,
            image_id=1,
            annotator_id=None,
            stage=1,
            source="consensus",
            rle=rle_utils.encode(box(5, 25, 5, 25)),
            predicted_iou=0.8,
            clicks=0,
            seconds=0.0,
        )
        store.add_gold_score(annotator_id="a", mask_id=ids["a"], gold_ann_id=1, iou=0.93)
        df = annotator_stats(store, by="batch").set_index("annotator_id")
        day = annotator_stats(store, by="day")
    assert list(df.index) == ["a", "b"] and set(df["period"]) == {"b1"}
    assert df.loc["b", "clicks_per_mask"] == 5.0 and df.loc["a", "agreement"] == pytest.approx(1.0)
    assert df.loc["b", "agreement"] < 1.0 and df.loc["a", "gold_iou"] == pytest.approx(0.93)
    assert len(day) == 2 and day["period"].nunique() == 1
    datetime.strptime(day["period"].iloc[0], "%Y-%m-%d")  # a day label
