"""The Dagster code location loads and the corpora assets materialize on the smoke profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import materialize

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dagster_definitions_validate(tmp_path):
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path), SAM_ENGINE_DATA_DIR=str(tmp_path / "data"))
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "success" in (proc.stdout + proc.stderr).lower()


@pytest.mark.slow
def test_corpora_assets_materialize(tmp_path):
    from assets.corpora import corpora
    from assets.resources import EngineResource

    engine = EngineResource(profile="smoke", overrides=json.dumps({"data_dir": str(tmp_path)}))
    result = materialize([corpora], resources={"engine": engine})
    assert result.success
    mats = {m.asset_key.path[-1]: m for m in result.get_asset_materialization_events()}
    assert set(mats) == {"public_corpus", "target_pool", "pool_ground_truth", "gold_set"}
    gold_meta = mats["gold_set"].materialization.metadata
    assert gold_meta["images"].value == 10 and gold_meta["quarantined"].value == 0
    assert "data:image/png;base64" in gold_meta["preview"].value
    assert (tmp_path / "corpora" / "manifest.json").exists()


def test_only_gates_of_models_a_later_stage_uses_are_blocking():
    """v1 and v2 feed stages 2 and 3, so their regression gates stop the engine; v3 feeds only the report."""
    from assets.models import gate_checks

    blocking = {spec.name: spec.blocking for check in gate_checks for spec in check.check_specs}
    assert blocking == {
        "v1_not_worse_than_v0": True,
        "v2_not_worse_than_v1": True,
        "v3_not_worse_than_v2": False,
    }
