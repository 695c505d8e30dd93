"""When to retrain: enough new human-verified masks since the last request (the retrain sensor's logic)."""

from __future__ import annotations

import json

from ..quality.store import QualityStore


def verified_mask_counts(store: QualityStore, gold_ids: set[int] | frozenset = frozenset()) -> dict[int, int]:
    """Accepted human-verified masks per stage (human, consensus and reviewed model masks; honeypots excluded)."""
    df = store.mask_sources(status="accepted")
    df = df[df["source"].isin(["human", "consensus", "review", "model"])]
    if not len(df):
        return {1: 0, 2: 0}
    reviewed = store.reviewed_mask_ids()  # the store migrates to (or requires) the schema with events
    model_reviewed = df[(df["source"] == "model") & df["mask_id"].isin(list(reviewed))]
    people = df[df["source"].isin(["human", "consensus", "review"]) & ~df["image_id"].isin(list(gold_ids))]
    return {
        stage: int((people["stage"] == stage).sum() + (model_reviewed["stage"] == stage).sum())
        for stage in (1, 2)
    }


def retrain_decisions(counts: dict[int, int], cursor: str | None, threshold: int) -> tuple[list[int], str]:
    """Stages whose verified masks grew by at least ``threshold`` since the cursor, and the new cursor.

    The cursor is JSON {stage: count at the last request}; a stage is requested once per crossing.
    """
    last = {int(k): v for k, v in json.loads(cursor).items()} if cursor else {}
    due = [s for s in sorted(counts) if counts[s] - last.get(s, 0) >= threshold and counts[s] > 0]
    new = dict(last)
    for s in due:
        new[s] = counts[s]
    return due, json.dumps({str(k): v for k, v in sorted(new.items())})
