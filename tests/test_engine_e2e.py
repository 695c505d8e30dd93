"""The whole engine materialized on the smoke profile (`make run`'s driver, the session's `engine_run` fixture in
conftest.py), what it must leave behind and what it prints."""

from __future__ import annotations

import json

import pytest
from dagster import AssetKey, DagsterInstance

pytestmark = pytest.mark.slow


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
    assert {"model_v1", "eval_model_v1"} <= parents["v1_pseudo_labels"]
    assert {"model_v1", "stage2_masks", "v1_pseudo_labels"} <= parents["model_v2"]
    assert "model_v2" in parents["sa1b_shards"]
    assert {"model_v2", "sa1b_shards"} <= parents["model_v3"]
    for v in range(4):
        assert f"model_v{v}" in parents[f"eval_model_v{v}"] and "gold_set" in parents[f"eval_model_v{v}"]


def test_every_stage_produced_masks(engine_run):
    data, instance = engine_run
    assert _meta(instance, "stage1_masks")["masks"].value > 0
    assert _meta(instance, "stage2_masks")["masks"].value > 0
    # pseudo-labels are off by default (train.v2_pseudo_labels): v1 labels nothing and v2 learns from people only
    assert _meta(instance, "v1_pseudo_labels")["masks"].value == 0
    assert _meta(instance, "model_v2")["pseudo_label_masks"].value == 0
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


def test_a_regressing_model_stops_the_engine(engine_run, tmp_path, monkeypatch, capsys):
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
        # the verdict names the failed gate, and the steps it held back are said to be skipped
        out = capsys.readouterr().out
        assert "FAILED v1_not_worse_than_v0 on eval_model_v1: " in out
        assert "engine_upstream: FAILED" in out and "event log: " in out
        assert instance.get_latest_materialization_event(AssetKey("eval_model_v1")) is not None
        assert instance.get_latest_materialization_event(AssetKey("stage2_proposals")) is None
        key = AssetCheckKey(AssetKey("eval_model_v1"), "v1_not_worse_than_v0")
        evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[
            key
        ].event.asset_check_evaluation
        assert not evaluation.passed
        assert evaluation.metadata["regressed"].value == "iou@1"
        assert "REGRESSED" in evaluation.description


STEPS = (
    "corpora",
    "model_v0",
    "eval_model_v0",
    "stage1_tasks",
    "stage1_masks",
    "model_v1",
    "eval_model_v1",
    "stage2_proposals",
    "stage2_masks",
    "v1_pseudo_labels",
    "model_v2",
    "stage3_plan",
    "sa1b_shards",
    "model_v3",
    "eval_model_v3",
    "stage3_audit",
    "engine_report",
)


def test_make_run_output_reads_as_a_story(engine_run_process, engine_run):
    """What `make run > log` shows (stdout a pipe): short lines, a line per step with its duration, training
    progress, no third-party noise, the event log's path at start and end, the verdict with the failed check."""
    import re

    data, out = engine_run_process
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 300, max(lines, key=len)
    for noise in (
        "litlogger",
        "GPU available",
        "TPU available",
        "LeafSpec",
        "weights_only",
        " - DEBUG - ",
        "it/s]",
    ):
        assert noise not in out, noise
    # one line per step: its name, its duration, a key figure where the asset has one
    for step in STEPS:
        assert any(re.match(rf"^  {step} +(\d+h)?(\d+m)?\d+s\b", line) for line in lines), step
    assert re.search(r"^  stage1_masks +\S+  \d+ masks", out, re.M)
    assert re.search(r"^  eval_model_v1 +\S+  gold mIoU@1 \d\.\d{3}", out, re.M)
    # training progress: with an interval of 0 s, a line after every step of every trained model
    _, instance = engine_run
    for v in (0, 1, 2):
        steps = int(_meta(instance, f"model_v{v}")["train/steps"].value)
        seen = [
            int(m)
            for m in re.findall(rf"^  model_v{v}: step (\d+)/\d+  loss \S+  elapsed \S+  eta ", out, re.M)
        ]
        assert seen == list(range(1, steps + 1)), (v, seen)
    # the full event log: its path printed first and last, the file holding Dagster's debug events
    logs = re.findall(r"^event log: (\S+)$", out, re.M)
    assert len(logs) == 2 and logs[0] == logs[-1] and lines[1] == f"event log: {logs[0]}"
    log_text = (data / "logs" / logs[0].rsplit("/", 1)[-1]).read_text()
    assert "STEP_SUCCESS" in log_text and " DEBUG " in log_text and "model_v0" in log_text
    # the verdict after the report, every failed check named (stage 3's bar of 1.01 cannot be met)
    verdict = next(i for i, line in enumerate(lines) if re.match(r"^checks: \d+ passed, \d+ failed$", line))
    assert verdict > next(i for i, line in enumerate(lines) if line.startswith("== sam-engine report"))
    failed = int(re.match(r"^checks: \d+ passed, (\d+) failed$", lines[verdict]).group(1))
    named = [line for line in lines[verdict + 1 :] if line.startswith("FAILED ")]
    assert failed >= 1 and len(named) == failed
    assert any(line.startswith("FAILED stage3_precision on stage3_audit: ") for line in named)
    tail = "\n".join(lines[verdict:])
    assert "HTML report: " in tail and "JSON report: " in tail


def test_runs_are_the_named_engine_jobs(engine_run):
    """Every run of `make run` is one of the engine's named jobs, tagged with its phase and the profile."""
    _, instance = engine_run
    runs = instance.get_runs()
    phases = {"engine_upstream": "upstream", "stage3_shards": "shard", "engine_downstream": "downstream"}
    assert {r.job_name for r in runs} == set(phases)
    for r in runs:
        assert r.tags["sam_engine/phase"] == phases[r.job_name]
        assert r.tags["sam_engine/profile"] == "smoke"
    assert [r.tags.get("dagster/partition") for r in runs if r.job_name == "stage3_shards"] == ["shard_00000"]


def test_model_and_eval_assets_show_pictures(engine_run):
    """Each model version and its evaluation carry its masks on gold images, a trained version its training
    curve; the pictures are MLflow artifacts of the version's run too."""
    data, instance = engine_run
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{data / 'mlflow.db'}")
    for v in range(4):
        meta = _meta(instance, f"model_v{v}")
        assert meta["gold_overlays"].value.startswith(f"![model_v{v} on gold images](data:image/png;base64,")
        assert "gold_overlays" in _meta(instance, f"eval_model_v{v}")
        if v == 0:  # trained here for 30 steps (smoke fine-tunes log a single point: no curve to draw)
            assert meta["training_curve"].value.startswith("![model_v0 training](data:image/png;base64,")
        if v == 3 and meta["carried_from"].value:  # v2's weights, no training of its own
            assert "training_curve" not in meta
        artifacts = {a.path for a in client.list_artifacts(meta["mlflow_run_id"].value, "pictures")}
        assert any(p.endswith("_gold.png") for p in artifacts), (v, artifacts)
