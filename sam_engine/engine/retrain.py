"""When to retrain: enough new human-verified masks since the last request (the retrain sensor's logic)."""

from __future__ import annotations

import json


def verified_mask_counts(store, gold_ids: set[int] | frozenset = frozenset()) -> dict[int, int]:
    """Accepted human-verified masks per stage (human, consensus and reviewed model masks; honeypots excluded)."""
    df = store.query(
        "SELECT stage, image_id, source, status FROM masks WHERE status = 'accepted' "
        "AND source IN ('human', 'consensus', 'review', 'model')"
    )
    if not len(df):
        return {1: 0, 2: 0}
    df = df[~df["image_id"].isin(list(gold_ids))]
    reviewed = set()
    try:
        ev = store.query("SELECT DISTINCT mask_id FROM events WHERE kind IN ('review_accept', 'review_fix')")
        reviewed = set(ev["mask_id"].dropna().astype(int))
    except Exception:  # noqa: BLE001 - an older store without events counts human masks only
        pass
    out = {}
    for stage in (1, 2):
        part = df[df["stage"] == stage]
        human = part[part["source"].isin(["human", "consensus", "review"])]
        out[stage] = int(len(human))
    if reviewed:
        model_rows = store.query(
            "SELECT mask_id, stage FROM masks WHERE source = 'model' AND status = 'accepted'"
        )
        for stage in (1, 2):
            out[stage] += int(
                model_rows[(model_rows["stage"] == stage) & model_rows["mask_id"].isin(list(reviewed))].shape[
                    0
                ]
            )
    return out


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
