"""The paired no-regression verdict between model versions."""

import numpy as np
import pandas as pd
import pytest

from sam_engine.config import EvalSection
from sam_engine.evaluation.regression import compare_versions, no_regression, per_object_table

TOL = {"iou@1": 0.02, "noc@90": 0.4}


def _table(iou, noc, keys=None):
    keys = keys if keys is not None else [f"img:{i}" for i in range(len(iou))]
    return {"key": list(keys), "iou@1": list(map(float, iou)), "noc@90": list(map(float, noc))}


def test_same_results_pass_with_zero_loss():
    rng = np.random.default_rng(0)
    t = _table(rng.uniform(0, 1, 150), rng.integers(1, 21, 150))
    v = compare_versions(t, t, TOL)
    assert v.passed
    assert all(m.mean_loss == 0 and m.se_loss == 0 for m in v.metrics)


def test_noisy_small_noc_loss_passes_but_point_comparison_would_not():
    # A run like the one that failed the old point gate: mean NoC@90 up by ~0.45 over 150 objects, most
    # objects at the 20-click cap in both, a few moving either way by many clicks.
    rng = np.random.default_rng(1)
    prev_noc = np.full(150, 20.0)
    prev_noc[:30] = rng.integers(1, 20, 30)
    cur_noc = prev_noc.copy()
    cur_noc[:30] = rng.permutation(prev_noc[:30]) + 3  # same spread, shuffled, three clicks worse
    cur_noc = np.minimum(cur_noc, 20)
    iou = rng.uniform(0.3, 0.9, 150)
    prev, cur = _table(iou, prev_noc), _table(iou, cur_noc)
    v = compare_versions(prev, cur, TOL)
    noc = next(m for m in v.metrics if m.metric == "noc@90")
    assert noc.mean_loss > TOL["noc@90"]  # a point comparison with the tolerance fails it
    assert noc.mean_loss - 1.645 * noc.se_loss <= TOL["noc@90"]
    assert v.passed


def test_consistent_loss_fails():
    rng = np.random.default_rng(2)
    prev_noc = rng.integers(1, 15, 150).astype(float)
    iou = rng.uniform(0.3, 0.9, 150)
    v = compare_versions(_table(iou, prev_noc), _table(iou, prev_noc + 1 + rng.integers(0, 2, 150)), TOL)
    assert not v.passed
    assert v.as_metadata()["regressed"] == "noc@90"
    line = v.summary()
    assert "noc@90:" in line and "REGRESSED" in line and "iou@1:" in line and line.count("REGRESSED") == 1


def test_iou_drop_fails_and_gain_passes():
    rng = np.random.default_rng(3)
    iou = rng.uniform(0.3, 0.9, 150)
    noc = np.full(150, 20.0)
    worse = _table(iou - 0.1 + rng.normal(0, 0.02, 150), noc)
    better = _table(iou + 0.1, noc)
    assert not compare_versions(_table(iou, noc), worse, TOL).passed
    assert compare_versions(_table(iou, noc), better, TOL).passed


def test_objects_are_paired_by_key_not_position():
    prev = _table([0.9, 0.1, 0.5], [2, 20, 10], keys=["a:1", "a:2", "b:1"])
    # Same per-object results in another order, plus an object the previous evaluation did not have.
    cur = _table([0.5, 0.0, 0.9, 0.1], [10, 20, 2, 20], keys=["b:1", "c:9", "a:1", "a:2"])
    v = compare_versions(prev, cur, TOL)
    assert v.passed
    assert all(m.n_paired == 3 and m.mean_loss == 0 for m in v.metrics)


def test_disjoint_evaluations_are_refused():
    with pytest.raises(ValueError, match="share no gold object"):
        compare_versions(_table([0.5], [3], ["a:1"]), _table([0.5], [3], ["b:1"]), TOL)


def test_engine_tolerances_come_from_config():
    prev = _table([0.8] * 20, [5] * 20)
    cur = _table([0.7] * 20, [5] * 20)
    assert not no_regression(EvalSection(), prev, cur).passed
    assert no_regression(EvalSection(regression_tolerance=0.2), prev, cur).passed


def test_per_object_table_from_evaluation_frame():
    df = pd.DataFrame(
        {"image_id": [7, 7, 9], "object_id": [1, 2, 1], "iou@1": [0.5, 0.6, 0.7], "noc@90": [3, 20, 1]}
    )
    t = per_object_table(df)
    assert t == {"key": ["7:1", "7:2", "9:1"], "iou@1": [0.5, 0.6, 0.7], "noc@90": [3.0, 20.0, 1.0]}
    assert per_object_table(df.iloc[:0]) == {"key": [], "iou@1": [], "noc@90": []}


def test_report_table_of_paired_changes_between_versions():
    from sam_engine.engine.report import paired_changes

    rng = np.random.default_rng(4)
    iou = rng.uniform(0.2, 0.8, 60)
    noc = rng.integers(2, 21, 60).astype(float)
    evals = {
        "v0": {"per_object": _table(iou, noc)},
        "v1": {"per_object": _table(iou + 0.05, noc - 1)},  # better on every object
        "v2": {"per_object": _table(iou - 0.2, noc - 1)},  # much worse 1-click IoU, same NoC
        "v3": {"gold/miou@1": 0.5},  # no per-object results (an old evaluation): left out
    }
    t = paired_changes(evals, EvalSection())
    assert list(t["change"]) == ["v0 -> v1", "v1 -> v2"]
    assert t["iou@1 change"].tolist() == pytest.approx([0.05, -0.25])
    assert t["noc@90 change"].tolist() == pytest.approx([-1.0, 0.0])
    assert t["gate"].tolist() == ["passed", "regressed: iou@1"]
    assert t["improved beyond noise"].tolist() == ["iou@1, noc@90", "none"]
    assert (t["objects"] == 60).all()


def test_improved_beyond_noise_needs_the_gain_to_clear_z_standard_errors():
    from sam_engine.engine.report import paired_changes

    rng = np.random.default_rng(5)
    iou, noc = rng.uniform(0.2, 0.8, 200), rng.integers(2, 21, 200).astype(float)
    noise = rng.normal(0, 0.2, 200)
    v0 = {"per_object": _table(iou, noc)}
    small = {"per_object": _table(iou + 0.005 + noise, noc)}  # a gain well inside its standard error
    clear = {"per_object": _table(iou + 0.1 + noise, noc)}  # the same noise, a gain several se clear
    t = paired_changes({"v0": v0, "v1": small}, EvalSection()).set_index("change")
    assert 0 < t.loc["v0 -> v1", "iou@1 change"] < 1.645 * t.loc["v0 -> v1", "iou@1 se"]
    assert t.loc["v0 -> v1", "improved beyond noise"] == "none"
    t = paired_changes({"v0": v0, "v2": clear}, EvalSection()).set_index("change")
    assert t.loc["v0 -> v2", "iou@1 change"] > 1.645 * t.loc["v0 -> v2", "iou@1 se"]
    assert t.loc["v0 -> v2", "improved beyond noise"] == "iou@1"


def test_paired_difference_mean_and_standard_error():
    from sam_engine.evaluation.regression import paired_difference

    diff, se, n = paired_difference({"a": 1.0, "b": 2.0, "c": 3.0}, {"c": 5.0, "a": 1.0, "b": 2.0, "x": 9.0})
    assert n == 3 and diff == pytest.approx(2 / 3)
    assert se == pytest.approx(np.std([0.0, 0.0, 2.0], ddof=1) / np.sqrt(3))
