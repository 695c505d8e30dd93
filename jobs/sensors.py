"""The retrain sensor and the drift schedule."""

from dagster import RunRequest, ScheduleDefinition, SensorEvaluationContext, SkipReason, sensor

from assets.resources import EngineResource
from jobs.engine_jobs import drift_job, retrain_stage1_job, retrain_stage2_job
from sam_engine.engine.retrain import retrain_decisions, verified_mask_counts
from sam_engine.engine.workspace import Workspace


@sensor(
    jobs=[retrain_stage1_job, retrain_stage2_job],
    minimum_interval_seconds=60,
    description="Enough new human-verified masks since the last request → collect the stage's masks and "
    "retrain its model. Cursor-based: one request per threshold crossing, never a duplicate run.",
)
def retrain_sensor(context: SensorEvaluationContext, engine: EngineResource):
    ws = Workspace(engine.config())
    if not ws.cfg.duckdb_path.exists():
        return SkipReason("no annotation store yet")
    with ws.open_store(read_only=True) as store:
        counts = verified_mask_counts(store, {im.image_id for im in ws.gold.images})
    due, cursor = retrain_decisions(counts, context.cursor, ws.cfg.stages.retrain_min_new_masks)
    context.update_cursor(cursor)
    if not due:
        return SkipReason(
            f"verified masks per stage {counts}; threshold {ws.cfg.stages.retrain_min_new_masks}"
        )
    jobs = {1: retrain_stage1_job, 2: retrain_stage2_job}
    return [
        RunRequest(
            run_key=f"retrain-stage{s}-{counts[s]}",
            job_name=jobs[s].name,
            tags={"sam_engine/verified_masks": str(counts[s])},
        )
        for s in due
    ]


drift_schedule = ScheduleDefinition(
    job=drift_job,
    cron_schedule="0 3 * * *",
    description="Nightly: newest shards against the baseline (drift check).",
)
