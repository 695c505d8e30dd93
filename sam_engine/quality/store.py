"""The quality store: one DuckDB file holding images, annotators, tasks, masks, events, reviews, gold scores.

Contract (others build on it; keep it stable)::

    store = QualityStore(path, read_only=False, *, idle_release_s=None, lock_timeout_s=30.0,
                         max_hold_s=None, yield_s=0.3)
    with store.transaction() as conn: ...            # BEGIN / COMMIT, ROLLBACK on error; nests (joins outer)
    store.add_images([{image_id, file_name, width, height, region?, split?, source?}])   # upsert by image_id
    annotator_id, token = store.add_annotator(name, role="annotator", expertise=[...], profile={...})
    task_ids = store.create_tasks([{image_id, stage, kind?, annotator_id?, status?, priority?, batch?, mask_id?}])
    store.tasks_for(annotator_id, status=None) -> list[dict]; store.get_task(id); store.set_task_status(id, s)
    mask_id = store.commit_mask(task_id=, image_id=, annotator_id=, stage=, source=, rle=, predicted_iou=,
                                clicks=, seconds=, manual_fix=False, request_id=None, status="accepted")
    store.masks(stage=None, status="accepted", image_id=None) -> DataFrame (+ column ``rle``: parsed dict)
    store.history(mask_id) -> list[dict]; store.revert(mask_id, actor) -> dict
    store.comment(actor, text, mask_id=None, task_id=None) -> event_id
    store.review(mask_id, reviewer, verdict, comment=None, fixed_rle=None) -> dict
    store.query(sql, params) -> DataFrame; store.execute(sql, params) -> list[tuple]   # the methods' own SQL
    connect_read_only(path, lock_timeout_s=30.0, *, burst_s=0.5) -> QualityStore          # for readers
    lease.request_turn(path); lease.withdraw_turn_request(path)   # ask the file's holder for a turn; got it

Durability: every write is one DuckDB transaction; DuckDB appends it to its write-ahead log and syncs the log
(fdatasync) at COMMIT, so a method that returned has its rows on disk and a killed process replays them on the
next open. ``commit_mask`` is idempotent by ``request_id`` (unique column): a replay returns the first mask id.

Single writer: DuckDB lets one process hold a file open for writing; :mod:`sam_engine.quality.lease` says how
the store shares the file with other processes (idle release, turns on request, ``connect_read_only``). Schema:
:mod:`sam_engine.quality.migrations`; tokens: :mod:`sam_engine.quality.tokens`.

Within one process the store is thread-safe: one re-entrant lock serialises calls, and a transaction holds it
from BEGIN to COMMIT. Each table family's queries live in its own module (``catalog``: images and annotators;
``tasks``; ``masks``: masks, events, history, review; ``gold_scores``), composed here into one store.
"""

from __future__ import annotations

from pathlib import Path

from .catalog import Catalog
from .gold_scores import GoldScores
from .lease import READ_BURST_S, READ_IDLE_RELEASE_S
from .masks import MaskRecords
from .migrations import check_version, db_version, migrate
from .tasks import TaskQueue


class QualityStore(Catalog, TaskQueue, MaskRecords, GoldScores):
    """DuckDB store of the annotation engine; see the module docstring for the contract, and
    :class:`~sam_engine.quality.lease.LeasedDuckDB` for how it holds and shares the file."""

    def _prepare(self) -> None:
        """A writable file is migrated to the newest schema; a read-only one must exist at this code's version."""
        if self.read_only:
            if not self.path.exists():
                raise FileNotFoundError(
                    f"{self.path}: quality store does not exist (open it for writing once)"
                )
            with self._use() as conn:
                check_version(conn, self.path)
        else:
            super()._prepare()
            with self._use() as conn:
                migrate(conn, self.path)

    @property
    def schema_version(self) -> int:
        with self._use() as conn:
            return db_version(conn)


def connect_read_only(
    path: str | Path,
    lock_timeout_s: float = 30.0,
    *,
    burst_s: float = READ_BURST_S,
    idle_release_s: float = READ_IDLE_RELEASE_S,
) -> QualityStore:
    """A read-only store for processes that only read (Dagster quality assets, reports, sensors).

    It opens the file when a call needs it (waiting up to ``lock_timeout_s`` while a writer holds it, and asking
    the writer for a turn), keeps it for the calls that follow, and closes it after ``idle_release_s`` idle
    seconds, after ``burst_s`` seconds when a writer waits, or on :meth:`~QualityStore.close`. So a quick read
    pass of a few queries takes one turn; inside ``with reader.transaction():`` it is never interrupted and sees
    one consistent state. Use the store as a context manager (``with``) so the file is released as soon as the
    pass is done.
    """
    return QualityStore(
        path,
        read_only=True,
        idle_release_s=idle_release_s,
        lock_timeout_s=lock_timeout_s,
        max_hold_s=burst_s,
    )
