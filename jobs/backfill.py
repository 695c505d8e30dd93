"""Stage-3 shard backfills without a daemon: ``stage3_shards_dask`` resolved from the code location's
``Definitions``, and one run per shard partition (what the run queue does in a deployment).

It sits above ``jobs/definitions.py`` (which defines the job through ``jobs/executors.py``), so no module
imports itself back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dagster import (
    DagsterInstance,
    Definitions,
    JobDefinition,
    JobExecutionResult,
    execute_job,
    reconstructable,
)

from assets.fully_automatic import shard_partitions_def
from jobs.definitions import defs
from jobs.executors import PARTITION_TAG, STAGE3_DASK_JOB, stage3_shards_dask_job


def stage3_shards_dask() -> JobDefinition:
    """The resolved ``stage3_shards_dask`` job; a module-level function, so ``reconstructable`` can point at it
    from Dask worker processes."""
    if any(getattr(j, "name", None) == STAGE3_DASK_JOB for j in defs.jobs or []):
        return defs.resolve_job_def(STAGE3_DASK_JOB)
    local = Definitions(
        assets=list(defs.assets or []),
        asset_checks=list(defs.asset_checks or []),
        jobs=[stage3_shards_dask_job],
        resources=dict(defs.resources or {}),
    )
    return local.resolve_job_def(STAGE3_DASK_JOB)


def backfill_stage3(
    instance: DagsterInstance,
    partition_keys: Iterable[str],
    run_config: Mapping[str, Any],
    *,
    max_concurrent: int = 2,
    raise_on_error: bool = False,
) -> dict[str, JobExecutionResult]:
    """Run ``stage3_shards_dask`` once per partition, ``max_concurrent`` runs at a time, on ``instance``.

    What the run queue does in a deployment (``dagster job backfill`` / the UI's backfill with a
    ``QueuedRunCoordinator``), for scripts and tests without a daemon. The instance must be persistent
    (Dask workers open it from its ref); with ``cluster.existing`` all runs share one Dask cluster.
    """
    if not instance.is_persistent:
        raise ValueError("the Dask executor needs a persistent Dagster instance (set DAGSTER_HOME)")
    keys = list(partition_keys)
    known = set(instance.get_dynamic_partitions(shard_partitions_def.name))
    missing = [k for k in keys if k not in known]
    if missing:
        raise ValueError(f"unknown sa1b_shards partitions {missing}; materialize stage3_plan first")
    job = reconstructable(stage3_shards_dask)

    def one(key: str) -> JobExecutionResult:
        result = execute_job(
            job,
            instance=instance,
            run_config=dict(run_config),
            tags={PARTITION_TAG: key},
            raise_on_error=False,
        )
        if raise_on_error and not result.success:
            raise RuntimeError(f"stage-3 run for {key} failed (run {result.run_id})")
        return result

    with ThreadPoolExecutor(max_workers=max(1, max_concurrent)) as pool:
        results = list(pool.map(one, keys))
    return dict(zip(keys, results, strict=True))
