"""Every benchmark module runs in quick mode and returns well-formed rows (no timing is asserted)."""

from __future__ import annotations

import importlib
import math

import pytest

from benchmarks.run_all import format_table, modules


@pytest.mark.slow
@pytest.mark.parametrize("name", modules())
def test_benchmark_rows_are_well_formed(name):
    rows = importlib.import_module(f"benchmarks.{name}").run(quick=True)
    assert rows
    for row in rows:
        assert {"benchmark", "metric", "value", "unit"} <= set(row)
        assert isinstance(row["value"], int | float) and math.isfinite(row["value"])
        if "ratio" in row:
            assert row["ratio"] > 0 and "baseline" in row
    assert row["metric"] in format_table(rows)


def test_quality_rows_show_miou_at_every_reported_click():
    from benchmarks.bench_quality import _rows

    result = {"summary": {"miou@1": 0.5, "miou@10": 0.8, "miou@20": 0.9, "noc@90": 3.0}, "compliance": {}}
    metrics = [r["metric"] for r in _rows("m", result, clicks=20)]
    assert metrics == ["m miou@1", "m miou@10", "m miou@20", "m noc@90"]  # no row for a click not reported


def test_quality_also_measures_the_output_choice_recorded_beside_a_checkpoint(tmp_path):
    import json

    from benchmarks.bench_quality import _served
    from sam_engine.output_choice import FEATURES, ChoicePredictor

    head = object()
    checkpoint = tmp_path / "model_v3" / "model.pt"
    checkpoint.parent.mkdir()
    assert [name for name, _ in _served(head, checkpoint)] == [""]  # nothing recorded: the head's pick only
    choice = {"features": list(FEATURES), "weights": [0.1] * len(FEATURES), "objects": 300}
    (checkpoint.parent / "meta.json").write_text(json.dumps({"data": {"output_choice": choice}}))
    served = _served(head, checkpoint)
    assert [name for name, _ in served] == ["", ", output choice"]
    assert served[0][1] is head and isinstance(served[1][1], ChoicePredictor)
