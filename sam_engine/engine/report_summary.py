"""The report's opening lines: how many checks passed, every failed one by name, and what the engine produced
(masks per stage, SA-1B shards, registered model versions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from .checks import Verdict

STAGE_NAMES = {1: "stage 1 (assisted-manual)", 2: "stage 2 (semi-automatic)", 3: "stage 3 (fully automatic)"}


def produced(stages: pd.DataFrame, shards: Sequence[dict], shards_location: str) -> dict[str, Any]:
    """Masks and images per stage (0 for a stage that made none) and the shards with their mask count."""
    rows = {int(r["stage"]): r for r in stages.to_dict("records")} if len(stages) else {}
    per_stage = {
        s: {
            "masks": int(rows[s]["masks"]) if s in rows else 0,
            "images": int(rows[s]["images"]) if s in rows else 0,
        }
        for s in (1, 2, 3)
    }
    return {
        "stages": per_stage,
        "masks": sum(v["masks"] for v in per_stage.values()),
        "shards": len(shards),
        "shard_masks": int(sum(int(sh.get("masks", 0)) for sh in shards)),
        "shards_location": shards_location,
    }


def check_line(verdicts: Sequence[Verdict], failed: Sequence[Verdict]) -> str:
    """``9 of 10 checks passed; failed: coverage_floor`` (every failed check named), or all passed."""
    passed = len(verdicts) - len(failed)
    if not failed:
        return f"all {len(verdicts)} checks passed"
    return f"{passed} of {len(verdicts)} checks passed; failed: {', '.join(v.check for v in failed)}"


def produced_lines(
    made: dict[str, Any], models: Sequence[str] = (), champion: str | None = None, registered: str = ""
) -> list[str]:
    """One line per stage, one for the shards and one for the model versions (plain text, no Markdown)."""
    lines = [
        f"{STAGE_NAMES[s]}: {v['masks']} masks on {v['images']} images"
        if v["masks"]
        else f"{STAGE_NAMES[s]}: no masks"
        for s, v in made["stages"].items()
    ]
    if made["shards"]:
        lines.append(
            f"SA-1B shards: {made['shards']} with {made['shard_masks']} masks in {made['shards_location']}"
        )
    else:
        lines.append("SA-1B shards: none written")
    if models:
        notes = [f"MLflow registered model {registered}"] if registered else []
        notes += [f"champion: {champion}"] if champion else []
        lines.append(f"model versions: {', '.join(models)}" + (f" ({'; '.join(notes)})" if notes else ""))
    return lines


def champion_by_gates(changes: pd.DataFrame, registered: str | None) -> str | None:
    """The newest model whose no-regression gate passed in the report's own paired changes (``model_v3``),
    or the registry's ``champion`` when that is newer or no gate is in the table. The v3 gate is a reported
    check that Dagster may run after the report, so the registry alone can lag one version behind."""
    best = registered
    for row in changes.to_dict("records") if len(changes) else []:
        if row.get("gate") != "passed":
            continue
        name = "model_" + str(row["change"]).split("->")[-1].strip()
        if best is None or _version(name) > _version(best):
            best = name
    return best


def _version(name: str) -> int:
    digits = name.rsplit("v", 1)[-1]
    return int(digits) if digits.isdigit() else -1
