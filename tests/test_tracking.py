"""MLflow helpers against a temporary SQLite store and artifact folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam_engine import tracking


@pytest.fixture
def settings(tmp_path):
    return tracking.TrackingSettings(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_dir=tmp_path / "artifacts",
        experiment="exp",
        registered_model="m",
    )


@pytest.mark.slow
def test_run_params_metrics_artifacts_and_registry(settings, tmp_path):
    run_id = tracking.start_run(settings, "v0", tags={"stage": "pretrain"})
    tracking.log_params(settings, run_id, {"lr": 1e-3, "model": {"name": "tiny", "dims": [1, 2]}})
    for step in range(4):
        tracking.log_metrics(
            settings, run_id, {"train/loss": 1.0 / (step + 1), "bad": float("nan")}, step=step
        )
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    tracking.log_artifact(settings, run_id, ckpt, "model")
    img = np.zeros((30, 40, 3), np.uint8)
    mask = np.zeros((30, 40), bool)
    mask[5:15, 5:20] = True
    assert tracking.log_overlays(settings, run_id, [(img, mask, [(10, 10, 1)]), (img, None, [])]) == 2
    assert tracking.log_curves_png(settings, run_id, ["train/loss"])
    assert not tracking.log_curves_png(settings, run_id, ["never/logged"])
    v1 = tracking.register_model_version(settings, run_id, "model/model.pt", tags={"version": "v0"})
    tracking.end_run(settings, run_id)

    run2 = tracking.start_run(settings, "v1")
    v2 = tracking.register_model_version(settings, run2, "model/model.pt")
    assert (v1, v2) == ("1", "2")

    client = settings.client()
    run = client.get_run(run_id)
    assert run.data.params["lr"] == "0.001" and run.data.params["model.dims"] == "[1, 2]"
    assert run.data.tags["stage"] == "pretrain" and run.info.status == "FINISHED"
    assert "bad" not in run.data.metrics
    hist = tracking.metric_history(settings, run_id, ["train/loss"])["train/loss"]
    assert [s for s, _ in hist] == [0, 1, 2, 3] and hist[-1][1] == pytest.approx(0.25)
    files = {f.path for d in ("model", "overlays", "plots") for f in client.list_artifacts(run_id, d)}
    assert {
        "model/model.pt",
        "overlays/sample_000.png",
        "overlays/sample_001.png",
        "plots/curves.png",
    } <= files
    versions = client.search_model_versions("name='m'")
    assert sorted((str(v.version), v.run_id) for v in versions) == [("1", run_id), ("2", run2)]
    # artifacts live under the configured folder, not the working directory
    assert list((tmp_path / "artifacts").rglob("model.pt"))


@pytest.mark.slow
def test_lightning_logger_writes_to_the_run(settings):
    run_id = tracking.start_run(settings, "curves")
    logger = tracking.lightning_logger(settings, run_id)
    logger.log_metrics({"train/iou": 0.5}, step=3)
    logger.finalize("success")
    hist = tracking.metric_history(settings, run_id, ["train/iou"])["train/iou"]
    assert hist == [(3, 0.5)]


def test_overlay_tints_mask_and_draws_clicks():
    img = np.full((40, 40, 3), 100, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = tracking.overlay(img, mask, [(5, 5, 1), (35, 35, 0)])
    assert out.shape == img.shape and out.dtype == np.uint8
    assert tuple(out[20, 20]) != (100, 100, 100) and tuple(out[2, 20]) == (100, 100, 100)
    assert out[5, 5, 1] > 150 and out[5, 5, 0] < 100  # green positive click
    assert out[35, 35, 0] > 150 and out[35, 35, 1] < 100  # red negative click


@pytest.mark.slow
def test_plot_curves_writes_png(tmp_path):
    path = tracking.plot_curves(
        {"a": [(0, 1.0), (1, 0.5)], "b": [(0, 0.1)], "empty": []}, tmp_path / "c.png", "t"
    )
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]


def test_settings_from_engine_config(tmp_path):
    from sam_engine.config import load_config

    cfg = load_config("smoke", {"data_dir": str(tmp_path)})
    s = tracking.TrackingSettings.from_config(cfg, experiment="x")
    assert s.tracking_uri.startswith("sqlite:///") and s.tracking_uri.endswith("mlflow.db")
    assert str(s.artifact_dir).startswith(str(tmp_path)) and s.experiment == "x"


def test_flatten_params():
    flat = tracking.flatten({"a": {"b": 1, "c": {"d": "x" * 10000}}, "e": (1, 2)})
    assert flat["a.b"] == "1" and len(flat["a.c.d"]) == 6000 and flat["e"] == "[1, 2]"
