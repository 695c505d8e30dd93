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
from jobs.resources import EngineResource
from sam_engine.engine import quality, report
from sam_engine.engine.splits import stage_split

GROUP = "quality"


def _shards_list(sa1b_shards: dict) -> list[dict]:
    return [sa1b_shards[k] for k in sorted(sa1b_shards)]


@asset(
    group_name=GROUP,
    deps=["stage1_masks", "stage2_masks"],
    ins={"sa1b_shards": AssetIn()},
    check_specs=[AssetCheckSpec("quality_schema", asset="quality_by_stage")],
    description="Per stage: images, masks, masks per image, human clicks and modelled seconds per mask, "
    "auto-accept share.",
)
def quality_by_stage(context: AssetExecutionContext, engine: EngineResource, sa1b_shards: dict):
    ws = workspace(engine)
    with ws.open_store(read_only=True) as store:
        df = quality.quality_by_stage(
            store, _shards_list(sa1b_shards), {im.image_id for im in ws.gold.images}
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
    description="Per region: pool images and the share with at least one accepted mask (any stage).",
)
def region_coverage(context: AssetExecutionContext, engine: EngineResource, sa1b_shards: dict):
    ws = workspace(engine)
    split = stage_split(ws.pool, ws.cfg)
    shard_ids = [i for s in _shards_list(sa1b_shards) for i in s.get("image_ids", [])] or [
        r.image_id for r in split[3]
    ]
    with ws.open_store(read_only=True) as store:
        df = quality.region_coverage(
            {im.image_id: im.region for im in ws.pool.images}, store, shard_image_ids=shard_ids
        )
    chart = report.coverage_chart(df)
    yield Output(df, metadata={"table": table_md(df), "chart": MetadataValue.md(chart)})
    floor = ws.cfg.stages.coverage_floor
    worst = float(df["coverage"].min()) if len(df) else 0.0
    yield AssetCheckResult(
        check_name="coverage_floor",
        passed=worst >= floor,
        metadata={"lowest_region_coverage": worst, "floor": floor},
    )


@asset(
    group_name=GROUP,
    deps=["stage1_masks", "stage2_masks"],
    check_specs=[AssetCheckSpec("annotator_stats_schema", asset="annotator_stats")],
    description="Per annotator: masks, clicks per mask, seconds per mask, IoU on gold, agreement with consensus.",
)
def annotator_stats(context: AssetExecutionContext, engine: EngineResource):
    from sam_engine.annotation.stats import ANNOTATOR_STATS_SCHEMA
    from sam_engine.annotation.stats import annotator_stats as compute

    ws = workspace(engine)
    with ws.open_store(read_only=True) as store:
        df = compute(store)
    yield Output(df, metadata={"table": table_md(df), "annotators": len(df)})
    try:
        ANNOTATOR_STATS_SCHEMA.validate(df)
        yield AssetCheckResult(check_name="annotator_stats_schema", passed=True)
    except Exception as e:  # noqa: BLE001 - pandera errors are reported, not raised
        yield AssetCheckResult(
            check_name="annotator_stats_schema", passed=False, metadata={"error": str(e)[:2000]}
        )


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
    shards = _shards_list(sa1b_shards)
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
    },
    description="The engine report: stages, models v0..v3 on the gold set, coverage, annotators; HTML with plots.",
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
) -> Output[dict]:
    ws = workspace(engine)
    evals = {"v0": eval_model_v0, "v1": eval_model_v1, "v2": eval_model_v2, "v3": eval_model_v3}
    rep = report.build_report(
        ws, quality_by_stage, region_coverage, annotator_stats, evals, _shards_list(sa1b_shards)
    )
    context.log.info("\n" + rep["text"])
    return Output(
        rep["summary"],
        metadata={
            "report": MetadataValue.md(rep["markdown"]),
            "html": MetadataValue.path(rep["html_path"]),
            "models": table_md(rep["models"]),
        },
    )
