"""Fault injection: SIGKILL in the middle of stage-2 human work; the re-run completes with no duplicated rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WORK = """
import json, sys
from tests.fault_hooks import kill_after_finished_tasks
if int(sys.argv[2]):
    kill_after_finished_tasks(int(sys.argv[2]))
from sam_engine.config import load_config
from sam_engine.engine.workspace import Workspace
from sam_engine.engine.human_stage import simulate_stage
cfg = load_config("smoke", json.loads(sys.argv[1]))
ws = Workspace(cfg)
with ws.open_store() as store:
    print(json.dumps(simulate_stage(ws, store, 2, ws.model_store.get("model_v1"))))
"""


@pytest.fixture
def stage2_world(tmp_path):
    import torch

    from sam_engine.config import load_config
    from sam_engine.data.corpora import generate_corpora
    from sam_engine.engine.human_stage import create_tasks
    from sam_engine.engine.splits import stage_split
    from sam_engine.engine.workspace import Workspace
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import save_checkpoint

    overrides = {"data_dir": str(tmp_path), "stages": {"image_budget_s": 40.0}}
    cfg = load_config("smoke", overrides)
    generate_corpora(cfg, workers=1)
    torch.manual_seed(0)
    save_checkpoint(build_sam("tiny"), tmp_path / "init.pt")
    ws = Workspace(cfg)
    ws.model_store.put("model_v1", tmp_path / "init.pt")
    images = stage_split(ws.pool, cfg)[2][:4]
    with ws.open_store() as store:
        create_tasks(ws, store, 2, images, kind="complete", honeypots=False)
    return ws, overrides


def _run(overrides, kill_after_tasks: int = 0):
    """The stage's simulated work in a child process, SIGKILLed after that many finished tasks (0: never)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", WORK, json.dumps(overrides), str(kill_after_tasks)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_sigkill_during_stage2_masks_then_rerun(stage2_world):
    ws, overrides = stage2_world
    killed = _run(overrides, kill_after_tasks=2)
    assert killed.returncode == -9, killed.stderr[-2000:]
    with ws.open_store(read_only=True) as store:
        tasks = store.tasks(stage=2)
        masks = store.masks(stage=2, status=None)
    done = set(tasks.loc[tasks["status"] == "done", "task_id"])
    assert len(done) == 2, "exactly the tasks finished before the kill are done"
    assert set(masks["task_id"]) <= done, "no half-written task: masks exist only for finished tasks"
    before = masks.sort_values("mask_id")[["mask_id", "task_id", "segmentation"]].reset_index(drop=True)

    again = _run(overrides)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["tasks_worked"] == len(tasks) - 2
    with ws.open_store(read_only=True) as store:
        tasks = store.tasks(stage=2)
        masks = store.masks(stage=2, status=None)
    assert set(tasks["status"]) == {"done"}
    assert not masks.duplicated(["task_id", "segmentation"]).any()
    kept = masks[masks["mask_id"].isin(before["mask_id"])].sort_values("mask_id")
    assert kept[["mask_id", "task_id", "segmentation"]].reset_index(drop=True).equals(before), (
        "work acknowledged before the kill is untouched"
    )
    assert set(masks["task_id"]) == set(tasks["task_id"]), "every task now has its masks"
