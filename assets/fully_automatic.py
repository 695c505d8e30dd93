"""Stage 3 as assets: the shard plan, SA-1B shards (one dynamic partition per shard) and their QA check."""

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    DynamicPartitionsDefinition,
    MetadataValue,
    Output,
    asset,
)

from assets._common import workspace
from assets.resources import EngineResource
from sam_engine.engine import checks
from sam_engine.engine.fully_automatic import qa_shard, write_engine_shard
from sam_engine.engine.splits import shard_images, shard_partitions, stage_split
from sam_engine.model_store import ModelRef

GROUP = "stage3_fully_automatic"
shard_partitions_def = DynamicPartitionsDefinition(name="sa1b_shards")


@asset(
    group_name=GROUP,
    deps=["target_pool"],
    ins={"model_v2": AssetIn(), "eval_model_v2": AssetIn()},
    description="Which stage-3 images go into which shard; registers one dynamic partition per shard.",
)
def stage3_plan(
    context: AssetExecutionContext, engine: EngineResource, model_v2: ModelRef, eval_model_v2: dict
) -> Output[dict]:
    ws = workspace(engine)
    stage3 = stage_split(ws.pool, ws.cfg)[3]
    keys = shard_partitions(ws.cfg, len(stage3))
    existing = set(context.instance.get_dynamic_partitions(shard_partitions_def.name))
    new = [k for k in keys if k not in existing]
    if new:
        context.instance.add_dynamic_partitions(shard_partitions_def.name, new)
    plan = {k: [r.image_id for r in shard_images(stage3, ws.cfg, k)[1]] for k in keys}
    return Output(
        plan,
        metadata={
            "images": len(stage3),
            "shards": len(keys),
            "images_per_shard": ws.cfg.stages.images_per_shard,
            "new_partitions": len(new),
            "model": model_v2.name,
        },
    )


@asset(
    group_name=GROUP,
    partitions_def=shard_partitions_def,
    deps=["stage3_plan"],
    ins={"model_v2": AssetIn()},
    check_specs=[
        AssetCheckSpec(
            "shard_qa_floor",
            asset="sa1b_shards",
            description="QA-estimated share of good masks is above the floor.",
        )
    ],
    description="One SA-1B tar shard: v2 prompted with a point grid, filtered by predicted IoU and stability, "
    "NMS, faces blurred; QA sample reviewed.",
)
def sa1b_shards(context: AssetExecutionContext, engine: EngineResource, model_v2: ModelRef):
    ws = workspace(engine)
    stage3 = stage_split(ws.pool, ws.cfg)[3]
    index, images = shard_images(stage3, ws.cfg, context.partition_key)
    if not images:
        raise ValueError(f"partition {context.partition_key} has no images (plan changed?)")
    info = write_engine_shard(ws, index, images, model_v2)
    qa = qa_shard(ws, info["path"])
    info["qa"] = qa
    context.log.info(
        f"{context.partition_key}: {info['masks']} masks on {info['images']} images; "
        f"QA good share {qa['share_good']:.2f} [{qa['ci_low']:.2f}, {qa['ci_high']:.2f}]"
    )
    verdict = checks.shard_qa_floor(info, ws.cfg.stages.qa_min_good_share)
    yield Output(
        info,
        metadata={
            "path": MetadataValue.path(info["path"]),
            "sha256": info["sha256"],
            "images": info["images"],
            "masks": info["masks"],
            "masks_per_image": info["masks_per_image"],
            "blurred_boxes": info["blurred_boxes"],
            "qa_reviewed": qa["reviewed"],
            "qa_share_good": qa["share_good"],
            "qa_ci_low": qa["ci_low"],
            "qa_ci_high": qa["ci_high"],
            "model_sha256": info["model_sha256"],
        },
    )
    yield AssetCheckResult(
        check_name="shard_qa_floor",
        passed=verdict.passed,
        description=verdict.detail,
        metadata={
            "share_good": qa["share_good"],
            "ci_low": qa["ci_low"],
            "floor": ws.cfg.stages.qa_min_good_share,
        },
    )
