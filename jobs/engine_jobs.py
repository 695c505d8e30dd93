"""Jobs of the engine: retraining within a stage, stage-3 shard backfills, drift re-evaluation."""

from dagster import AssetSelection, define_asset_job

from assets.fully_automatic import shard_partitions_def

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
    description="Write SA-1B shards: one run per shard partition (backfills fan out through the run queue).",
)
drift_job = define_asset_job(
    "drift_check",
    selection=AssetSelection.assets("shard_drift"),
    description="Re-evaluate the newest shards' QA sample and score distributions against the baseline.",
)
