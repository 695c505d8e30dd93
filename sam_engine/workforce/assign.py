"""An admin's assignment: annotation tasks on pool images nobody has a task for, for one named annotator.

``python -m sam_engine.annotation assign --annotator NAME --images N`` registers the data folder's target
pool in the store (when the folder has one), picks the first ``N`` pool images (by id) that no annotation task
covers yet and gives them to ``NAME`` as pending tasks of ``--stage`` (default 1), planned by the task queue
(:func:`~sam_engine.workforce.queue.plan_tasks`: one annotator, no overlap, no honeypots).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .queue import ANNOTATION_KINDS, Annotator, ImageItem, QueueConfig, open_load, plan_tasks

if TYPE_CHECKING:
    from sam_engine.quality.store import QualityStore

POOL_SOURCE = "pool"  # the images' source the annotation server resolves to the pool's image folder


class AssignError(ValueError):
    """The assignment cannot be made (an unknown or inactive annotator, nothing left to assign)."""


def register_pool(store: QualityStore, records: Iterable[Any]) -> int:
    """Add the pool's image records (``image_id``, ``file_name``, ``width``, ``height``, ``region``) that the
    store does not have yet; returns how many were added. Images already there keep their rows."""
    known = set(store.images()["image_id"].astype(int)) if len(store.images()) else set()
    rows = [
        {
            "image_id": int(r.image_id),
            "file_name": r.file_name,
            "width": r.width,
            "height": r.height,
            "region": r.region,
            "split": "pool",
            "source": POOL_SOURCE,
        }
        for r in records
        if int(r.image_id) not in known
    ]
    store.add_images(rows)
    return len(rows)


def unassigned_pool_images(store: QualityStore) -> list[int]:
    """Pool images in the store (by id) that no annotation task (annotate / complete) covers, in any status."""
    images = store.images()
    if not len(images):
        return []
    pool = images.loc[images["source"] == POOL_SOURCE, "image_id"].astype(int)
    tasks = store.tasks()
    covered = (
        set(tasks.loc[tasks["kind"].isin(list(ANNOTATION_KINDS)), "image_id"].astype(int))
        if len(tasks)
        else set()
    )
    return sorted(i for i in pool if i not in covered)


def assign_images(
    store: QualityStore, annotator_id: str, n: int, *, stage: int = 1, image_ids: Sequence[int] | None = None
) -> list[int]:
    """Create ``n`` pending annotation tasks for ``annotator_id`` on unassigned pool images (or on
    ``image_ids``); returns the new task ids."""
    if n < 1:
        raise AssignError(f"--images must be at least 1, got {n}")
    who = store.get_annotator(annotator_id)
    if who is None:
        raise AssignError(
            f"no annotator {annotator_id!r}: create one with "
            f"`python -m sam_engine.annotation add-annotator --name {annotator_id}`"
        )
    if not who.get("active", True):
        raise AssignError(f"annotator {annotator_id!r} is inactive")
    free = list(image_ids) if image_ids is not None else unassigned_pool_images(store)
    if not free:
        raise AssignError("every pool image already has an annotation task; nothing to assign")
    regions = store.images().set_index("image_id")["region"].to_dict()
    items = [ImageItem(int(i), regions.get(int(i))) for i in free[:n]]
    expertise = frozenset(who.get("expertise") or [])
    annotator = Annotator(annotator_id, expertise=expertise, load=open_load(store, annotator_id))
    rows = plan_tasks(
        items,
        [annotator],
        stage=stage,
        config=QueueConfig(overlap_fraction=0.0, honeypot_rate=0.0),
        batch=f"assigned-{annotator_id}",
    )
    return list(store.create_tasks(rows))
