"""Stages 1 and 2 as assets: tasks into the store, human (or simulated) work, consensus, review, proposals."""

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, MetadataValue, Output, asset

from assets._common import table_md, workspace
from assets.resources import EngineResource
from sam_engine.engine import human_stage, pseudo_labels, semi_automatic, training_data
from sam_engine.engine.splits import stage_split
from sam_engine.model_store import ModelRef
from sam_engine.quality.store import QualityStore
from sam_engine.visualize import grid, markdown_image, overlay

GROUP1, GROUP2 = "stage1_assisted_manual", "stage2_semi_automatic"


def _stage_summary(store: QualityStore, stage: int, gold_ids: set[int]) -> dict:
    df = training_data.stage_masks_frame(store, stage, gold_ids)
    human = store.masks(stage=stage, status="accepted")
    human = human[(human["source"] == "human") & ~human["image_id"].isin(gold_ids)] if len(human) else human
    return {
        "images": int(df["image_id"].nunique()) if len(df) else 0,
        "masks": int(len(df)),
        "human_masks": int(len(human)),
        "clicks_per_mask": float(human["clicks"].mean()) if len(human) else 0.0,
        "seconds_per_mask": float(human["seconds"].mean()) if len(human) else 0.0,
        "manual_fixes": int(human["manual_fix"].sum()) if len(human) else 0,
    }


def _preview(ws, store: QualityStore, stage: int, n: int = 6) -> str:
    df = training_data.stage_masks_frame(store, stage, {im.image_id for im in ws.gold.images})
    if not len(df):
        return "_no masks yet_"
    from sam_engine.data import rle as rle_utils

    tiles = []
    for image_id, part in list(df.groupby("image_id"))[:n]:
        tiles.append(overlay(ws.load(int(image_id)), [rle_utils.decode(r) for r in part["rle"]]))
    return markdown_image(grid(tiles), f"stage {stage} masks")


@asset(
    group_name=GROUP1,
    deps=["target_pool", "gold_set"],
    ins={"model_v0": AssetIn()},
    description="Stage-1 tasks: a small, careful share of the pool, assigned by expertise and load, with "
    "overlap for consensus and gold honeypots mixed in.",
)
def stage1_tasks(context: AssetExecutionContext, engine: EngineResource, model_v0: ModelRef) -> Output[dict]:
    ws = workspace(engine)
    images = stage_split(ws.pool, ws.cfg)[1]
    with ws.open_store() as store:
        out = human_stage.create_tasks(ws, store, 1, images)
        tasks = store.tasks(stage=1)
    by_kind = tasks.groupby("kind").size().to_dict() if len(tasks) else {}
    return Output(
        out,
        metadata={
            "images": len(images),
            "tasks": int(len(tasks)),
            "created_now": out["created"],
            "by_kind": MetadataValue.json({k: int(v) for k, v in by_kind.items()}),
            "model": model_v0.name,
        },
    )


@asset(
    group_name=GROUP1,
    deps=["stage1_tasks", "pool_ground_truth"],
    ins={"model_v0": AssetIn()},
    description="Stage-1 masks: annotators click, v0 draws masks live; consensus on overlapping images, "
    "review of low-agreement objects.",
)
def stage1_masks(context: AssetExecutionContext, engine: EngineResource, model_v0: ModelRef) -> Output[dict]:
    ws = workspace(engine)
    gold_ids = {im.image_id for im in ws.gold.images}
    with ws.open_store() as store:
        worked = (
            human_stage.simulate_stage(ws, store, 1, model_v0, log_fn=context.log.info)
            if ws.cfg.annotators == "simulated"
            else {"tasks_worked": 0}
        )
        cons = human_stage.consolidate(ws, store, 1, model_v0 if ws.cfg.annotators == "simulated" else None)
        summary = _stage_summary(store, 1, gold_ids)
        preview = _preview(ws, store, 1)
    summary.update(worked)
    summary.update(cons)
    return Output(summary, metadata={**summary, "preview": MetadataValue.md(preview)})


@asset(
    group_name=GROUP2,
    deps=["target_pool"],
    ins={"model_v1": AssetIn(), "eval_model_v1": AssetIn()},
    description="Stage-2 proposals: v1's automatic masks on the stage-2 images, routed by predicted IoU "
    "into auto-accept / review / discard.",
)
def stage2_proposals(
    context: AssetExecutionContext, engine: EngineResource, model_v1: ModelRef, eval_model_v1: dict
) -> Output[pd.DataFrame]:
    ws = workspace(engine)
    images = stage_split(ws.pool, ws.cfg)[2]
    with ws.open_store() as store:
        df = semi_automatic.propose(ws, store, images, model_v1, log_fn=context.log.info)
    total = int(df["proposals"].sum()) if len(df) else 0
    return Output(
        df,
        metadata={
            "images": len(df),
            "proposals": total,
            "accepted": int(df["accepted"].sum()) if total else 0,
            "review": int(df["review"].sum()) if total else 0,
            "discarded": int(df["discarded"].sum()) if total else 0,
            "auto_accept_share": float(df["accepted"].sum() / total) if total else 0.0,
            "by_region": table_md(
                df.groupby("region", dropna=False)[["proposals", "accepted", "review"]].sum().reset_index()
            )
            if len(df)
            else "_empty_",
        },
    )


@asset(
    group_name=GROUP2,
    deps=["gold_set"],
    ins={"stage2_proposals": AssetIn()},
    description="Stage-2 tasks: images chosen by the diversity sampler (low model confidence, under-covered "
    "regions first) for people to complete what v1 missed; review tasks come with the proposals.",
)
def stage2_tasks(
    context: AssetExecutionContext, engine: EngineResource, stage2_proposals: pd.DataFrame
) -> Output[dict]:
    ws = workspace(engine)
    with ws.open_store() as store:
        chosen = semi_automatic.choose_for_completion(ws, store, stage2_proposals)
        records = [ws.record(i) for i in chosen]
        n = len(chosen)
        priorities = [float(n - k) for k in range(n)]
        out = human_stage.create_tasks(ws, store, 2, records, kind="complete", priorities=priorities)
    regions = pd.Series([r.region for r in records]).value_counts().to_dict() if records else {}
    return Output(
        {**out, "chosen": chosen},
        metadata={
            "chosen_images": n,
            "created_now": out["created"],
            "chosen_by_region": MetadataValue.json(regions),
        },
    )


@asset(
    group_name=GROUP2,
    deps=["stage2_tasks", "pool_ground_truth"],
    ins={"model_v1": AssetIn()},
    description="Stage-2 masks: auto-accepted + reviewed proposals + human-completed masks (reviews first, so "
    "people complete only what no accepted or fixed proposal covers).",
)
def stage2_masks(context: AssetExecutionContext, engine: EngineResource, model_v1: ModelRef) -> Output[dict]:
    ws = workspace(engine)
    gold_ids = {im.image_id for im in ws.gold.images}
    with ws.open_store() as store:
        worked = (
            human_stage.work_stage2(ws, store, model_v1, log_fn=context.log.info)
            if ws.cfg.annotators == "simulated"
            else {"tasks_worked": 0, "review_verdicts": 0}
        )
        summary = _stage_summary(store, 2, gold_ids)
        preview = _preview(ws, store, 2)
    summary.update(worked)
    return Output(summary, metadata={**summary, "preview": MetadataValue.md(preview)})


@asset(
    group_name=GROUP2,
    deps=["target_pool"],
    ins={"model_v1": AssetIn(), "eval_model_v1": AssetIn()},
    description="v1's pseudo-labels: its automatic masks at stage 2's calibrated auto-accept cut on the images "
    "stage 3 will take, as training data for v2 beside the people's masks, when train.v2_pseudo_labels is on "
    "(off by default: then it writes nothing); never part of the dataset, which stage 3 writes over the same "
    "images with v2.",
)
def v1_pseudo_labels(
    context: AssetExecutionContext, engine: EngineResource, model_v1: ModelRef, eval_model_v1: dict
) -> Output[dict]:
    from sam_engine.engine.quality import stage3_audit
    from sam_engine.engine.report import stage_overlay

    ws = workspace(engine)
    info = pseudo_labels.write_pseudo_labels(ws, stage_split(ws.pool, ws.cfg)[3], model_v1)
    corpus = pseudo_labels.pseudo_label_corpus(info, ws)
    meta = {k: info[k] for k in ("images", "masks", "masks_per_image")}
    if info["masks"] and ws.pool_gt is not None:  # simulated pools: the hidden ground truth says how good
        audit = stage3_audit([info], corpus.annotations, ws.ground_truth())
        info["share_iou>0.9"] = meta["share_iou>0.9"] = float(audit.iloc[-1]["share_iou>0.9"])
    context.log.info(f"v1 pseudo-labels: {info['masks']} masks on {info['images']} images")
    preview = stage_overlay(ws, corpus.annotations, "v1 pseudo-labels (v2's training data)")
    return Output(info, metadata={**meta, "model": model_v1.name, "preview": MetadataValue.md(preview)})
