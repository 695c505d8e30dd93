"""`make run`: materialize the whole engine on the Dagster instance in $DAGSTER_HOME, then print the report.

Three named jobs (jobs/engine_jobs.py), because stage 3 is partitioned (one dynamic partition per shard):
``engine_upstream`` (everything up to the shard plan), ``stage3_shards`` once per shard partition, then
``engine_downstream`` (what depends on all shards: model v3, quality, the report). Each runs in this process,
tagged ``sam_engine/phase``; the console gets one line per step (jobs/run_story.py) and the full event log goes
to ``<data>/logs/run-<time>.log``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid

from dagster import AssetKey, DagsterInstance, Definitions

from assets.resources import EngineResource
from jobs.definitions import defs
from jobs.engine_jobs import (
    PHASE_TAG,
    engine_downstream_job,
    engine_upstream_job,
    stage3_shards_job,
)
from jobs.run_story import RunStory, log_file_name
from sam_engine.training.progress import duration
from sam_engine.training.quiet import quiet_lightning

PHASES = {
    "engine_upstream": "corpora → v0 → stage 1 → v1 → stage 2 → v2 → shard plan",
    "stage3_shards": "stage 3: one SA-1B shard",
    "engine_downstream": "stage-3 audit, v3, evaluations, quality, report",
}


def _quiet() -> None:
    """Third-party notes that tell a reader of `make run` nothing (the event log file keeps Dagster's)."""
    quiet_lightning()
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def engine_definitions(engine: EngineResource) -> Definitions:
    """The engine's assets, checks and `make run`'s jobs, with this run's engine resource."""
    return Definitions(
        assets=list(defs.assets or []),
        asset_checks=list(defs.asset_checks or []),
        jobs=[engine_upstream_job, stage3_shards_job, engine_downstream_job],
        resources={"engine": engine},
    )


def quiet_console(job, partition_key: str | None) -> dict:
    """Run config: Dagster's console logger shows warnings and errors only (the run's log file gets every
    event), over the partition's own run config."""
    base: dict = {}
    if partition_key and job.partitioned_config is not None:
        base = dict(job.partitioned_config.get_run_config_for_partition_key(partition_key) or {})
    return {**base, "loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _run(
    job_defs: Definitions,
    name: str,
    instance: DagsterInstance,
    story: RunStory,
    results: list,
    tags: dict[str, str],
    partition_key: str | None = None,
) -> None:
    label = f"{name} [{partition_key}]" if partition_key else name
    story.say(f"{label}: {PHASES[name]}")
    run_id = str(uuid.uuid4())
    story.listen(instance, run_id)
    t0 = time.perf_counter()
    job = job_defs.resolve_job_def(name)
    result = job.execute_in_process(
        run_config=quiet_console(job, partition_key),
        instance=instance,
        partition_key=partition_key,
        raise_on_error=False,
        run_id=run_id,
        tags=tags,
    )
    results.append(result)
    story.say(
        f"{label}: {'ok' if result.success else 'FAILED'} in {duration(time.perf_counter() - t0)} (run {run_id[:8]})"
    )
    if not result.success:
        for event in result.all_events:
            if event.is_failure and event.message:
                print(event.message.strip().splitlines()[0][:240], file=sys.stderr)
        print(check_summary(results))
        story.say(f"event log: {story.log_path}")
        story.close()
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default=os.environ.get("SAM_ENGINE_PROFILE", "default"))
    parser.add_argument(
        "--overrides",
        default=os.environ.get("SAM_ENGINE_OVERRIDES", "{}"),
        help="JSON merged over the profile",
    )
    parser.add_argument(
        "--pretrain",
        action="store_true",
        help="train v0 here from scratch instead of starting from the released checkpoint",
    )
    args = parser.parse_args(argv)
    overrides = args.overrides
    if args.pretrain:
        merged = json.loads(overrides or "{}")
        merged.setdefault("train", {})["use_release"] = False
        overrides = json.dumps(merged)
    _quiet()
    engine = EngineResource(profile=args.profile, overrides=overrides)
    cfg = engine.config()
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    job_defs = engine_definitions(engine)
    story = RunStory(cfg.data_dir / "logs" / log_file_name())
    story.say(f"sam-engine: profile {cfg.profile}, data in {cfg.data_dir}")
    story.say(f"event log: {story.log_path}")
    tags = {"sam_engine/profile": cfg.profile}
    t0 = time.perf_counter()
    results: list = []
    _run(job_defs, "engine_upstream", instance, story, results, {**tags, PHASE_TAG: "upstream"})
    keys = instance.get_dynamic_partitions("sa1b_shards")
    plan = instance.get_latest_materialization_event(AssetKey("stage3_plan"))
    n_plan = plan.asset_materialization.metadata["shards"].value if plan else len(keys)
    for key in sorted(keys)[:n_plan]:
        _run(job_defs, "stage3_shards", instance, story, results, {**tags, PHASE_TAG: "shard"}, key)
    _run(job_defs, "engine_downstream", instance, story, results, {**tags, PHASE_TAG: "downstream"})
    print()
    print((cfg.reports_dir / "engine_report.txt").read_text())
    print(check_summary(results))
    print(f"HTML report: {cfg.reports_dir / 'engine_report.html'}")
    print(f"JSON report: {cfg.reports_dir / 'engine_report.json'}")
    story.say(f"event log: {story.log_path}")
    story.say(f"total {duration(time.perf_counter() - t0)}")
    story.close()
    return 0


def check_summary(results: list) -> str:
    """The run's verdict: how many asset checks ran, and every failed one by name with its description."""
    evaluations = [e for r in results for e in r.get_asset_check_evaluations()]
    failed = [e for e in evaluations if not e.passed]
    lines = [f"checks: {len(evaluations) - len(failed)} passed, {len(failed)} failed"]
    for e in failed:
        partition = f" [{e.partition}]" if getattr(e, "partition", None) else ""
        why = " ".join((e.description or "").split())
        why = why if len(why) <= 200 else why[:197] + "..."  # the check's metadata has the whole verdict
        lines.append(f"FAILED {e.check_name} on {e.asset_key.to_user_string()}{partition}: {why}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
