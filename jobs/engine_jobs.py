"""Jobs of the engine: its three phases (what `make run` runs, by name), retraining within a stage, stage-3 shard
backfills, drift re-evaluation."""

from dagster import AssetSelection, define_asset_job

from assets.fully_automatic import shard_partitions_def

# `make run` in three phases, because stage 3 is partitioned (one dynamic partition per shard): everything up to
# the shard plan (engine_upstream), each shard (stage3_shards), what depends on all shards (engine_downstream)
UPSTREAM_OF_SHARDS = AssetSelection.assets("stage3_plan").upstream() | AssetSelection.assets("eval_model_v0")
DOWNSTREAM_OF_SHARDS = AssetSelection.all() - UPSTREAM_OF_SHARDS - AssetSelection.assets("sa1b_shards")
PHASE_TAG = "sam_engine/phase"

engine_upstream_job = define_asset_job(
    "engine_upstream",
    selection=UPSTREAM_OF_SHARDS,
    description="`make run`, phase 1: corpora, v0, stage 1, v1, stage 2, v2 (with their evaluations and gates) "
    "and the stage-3 shard plan.",
    tags={PHASE_TAG: "upstream"},
)
engine_downstream_job = define_asset_job(
    "engine_downstream",
    selection=DOWNSTREAM_OF_SHARDS,
    description="`make run`, phase 3 (after every shard): the stage-3 audit, v3 and its evaluation, quality "
    "tables, drift and the engine report.",
    tags={PHASE_TAG: "downstream"},
)

retrain_stage1_job = define_asset_job(
    "retrain_stage1",
    selection=AssetSelection.assets("stage1_masks", "model_v1", "eval_model_v1"),
    description="Collect stage-1 masks and fine-tune a new v1 (one more registered model version).",
)
retrain_stage2_job = define_asset_job(
    "retrain_stage2",
    selection=AssetSelection.assets("stage2_masks", "model_v2", "eval_model_v2"),
    description="Collect stage-2 masks and fine-tune a new v2 (one more registered model version).",
)
stage3_shards_job = define_asset_job(
    "stage3_shards",
    selection=AssetSelection.assets("sa1b_shards"),
    partitions_def=shard_partitions_def,
    description="Write SA-1B shards: one run per shard partition (backfills fan out through the run queue); "
    "`make run`'s phase 2.",
    tags={PHASE_TAG: "shard"},
)
drift_job = define_asset_job(
    "drift_check",
    selection=AssetSelection.assets("shard_drift"),
    description="Re-evaluate the newest shards' QA sample and score distributions against the baseline.",
)
