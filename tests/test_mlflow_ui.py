"""MLflow's UI (started as `make mlflow-ui` starts it) shows the engine's runs and versions in a real browser,
in the model-training view from the printed link, with no switch of views."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from browser_support import BROWSER_MARKS, launch, wait_for_http
from registry_support import engine_versions

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT_DIR = Path(os.environ.get("SAM_ENGINE_SCREENSHOTS", "/tmp"))

pytestmark = BROWSER_MARKS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_ui(smoke_cfg, tmp_path_factory):
    """A tracking store filled by the engine's registration code, served by ``python -m sam_engine.mlflow_ui``;
    yields the links it printed."""
    from sam_engine.engine import registry
    from sam_engine.engine.workspace import Workspace

    root = tmp_path_factory.mktemp("mlflow_ui")
    cfg = smoke_cfg.model_copy(deep=True)
    cfg.data_dir = root / "data"
    ws = Workspace(cfg)
    refs = engine_versions(ws, root)
    registry.record_gold(ws, refs["v2"], {"gold/miou@1": 0.61})
    for k in (1, 2):
        registry.record_gate(ws, refs[f"v{k}"], True, "passed in the test")
    port = _free_port()
    env = dict(os.environ, SAM_ENGINE_DATA_DIR=str(cfg.data_dir), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sam_engine.mlflow_ui", "--port", str(port), "--profile", "smoke"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    printed = [proc.stdout.readline().strip() for _ in range(2)]
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", proc, 180, f"mlflow server ({printed})")
    yield {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in printed}
    import psutil

    server = psutil.Process(proc.pid).children(recursive=True)
    assert server, "the MLflow server runs as a child of python -m sam_engine.mlflow_ui"
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    # a SIGTERM to the launcher stops the server and its workers with it
    _, alive = psutil.wait_procs(server, timeout=30)
    for p in alive:
        p.kill()
    assert not alive, f"left running after SIGTERM: {[p.pid for p in alive]}"


def test_experiment_link_lists_the_engine_runs_in_the_training_view(mlflow_ui):
    sync_api = pytest.importorskip("playwright.sync_api")
    link = mlflow_ui["experiment (runs)"]
    assert "workflowType=machine_learning" in link
    with sync_api.sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 900})  # a fresh browser: no stored view
        page.goto(link)
        page.get_by_text("4 matching runs").wait_for(timeout=60000)
        for k in range(4):  # the count can show before the table's rows are drawn
            page.get_by_text(f"model_v{k}", exact=True).first.wait_for(timeout=60000)
        body = page.inner_text("body")
        assert "Token Usage" not in body and "Tool calls" not in body  # the GenAI overview is not shown
        page.screenshot(path=str(SCREENSHOT_DIR / "sam_mlflow_experiment.png"))

        page.goto(mlflow_ui["registered model (versions, aliases)"])
        page.get_by_text("champion").first.wait_for(timeout=60000)
        for k in range(4):
            page.get_by_text(f"model_v{k}").first.wait_for(timeout=60000)
        browser.close()
