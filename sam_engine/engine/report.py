"""The engine report (text, Markdown, HTML with plots), drift of shards, and the stage table's schema."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from ..io import atomic_write_text
from . import checks, quality, registry, report_summary
from .workspace import Workspace

STAGE_SCHEMA = pa.DataFrameSchema(
    {
        "stage": pa.Column(int, pa.Check.isin([1, 2, 3]), unique=True),
        "images": pa.Column(int, pa.Check.ge(0)),
        "masks": pa.Column(int, pa.Check.ge(0)),
        "masks_per_image": pa.Column(float, pa.Check.ge(0)),
        "human_masks": pa.Column(int, pa.Check.ge(0)),
        "clicks_per_mask": pa.Column(float, pa.Check.ge(0), nullable=True),
        "seconds_per_mask": pa.Column(float, pa.Check.ge(0), nullable=True),
        "manual_fix_share": pa.Column(float, pa.Check.in_range(0, 1), nullable=True),
        "auto_accept_share": pa.Column(float, pa.Check.in_range(0, 1), nullable=True),
        "auto_accept_precision": pa.Column(float, pa.Check.in_range(0, 1), nullable=True),
        "review_accept_share": pa.Column(float, pa.Check.in_range(0, 1), nullable=True),
    },
    coerce=True,
)

MODEL_KEYS = [
    ("gold/miou@1", "mIoU@1"),
    ("gold/miou@3", "mIoU@3"),
    ("gold/miou@5", "mIoU@5"),
    ("gold/oracle_miou@1", "oracle mIoU@1"),
    ("gold/noc@85", "NoC@85"),
    ("gold/noc@90", "NoC@90"),
    ("gold_amg/recall@0.5", "AMG recall@0.5"),
    ("gold_amg/recall@0.75", "AMG recall@0.75"),
    ("gold_amg/AR@100", "AR@100"),
    ("gold_amg/share_iou>0.9", "masks IoU>0.9"),
    ("gold_amg/masks_per_image", "AMG masks/img"),
]


def validate_table(schema: pa.DataFrameSchema, df: pd.DataFrame) -> tuple[bool, str]:
    """(passed, detail) of one pandera schema over a table, every failure collected."""
    try:
        schema.validate(df, lazy=True)
        return True, "ok"
    except (pa.errors.SchemaErrors, pa.errors.SchemaError) as e:
        return False, str(e)[:2000]


def validate_stage_table(df: pd.DataFrame) -> tuple[bool, str]:
    return validate_table(STAGE_SCHEMA, df)


def _png_md(fig, title: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')})"


def coverage_chart(df: pd.DataFrame) -> str:
    """Covered share per region; "" when no region has any (nothing to plot)."""
    if not len(df) or not has_signal(df["coverage"]):
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.bar(df["region"], df["coverage"], color="#3b7dd8")
    ax.set_ylim(0, 1)
    ax.set_ylabel("covered share")
    ax.set_title("Region coverage")
    for i, (n, k) in enumerate(zip(df["pool_images"], df["covered_images"], strict=True)):
        ax.text(i, 0.02, f"{k}/{n}", ha="center", fontsize=8, color="white")
    return _png_md(fig, "region coverage")


def models_table(evals: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for name, ev in evals.items():
        row = {"model": name}
        for key, label in MODEL_KEYS:
            v = ev.get(key)
            row[label] = float(v) if isinstance(v, int | float) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def paired_changes(evals: dict[str, dict], cfg_eval: Any) -> pd.DataFrame:
    """Each model against the one before it on the same gold objects: mean paired change and its standard
    error for 1-click IoU and NoC@90, the metrics it improved beyond noise (by the gate's z standard errors)
    and the no-regression gate's verdict (see :mod:`sam_engine.evaluation.regression`). Pairs without
    per-object results are left out."""
    from ..evaluation.regression import no_regression

    names = list(evals)
    rows = []
    for prev, cur in zip(names, names[1:], strict=False):
        a, b = evals[prev].get("per_object"), evals[cur].get("per_object")
        if not a or not b or not a.get("key") or not b.get("key"):
            continue
        verdict = no_regression(cfg_eval, a, b)
        row: dict[str, Any] = {"change": f"{prev} -> {cur}", "objects": verdict.metrics[0].n_paired}
        for mv in verdict.metrics:
            # + is more IoU, or more clicks
            row[f"{mv.metric} change"] = round(mv.mean_change, 4) + 0.0  # + 0.0: no "-0.0"
            row[f"{mv.metric} se"] = round(mv.se_loss, 4)
        better = [mv.metric for mv in verdict.metrics if mv.improved(verdict.z)]
        row["improved beyond noise"] = ", ".join(better) or "none"
        row["gate"] = "passed" if verdict.passed else "regressed: " + verdict.as_metadata()["regressed"]
        rows.append(row)
    return pd.DataFrame(rows)


MODEL_PANELS = (
    (("mIoU@1", "mIoU@3", "mIoU@5"), "gold mIoU at k clicks"),
    (("NoC@85", "NoC@90"), "gold NoC (lower is better)"),
    (("AMG recall@0.5", "masks IoU>0.9"), "automatic masks"),
)


def has_signal(values: pd.Series) -> bool:
    """Whether a metric is worth a plot: some value is finite and not zero."""
    v = pd.to_numeric(values, errors="coerce")
    return bool((v.notna() & (v != 0)).any())


def models_chart(models: pd.DataFrame) -> str:
    """The models' gold figures, one panel per group; a metric zero or empty for every model is left out (and
    a panel with none left), so no flat line at zero stands for "nothing measured". "" when nothing is left."""
    panels = [
        ([c for c in cols if c in models.columns and has_signal(models[c])], title)
        for cols, title in MODEL_PANELS
    ]
    panels = [(cols, title) for cols, title in panels if cols]
    if not panels:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.8), squeeze=False)
    for ax, (cols, title) in zip(axes[0], panels, strict=True):
        for c in cols:
            ax.plot(models["model"], models[c], marker="o", label=c)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return _png_md(fig, "models: " + ", ".join(c for cols, _ in panels for c in cols))


def shard_drift(ws: Workspace, shards: list[dict], paths: list[Path]) -> dict[str, Any]:
    """Newest shard against the first one (the baseline)."""
    if not shards:
        return {"drifted": False, "reasons": [], "baseline": "", "current": ""}
    base, cur = shards[0], shards[-1]
    by_name = {Path(p).name: p for p in paths}
    base_df = quality.shard_score_distribution(by_name.get(Path(base["path"]).name, base["path"]))
    cur_df = quality.shard_score_distribution(by_name.get(Path(cur["path"]).name, cur["path"]))
    out = quality.drift(base_df, cur_df, base["qa"]["share_good"], cur["qa"]["share_good"])
    out.update(
        {
            "baseline": Path(base["path"]).name,
            "current": Path(cur["path"]).name,
            "model_sha256": cur.get("model_sha256", ""),
        }
    )
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3f}"  # "-": nothing to measure (no mask, no person)
    return str(v)


def _text_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    cells = [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    widths = [
        max(len(str(c)), *(len(r[i]) for r in cells)) if cells else len(str(c)) for i, c in enumerate(cols)
    ]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def carried_forward_notes(ws: Workspace, models: list[str]) -> list[str]:
    """One line per model version (``v3`` etc.) whose weights were carried forward from its parent."""
    notes = []
    for name in models:
        try:
            ref = ws.model_store.get(f"model_{name}")
        except FileNotFoundError:
            continue
        parent = ref.data.get("carried_from")
        if parent:
            notes.append(
                f"{name}: {parent}'s weights carried forward, not trained ({ref.data.get('reason', '')})"
            )
    return notes


def stage_overlay(ws: Workspace, masks_by_image: dict[int, list[dict]], title: str, n: int = 6) -> str:
    """A Markdown picture of the first ``n`` images (by id) of ``masks_by_image`` with their masks drawn."""
    from ..data import rle as rle_utils
    from ..visualize import grid, markdown_image, overlay

    ids = sorted(i for i, anns in masks_by_image.items() if anns)[:n]
    if not ids:
        return f"_{title}: no masks_"
    tiles = []
    for image_id in ids:
        masks = [rle_utils.decode(a["segmentation"]) for a in masks_by_image[image_id]]
        tiles.append(overlay(ws.load(image_id), masks))
    return markdown_image(grid(tiles), title)


def store_masks_by_source(ws: Workspace) -> dict[str, dict[int, list[dict]]]:
    """Accepted stage-1/2 masks of the pool: by people (``human``: annotators, consensus, review fixes) and
    auto-accepted from the model in stage 2 (``auto``)."""
    gold_ids = {im.image_id for im in ws.gold.images}
    out: dict[str, dict[int, list[dict]]] = {"human": {}, "auto": {}}
    with ws.open_store(read_only=True) as store:
        masks = store.masks(status="accepted")
    if not len(masks):
        return out
    masks = masks[~masks["image_id"].isin(gold_ids)]
    for row in masks.itertuples(index=False):
        kind = "auto" if row.source == "model" else "human"
        out[kind].setdefault(int(row.image_id), []).append({"segmentation": row.rle})
    return out


def engine_verdicts(
    ws: Workspace,
    stages: pd.DataFrame,
    coverage: pd.DataFrame,
    annotators: pd.DataFrame,
    evals: dict[str, dict],
    shards: list[dict],
    audit: pd.DataFrame | None,
    drift: dict | None,
) -> list[checks.Verdict]:
    """Every check the engine's assets run, recomputed from their outputs by the same functions."""
    from ..workforce.stats import ANNOTATOR_STATS_SCHEMA

    s = ws.cfg.stages
    out = [checks.schema("quality_schema", "quality_by_stage", *validate_stage_table(stages))]
    out.append(
        checks.schema(
            "annotator_stats_schema", "annotator_stats", *validate_table(ANNOTATOR_STATS_SCHEMA, annotators)
        )
    )
    names = list(evals)
    for k, (prev, cur) in enumerate(zip(names, names[1:], strict=False), start=1):
        out.append(checks.no_regression(k, evals[prev], evals[cur], ws.cfg.eval))
    out += [checks.shard_qa_floor(sh, s.qa_min_good_share) for sh in shards]
    if audit is not None:
        out += [checks.stage3_precision(audit, s.stage3_min_precision), checks.qa_agrees(audit)]
    out.append(checks.coverage_floor(coverage, s.coverage_floor))
    if drift is not None:
        out.append(checks.no_drift(drift))
    return out


def build_report(
    ws: Workspace,
    stages: pd.DataFrame,
    coverage: pd.DataFrame,
    annotators: pd.DataFrame,
    evals: dict[str, dict],
    shards: list[dict],
    audit: pd.DataFrame | None = None,
    drift: dict | None = None,
    pseudo_labels: dict | None = None,
) -> dict[str, Any]:
    """Assemble the report; writes ``reports/engine_report.{txt,html,json}`` under the data folder.

    Failed checks come first, in every form; a stage that produced nothing says so instead of printing
    figures for it; the JSON has every figure by model and by stage for tools to read. ``pseudo_labels`` is
    what the ``v1_pseudo_labels`` asset wrote (v2's training data, not the dataset).
    """
    models = models_table(evals)
    changes = paired_changes(evals, ws.cfg.eval)
    verdicts = engine_verdicts(ws, stages, coverage, annotators, evals, shards, audit, drift)
    failed = checks.failed(verdicts)
    gold_true = sum(
        1 for anns in ws.gold.annotations.values() for a in anns if a.get("level", "whole") == "whole"
    )
    gold_per_image = gold_true / max(1, len(ws.gold.images))
    stage3 = stages[stages["stage"] == 3]
    s3_masks = int(stage3["masks"].iloc[0]) if len(stage3) else 0
    s3_per_image = float(stage3["masks_per_image"].iloc[0]) if len(stage3) else 0.0
    qa = [sh["qa"]["share_good"] for sh in shards if sh.get("qa", {}).get("reviewed")]
    summary = {
        "profile": ws.cfg.profile,
        "stage3_masks": s3_masks,
        "stage3_masks_per_image": s3_per_image,
        "gold_whole_objects_per_image": gold_per_image,
        "stage3_qa_good_share": float(np.mean(qa)) if qa else float("nan"),
        "failed_checks": [f"{v.check}: {v.detail}" for v in failed],
        "models": {
            r["model"]: {k: r[k] for k in models.columns if k != "model"} for r in models.to_dict("records")
        },
    }
    if s3_masks:
        stage3_line = (
            f"stage-3 masks per image {s3_per_image:.2f} vs gold whole objects per image {gold_per_image:.2f} "
            f"(ratio {s3_per_image / max(gold_per_image, 1e-9):.3f}); QA good share "
            f"{summary['stage3_qa_good_share']:.3f}"
        )
    else:
        stage3_line = "stage 3 kept no mask: its shards are empty"
    pseudo_line = _pseudo_label_line(pseudo_labels)
    if pseudo_labels is not None:
        summary["v2_pseudo_labels"] = {
            k: pseudo_labels.get(k) for k in ("images", "masks", "masks_per_image", "share_iou>0.9")
        }
    ann_cols = [
        c
        for c in ("annotator_id", "masks", "clicks_per_mask", "seconds_per_mask", "gold_iou", "agreement")
        if c in annotators.columns
    ]
    ann = annotators[ann_cols] if len(annotators) else annotators
    carried = carried_forward_notes(ws, list(models["model"])) if len(models) else []
    predictor_desc = (
        f"with zoom-in, {ws.cfg.model.zoom_expansion:g}x" if ws.cfg.model.zoom_in else "in a single pass"
    ) + (", masks snapped to image regions" if ws.cfg.model.snap else "")
    check_lines = (
        [f"FAILED {v.check} ({v.asset}): {v.detail}" for v in failed]
        if failed
        else [f"all {len(verdicts)} checks passed"]
    )
    made = report_summary.produced(stages, shards, ws.shards_location)
    versions = [f"model_{m}" for m in models["model"]] if len(models) else []
    champion = report_summary.champion_by_gates(changes, registry.champion_name(ws))
    checks_line = report_summary.check_line(verdicts, failed)
    produced_lines = report_summary.produced_lines(made, versions, champion, ws.tracking.registered_model)
    summary.update(
        {
            "checks_passed": len(verdicts) - len(failed),
            "checks_total": len(verdicts),
            "produced": made,
            "champion": champion,
        }
    )
    audit_df = audit if audit is not None else pd.DataFrame()
    by_source = store_masks_by_source(ws)
    stage3_masks = _shard_masks(ws, shards)
    text = "\n".join(
        [
            f"== sam-engine report ({ws.cfg.profile} profile, data in {ws.cfg.data_dir}) ==",
            "",
            "Summary",
            f"checks: {checks_line}",
            *produced_lines,
            "",
            "Checks",
            *check_lines,
            "",
            "Stages",
            _text_table(stages),
            stage3_line,
            *([pseudo_line] if pseudo_line else []),
            "",
            "Stage-3 masks against the hidden ground truth (all images), beside the QA samples",
            _text_table(audit_df) if len(audit_df) else "(no stage-3 audit)",
            "",
            f"Models on the gold set (held out; clicks answered {predictor_desc})",
            _text_table(models),
            *carried,
            "Paired changes on the same gold objects (mean, standard error, improved beyond noise; the gate)",
            _text_table(changes) if len(changes) else "(no per-object results)",
            "",
            "Region coverage (images with a kept mask)",
            _text_table(coverage),
            "",
            "Annotators",
            _text_table(ann) if len(ann) else "(none)",
        ]
    )
    check_md = (
        "\n".join(f"- **FAILED** `{v.check}` ({v.asset}): {v.detail}" for v in failed)
        if failed
        else f"All {len(verdicts)} checks passed."
    )
    summary_md = "\n".join(
        [f"- **Checks:** {_md_checks(checks_line, failed)}", *(f"- {line}" for line in produced_lines)]
    )
    blocks = [
        "### Summary",
        summary_md,
        "### Checks",
        check_md,
        "### Stages",
        _md_table(stages),
        stage3_line,
        pseudo_line,
        "### Stage-3 masks against the hidden ground truth",
        _md_table(audit_df) if len(audit_df) else "_no stage-3 audit_",
        f"### Models on the gold set (clicks answered {predictor_desc})",
        _md_table(models),
        *[f"_{n}_" for n in carried],
        "Paired changes on the same gold objects (mean, standard error, improved beyond noise; the gate):",
        _md_table(changes) if len(changes) else "_no per-object results_",
        models_chart(models),
        "### Masks by stage",
        stage_overlay(ws, by_source["human"], "stages 1-2: by people"),
        stage_overlay(ws, by_source["auto"], "stage 2: auto-accepted from the model"),
        stage_overlay(ws, stage3_masks, "stage 3: automatic"),
        "### Region coverage",
        _md_table(coverage),
        coverage_chart(coverage),
        "### Annotators",
        _md_table(ann) if len(ann) else "_none_",
    ]
    markdown = "\n\n".join(b for b in blocks if b)  # a chart with nothing to plot is left out
    body = markdown_to_html(markdown)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>sam-engine report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}.failed{color:#b00020}</style></head><body>"
        f"<h1>sam-engine report</h1><p>profile {html.escape(ws.cfg.profile)}</p>{body}</body></html>"
    )
    out = ws.cfg.reports_dir / "engine_report.html"
    atomic_write_text(out, page)
    atomic_write_text(ws.cfg.reports_dir / "engine_report.txt", text)
    doc = {
        "profile": ws.cfg.profile,
        "data_dir": str(ws.cfg.data_dir),
        "checks": [v.as_dict() for v in verdicts],
        "failed_checks": [v.as_dict() for v in failed],
        "summary": summary,
        "stages": stages.to_dict("records"),
        "stage3_audit": audit_df.to_dict("records"),
        "models": {name: _model_figures(ev) for name, ev in evals.items()},
        "paired_changes": changes.to_dict("records"),
        "coverage": coverage.to_dict("records"),
        "annotators": ann.to_dict("records") if len(ann) else [],
    }
    json_path = ws.cfg.reports_dir / "engine_report.json"
    atomic_write_text(json_path, json.dumps(_plain(doc), indent=2, sort_keys=True))
    return {
        "text": text,
        "markdown": markdown,
        "html_path": str(out),
        "json_path": str(json_path),
        "summary": summary,
        "models": models,
        "failed": failed,
    }


def _pseudo_label_line(info: dict | None) -> str:
    """One line on v1's pseudo-labels (v2's training data); empty when the asset was not given."""
    if info is None:
        return ""
    if not info.get("masks"):
        return "v2's pseudo-labels: none (off, no stage-3 images, or v1 kept no mask at its accept cut)"
    share = info.get("share_iou>0.9")
    good = f", {share:.3f} at IoU > 0.9 with the hidden ground truth" if share is not None else ""
    return (
        f"v2's pseudo-labels (v1's automatic masks at its stage-2 accept cut on the stage-3 images; training "
        f"data, not the dataset): {info['masks']} masks on {info['images']} images "
        f"({info['masks_per_image']:.2f} per image){good}"
    )


def _shard_masks(ws: Workspace, shards: list[dict]) -> dict[int, list[dict]]:
    if not shards or not sum(sh.get("masks", 0) for sh in shards):
        return {}
    from ..data.sa1b import read_shards

    return read_shards(ws.shard_paths(), cache_dir=ws.cfg.data_dir / "shard_cache").annotations


def _model_figures(ev: dict) -> dict[str, Any]:
    """One model's evaluation for the JSON report: every scalar, the region table and the calibration."""
    out = {k: v for k, v in ev.items() if isinstance(v, int | float)}
    for key in ("by_region", "calibration", "output_choice"):
        if key in ev:
            out[key] = ev[key]
    return out


def _plain(value: Any) -> Any:
    """JSON-safe values: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _md_checks(line: str, failed: list[checks.Verdict]) -> str:
    """The checks line with each failed check's name as code."""
    for v in failed:
        line = re.sub(rf"(?<![\w`]){re.escape(v.check)}(?![\w`])", f"`{v.check}`", line)
    return line


def _inline(text: str) -> str:
    """Escape, then render **bold**, `code` and _italics_."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"`(.+?)`", r"<code>\1</code>", out)
    return re.sub(r"(?<![\w/])_(.+?)_(?![\w/])", r"<em>\1</em>", out)


def markdown_to_html(md: str) -> str:
    """Just enough Markdown for the report: headings, pipe tables, bullet lists (a failed check in red),
    inline base64 images, bold, code and italics."""
    out = []
    for block in md.split("\n\n"):
        b = block.strip()
        if b.startswith("### "):
            out.append(f"<h3>{html.escape(b[4:])}</h3>")
        elif b.startswith("!["):
            alt = b[2 : b.index("](")]
            src = b[b.index("](") + 2 : b.rindex(")")]
            out.append(f"<img alt='{html.escape(alt, quote=True)}' src='{src}'/>")
        elif b.startswith("|"):
            rows = [r for r in b.splitlines() if not r.startswith("|---")]
            cells = [[html.escape(c.strip()) for c in r.strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b.startswith("- "):
            items = []
            for line in b.splitlines():
                cls = " class='failed'" if "**FAILED**" in line else ""
                items.append(f"<li{cls}>{_inline(line[2:])}</li>")
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            out.append(f"<p>{_inline(b)}</p>")
    return "\n".join(out)
