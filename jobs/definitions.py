"""The one `Definitions` object of the code location (loaded by workspace.yaml and `make ui`)."""

from dagster import (
    Definitions,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    multiprocess_executor,
)

from assets import corpora, fully_automatic, human_stages, models, quality
from assets.resources import EngineResource
from jobs.engine_jobs import (
    drift_job,
    engine_downstream_job,
    engine_upstream_job,
    retrain_stage1_job,
    retrain_stage2_job,
    stage3_shards_job,
)
from jobs.executors import stage3_shards_dask_job
from jobs.sensors import drift_schedule, retrain_sensor

ASSET_MODULES = [corpora, models, human_stages, fully_automatic, quality]

defs = Definitions(
    assets=load_assets_from_modules(ASSET_MODULES),
    asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
    jobs=[
        engine_upstream_job,
        stage3_shards_job,
        engine_downstream_job,
        retrain_stage1_job,
        retrain_stage2_job,
        stage3_shards_dask_job,
        drift_job,
    ],
    sensors=[retrain_sensor],
    schedules=[drift_schedule],
    resources={"engine": EngineResource()},
    # Steps are torch processes sharing the machine's cores: one at a time, each with every core
    # (sam_engine/threads.py). Two concurrent steps with every core each ran ~10x slower on 2 cores.
    executor=multiprocess_executor.configured({"max_concurrent": 1}),
)
