"""The no-regression verdict between two model versions, paired over the same gold objects.

Two fine-tunes of the same recipe differ by chance, so a point comparison of mean NoC@90 over 150 objects
fails good models now and then. The verdict instead pairs the objects both versions were evaluated on, and
calls a metric a regression only when the one-sided lower confidence bound of its mean per-object loss
exceeds the tolerance: ``mean(loss) - z * se(loss) > tolerance``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from math import sqrt
from typing import Any

import numpy as np

# metric -> +1 when higher is better, -1 when lower is better
METRIC_SENSE: dict[str, int] = {"iou@1": 1, "noc@90": -1}


@dataclass
class MetricVerdict:
    """One metric's paired comparison over ``n_paired`` objects.

    ``mean_change`` is the mean of current minus previous; ``mean_loss`` is that change turned so that it is
    positive when the current version is worse.
    """

    metric: str
    previous: float  # mean over the paired objects
    mean_change: float
    se_loss: float
    n_paired: int
    tolerance: float
    regressed: bool

    @property
    def current(self) -> float:
        return self.previous + self.mean_change

    @property
    def mean_loss(self) -> float:
        return -METRIC_SENSE[self.metric] * self.mean_change + 0.0  # + 0.0: no "-0.0"

    def improved(self, z: float) -> bool:
        """Better beyond noise: the one-sided upper confidence bound of the loss (z standard errors) below 0."""
        return self.n_paired > 1 and self.mean_loss + z * self.se_loss < 0.0

    def as_metadata(self) -> dict[str, float]:
        m = self.metric
        return {
            f"previous_{m}": self.previous,
            m: self.current,
            f"{m}_mean_loss": self.mean_loss,
            f"{m}_se_loss": self.se_loss,
            f"{m}_tolerance": self.tolerance,
        }


@dataclass
class RegressionVerdict:
    """The gate's answer: passed unless some metric regressed."""

    z: float
    metrics: list[MetricVerdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(mv.regressed for mv in self.metrics)

    def as_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"z": self.z}
        for mv in self.metrics:
            out.update(mv.as_metadata())
        out["regressed"] = ", ".join(mv.metric for mv in self.metrics if mv.regressed) or "none"
        return out

    def summary(self) -> str:
        """One clause per metric, for logs and the check's description."""
        return "; ".join(
            f"{mv.metric}: {mv.current:.3f} against {mv.previous:.3f} over {mv.n_paired} objects, mean loss "
            f"{mv.mean_loss:+.3f} (se {mv.se_loss:.3f}), tolerance {mv.tolerance:g} -> "
            f"{'REGRESSED' if mv.regressed else 'ok'}"
            for mv in self.metrics
        )


def per_object_table(df: Any, metrics: Sequence[str] = tuple(METRIC_SENSE)) -> dict[str, list]:
    """The columns a later verdict needs, from :func:`evaluate_objects`'s DataFrame, as JSON-ready lists."""
    if len(df) == 0:
        return {"key": [], **{m: [] for m in metrics}}
    keys = [f"{i}:{o}" for i, o in zip(df["image_id"], df["object_id"], strict=True)]
    return {"key": keys, **{m: [float(v) for v in df[m]] for m in metrics}}


def paired_difference(
    previous: Mapping[Hashable, float], current: Mapping[Hashable, float]
) -> tuple[float, float, int]:
    """Mean and standard error of ``current - previous`` over the keys both have, and how many those are.

    Raises ``ValueError`` when they share no key.
    """
    keys = [k for k in current if k in previous]
    if not keys:
        raise ValueError(
            "the two evaluations share no gold object; compare evaluations of the same gold sample"
        )
    d = np.array([float(current[k]) - float(previous[k]) for k in keys])
    se = float(d.std(ddof=1) / sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()), se, len(d)


def compare_versions(
    previous: Mapping[str, Sequence],
    current: Mapping[str, Sequence],
    tolerances: Mapping[str, float],
    z: float = 1.645,
) -> RegressionVerdict:
    """Paired verdict of ``current`` against ``previous`` (tables from :func:`per_object_table`).

    Objects are matched by key; a metric regresses when ``mean(loss) - z * se(loss) > tolerance``.
    Raises ``ValueError`` when the tables share no object.
    """
    verdict = RegressionVerdict(z=z)
    for metric, tol in tolerances.items():
        prev = dict(zip(previous["key"], previous[metric], strict=True))
        cur = dict(zip(current["key"], current[metric], strict=True))
        change, se, n = paired_difference(prev, cur)
        mv = MetricVerdict(
            metric, float(np.mean([v for k, v in prev.items() if k in cur])), change, se, n, tol, False
        )
        mv.regressed = mv.mean_loss - z * se > tol
        verdict.metrics.append(mv)
    return verdict


def no_regression(
    eval_cfg: Any, previous: Mapping[str, Sequence], current: Mapping[str, Sequence]
) -> RegressionVerdict:
    """:func:`compare_versions` with the engine's tolerances (``EvalSection``)."""
    return compare_versions(
        previous,
        current,
        {"iou@1": eval_cfg.regression_tolerance, "noc@90": eval_cfg.noc_tolerance},
        z=eval_cfg.regression_z,
    )
