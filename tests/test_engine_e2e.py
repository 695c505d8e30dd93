"""The whole engine materialized on the smoke profile, in-process, and what it must leave behind."""

from __future__ import annotations

import json

import pytest
from dagster import AssetKey, DagsterInstance

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    """Run `make run`'s driver on the smoke profile into a temp data folder and Dagster instance."""
    from jobs import run_engine

    data = tmp_path_factory.mktemp("engine")
    overrides = json.dumps({"data_dir": str(data)})
    with DagsterInstance.ephemeral() as instance:
        original = DagsterInstance.get
        DagsterInstance.get = staticmethod(lambda: instance)  # the driver uses the instance of $DAGSTER_HOME
        try:
            import os

            os.environ["DAGSTER_HOME"] = str(data / "dagster_home")
            assert run_engine.main(["--profile", "smoke", "--overrides", overrides]) == 0
        finally:
            DagsterInstance.get = original
        yield data, instance


def _meta(instance, key, partition=None):
    ev = instance.get_latest_materialization_event(AssetKey(key))
    assert ev is not None, f"{key} was not materialized"
    return ev.asset_materialization.metadata


def test_lineage_is_the_engine(engine_run):
    from jobs.definitions import defs

    graph = defs.resolve_asset_graph()
    parents = {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
        for k in graph.get_all_asset_keys()
    }
    assert "public_corpus" in parents["model_v0"]
    assert "model_v0" in parents["stage1_tasks"] and "stage1_tasks" in parents["stage1_masks"]
    assert {"model_v0", "stage1_masks"} <= parents["model_v1"]
    assert "model_v1" in parents["stage2_proposals"] and "stage2_proposals" in parents["stage2_tasks"]
    assert "stage2_tasks" in parents["stage2_masks"]
    assert {"model_v1", "stage2_masks"} <= parents["model_v2"]
    assert "model_v2" in parents["sa1b_shards"]
    assert {"model_v2", "sa1b_shards"} <= parents["model_v3"]
    for v in range(4):
        assert f"model_v{v}" in parents[f"eval_model_v{v}"] and "gold_set" in parents[f"eval_model_v{v}"]


def test_every_stage_produced_masks(engine_run):
    data, instance = engine_run
    assert _meta(instance, "stage1_masks")["masks"].value > 0
    assert _meta(instance, "stage2_masks")["masks"].value > 0
    shards = sorted((data / "shards").glob("*.tar"))
    assert shards
    from sam_engine.data.sa1b import read_shard_records

    assert sum(len(r["annotations"]) for s in shards for r in read_shard_records(s)) > 0
    report = (data / "reports" / "engine_report.txt").read_text()
    assert "Models on the gold set" in report and "v3" in report
    assert "Paired changes on the same gold objects" in report and "v0 -> v1" in report


def test_checks_pass(engine_run):
    _, instance = engine_run
    from dagster import AssetCheckKey

    for asset, check in [
        ("quality_by_stage", "quality_schema"),
        ("annotator_stats", "annotator_stats_schema"),
        ("sa1b_shards", "shard_qa_floor"),
        *[(f"eval_model_v{v}", f"v{v}_not_worse_than_v{v - 1}") for v in (1, 2, 3)],
    ]:
        rec = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(AssetKey(asset), check)]
        )
        evaluation = rec[AssetCheckKey(AssetKey(asset), check)].event.asset_check_evaluation
        assert evaluation.passed, (asset, check)
        if "_not_worse_than_" in check:
            # the gate paired the two versions' per-object gold results
            assert "noc@90_se_loss" in evaluation.metadata and "iou@1_mean_loss" in evaluation.metadata, check


def test_mlflow_has_a_run_and_registered_version_per_model(engine_run):
    data, instance = engine_run
    from mlflow import MlflowClient

    uri = f"sqlite:///{data / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for v in range(4):
        meta = _meta(instance, f"model_v{v}")
        run = client.get_run(meta["mlflow_run_id"].value)
        assert run.info.status == "FINISHED"
        version = meta["registered_version"].value
        assert version
        mv = client.get_model_version(client.search_registered_models()[0].name, version)
        assert mv.run_id == run.info.run_id


def test_a_regressing_model_stops_the_engine(engine_run, tmp_path, monkeypatch):
    """The gate is blocking: a v1 that fails it (here: a tolerance no model can meet) stops the run before stage 2,
    and the check says which metric regressed. Runs on a copy of the smoke run's data folder (its models and
    evaluations are reused: the gate's tolerances are not part of their keys), with a fresh Dagster instance."""
    import shutil

    from dagster import AssetCheckKey

    from jobs import run_engine

    data = tmp_path / "data"
    shutil.copytree(engine_run[0], data, ignore=shutil.ignore_patterns("dagster_home"))
    overrides = json.dumps({"data_dir": str(data), "eval": {"regression_tolerance": -1.0}})
    with DagsterInstance.ephemeral() as instance:
        monkeypatch.setattr(DagsterInstance, "get", staticmethod(lambda: instance))
        monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster_home"))
        with pytest.raises(SystemExit) as stopped:
            run_engine.main(["--profile", "smoke", "--overrides", overrides])
        assert stopped.value.code == 1
        assert instance.get_latest_materialization_event(AssetKey("eval_model_v1")) is not None
        assert instance.get_latest_materialization_event(AssetKey("stage2_proposals")) is None
        key = AssetCheckKey(AssetKey("eval_model_v1"), "v1_not_worse_than_v0")
        evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[
            key
        ].event.asset_check_evaluation
        assert not evaluation.passed
        assert evaluation.metadata["regressed"].value == "iou@1"
        assert "REGRESSED" in evaluation.description
