"""The engine's quality checks as plain verdicts: the Dagster asset checks and the report use the same ones.

Each function takes what the check's asset produces and returns a :class:`Verdict` (check name, asset,
passed, one-line detail), so the run's summary and the report list exactly the checks Dagster shows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class Verdict:
    """One check's outcome."""

    check: str
    asset: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def shard_qa_floor(shard: dict, floor: float) -> Verdict:
    """A shard's QA-estimated share of good masks is at least ``floor`` (an empty shard has nothing good)."""
    qa = shard.get("qa", {})
    share = float(qa.get("share_good", float("nan")))
    reviewed = int(qa.get("reviewed", 0))
    passed = reviewed > 0 and share >= floor
    name = str(shard.get("path", "")).rsplit("/", 1)[-1]
    detail = (
        f"{name}: QA good share {share:.2f} over {reviewed} masks (floor {floor:.2f})"
        if reviewed
        else f"{name}: no mask to review ({shard.get('masks', 0)} masks kept)"
    )
    return Verdict("shard_qa_floor", "sa1b_shards", passed, detail)


def coverage_floor(coverage: pd.DataFrame, floor: float) -> Verdict:
    """Every region has at least ``floor`` of its pool images carrying a kept mask."""
    if not len(coverage):
        return Verdict("coverage_floor", "region_coverage", False, "no region")
    worst = coverage.loc[coverage["coverage"].idxmin()]
    passed = float(worst["coverage"]) >= floor
    detail = f"lowest region {worst['region']} covered {float(worst['coverage']):.2f} (floor {floor:.2f})"
    return Verdict("coverage_floor", "region_coverage", passed, detail)


def stage3_precision(audit: pd.DataFrame, target: float) -> Verdict:
    """The share of all stage-3 masks at IoU > 0.9 with a hidden ground-truth mask reaches ``target``."""
    overall = audit[audit["shard"] == "all"]
    if not len(overall) or not overall["masks"].iloc[0]:
        return Verdict("stage3_precision", "stage3_audit", False, "stage 3 kept no mask")
    share = float(overall["share_iou>0.9"].iloc[0])
    detail = (
        f"{share:.3f} of {int(overall['masks'].iloc[0])} stage-3 masks at IoU > 0.9 with the hidden ground "
        f"truth (target {target:.2f})"
    )
    return Verdict("stage3_precision", "stage3_audit", share >= target, detail)


def qa_agrees(audit: pd.DataFrame) -> Verdict:
    """The pooled QA sample's interval holds the share measured on every stage-3 mask."""
    overall = audit[audit["shard"] == "all"]
    if not len(overall) or not overall["qa_reviewed"].iloc[0]:
        return Verdict("qa_agrees", "stage3_audit", False, "no QA sample")
    row = overall.iloc[0]
    share, low, high = float(row["share_iou>0.9"]), float(row["qa_ci_low"]), float(row["qa_ci_high"])
    passed = not math.isnan(share) and low <= share <= high
    detail = f"measured {share:.3f}; QA estimate {float(row['qa_share_good']):.3f} [{low:.3f}, {high:.3f}]"
    return Verdict("qa_agrees", "stage3_audit", passed, detail)


def no_drift(drift: dict) -> Verdict:
    """The newest shard's score distributions and QA share match the baseline shard."""
    reasons = ", ".join(drift.get("reasons", [])) or "none"
    return Verdict("no_drift", "shard_drift", not drift.get("drifted", False), f"drift reasons: {reasons}")


def no_regression(version: int, prev: dict, cur: dict, cfg_eval: Any) -> Verdict:
    """Model v``version`` is not worse than its predecessor on the same gold objects (the paired gate)."""
    from ..evaluation.regression import no_regression as gate

    name, asset = f"v{version}_not_worse_than_v{version - 1}", f"eval_model_v{version}"
    a, b = prev.get("per_object"), cur.get("per_object")
    if not a or not b:
        return Verdict(name, asset, False, "no per-object results to pair")
    verdict = gate(cfg_eval, a, b)
    return Verdict(name, asset, verdict.passed, verdict.summary())


def schema(name: str, asset: str, ok: bool, message: str) -> Verdict:
    return Verdict(name, asset, ok, "valid" if ok else message[:300])


def failed(verdicts: list[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if not v.passed]
