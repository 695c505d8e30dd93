"""Running stage 3 beyond one process: a Dask executor and run-config builders (the shard backfill helper is
``jobs/backfill.py``).

One stage-3 shard is one partition of ``sa1b_shards``, so one run writes one shard. A backfill over many shards
is many runs: the run queue (``QueuedRunCoordinator``) decides how many run at once, and each run's step
executes where the job's executor sends it:

- ``stage3_shards`` (jobs/engine_jobs.py): the default executor, i.e. in the run's own process. With the
  Kubernetes run launcher (dagster-k8s) every run is its own pod; see docs/scaling.md.
- ``stage3_shards_dask`` (here): the same asset, executed on a Dask cluster, either a ``LocalCluster`` the run
  starts itself (development) or an existing scheduler address (one cluster shared by all runs of a backfill).

``engine_dask_executor`` is dagster-dask's executor (same config schema, same worker entry point
``dagster_dask.executor.query_on_dask_worker``) with two fixes that partitioned backfills need with
dagster 1.13 / dagster-dask 0.29:

1. the Dask task key carries the run id. Upstream keys tasks ``<job>.<step>``, so two concurrent runs of one
   job on one scheduler share a key and Dask runs only the first (dagster-io/dagster#21418): a backfill over
   an existing cluster would silently skip shards;
2. the run, run config and execution state travel to the worker sealed in one opaque object. Upstream passes
   the ``DagsterRun`` bare, and Dask walks tuple-like arguments looking for futures; a partitioned run carries
   a ``partitions_subset`` record that refuses iteration, so every partitioned run failed at submit time
   ("Iteration is not allowed on `@record` KeyRangesPartitionsSubset").

The asset code is the same in every case; only run config and ``dagster.yaml`` change.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster import (
    AssetSelection,
    Executor,
    define_asset_job,
    executor,
    multiple_process_executor_requirements,
)
from dagster._core.errors import raise_execution_interrupts
from dagster._core.events import DagsterEvent
from dagster._utils import iterate_with_context
from dagster_dask import dask_executor as upstream_dask_executor
from dagster_dask.executor import DaskExecutor, get_dask_resource_requirements, query_on_dask_worker

from assets.fully_automatic import shard_partitions_def

# Cluster kinds other than "local" / "existing": (module, class), imported only when configured.
CLUSTER_CLASSES = {
    "yarn": ("dask_yarn", "YarnCluster"),
    "ssh": ("dask.distributed", "SSHCluster"),
    "pbs": ("dask_jobqueue", "PBSCluster"),
    "moab": ("dask_jobqueue", "MoabCluster"),
    "sge": ("dask_jobqueue", "SGECluster"),
    "lsf": ("dask_jobqueue", "LSFCluster"),
    "slurm": ("dask_jobqueue", "SLURMCluster"),
    "oar": ("dask_jobqueue", "OARCluster"),
    "kube": ("dask_kubernetes", "KubeCluster"),
}


class Sealed:
    """An opaque box: Dask ships it to the worker by pickling and never looks inside."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __getstate__(self) -> Any:
        return self.value

    def __setstate__(self, value: Any) -> None:
        self.value = value


def _share_cores_with_host_workers() -> None:
    """In a Dask worker: torch threads = this host's cores / the task slots of every worker on the host, so
    concurrent steps (one per worker thread) do not oversubscribe the cores (``SAM_ENGINE_TORCH_THREADS``
    set on the worker wins)."""
    from dask.distributed import get_client, get_worker

    from sam_engine.threads import ENV

    if os.environ.get(ENV):
        return
    worker = get_worker()
    host = worker.address.rsplit(":", 1)[0] + ":"
    workers = get_client().scheduler_info()["workers"]  # address -> info
    slots = sum(info.get("nthreads", 1) for address, info in workers.items() if address.startswith(host))
    os.environ[ENV] = str(max(1, (os.cpu_count() or 1) // max(1, slots)))


def run_step_on_worker(dependencies: list, sealed: Sealed) -> Sealed:
    """Dask task: execute the sealed step of a run (``dependencies`` only orders the futures)."""
    _share_cores_with_host_workers()
    return Sealed(list(query_on_dask_worker(dependencies, *sealed.value)))


class RunScopedDaskExecutor(DaskExecutor):
    """dagster-dask's executor with run-scoped task keys and sealed arguments (see the module docstring)."""

    task_key = "{job}.{step}.{run_id}"  # upstream: "{job}.{step}", shared by concurrent runs of one job

    @contextmanager
    def _cluster(self, job_name: str) -> Iterator[Any]:
        if self.cluster_type == "existing":
            yield self.cluster_configuration["address"]
            return
        if self.cluster_type == "local":
            from dask.distributed import LocalCluster

            cls = LocalCluster
        elif self.cluster_type in CLUSTER_CLASSES:
            module, name = CLUSTER_CLASSES[self.cluster_type]
            cls = getattr(importlib.import_module(module), name)
        else:
            raise ValueError(f"unknown Dask cluster type {self.cluster_type!r}")
        cluster = cls(**self.build_dict(job_name))
        try:
            yield cluster
        finally:
            cluster.close()

    def execute(self, plan_context, execution_plan) -> Iterator[DagsterEvent]:
        from dask.distributed import Client, as_completed

        if not plan_context.instance.is_persistent:
            raise ValueError("Dask execution needs a persistent Dagster instance (set DAGSTER_HOME)")
        run = plan_context.dagster_run
        job_name = plan_context.job_name
        shared = (
            plan_context.reconstructable_job,
            run,
            plan_context.run_config,
        )
        tail = (plan_context.instance.get_ref(), execution_plan.known_state)
        with self._cluster(job_name) as cluster, Client(cluster) as client:
            futures: dict[str, Any] = {}
            for level in execution_plan.get_steps_to_execute_by_level():
                for step in level:
                    deps = [futures[k] for inp in step.step_inputs for k in inp.dependency_keys]
                    futures[step.key] = client.submit(
                        run_step_on_worker,
                        deps,
                        Sealed((*shared, [step.key], *tail)),
                        key=self.task_key.format(job=job_name, step=step.key, run_id=run.run_id),
                        resources=get_dask_resource_requirements(step.tags),
                        pure=False,
                    )
            done = as_completed(list(futures.values()), with_results=True)
            for _future, sealed in iterate_with_context(raise_execution_interrupts, done):
                yield from sealed.value


@executor(
    name="dask",
    config_schema=upstream_dask_executor.config_schema,
    requirements=multiple_process_executor_requirements(),
)
def engine_dask_executor(init_context) -> Executor:
    """Dask executor for the engine's jobs; config as dagster-dask's ``dask_executor``
    (``cluster: {local: {...}}`` or ``cluster: {existing: {address: ...}}``, yarn, ssh, slurm, kube, ...)."""
    ((cluster_type, cluster_config),) = init_context.executor_config["cluster"].items()
    return RunScopedDaskExecutor(cluster_type, cluster_config)


STAGE3_DASK_JOB = "stage3_shards_dask"
PARTITION_TAG = "dagster/partition"


def dask_cluster_config(
    address: str | None = None, *, n_workers: int = 2, threads_per_worker: int = 1, **local: Any
) -> dict[str, Any]:
    """The ``execution`` section of run config for ``stage3_shards_dask``.

    ``address`` (``tcp://host:8786``) connects to an existing scheduler; without it the run starts a
    ``distributed.LocalCluster(n_workers, threads_per_worker, **local)`` for itself.
    """
    if address:
        return {"config": {"cluster": {"existing": {"address": address}}}}
    if n_workers < 1 or threads_per_worker < 1:
        raise ValueError(
            f"n_workers and threads_per_worker must be >= 1, got {n_workers}, {threads_per_worker}"
        )
    cluster = {"n_workers": n_workers, "threads_per_worker": threads_per_worker, **local}
    return {"config": {"cluster": {"local": cluster}}}


SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"


def default_dask_execution() -> dict[str, Any]:
    """The job's default executor config: the scheduler in ``$DASK_SCHEDULER_ADDRESS`` when set (read by the run
    worker at run time), else a 2-worker LocalCluster per run. Backfills launched from the UI, the CLI or a
    sensor use it; explicit run config replaces it."""
    if os.environ.get(SCHEDULER_ENV):
        return {"config": {"cluster": {"existing": {"address": {"env": SCHEDULER_ENV}}}}}
    return dask_cluster_config(n_workers=2)


stage3_shards_dask_job = define_asset_job(
    STAGE3_DASK_JOB,
    selection=AssetSelection.assets("sa1b_shards"),
    partitions_def=shard_partitions_def,
    executor_def=engine_dask_executor,
    config={"execution": default_dask_execution()},
    description="Write SA-1B shards on a Dask cluster (dagster-dask): one run per shard partition; "
    "run config picks a local cluster or an existing scheduler address.",
)


def engine_resource_config(profile: str | None = None, overrides: Mapping[str, Any] | None = None) -> dict:
    """The ``resources`` section that sets the engine profile and JSON overrides for a run."""
    config: dict[str, Any] = {"overrides": json.dumps(dict(overrides or {}), sort_keys=True)}
    if profile is not None:
        config["profile"] = profile
    return {"engine": {"config": config}}


def stage3_dask_run_config(
    address: str | None = None,
    *,
    n_workers: int = 2,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Complete run config for one ``stage3_shards_dask`` run (executor + engine resource)."""
    return {
        "execution": dask_cluster_config(address, n_workers=n_workers),
        "resources": engine_resource_config(profile, overrides),
    }


def k8s_run_tags(
    *,
    gpus: int = 0,
    cpu: str | None = None,
    memory: str | None = None,
    node_selector: Mapping[str, str] | None = None,
    stage: str | None = "3",
) -> dict[str, str]:
    """Run tags that size the pod of a run under dagster-k8s's ``K8sRunLauncher`` (``dagster-k8s/config``)
    and label it for the run queue's tag limits (``sam-engine/stage``). Plain strings: no dagster-k8s import.
    """
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    resources: dict[str, dict[str, str]] = {}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    if requests:
        resources["requests"] = requests
    k8s: dict[str, Any] = {}
    if resources:
        k8s["container_config"] = {"resources": resources}
    if node_selector:
        k8s["pod_spec_config"] = {"node_selector": dict(node_selector)}
    tags = {"dagster-k8s/config": json.dumps(k8s)} if k8s else {}
    if stage is not None:
        tags["sam-engine/stage"] = str(stage)
    return tags
