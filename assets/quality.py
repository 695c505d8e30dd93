"""DuckDB-backed quality assets: quality by stage, region coverage, annotator stats, shard drift, the report."""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    Output,
    asset,
)

from assets._common import table_md, workspace
from assets.resources import EngineResource
from sam_engine.engine import checks, quality, report

GROUP = "quality"


def _shards_list(context: AssetExecutionContext, sa1b_shards: dict) -> list[dict]:
    """Every shard's summary in partition order. Dagster's IO manager hands a downstream asset a dict keyed by
    partition, except with a single partition, where it hands that partition's value itself."""
    keys = context.asset_partition_keys_for_input("sa1b_shards")
    if len(keys) == 1 and keys[0] not in sa1b_shards:
        return [sa1b_shards]
    return [sa1b_shards[k] for k in sorted(sa1b_shards)]


@asset(
    group_name=GROUP,
    deps=["stage1_masks", "stage2_masks"],
    ins={"sa1b_shards": AssetIn()},
    check_specs=[AssetCheckSpec("quality_schema", asset="quality_by_stage")],
    description="Per stage: images, masks, masks per image, human clicks and modelled seconds per mask, "
    "auto-accept share and, on a simulated pool, the auto-accepted masks' precision against its hidden "
    "ground truth.",
)
def quality_by_stage(context: AssetExecutionContext, engine: EngineResource, sa1b_shards: dict):
    ws = workspace(engine)
    with ws.open_store(read_only=True) as store:
        df = quality.quality_by_stage(
            store,
            _shards_list(context, sa1b_shards),
            {im.image_id for im in ws.gold.images},
            ground_truth=ws.ground_truth() if ws.pool_gt is not None else None,
        )
    yield Output(df, metadata={"table": table_md(df)})
    ok, msg = report.validate_stage_table(df)
    yield AssetCheckResult(check_name="quality_schema", passed=ok, metadata={"detail": msg})


@asset(
    group_name=GROUP,
    deps=["stage1_masks", "stage2_masks", "target_pool"],
    ins={"sa1b_shards": AssetIn()},
    check_specs=[
        AssetCheckSpec(
            "coverage_floor",
            asset="region_coverage",
            description="Every region has at least the configured share of images covered.",
        )
    ],
    description="Per region: pool images and the share with at least one accepted mask (stages 1-2) or kept "
    "automatic mask (stage 3).",
)
def region_coverage(context: AssetExecutionContext, engine: EngineResource, sa1b_shards: dict):
    ws = workspace(engine)
    # a stage-3 image counts as covered only when it carries a kept mask
    shard_ids = [i for s in _shards_list(context, sa1b_shards) for i in s.get("covered_image_ids", [])]
    with ws.open_store(read_only=True) as store:
        df = quality.region_coverage(
            {im.image_id: im.region for im in ws.pool.images}, store, shard_image_ids=shard_ids
        )
    chart = report.coverage_chart(df)
    yield Output(df, metadata={"table": table_md(df), "chart": MetadataValue.md(chart)})
    floor = ws.cfg.stages.coverage_floor
    verdict = checks.coverage_floor(df, floor)
    yield AssetCheckResult(
        check_name="coverage_floor",
        passed=verdict.passed,
        description=verdict.detail,
        metadata={"lowest_region_coverage": float(df["coverage"].min()) if len(df) else 0.0, "floor": floor},
    )


@asset(
    group_name=GROUP,
    ins={"sa1b_shards": AssetIn()},
    deps=["pool_ground_truth"],
    check_specs=[
        AssetCheckSpec(
            "stage3_precision",
            asset="stage3_audit",
            description="The share of all stage-3 masks at IoU > 0.9 with the hidden ground truth reaches "
            "stages.stage3_min_precision.",
        ),
        AssetCheckSpec(
            "qa_agrees",
            asset="stage3_audit",
            description="The pooled QA samples' interval holds the share measured on every stage-3 mask.",
        ),
    ],
    description="Every stage-3 mask against the pool's hidden ground truth: masks per image and share at IoU "
    "> 0.9, per shard and overall, beside the QA estimates; an overlay of stage-3 masks.",
)
def stage3_audit(context: AssetExecutionContext, engine: EngineResource, sa1b_shards: dict):
    from sam_engine.data.sa1b import read_shards

    ws = workspace(engine)
    shards = _shards_list(context, sa1b_shards)
    kept = read_shards(ws.shard_paths(), cache_dir=ws.cfg.data_dir / "shard_cache")
    df = quality.stage3_audit(shards, kept.annotations, ws.ground_truth())
    picture = report.stage_overlay(ws, kept.annotations, "stage 3 (automatic)")
    yield Output(df, metadata={"table": table_md(df), "overlay": MetadataValue.md(picture)})
    for verdict in (checks.stage3_precision(df, ws.cfg.stages.stage3_min_precision), checks.qa_agrees(df)):
        yield AssetCheckResult(check_name=verdict.check, passed=verdict.passed, description=verdict.detail)


@asset(
    group_name=GROUP,
    deps=["stage1_masks", "stage2_masks"],
    check_specs=[AssetCheckSpec("annotator_stats_schema", asset="annotator_stats")],
    description="Per annotator: masks, clicks per mask, seconds per mask, IoU on gold, agreement with consensus.",
)
def annotator_stats(context: AssetExecutionContext, engine: EngineResource):
    from sam_engine.workforce.stats import ANNOTATOR_STATS_SCHEMA
    from sam_engine.workforce.stats import annotator_stats as compute

    ws = workspace(engine)
    with ws.open_store(read_only=True) as store:
        df = compute(store)
    yield Output(df, metadata={"table": table_md(df), "annotators": len(df)})
    ok, msg = report.validate_table(ANNOTATOR_STATS_SCHEMA, df)  # as the report judges it
    yield AssetCheckResult(check_name="annotator_stats_schema", passed=ok, metadata={"detail": msg})


@asset(
    group_name=GROUP,
    ins={"sa1b_shards": AssetIn()},
    check_specs=[
        AssetCheckSpec(
            "no_drift",
            asset="shard_drift",
            description="The newest shard's predicted-IoU / stability distributions and QA "
            "share match the baseline shard.",
        )
    ],
    description="Drift of the newest shard against the first (baseline): KS distance of score distributions "
    "and the change in QA-estimated good share. Re-evaluated on a schedule.",
)
def shard_drift(context: AssetExecutionContext, engine: EngineResource, sa1b_shards: dict):
    ws = workspace(engine)
    shards = _shards_list(context, sa1b_shards)
    paths = ws.shard_paths()
    out = report.shard_drift(ws, shards, paths)
    yield Output(out, metadata={k: v for k, v in out.items() if isinstance(v, int | float | str)})
    yield AssetCheckResult(
        check_name="no_drift",
        passed=not out["drifted"],
        metadata={
            "reasons": ", ".join(out["reasons"]) or "none",
            "baseline_shard": out["baseline"],
            "current_shard": out["current"],
            "model_sha256": out.get("model_sha256", ""),
        },
    )


@asset(
    group_name=GROUP,
    ins={
        "quality_by_stage": AssetIn(),
        "region_coverage": AssetIn(),
        "annotator_stats": AssetIn(),
        "eval_model_v0": AssetIn(),
        "eval_model_v1": AssetIn(),
        "eval_model_v2": AssetIn(),
        "eval_model_v3": AssetIn(),
        "sa1b_shards": AssetIn(),
        "stage3_audit": AssetIn(),
        "shard_drift": AssetIn(),
        "v1_pseudo_labels": AssetIn(),
    },
    description="The engine report: failed checks first, then stages, the stage-3 audit, models v0..v3 on the "
    "gold set, coverage, annotators, mask overlays per stage; text, Markdown, HTML and JSON.",
)
def engine_report(
    context: AssetExecutionContext,
    engine: EngineResource,
    quality_by_stage: pd.DataFrame,
    region_coverage: pd.DataFrame,
    annotator_stats: pd.DataFrame,
    eval_model_v0: dict,
    eval_model_v1: dict,
    eval_model_v2: dict,
    eval_model_v3: dict,
    sa1b_shards: dict,
    stage3_audit: pd.DataFrame,
    shard_drift: dict,
    v1_pseudo_labels: dict,
) -> Output[dict]:
    ws = workspace(engine)
    evals = {"v0": eval_model_v0, "v1": eval_model_v1, "v2": eval_model_v2, "v3": eval_model_v3}
    rep = report.build_report(
        ws,
        quality_by_stage,
        region_coverage,
        annotator_stats,
        evals,
        _shards_list(context, sa1b_shards),
        audit=stage3_audit,
        drift=shard_drift,
        pseudo_labels=v1_pseudo_labels,
    )
    context.log.info("\n" + rep["text"])
    return Output(
        rep["summary"],
        metadata={
            "report": MetadataValue.md(rep["markdown"]),
            "html": MetadataValue.path(rep["html_path"]),
            "json": MetadataValue.path(rep["json_path"]),
            "failed_checks": len(rep["failed"]),
            "models": table_md(rep["models"]),
        },
    )
