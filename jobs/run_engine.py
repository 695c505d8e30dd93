"""`make run`: materialize the whole engine on the Dagster instance in $DAGSTER_HOME, then print the report.

Three phases, because stage 3 is partitioned (one dynamic partition per shard): everything up to the shard plan,
then each shard partition, then what depends on all shards (model v3, quality, the report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

from jobs.definitions import defs
from jobs.resources import EngineResource

UPSTREAM_OF_SHARDS = AssetSelection.assets("stage3_plan").upstream() | AssetSelection.assets("eval_model_v0")


def _run(assets, instance, engine, selection, partition_key=None, label=""):
    t0 = time.perf_counter()
    result = materialize(
        assets,
        instance=instance,
        resources={"engine": engine},
        selection=selection,
        partition_key=partition_key,
        raise_on_error=False,
    )
    print(
        f"[run_engine] {label}: {'ok' if result.success else 'FAILED'} in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    if not result.success:
        for event in result.all_events:
            if event.is_failure:
                print(event.message, file=sys.stderr)
        raise SystemExit(1)
    return result


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
    engine = EngineResource(profile=args.profile, overrides=overrides)
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    assets = list(defs.assets) + list(defs.asset_checks or [])
    t0 = time.perf_counter()
    results = [
        _run(
            assets,
            instance,
            engine,
            UPSTREAM_OF_SHARDS,
            label="corpora → v0 → stage 1 → v1 → stage 2 → v2 → plan",
        )
    ]
    keys = instance.get_dynamic_partitions("sa1b_shards")
    plan = instance.get_latest_materialization_event(AssetKey("stage3_plan"))
    n_plan = plan.asset_materialization.metadata["shards"].value if plan else len(keys)
    for key in sorted(keys)[:n_plan]:
        results.append(
            _run(assets, instance, engine, AssetSelection.assets("sa1b_shards"), partition_key=key, label=key)
        )
    rest = AssetSelection.all() - UPSTREAM_OF_SHARDS - AssetSelection.assets("sa1b_shards")
    results.append(_run(assets, instance, engine, rest, label="v3, evaluations, quality, report"))
    cfg = engine.config()
    print((cfg.reports_dir / "engine_report.txt").read_text())
    print(f"\nHTML report: {cfg.reports_dir / 'engine_report.html'}")
    print(f"JSON report: {cfg.reports_dir / 'engine_report.json'}")
    print(check_summary(results))
    print(f"total {time.perf_counter() - t0:.0f}s")
    return 0


def check_summary(results: list) -> str:
    """The run's verdict: how many asset checks ran, and every failed one by name with its description."""
    evaluations = [e for r in results for e in r.get_asset_check_evaluations()]
    failed = [e for e in evaluations if not e.passed]
    lines = [f"checks: {len(evaluations) - len(failed)} passed, {len(failed)} failed"]
    for e in failed:
        partition = f" [{e.partition}]" if getattr(e, "partition", None) else ""
        lines.append(
            f"FAILED {e.check_name} on {e.asset_key.to_user_string()}{partition}: {e.description or ''}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
