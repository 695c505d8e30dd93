"""The retrain sensor (cursor: exactly one request per threshold crossing) and the drift check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context

from sam_engine.engine.quality import drift
from sam_engine.engine.retrain import retrain_decisions


class _FakeStore:
    def __init__(self, masks: pd.DataFrame):
        self._masks = masks

    def query(self, sql, params=None):
        if "FROM events" in sql:
            return pd.DataFrame({"mask_id": []})
        if "source = 'model'" in sql:
            return pd.DataFrame({"mask_id": [], "stage": []})
        return self._masks


def test_retrain_decisions_request_once_per_crossing():
    due, cursor = retrain_decisions({1: 4, 2: 0}, None, threshold=5)
    assert due == []
    due, cursor = retrain_decisions({1: 5, 2: 0}, cursor, threshold=5)
    assert due == [1]
    due, cursor = retrain_decisions({1: 7, 2: 0}, cursor, threshold=5)
    assert due == []  # only 2 new since the last request
    due, cursor = retrain_decisions({1: 10, 2: 6}, cursor, threshold=5)
    assert due == [1, 2] and json.loads(cursor) == {"1": 10, "2": 6}


@pytest.mark.slow
def test_retrain_sensor_requests_exactly_once(tmp_path, monkeypatch):
    from assets.resources import EngineResource
    from jobs.sensors import retrain_sensor
    from sam_engine.config import load_config
    from sam_engine.data.corpora import generate_corpora
    from sam_engine.quality.store import QualityStore

    cfg = load_config("smoke", {"data_dir": str(tmp_path)})
    generate_corpora(cfg, workers=1)
    engine = EngineResource(profile="smoke", overrides=json.dumps({"data_dir": str(tmp_path)}))
    threshold = cfg.stages.retrain_min_new_masks
    with QualityStore(cfg.duckdb_path) as store:
        store.add_images([{"image_id": 1, "file_name": "1.png", "width": 8, "height": 8}])
        store.add_annotator("ann", "annotator")
        (task,) = store.create_tasks([{"image_id": 1, "stage": 1, "kind": "annotate", "annotator_id": "ann"}])

        def add(n):
            for _ in range(n):
                m = np.zeros((8, 8), dtype=bool)
                m[1:4, 1:4] = True
                from sam_engine.data.rle import encode

                store.commit_mask(
                    task_id=task,
                    image_id=1,
                    annotator_id="ann",
                    stage=1,
                    source="human",
                    rle=encode(m),
                    predicted_iou=0.9,
                    clicks=2,
                    seconds=5.0,
                )

        add(threshold - 1)
    with DagsterInstance.ephemeral() as instance:
        ctx = build_sensor_context(instance=instance, resources={"engine": engine})
        assert isinstance(retrain_sensor(ctx), SkipReason)
        with QualityStore(cfg.duckdb_path) as store:
            add_store = store
            m = np.zeros((8, 8), dtype=bool)
            m[2:5, 2:5] = True
            from sam_engine.data.rle import encode

            add_store.commit_mask(
                task_id=task,
                image_id=1,
                annotator_id="ann",
                stage=1,
                source="human",
                rle=encode(m),
                predicted_iou=0.9,
                clicks=2,
                seconds=5.0,
            )
        ctx2 = build_sensor_context(instance=instance, resources={"engine": engine}, cursor=ctx.cursor)
        out = retrain_sensor(ctx2)
        assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], RunRequest)
        assert out[0].job_name == "retrain_stage1"
        ctx3 = build_sensor_context(instance=instance, resources={"engine": engine}, cursor=ctx2.cursor)
        assert isinstance(retrain_sensor(ctx3), SkipReason), "no second request without new masks"


def _scores(rng, n, iou_mean, stab_mean):
    return pd.DataFrame(
        {
            "predicted_iou": np.clip(rng.normal(iou_mean, 0.03, n), 0, 1),
            "stability_score": np.clip(rng.normal(stab_mean, 0.02, n), 0, 1),
            "area_fraction": rng.uniform(0.001, 0.2, n),
        }
    )


def test_drift_flags_injected_bad_masks_and_passes_good_ones():
    rng = np.random.default_rng(0)
    base = _scores(rng, 400, 0.93, 0.97)
    good = _scores(rng, 400, 0.93, 0.97)
    ok = drift(base, good, 0.9, 0.88)
    assert not ok["drifted"], ok
    bad = pd.concat([good.iloc[:200], _scores(rng, 200, 0.70, 0.80)])
    flagged = drift(base, bad, 0.9, 0.6)
    assert flagged["drifted"] and "ks_predicted_iou" in flagged["reasons"] and "qa_drop" in flagged["reasons"]
