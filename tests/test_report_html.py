"""The HTML report as a person reads it: a summary first (checks, every failed one named; masks per stage and
shards), italics rendered, no plot of a metric that is zero or empty everywhere, mask overlays of the stages."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from sam_engine.engine import report


@pytest.fixture
def ws(smoke_cfg, smoke_data_dir):
    from sam_engine.engine.workspace import Workspace

    return Workspace(smoke_cfg.model_copy(update={"data_dir": smoke_data_dir}, deep=True))


def _people_masks(ws, n_images: int = 2) -> list[int]:
    """Accepted stage-1 masks by people on the first pool images (a square each)."""
    from sam_engine.data import rle as rle_utils
    from sam_engine.engine.human_stage import register_images

    images = ws.pool.images[:n_images]
    with ws.open_store() as store:
        register_images(store, list(images), "stage1", "pool")
        for im in images:
            mask = np.zeros((im.height, im.width), bool)
            mask[10:40, 10:40] = True
            store.commit_mask(
                task_id=None, image_id=im.image_id, annotator_id="ann_01", stage=1, source="human",
                rle=rle_utils.encode(mask), predicted_iou=0.9, clicks=2, seconds=5.0,
            )  # fmt: skip
    return [im.image_id for im in images]


def _evals() -> dict[str, dict]:
    """Two models: click figures measured; the automatic-mask figures zero (v1) or absent (v0) everywhere."""
    base = {
        "gold/miou@1": 0.41,
        "gold/miou@3": 0.70,
        "gold/miou@5": 0.80,
        "gold/noc@85": 4.0,
        "gold/noc@90": 4.5,
    }
    return {
        "v0": dict(base),
        "v1": {**base, "gold/miou@1": 0.45, "gold_amg/recall@0.5": 0.0, "gold_amg/share_iou>0.9": 0.0},
    }


def _build(ws, pseudo_labels: dict | None = None):
    from sam_engine.engine.quality import quality_by_stage, region_coverage

    gold_ids = {im.image_id for im in ws.gold.images}
    with ws.open_store(read_only=True) as store:
        stages = quality_by_stage(store, [], gold_ids)
        coverage = region_coverage({im.image_id: im.region for im in ws.pool.images}, store)
    return report.build_report(
        ws, stages, coverage, pd.DataFrame(), _evals(), [], pseudo_labels=pseudo_labels
    )


def _section(page: str, title: str) -> str:
    start = page.index(f"<h3>{title}</h3>")
    end = page.find("<h3>", start + 1)
    return page[start : end if end > 0 else len(page)]


def test_the_report_opens_with_a_summary_naming_every_failed_check(ws):
    _people_masks(ws)
    out = _build(ws)
    page = open(out["html_path"]).read()
    failed = [v.check for v in out["failed"]]
    # no per-object results to pair, and two covered images are under the coverage floor
    assert {"v1_not_worse_than_v0", "coverage_floor"} <= set(failed)
    # the report judges every check the run does: an annotator table without its columns fails its schema
    assert "annotator_stats_schema" in failed
    h3 = re.findall(r"<h3>(.*?)</h3>", page)
    assert h3[0] == "Summary"
    summary = _section(page, "Summary")
    total = out["summary"]["checks_total"]
    assert f"{total - len(failed)} of {total} checks passed" in summary
    assert all(f"<code>{name}</code>" in summary for name in failed)
    assert "stage 1 (assisted-manual): 2 masks on 2 images" in summary
    assert "stage 2 (semi-automatic): no masks" in summary and "SA-1B shards: none written" in summary
    assert "model versions: model_v0, model_v1" in summary
    assert out["summary"]["produced"]["stages"][1] == {"masks": 2, "images": 2}
    assert out["text"].splitlines()[2] == "Summary"  # the text report too


def test_italics_render_and_empty_metrics_get_no_plot_but_overlays_show(ws):
    _people_masks(ws)
    page = open(_build(ws)["html_path"]).read()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "<em>stage 2: auto-accepted from the model: no masks</em>" in text
    assert not re.search(r"[>\s]_[^_<]+_[<\s]", text)  # no Markdown italics left as literal underscores
    charts = re.findall(r"<img alt='(models: [^']*)'", page)
    assert len(charts) == 1
    assert "mIoU@1" in charts[0] and "AMG recall" not in charts[0] and "IoU&gt;0.9" not in charts[0]
    overlays = _section(page, "Masks by stage")
    assert re.search(
        r"<img alt='stages 1-2: by people' src='data:image/png;base64,[A-Za-z0-9+/=]{100,}'", overlays
    )
    assert re.findall(r"<img alt='region coverage'", page)


def test_markdown_inline_rendering():
    html = report.markdown_to_html(
        "_v3: model_v2's weights (floor of `retrain_min_new_masks`)_\n\n- **FAILED** `x_y`"
    )
    assert "<p><em>v3: model_v2&#x27;s weights (floor of <code>retrain_min_new_masks</code>)</em></p>" in html
    assert "<li class='failed'><strong>FAILED</strong> <code>x_y</code></li>" in html
    assert (
        report.models_chart(pd.DataFrame({"model": ["v0"], "mIoU@1": [0.0], "NoC@90": [float("nan")]})) == ""
    )


def test_champion_follows_the_reports_own_gates_when_the_registry_lags():
    import pandas as pd

    from sam_engine.engine.report_summary import champion_by_gates

    gates = pd.DataFrame(
        [
            {"change": "v0 -> v1", "gate": "passed"},
            {"change": "v1 -> v2", "gate": "passed"},
            {"change": "v2 -> v3", "gate": "passed"},
        ]
    )
    # the v3 gate (a reported check) has not moved the alias yet: the report names v3 all the same
    assert champion_by_gates(gates, "model_v2") == "model_v3"
    failed = gates.assign(gate=["passed", "passed", "regressed: iou@1"])
    assert champion_by_gates(failed, "model_v2") == "model_v2"
    assert champion_by_gates(failed.iloc[:0], "model_v0") == "model_v0"  # no evaluations: the registry's
    assert champion_by_gates(failed, None) == "model_v2"


@pytest.mark.slow
def test_v2s_pseudo_labels_are_reported_as_training_data(ws):
    """The report says what v2 learnt from beside the people's masks, in the text and the JSON, and says
    plainly when there was none."""
    import json

    _people_masks(ws)
    info = {"path": "x.tar", "images": 250, "masks": 1414, "masks_per_image": 5.656, "share_iou>0.9": 0.869}
    out = _build(ws, info)
    line = next(x for x in out["text"].splitlines() if x.startswith("v2's pseudo-labels"))
    assert (
        "1414 masks on 250 images (5.66 per image), 0.869 at IoU > 0.9" in line and "not the dataset" in line
    )
    doc = json.loads(open(out["json_path"]).read())
    assert doc["summary"]["v2_pseudo_labels"]["masks"] == 1414
    assert "1414 masks on 250 images" in open(out["html_path"]).read()
    none = {"path": None, "images": 0, "masks": 0, "masks_per_image": 0.0}
    assert "v2's pseudo-labels: none" in _build(ws, none)["text"]
    assert "v2's pseudo-labels" not in _build(ws)["text"]  # not given: no line
