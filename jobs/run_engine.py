"""`make run`: materialize the whole engine on the Dagster instance in $DAGSTER_HOME and print the report."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dagster import AssetSelection, DagsterInstance, materialize

from jobs.definitions import defs
from jobs.resources import EngineResource


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default=os.environ.get("SAM_ENGINE_PROFILE", "default"))
    parser.add_argument("--overrides", default="{}", help="JSON merged over the profile")
    args = parser.parse_args(argv)
    engine = EngineResource(profile=args.profile, overrides=args.overrides)
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    assets = list(defs.assets)
    result = materialize(
        assets, instance=instance, resources={"engine": engine}, selection=AssetSelection.all()
    )
    if not result.success:
        print("materialization failed", file=sys.stderr)
        return 1
    cfg = engine.config()
    manifest = json.loads((cfg.corpora_dir / "manifest.json").read_text())
    print("\n== sam-engine report ==")
    print(f"profile: {cfg.profile}   data: {cfg.data_dir}")
    for name, counts in manifest["counts"].items():
        print(f"  {name:16s} {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
