"""The task queue: tasks for a stage, assigned by expertise and load, with overlap and gold honeypots.

Planning is a pure, seeded function (:func:`plan_tasks`); :func:`create_stage_tasks` reads annotators, their
open load and image regions from the store, plans and inserts.

- **Assignment.** Each task goes to the active annotator with the lowest ``load - expertise_slack * match``
  (ties: expertise match first, then lower load, then a seeded random order), where ``load`` counts open
  (pending / in-progress) tasks including those just planned and ``match`` is 1 when the image's region is in
  the annotator's expertise. So an expert is preferred while their load exceeds the least-loaded
  non-expert's by at most ``expertise_slack`` tasks (0: load first, expertise only breaks ties).
- **Overlap.** A seeded ``overlap_fraction`` of the images goes to ``overlap_k`` distinct annotators each
  (fewer when fewer annotators exist); their masks meet in :mod:`.consensus`.
- **Honeypots.** ``round(rate * N / (1 - rate))`` gold images are added for N planned tasks, so honeypots make
  ``honeypot_rate`` of all tasks, shared out over annotators in proportion to their planned tasks (largest
  remainder), each annotator seeing a gold image at most once while unseen ones remain. A honeypot is
  inserted at a seeded random place in its annotator's list and takes the priority of the task it precedes,
  so neither its position nor its priority gives it away; its kind in the store is ``honeypot`` (the server
  must show it as an ordinary task).
- **Priority**: higher first; by default image order (first image highest), or the caller's priorities
  (e.g. the stage-2 diversity sampler's order).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ..quality.store import QualityStore

ANNOTATION_KINDS = ("annotate", "complete")


@dataclass(frozen=True)
class QueueConfig:
    """Overlap, honeypot rate and assignment knobs (see the module docstring)."""

    overlap_fraction: float = 0.2
    overlap_k: int = 3
    honeypot_rate: float = 0.1
    expertise_slack: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap_fraction <= 1.0:
            raise ValueError(f"overlap_fraction must be in [0, 1], got {self.overlap_fraction}")
        if self.overlap_k < 2:
            raise ValueError(f"overlap_k must be >= 2, got {self.overlap_k}")
        if not 0.0 <= self.honeypot_rate < 0.5:
            raise ValueError(
                f"honeypot_rate must be in [0, 0.5), got {self.honeypot_rate} (design: 0.05-0.15)"
            )
        if self.expertise_slack < 0:
            raise ValueError(f"expertise_slack must be >= 0, got {self.expertise_slack}")


@dataclass(frozen=True)
class Annotator:
    """An assignable annotator: id, regions of expertise, open tasks, gold images already seen."""

    annotator_id: str
    expertise: frozenset[str] = frozenset()
    load: int = 0
    seen_gold: frozenset[int] = frozenset()


@dataclass(frozen=True)
class ImageItem:
    image_id: int
    region: str | None = None
    priority: float | None = None


@dataclass
class _State:
    annotators: list[Annotator]
    load: dict[str, int] = field(default_factory=dict)
    tie: dict[str, int] = field(default_factory=dict)


def _pick(state: _State, region: str | None, k: int, slack: int) -> list[str]:
    def key(a: Annotator) -> tuple:
        match = int(region is not None and region in a.expertise)
        load = state.load[a.annotator_id]
        return (load - slack * match, -match, load, state.tie[a.annotator_id])

    chosen = sorted(state.annotators, key=key)[:k]
    for a in chosen:
        state.load[a.annotator_id] += 1
    return [a.annotator_id for a in chosen]


def _largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    w = np.asarray(weights, dtype=np.float64)
    if total <= 0 or w.sum() == 0:
        return [0] * len(weights)
    exact = total * w / w.sum()
    base = np.floor(exact).astype(int)
    order = np.argsort(-(exact - base), kind="stable")
    for i in order[: total - int(base.sum())]:
        base[i] += 1
    return [int(b) for b in base]


def plan_tasks(
    images: Sequence[ImageItem],
    annotators: Sequence[Annotator],
    *,
    stage: int,
    kind: str = "annotate",
    gold_images: Sequence[int] = (),
    config: QueueConfig | None = None,
    batch: str | None = None,
) -> list[dict[str, Any]]:
    """Plan the tasks of one batch (pure and seeded). Returns rows for ``QualityStore.create_tasks``:
    ``image_id, stage, kind, annotator_id, status, priority, batch``; each annotator's rows in work order."""
    config = config or QueueConfig()
    if kind not in ANNOTATION_KINDS:
        raise ValueError(f"kind must be one of {ANNOTATION_KINDS}, got {kind!r}")
    if not annotators:
        raise ValueError("no active annotators to assign tasks to")
    ids = [a.annotator_id for a in annotators]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate annotator ids")
    seen_images = [im.image_id for im in images]
    if len(set(seen_images)) != len(seen_images):
        raise ValueError("duplicate image ids in the task list")
    rng = np.random.default_rng(config.seed)
    tie = rng.permutation(len(annotators))
    state = _State(
        list(annotators),
        load={a.annotator_id: int(a.load) for a in annotators},
        tie={a.annotator_id: int(t) for a, t in zip(annotators, tie, strict=True)},
    )
    n = len(images)
    k = min(config.overlap_k, len(annotators))
    n_overlap = int(round(config.overlap_fraction * n)) if k >= 2 else 0
    overlap = set(rng.choice(n, size=n_overlap, replace=False).tolist()) if n_overlap else set()

    per: dict[str, list[dict[str, Any]]] = {a: [] for a in ids}
    for rank, im in enumerate(images):
        priority = float(im.priority) if im.priority is not None else float(n - rank)
        for a in _pick(state, im.region, k if rank in overlap else 1, config.expertise_slack):
            per[a].append(
                {
                    "image_id": int(im.image_id),
                    "stage": int(stage),
                    "kind": kind,
                    "annotator_id": a,
                    "status": "pending",
                    "priority": priority,
                    "batch": batch,
                }
            )
    for rows in per.values():
        rows.sort(key=lambda r: -r["priority"])  # stable: image order among equal priorities

    total = sum(len(r) for r in per.values())
    rate = config.honeypot_rate
    n_honey = int(round(rate * total / (1.0 - rate))) if rate > 0 else 0
    if n_honey and not gold_images:
        raise ValueError("honeypot_rate > 0 needs gold images (gold_images is empty)")
    gold = [int(g) for g in gold_images]
    shares = _largest_remainder(n_honey, [len(per[a]) for a in ids])
    for a, share in zip(ids, shares, strict=True):
        if not share:
            continue
        seen = set(next(x.seen_gold for x in annotators if x.annotator_id == a))
        rows = per[a]
        for _ in range(share):
            unseen = [g for g in gold if g not in seen]
            pool = unseen or gold
            g = int(pool[int(rng.integers(len(pool)))])
            seen.add(g)
            pos = int(rng.integers(len(rows) + 1))
            priority = rows[pos]["priority"] if pos < len(rows) else (rows[-1]["priority"] if rows else 0.0)
            rows.insert(
                pos,
                {
                    "image_id": g,
                    "stage": int(stage),
                    "kind": "honeypot",
                    "annotator_id": a,
                    "status": "pending",
                    "priority": float(priority),
                    "batch": batch,
                },
            )
    return [row for a in ids for row in per[a]]


def plan_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts that describe a plan: tasks, honeypot share, overlap share and per-annotator loads."""
    df = pd.DataFrame(list(rows))
    if not len(df):
        return {"tasks": 0, "honeypot_share": 0.0, "overlap_share": 0.0, "per_annotator": {}}
    work = df[df["kind"] != "honeypot"]
    per_image = work.groupby("image_id")["annotator_id"].nunique()
    return {
        "tasks": int(len(df)),
        "honeypot_share": float((df["kind"] == "honeypot").mean()),
        "overlap_share": float((per_image >= 2).mean()) if len(per_image) else 0.0,
        "per_annotator": df.groupby("annotator_id").size().to_dict(),
    }


# --------------------------------------------------------------------------- store-backed helpers


def _frame(obj: Any) -> pd.DataFrame:
    return obj if isinstance(obj, pd.DataFrame) else pd.DataFrame(list(obj))


def open_load(store: QualityStore, annotator_id: str) -> int:
    """Open (pending + in-progress) tasks of one annotator."""
    return sum(len(_frame(store.tasks_for(annotator_id, status=s))) for s in ("pending", "in_progress"))


def _annotators(store: QualityStore, roles: Iterable[str]) -> list[Annotator]:
    df = _frame(store.annotators())
    if not len(df):
        return []
    df = df[df["active"].astype(bool) & df["role"].isin(list(roles))]
    out = []
    for row in df.itertuples(index=False):
        expertise = row.expertise if row.expertise is not None else []
        if isinstance(expertise, float):  # NaN
            expertise = []
        done_gold = _frame(store.tasks_for(row.annotator_id))
        seen = set()
        if len(done_gold):
            seen = set(done_gold.loc[done_gold["kind"] == "honeypot", "image_id"].astype(int))
        out.append(
            Annotator(
                annotator_id=str(row.annotator_id),
                expertise=frozenset(str(e) for e in expertise),
                load=open_load(store, row.annotator_id),
                seen_gold=frozenset(seen),
            )
        )
    return sorted(out, key=lambda a: a.annotator_id)


def _regions(store: QualityStore, image_ids: Sequence[int]) -> dict[int, str | None]:
    df = _frame(store.images())
    if not len(df):
        return {}
    df = df[df["image_id"].isin([int(i) for i in image_ids])]
    return {
        int(r.image_id): (None if pd.isna(r.region) else str(r.region)) for r in df.itertuples(index=False)
    }


def create_stage_tasks(
    store: QualityStore,
    stage: int,
    image_ids: Sequence[int],
    *,
    kind: str = "annotate",
    gold_images: Sequence[int] = (),
    config: QueueConfig | None = None,
    batch: str | None = None,
    priorities: Sequence[float] | None = None,
    roles: Sequence[str] = ("annotator",),
) -> list[Any]:
    """Plan and insert one batch of tasks for ``stage``; returns the new task ids.

    ``image_ids`` must already be in the store's images table (their region drives expertise matching);
    ``gold_images`` are gold-set image ids (also in the images table) used as honeypots.
    """
    if priorities is not None and len(priorities) != len(image_ids):
        raise ValueError(f"priorities has {len(priorities)} values for {len(image_ids)} images")
    regions = _regions(store, image_ids)
    missing = [int(i) for i in image_ids if int(i) not in regions]
    if missing:
        raise ValueError(f"images not in the store's images table: {missing[:10]}")
    items = [
        ImageItem(int(i), regions[int(i)], None if priorities is None else float(priorities[j]))
        for j, i in enumerate(image_ids)
    ]
    rows = plan_tasks(
        items,
        _annotators(store, roles),
        stage=stage,
        kind=kind,
        gold_images=gold_images,
        config=config,
        batch=batch,
    )
    return list(store.create_tasks(rows)) if rows else []


def create_review_tasks(
    store: QualityStore,
    items: Sequence[int] | Sequence[tuple[int, Any]],
    *,
    stage: int,
    roles: Sequence[str] = ("reviewer",),
    batch: str | None = None,
    priority: float = 0.0,
    expertise_slack: int = 2,
    seed: int = 0,
) -> list[Any]:
    """Review tasks, one per item, assigned to reviewers by expertise and load (as :func:`plan_tasks`).

    ``items`` are image ids or ``(image_id, mask_id)`` pairs (a task per mask to review). With no active
    reviewer the tasks stay unassigned (``annotator_id`` None) for whoever picks them up.
    """
    pairs = [(int(i), None) if not isinstance(i, tuple) else (int(i[0]), i[1]) for i in items]
    if not pairs:
        return []
    reviewers = _annotators(store, roles)
    regions = _regions(store, [p[0] for p in pairs])
    rng = np.random.default_rng(seed)
    state = _State(
        reviewers,
        load={a.annotator_id: a.load for a in reviewers},
        tie={a.annotator_id: int(t) for a, t in zip(reviewers, rng.permutation(len(reviewers)), strict=True)},
    )
    rows = []
    for image_id, mask_id in pairs:
        who = _pick(state, regions.get(image_id), 1, expertise_slack) if reviewers else [None]
        row = {
            "image_id": image_id,
            "stage": int(stage),
            "kind": "review",
            "annotator_id": who[0],
            "status": "pending",
            "priority": float(priority),
            "batch": batch,
        }
        if mask_id is not None:
            row["mask_id"] = int(mask_id)
        rows.append(row)
    return list(store.create_tasks(rows))
