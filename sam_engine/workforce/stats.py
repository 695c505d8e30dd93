"""Per-annotator statistics: masks, clicks / mask, seconds / mask, manual fixes, IoU vs gold, agreement.

One row per annotator and period: ``period`` is ``"all"``, a task batch label (``by="batch"``) or a UTC day
``YYYY-MM-DD`` (``by="day"``, from each mask's ``created_at``). Gold IoU comes from ``gold_scores``;
agreement is each human mask's IoU with the best-matching consensus mask of its image (only images that have
a consensus). Every table leaving this module is checked against :data:`ANNOTATOR_STATS_SCHEMA`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa

from ..data import rle as rle_utils

if TYPE_CHECKING:
    from ..quality.store import QualityStore

_unit = pa.Check.in_range(0.0, 1.0)

ANNOTATOR_STATS_SCHEMA = pa.DataFrameSchema(
    {
        "annotator_id": pa.Column(str),
        "period": pa.Column(str),
        "masks": pa.Column(int, pa.Check.ge(0)),
        "clicks_per_mask": pa.Column(float, pa.Check.ge(0), nullable=True),
        "seconds_per_mask": pa.Column(float, pa.Check.ge(0), nullable=True),
        "manual_fix_rate": pa.Column(float, _unit, nullable=True),
        "gold_n": pa.Column(int, pa.Check.ge(0)),
        "gold_iou": pa.Column(float, _unit, nullable=True),
        "agreement_n": pa.Column(int, pa.Check.ge(0)),
        "agreement": pa.Column(float, _unit, nullable=True),
    },
    strict=True,
    ordered=True,
    unique=["annotator_id", "period"],
    coerce=True,
    name="annotator_stats",
)

COLUMNS = list(ANNOTATOR_STATS_SCHEMA.columns)
Period = Literal["batch", "day"] | None


def _rle(segmentation: Any) -> dict:
    return json.loads(segmentation) if isinstance(segmentation, str) else segmentation


def agreement_with_consensus(masks: pd.DataFrame) -> pd.DataFrame:
    """``mask_id, annotator_id, agreement``: each human mask's best IoU with a consensus mask of its image.

    ``masks`` holds the human and consensus masks (columns ``mask_id, image_id, annotator_id, source,
    segmentation``); images without a consensus mask are left out.
    """
    cols = ["mask_id", "annotator_id", "agreement"]
    if not len(masks):
        return pd.DataFrame(columns=cols)
    rows = []
    cons = masks[masks["source"] == "consensus"]
    human = masks[masks["source"] == "human"]
    for image_id, c in cons.groupby("image_id"):
        h = human[human["image_id"] == image_id]
        if not len(h):
            continue
        m = rle_utils.iou_matrix([_rle(s) for s in h["segmentation"]], [_rle(s) for s in c["segmentation"]])
        for (mask_id, annotator_id), best in zip(
            h[["mask_id", "annotator_id"]].itertuples(index=False), m.max(axis=1), strict=True
        ):
            rows.append({"mask_id": mask_id, "annotator_id": annotator_id, "agreement": float(best)})
    return pd.DataFrame(rows, columns=cols)


def _period(masks: pd.DataFrame, tasks: pd.DataFrame | None, by: Period) -> pd.Series:
    if by is None:
        return pd.Series("all", index=masks.index)
    if by == "day":
        return pd.to_datetime(masks["created_at"]).dt.strftime("%Y-%m-%d")
    if by == "batch":
        if tasks is None or not len(tasks):
            return pd.Series("none", index=masks.index)
        batch = tasks.set_index("task_id")["batch"]
        return masks["task_id"].map(batch).fillna("none").astype(str)
    raise ValueError(f"by must be None, 'batch' or 'day', got {by!r}")


def compute_annotator_stats(
    masks: pd.DataFrame,
    gold: pd.DataFrame | None = None,
    agreement: pd.DataFrame | None = None,
    tasks: pd.DataFrame | None = None,
    by: Period = None,
) -> pd.DataFrame:
    """The stats table from plain frames.

    ``masks``: human masks (``mask_id, annotator_id, task_id, clicks, seconds, manual_fix, created_at``).
    ``gold``: ``gold_scores`` rows (``mask_id, iou``). ``agreement``: from :func:`agreement_with_consensus`.
    ``tasks``: ``task_id, batch`` (for ``by="batch"``).
    """
    if not len(masks):
        return ANNOTATOR_STATS_SCHEMA.validate(pd.DataFrame({c: [] for c in COLUMNS}))
    m = masks.copy()
    m["annotator_id"] = m["annotator_id"].astype(str)
    m["period"] = _period(m, tasks, by).to_numpy()
    g = m.groupby(["annotator_id", "period"])
    out = pd.DataFrame(
        {
            "masks": g.size(),
            "clicks_per_mask": g["clicks"].mean().astype(float),
            "seconds_per_mask": g["seconds"].mean().astype(float),
            "manual_fix_rate": g["manual_fix"].mean().astype(float),
        }
    )
    period_of = m.set_index("mask_id")[["annotator_id", "period"]]
    for name, frame, value in (("gold", gold, "iou"), ("agreement", agreement, "agreement")):
        n_col, v_col = f"{name}_n", ("gold_iou" if name == "gold" else "agreement")
        if frame is None or not len(frame):
            out[n_col] = 0
            out[v_col] = np.nan
            continue
        f = frame[["mask_id", value]].join(period_of, on="mask_id", how="inner")
        agg = f.groupby(["annotator_id", "period"])[value].agg(["size", "mean"])
        out[n_col] = agg["size"].reindex(out.index).fillna(0).astype(int)
        out[v_col] = agg["mean"].reindex(out.index).astype(float)
    out = out.reset_index()[COLUMNS].sort_values(["annotator_id", "period"]).reset_index(drop=True)
    return ANNOTATOR_STATS_SCHEMA.validate(out)


def annotator_stats(store: QualityStore, *, by: Period = None, stage: int | None = None) -> pd.DataFrame:
    """The stats table read from a :class:`~sam_engine.quality.store.QualityStore`.

    Counts every human mask that was not reverted (accepted, pending review, rejected or superseded: the work
    was done either way); a reviewer's fixes count as that reviewer's masks.
    """
    masks = store.masks(stage=stage, status=["accepted", "pending_review", "rejected", "superseded"])
    human = masks[masks["source"] == "human"]
    tasks = store.tasks(stage=stage)
    return compute_annotator_stats(human, store.gold_scores(), agreement_with_consensus(masks), tasks, by)
