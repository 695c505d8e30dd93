"""A mask's history (every version and event of its lineage) and the revert policy for each role."""

from __future__ import annotations

import pandas as pd

from sam_engine.quality.store import QualityStore

from .auth import Principal
from .protocol import Forbidden, NotFound

_VERSION_FIELDS = (
    "mask_id",
    "version",
    "status",
    "source",
    "annotator_id",
    "area",
    "predicted_iou",
    "clicks",
    "seconds",
    "manual_fix",
    "parent_mask_id",
    "created_at",
)


def history_view(store: QualityStore, mask_id: int) -> dict:
    """``{mask_id, root_mask_id, image_id, versions, events, next_revert}`` for one mask's lineage.

    ``versions`` lists every version (oldest first, no pixels); ``events`` every commit / review / revert /
    comment, each with ``reverted``; ``next_revert`` is the event a revert would undo (or None).
    """
    mask = store.get_mask(mask_id)
    if mask is None:
        raise NotFound(f"mask {mask_id} does not exist")
    versions = store.mask_versions(mask["root_mask_id"], _VERSION_FIELDS)
    versions["created_at"] = versions["created_at"].astype(str)
    target = store.revert_target(mask_id)
    return {
        "mask_id": int(mask_id),
        "root_mask_id": int(mask["root_mask_id"]),
        "image_id": int(mask["image_id"]),
        "versions": _records(versions),
        "events": store.history(mask_id),
        "next_revert": None if target is None else {"event_id": target["event_id"], "kind": target["kind"]},
    }


def check_revert(store: QualityStore, principal: Principal, mask_id: int) -> dict:
    """The event a revert by ``principal`` would undo; raises Forbidden / NotFound.

    Reviewers and admins may revert any change. An annotator may revert only a change they made themselves
    (their own commit), not a reviewer's verdict.
    """
    if store.get_mask(mask_id) is None:
        raise NotFound(f"mask {mask_id} does not exist")
    target = store.revert_target(mask_id)
    if target is None:
        raise NotFound(f"mask {mask_id}: nothing left to revert")
    if not principal.at_least("reviewer") and target["actor"] != principal.annotator_id:
        raise Forbidden(f"mask {mask_id}: the latest change ({target['kind']}) was made by someone else")
    return target


def _records(df: pd.DataFrame) -> list[dict]:
    out = []
    for row in df.to_dict("records"):
        out.append({k: (None if _isnan(v) else _plain(v)) for k, v in row.items()})
    return out


def _isnan(value: object) -> bool:
    return bool(pd.api.types.is_scalar(value) and pd.isna(value))


def _plain(value: object) -> object:
    item = getattr(value, "item", None)
    return item() if callable(item) else value
