"""Scale-out: stage-3 shard partitions on a local Dask cluster give the same shards as in process; training
with Lightning DDP on 2 CPU processes exports a loadable checkpoint; run-config builders match the job."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from dagster import validate_run_config

from jobs.backfill import backfill_stage3, stage3_shards_dask
from jobs.executors import (
    SCHEDULER_ENV,
    STAGE3_DASK_JOB,
    Sealed,
    dask_cluster_config,
    default_dask_execution,
    k8s_run_tags,
    stage3_dask_run_config,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_config_builders_validate_against_the_job():
    job = stage3_shards_dask()
    assert job.name == STAGE3_DASK_JOB and job.executor_def.name == "dask"
    for cfg in (
        stage3_dask_run_config(n_workers=2, profile="smoke", overrides={"seed": 1}),
        stage3_dask_run_config("tcp://10.0.0.5:8786", profile="scale"),
    ):
        assert validate_run_config(job, cfg)
    assert dask_cluster_config("tcp://h:8786") == {
        "config": {"cluster": {"existing": {"address": "tcp://h:8786"}}}
    }
    with pytest.raises(ValueError, match="n_workers"):
        dask_cluster_config(n_workers=0)
    with pytest.raises(Exception, match="cluster"):
        validate_run_config(job, {"execution": {"config": {"cluster": {"nope": {}}}}})


def test_default_executor_config_follows_the_scheduler_env(monkeypatch):
    job = stage3_shards_dask()
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    assert default_dask_execution() == dask_cluster_config(n_workers=2)
    monkeypatch.setenv(SCHEDULER_ENV, "tcp://sched:8786")
    existing = default_dask_execution()
    assert existing["config"]["cluster"]["existing"]["address"] == {"env": SCHEDULER_ENV}
    resolved = validate_run_config(job, {"execution": existing})
    assert resolved["execution"]["dask"]["cluster"]["existing"]["address"] == "tcp://sched:8786"
    # a backfill launched by partition gets the job's default executor config
    assert (
        "cluster"
        in job.partitioned_config.get_run_config_for_partition_key("shard_00000")["execution"]["config"]
    )


def _yaml(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def test_dask_examples_fit_the_job_and_the_instance_schema(tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    job = stage3_shards_dask()
    local = _yaml("dask/stage3_local_cluster.yaml")
    assert local == stage3_dask_run_config(n_workers=2, profile="smoke")
    existing = _yaml("dask/stage3_existing_cluster.yaml")
    resolved = validate_run_config(job, existing)
    assert resolved["resources"]["io_manager"]["config"]["base_dir"].startswith("s3://")
    assert existing["execution"] == dask_cluster_config("tcp://dask-scheduler:8786")
    for name in ("dask/dagster.yaml", "k8s/dagster.yaml"):
        (tmp_path / "dagster.yaml").write_text((EXAMPLES / name).read_text())
        config, _ = dagster_instance_config(str(tmp_path))
        assert config["run_coordinator"]["class"] == "QueuedRunCoordinator", name


def test_k8s_examples_match_the_tag_builder_and_the_launcher_schema():
    from jobs.definitions import defs

    example = _yaml("k8s/stage3_shards_run_config.yaml")
    tags = k8s_run_tags(
        gpus=1, cpu="8", memory="32Gi", node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"}
    )
    assert example["tags"]["sam-engine/stage"] == tags["sam-engine/stage"]
    assert json.loads(example["tags"]["dagster-k8s/config"]) == json.loads(tags["dagster-k8s/config"])
    assert validate_run_config(defs.resolve_job_def("stage3_shards"), example["run_config"])
    assert k8s_run_tags(stage=None) == {}
    with pytest.raises(ValueError, match="gpus"):
        k8s_run_tags(gpus=-1)
    values = _yaml("k8s/values.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["tagConcurrencyLimits"][0]["key"] == "sam-engine/stage"

    k8s = pytest.importorskip("dagster_k8s")  # optional extra: validate the launcher config when installed
    from dagster._config import process_config

    launcher = _yaml("k8s/dagster.yaml")["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert process_config(k8s.K8sRunLauncher.config_type(), launcher["config"]).success


def test_sealed_arguments_are_opaque_to_dask_and_survive_pickling():
    """Dask walks tuple-like task arguments; a partitioned DagsterRun holds a record that refuses iteration."""
    from dask._task_spec import parse_input

    class NoIter(tuple):
        def __iter__(self):
            raise RuntimeError("Iteration is not allowed")

    payload = ("run", NoIter((1, 2)), {"a": 1})
    with pytest.raises(RuntimeError):
        parse_input(("x", payload))
    sealed = Sealed(("run", {"a": 1}, [3]))
    assert parse_input([sealed]) == [sealed]
    assert pickle.loads(pickle.dumps(sealed)).value == ("run", {"a": 1}, [3])


def test_backfill_rejects_unknown_partitions_and_ephemeral_instances(tmp_path):
    from dagster import DagsterInstance

    with pytest.raises(ValueError, match="persistent"):
        backfill_stage3(DagsterInstance.ephemeral(), ["shard_00000"], {})
    instance = DagsterInstance.local_temp(tempdir=str(tmp_path))
    with pytest.raises(ValueError, match="shard_00007"):
        backfill_stage3(instance, ["shard_00007"], {})
    instance.dispose()


def _worker_torch_threads() -> int:
    from jobs.executors import _share_cores_with_host_workers
    from sam_engine.threads import torch_threads

    _share_cores_with_host_workers()
    return torch_threads()


@pytest.mark.slow
def test_dask_workers_split_the_host_cores_between_them(monkeypatch):
    """Two single-thread workers on one host each take half the cores for torch (a step per worker at once
    must not oversubscribe them)."""
    from dask.distributed import Client, LocalCluster

    monkeypatch.delenv("SAM_ENGINE_TORCH_THREADS", raising=False)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        workers = list(client.scheduler_info()["workers"])
        got = client.gather([client.submit(_worker_torch_threads, workers=[w], pure=False) for w in workers])
    assert got == [max(1, (os.cpu_count() or 1) // 2)] * 2


@pytest.mark.slow
def test_stage3_shards_on_dask_match_in_process(tmp_path):
    """3 shard partitions: in process, then on Dask (a run-owned 2-worker LocalCluster for one partition, a
    shared 2-worker cluster with 2 concurrent runs for the others); byte-identical tars, same manifest."""
    from dask.distributed import Client, LocalCluster

    from benchmarks.bench_scaleout import materialize_in_process, prepare_stage3
    from sam_engine.stage3 import read_manifest

    setup = prepare_stage3(tmp_path, stage3_images=6, images_per_shard=2)
    try:
        assert setup.partitions == ["shard_00000", "shard_00001", "shard_00002"]
        shards_dir = setup.cfg.shards_dir
        for key in setup.partitions:
            assert materialize_in_process(setup, key).success
        expected = {p.name: p.read_bytes() for p in sorted(shards_dir.glob("sa_*.tar"))}
        expected_manifest = read_manifest(shards_dir)["shards"]
        assert sorted(expected) == ["sa_000000.tar", "sa_000001.tar", "sa_000002.tar"]
        shutil.rmtree(shards_dir)

        common = {"profile": setup.profile, "overrides": setup.overrides}
        first = backfill_stage3(
            setup.instance, setup.partitions[:1], stage3_dask_run_config(n_workers=2, **common)
        )
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
            with Client(cluster) as client:
                worker_pids = set(client.run(os.getpid).values())
            rest = backfill_stage3(
                setup.instance,
                setup.partitions[1:],
                stage3_dask_run_config(cluster.scheduler_address, **common),
                max_concurrent=2,
            )
        results = {**first, **rest}
        assert all(r.success for r in results.values()), {k: r.success for k, r in results.items()}
        for key, result in results.items():
            run = setup.instance.get_run_by_id(result.run_id)
            assert run.job_name == STAGE3_DASK_JOB and run.tags["dagster/partition"] == key
            step_pids = {e.pid for e in result.all_events if e.is_step_start}
            assert step_pids and os.getpid() not in step_pids  # the step ran in a Dask worker
            if key in rest:
                assert step_pids <= worker_pids
            mats = result.get_asset_materialization_events()
            assert [m.partition for m in mats] == [key]

        got = {p.name: p.read_bytes() for p in sorted(shards_dir.glob("sa_*.tar"))}
        assert sorted(got) == sorted(expected)
        for name in expected:
            assert got[name] == expected[name], f"{name} differs between Dask and in-process runs"
        manifest = read_manifest(shards_dir)["shards"]
        assert {k: v["sha256"] for k, v in manifest.items()} == {
            k: v["sha256"] for k, v in expected_manifest.items()
        }
        assert {k: v["image_ids"] for k, v in manifest.items()} == {
            k: v["image_ids"] for k, v in expected_manifest.items()
        }
    finally:
        setup.instance.dispose()


@pytest.mark.slow
def test_ddp_two_cpu_processes_trains_and_exports(smoke_cfg, smoke_corpora, tmp_path):
    from sam_engine.data.corpora import load_public
    from sam_engine.model import get_config
    from sam_engine.model.checkpoint import load_model, read_checkpoint
    from sam_engine.training.distributed import ScaleSettings, train_distributed
    from sam_engine.training.module import SamModule

    settings = ScaleSettings(accelerator="cpu", devices=2, strategy="ddp_spawn")
    result = train_distributed(
        load_public(smoke_cfg, "train"),
        "tiny",
        tmp_path / "ddp",
        settings=settings,
        max_steps=3,
        batch_size=2,
        warmup_steps=1,
        seed=0,
    )
    assert result.world_size == 2 and result.steps == 3
    model = load_model(result.checkpoint)
    meta = read_checkpoint(result.checkpoint).metadata
    assert meta["world_size"] == 2 and meta["strategy"] == "ddp_spawn" and meta["steps"] == 3
    init = SamModule(model_config=get_config("tiny").to_dict(), seed=0).model.state_dict()  # the start point
    trained = model.state_dict()
    assert init.keys() == trained.keys()
    assert any(not torch.equal(init[k], trained[k]) for k in init)  # rank 0's trained weights came back
    assert all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())
    assert torch.isfinite(torch.tensor(result.metrics["train/loss"]))


def test_scale_settings_default_one_cpu_process_and_overrides(smoke_cfg):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy

    from sam_engine.config import load_config
    from sam_engine.training.distributed import ScaleSettings, resolve_device, scale_settings

    one = scale_settings(smoke_cfg)
    assert (one.accelerator, one.devices, one.num_nodes, one.strategy) == ("cpu", 1, 1, "auto")
    assert one.trainer_kwargs()["strategy"] == "auto" and not one.distributed
    if torch.cuda.device_count() == 0:
        scale = scale_settings(load_config("scale", {"data_dir": str(smoke_cfg.data_dir)}))
        assert (scale.accelerator, scale.devices, scale.strategy) == ("cpu", 1, "auto")
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda:0")
    assert resolve_device(None) == torch.device("cpu")

    train = SimpleNamespace(device="auto", strategy="ddp_spawn", devices=2, num_nodes=1, accelerator=None)
    over = scale_settings(SimpleNamespace(profile="default", train=train))
    kwargs = over.trainer_kwargs()
    assert over.distributed and kwargs["devices"] == 2 and isinstance(kwargs["strategy"], DDPStrategy)
    assert kwargs["strategy"].process_group_backend == "gloo"
    gpu = ScaleSettings(accelerator="gpu", devices=8, num_nodes=4, strategy="ddp").trainer_kwargs()
    assert gpu["strategy"].process_group_backend == "nccl" and gpu["num_nodes"] == 4
    for bad in ({"strategy": "horovod"}, {"devices": 0}, {"num_nodes": 0}):
        with pytest.raises(ValueError):
            ScaleSettings(**bad)
