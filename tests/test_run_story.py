"""What `make run` prints per Dagster step (jobs/run_story.py), on a two-asset job run in process."""

from __future__ import annotations

import io
import re
import uuid

import pytest
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    DagsterInstance,
    Definitions,
    MaterializeResult,
    asset,
    define_asset_job,
)

from jobs.run_story import RunStory, key_figure


@asset(check_specs=[AssetCheckSpec("enough", asset="masks_asset")])
def masks_asset(context):
    context.log.info("a message only the event log keeps")
    yield MaterializeResult(metadata={"masks": 34, "images": 6})
    yield AssetCheckResult(check_name="enough", passed=False, description="too few")


@asset(deps=[masks_asset])
def broken_asset():
    raise ValueError("the stage broke\nsecond line of the error")


@pytest.mark.slow
def test_a_line_per_step_and_the_full_log_in_the_file(tmp_path):
    job = define_asset_job("story_job")
    defs = Definitions(assets=[masks_asset, broken_asset], jobs=[job])
    out = io.StringIO()
    story = RunStory(tmp_path / "logs" / "run.log", out=out)
    run_id = str(uuid.uuid4())
    with DagsterInstance.ephemeral() as instance:
        story.listen(instance, run_id)
        result = defs.resolve_job_def("story_job").execute_in_process(
            instance=instance, run_id=run_id, raise_on_error=False
        )
    story.close()
    assert not result.success
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.match(r"^  masks_asset +\d+s  34 masks, 6 images; checks: enough FAILED$", lines[0])
    assert re.match(r"^  broken_asset +\d+s  FAILED: ValueError: the stage broke$", lines[1])
    log = (tmp_path / "logs" / "run.log").read_text()
    assert "a message only the event log keeps" in log
    assert "STEP_START" in log and "ASSET_CHECK_EVALUATION" in log and "STEP_FAILURE" in log


def test_key_figures():
    assert key_figure({"masks": 3, "images": 24, "qa_ci_low": 0.0}) == "3 masks, 24 images"
    assert key_figure({"gold/miou@1": 0.71234, "gold/noc@90": 3.5}) == "gold mIoU@1 0.712, NoC@90 3.50"
    assert key_figure({"train/steps": 30.0, "trained_now": False}) == "30 steps, reused"
    assert key_figure({"trained_now": False, "carried_from": "model_v2"}) == "carried from model_v2"
    assert key_figure({"released": True, "trained_now": False}) == "released checkpoint"
    assert key_figure({"path": "/x"}) == ""
