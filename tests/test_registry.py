"""MLflow names of the engine's models: the training experiment kind, aliases model_v0..v3 and champion, descriptions."""

from __future__ import annotations

import pytest
from registry_support import engine_versions

from sam_engine import tracking


@pytest.fixture
def ws(smoke_cfg, tmp_path):
    from sam_engine.engine.workspace import Workspace

    cfg = smoke_cfg.model_copy(deep=True)
    cfg.data_dir = tmp_path / "data"
    cfg.data_dir.mkdir()
    return Workspace(cfg)


@pytest.mark.slow
def test_the_experiment_is_a_model_training_experiment(tmp_path):
    s = tracking.TrackingSettings(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "art", experiment="e")
    exp_id = tracking.ensure_experiment(s)
    client = s.client()
    assert client.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # an experiment made before the tag (or by another tool) gets it when the engine finds it
    other = client.create_experiment("old", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    old = tracking.TrackingSettings(s.tracking_uri, tmp_path / "art", experiment="old")
    assert tracking.ensure_experiment(old) == other
    assert client.get_experiment(other).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert tracking.experiment_url(s, "http://h:5000/") == (
        f"http://h:5000/#/experiments/{exp_id}?workflowType=machine_learning"
    )


@pytest.mark.slow
def test_versions_carry_engine_aliases_descriptions_and_a_champion(ws, tmp_path):
    from sam_engine.engine import registry

    refs = engine_versions(ws, tmp_path)
    s = ws.tracking
    for name, ref in refs.items():
        assert tracking.version_by_alias(s, f"model_{name}") == ref.registered_version
    assert tracking.version_by_alias(s, "champion") == refs["v0"].registered_version  # until a gate passes
    v0_text = tracking.version_description(s, refs["v0"].registered_version)
    assert "trained from scratch on the public corpus" in v0_text and "40 images, 310 masks" in v0_text
    v3_text = tracking.version_description(s, refs["v3"].registered_version)
    assert v3_text == "Data: v2's weights carried forward without training (test 3)."

    registry.record_gold(ws, refs["v2"], {"gold/miou@1": 0.6123, "gold/noc@90": 3.5, "other": 1.0})
    assert registry.record_gate(ws, refs["v1"], True, "iou@1 +0.01")
    assert registry.record_gate(ws, refs["v2"], True, "iou@1 +0.02")
    assert not registry.record_gate(ws, refs["v3"], False, "iou@1 regressed")
    assert tracking.version_by_alias(s, "champion") == refs["v2"].registered_version  # v3 failed its gate
    assert not registry.record_gate(ws, refs["v1"], True, "again")  # an older version never takes it back
    assert tracking.version_by_alias(s, "champion") == refs["v2"].registered_version
    assert registry.champion_name(ws) == "model_v2"  # as the report names it
    lines = tracking.version_description(s, refs["v2"].registered_version).splitlines()
    assert lines == [
        "Data: v1's weights carried forward without training (test 2).",
        "Gold set (held out): mIoU@1 0.612, NoC@90 3.500.",
        "Gate: passed, iou@1 +0.02",
    ]
    client = s.client()
    assert (
        client.get_model_version(s.registered_model, refs["v3"].registered_version).tags["gate"] == "failed"
    )
    assert "champion" in client.get_registered_model(s.registered_model).description
    # a person opens a version by its engine name, or the champion
    assert tracking.download_version(s, "champion", tmp_path / "dl").read_bytes() == b"weights"
    mv = client.get_model_version_by_alias(s.registered_model, "model_v2")
    assert str(mv.version) == refs["v2"].registered_version


@pytest.mark.slow
def test_naming_a_version_mlflow_does_not_have_is_logged_not_raised(ws, tmp_path, caplog):
    from sam_engine.engine import registry

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"w")
    ghost = ws.model_store.put("model_v1", ckpt, registered_version="7")
    registry.record_version(ws, ghost)
    assert registry.champion_name(ws) is None
    assert registry.record_gate(ws, ghost, True, "x") is None
    assert "not named in MLflow" in caplog.text
