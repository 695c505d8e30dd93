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
    store.query(sql, params) -> DataFrame; store.execute(sql, params) -> list[tuple]   # escape hatch
    connect_read_only(path, lock_timeout_s=30.0, *, burst_s=0.5) -> QualityStore          # for readers
    request_turn(path); withdraw_turn_request(path)    # ask the holder of the file for a turn; got it

Durability: every write is one DuckDB transaction; DuckDB appends it to its write-ahead log and syncs the log
(fdatasync) at COMMIT, so a method that returned has its rows on disk and a killed process replays them on the
next open. ``commit_mask`` is idempotent by ``request_id`` (unique column): a replay returns the first mask id.

Single writer: DuckDB lets one process hold a file open for writing, and a read-only open from another process
fails while it does (read-only opens share the file with each other). This store respects that rule as follows:

* the process that writes (the annotation server, or a Dagster step) owns the store. With
  ``idle_release_s=None`` it keeps the connection for its lifetime (fastest, exclusive). With
  ``idle_release_s=t`` it closes the connection after ``t`` idle seconds (``0``: after every call), so other
  processes can take turns.
* a process that cannot open the file because another one holds it asks for a turn: it touches
  ``<file>.turn`` (:func:`request_turn`) and retries with back-off (at most :data:`LOCK_RETRY_CAP_S` between
  tries) for up to ``lock_timeout_s``, then raises :class:`StoreBusyError` naming the file.
* a store opened with ``max_hold_s=h`` gives the file up when it has held it for ``h`` seconds and another
  process asked for a turn within the last :data:`TURN_REQUEST_FRESH_S` seconds: between two calls (never
  inside a transaction) it closes the connection and keeps its own callers waiting until the waiting process
  has opened the file (it withdraws its request: :func:`withdraw_turn_request`) or for at most ``yield_s``
  seconds, longer than the waiting process's retry interval. So a store that is never idle (the annotation
  server under load: ``--max-hold-s``, default 2 s) still lets readers in, and one that nobody asks never
  pauses.
* readers use :func:`connect_read_only`: a read-only store that keeps its connection for one short burst of
  calls (released on ``close``, after :data:`READ_IDLE_RELEASE_S` idle seconds, or after ``burst_s`` when a
  writer waits), so a quick read pass of a few queries takes one turn. A pass that must see one consistent
  state runs inside ``reader.transaction()``, which is never interrupted (keep it short: the writer waits for
  it). Alternatives while the server is busy: its ``/api/export/*`` endpoints, or a consistent copy from
  :meth:`QualityStore.snapshot`.

A process that cannot write next to the file cannot ask for a turn; it then waits for the holder to idle.

Within one process the store is thread-safe: one re-entrant lock serialises calls, and a transaction holds it
from BEGIN to COMMIT.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from sam_engine.data import rle as rle_utils
from sam_engine.data.errors import DataError

from .tables import (
    EVENT_KINDS,
    MASK_SOURCES,
    MASK_STATUSES,
    MIGRATIONS,
    ROLES,
    TASK_KINDS,
    TASK_STATUSES,
    VERDICTS,
)

SCHEMA_VERSION = MIGRATIONS[-1][0]
_CHANGE_KINDS = ("commit", "review_accept", "review_fix", "review_reject")
_MASK_COLUMNS = (
    "mask_id, image_id, task_id, annotator_id, stage, source, segmentation, bbox_x, bbox_y, bbox_w, bbox_h, "
    "area, predicted_iou, stability_score, clicks, seconds, manual_fix, status, version, parent_mask_id, "
    "root_mask_id, prompt, created_at, request_id"
)
_MASK_COLUMN_NAMES = frozenset(c.strip() for c in _MASK_COLUMNS.split(","))
LOCK_RETRY_CAP_S = 0.1  # longest back-off between two open attempts while another process holds the file
TURN_REQUEST_FRESH_S = 1.0  # a request for a turn (touch of ``<file>.turn``) counts for this long
DEFAULT_YIELD_S = 0.3  # longest a store with ``max_hold_s`` stays closed when it gives a turn
READ_IDLE_RELEASE_S = 0.2  # a reader closes the file after this many idle seconds (or when closed)
READ_BURST_S = 0.5  # a reader that a writer waits for closes the file after holding it this long
assert DEFAULT_YIELD_S > LOCK_RETRY_CAP_S, "a pause shorter than a waiter's retry interval can pass unseen"
assert TURN_REQUEST_FRESH_S > 2 * LOCK_RETRY_CAP_S, "a waiter must renew its request before it goes stale"
_TASK_COLUMNS = "task_id, image_id, stage, kind, annotator_id, status, priority, created_at, updated_at, batch, mask_id, payload"


class StoreBusyError(RuntimeError):
    """Another process held a conflicting lock on the DuckDB file for longer than the store waits."""


# ----------------------------------------------------------------------------------------------- tokens
def hash_secret(secret: str) -> str:
    """sha256 hex digest of a token's secret part (what the annotators table stores)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def make_token(annotator_id: str) -> tuple[str, str]:
    """A fresh random bearer token ``<annotator_id>.<secret>`` and the hash to store."""
    secret = secrets.token_urlsafe(32)
    return f"{annotator_id}.{secret}", hash_secret(secret)


def split_token(token: str) -> tuple[str, str] | None:
    """``(annotator_id, secret)`` of a well-formed token, else None."""
    if not isinstance(token, str) or "." not in token or len(token) > 512:
        return None
    annotator_id, secret = token.rsplit(".", 1)
    if not annotator_id or not secret:
        return None
    return annotator_id, secret


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _check_choice(value: Any, allowed: tuple[str, ...], field: str, record: Any = None) -> None:
    if value not in allowed:
        raise DataError("quality store", record, field, f"{value!r} is not one of {list(allowed)}")


class QualityStore:
    """DuckDB store of the annotation engine; see the module docstring for the contract and locking rules.

    ``max_hold_s``: once the file has been held that long and another process asked for a turn, give it up until
    that process is in, for at most ``yield_s`` seconds (``None``: never). ``yield_s`` must exceed
    :data:`LOCK_RETRY_CAP_S`. ``turns_given`` counts the turns given.
    """

    def __init__(
        self,
        path: str | Path,
        read_only: bool = False,
        *,
        idle_release_s: float | None = None,
        lock_timeout_s: float = 30.0,
        max_hold_s: float | None = None,
        yield_s: float = DEFAULT_YIELD_S,
    ) -> None:
        if max_hold_s is not None and not max_hold_s > 0:
            raise ValueError(f"max_hold_s must be positive or None, got {max_hold_s}")
        if max_hold_s is not None and not yield_s > LOCK_RETRY_CAP_S:
            raise ValueError(
                f"yield_s={yield_s} must exceed LOCK_RETRY_CAP_S={LOCK_RETRY_CAP_S}: a waiting process retries "
                "that rarely, so a shorter pause can pass without it getting in"
            )
        self.path = Path(path)
        self.read_only = read_only
        self.idle_release_s = idle_release_s
        self.lock_timeout_s = lock_timeout_s
        self.max_hold_s = max_hold_s
        self.yield_s = yield_s
        self.turns_given = 0  # how often this store gave the file up because another process asked
        self._turn_path = turn_request_path(self.path)
        self._own_request_ns: int | None = None  # mtime of our own last turn request (not a request to us)
        self._lock = threading.RLock()
        self._wake = threading.Event()  # set while a connection is open: the reaper watches it
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._depth = 0
        self._last_used = time.monotonic()
        self._opened_at = time.monotonic()
        self._closed = False
        if read_only:
            if not self.path.exists():
                raise FileNotFoundError(
                    f"{self.path}: quality store does not exist (open it for writing once)"
                )
            with self._use() as conn:
                self._check_version(conn)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._use() as conn:
                self._migrate(conn)
        self._reaper: threading.Thread | None = None
        if (idle_release_s is not None and idle_release_s > 0) or max_hold_s is not None:
            self._reaper = threading.Thread(target=self._reap, name="quality-store-reaper", daemon=True)
            self._reaper.start()

    # ------------------------------------------------------------------------------ connection handling
    def _open(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.005
        asked = False
        while True:
            try:
                conn = duckdb.connect(str(self.path), read_only=self.read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc) or time.monotonic() >= deadline:
                    if _is_lock_error(exc):
                        raise StoreBusyError(
                            f"{self.path}: another process holds the DuckDB file for writing; waited "
                            f"{self.lock_timeout_s:.1f} s. Read through the annotation server's /api/export "
                            "endpoints or a snapshot instead."
                        ) from exc
                    raise
                self._own_request_ns = request_turn(self.path)
                asked = True
                time.sleep(delay)
                delay = min(delay * 2, LOCK_RETRY_CAP_S)
            else:
                if asked:  # tell the holder that gave us the turn that we are in, so it stops waiting
                    withdraw_turn_request(self.path)
                return conn

    def _connect(self) -> None:
        """Open the connection (lock held) and wake the reaper."""
        self._conn = self._open()
        self._opened_at = time.monotonic()
        self._wake.set()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _release_if_due(self) -> None:
        if self._depth == 0 and self._conn is not None and self.idle_release_s == 0:
            self._disconnect()

    @contextmanager
    def _use(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.path}: quality store is closed")
            if self._conn is None:
                self._connect()
            try:
                yield self._conn
            finally:
                self._last_used = time.monotonic()
                self._release_if_due()

    def _turn_requested(self) -> bool:
        """Whether another process asked for the file within the last ``TURN_REQUEST_FRESH_S`` seconds."""
        try:
            st = os.stat(self._turn_path)
        except OSError:
            return False
        if st.st_mtime_ns == self._own_request_ns:
            return False
        return time.time() - st.st_mtime_ns / 1e9 < TURN_REQUEST_FRESH_S

    def _turn_due(self) -> bool:
        return (
            self.max_hold_s is not None
            and self._conn is not None
            and time.monotonic() - self._opened_at >= self.max_hold_s
            and self._turn_requested()
        )

    def _idle_due(self) -> bool:
        return (
            self.idle_release_s is not None
            and self.idle_release_s > 0
            and self._conn is not None
            and time.monotonic() - self._last_used >= self.idle_release_s
        )

    def _give_turn(self) -> None:
        """Close the file and keep this store's callers waiting (lock held) until the process that asked has
        opened it (it withdraws its request) or ``yield_s`` has passed."""
        self._disconnect()
        self.turns_given += 1
        end = time.monotonic() + self.yield_s
        while time.monotonic() < end and self._turn_requested():
            time.sleep(0.01)

    def _reap(self) -> None:
        """Background thread: close an idle connection, and give the file up when it is held too long."""
        limits = [t for t in (self.idle_release_s, self.max_hold_s) if t]
        period = max(0.02, min([0.25] + [t / 4 for t in limits]))
        while True:
            self._wake.wait()
            if self._closed:
                return
            time.sleep(period)
            if self._conn is None:
                with self._lock:  # sleep until the next open (which sets the event under this lock)
                    if self._conn is None and not self._closed:
                        self._wake.clear()
            elif self._turn_due():
                with self._lock:  # blocking: waits for the call or transaction in progress to end
                    if self._depth == 0 and self._turn_due():
                        self._give_turn()
            elif self._idle_due() and self._lock.acquire(blocking=False):
                try:
                    if self._depth == 0 and self._idle_due():
                        self._disconnect()
                finally:
                    self._lock.release()

    @property
    def holds_connection(self) -> bool:
        """Whether the DuckDB file is open (and so locked) by this store right now."""
        return self._conn is not None

    def release(self) -> None:
        """Close the connection now (outside a transaction) so another process can open the file."""
        with self._lock:
            if self._depth == 0:
                self._disconnect()

    def close(self) -> None:
        with self._lock:
            self._disconnect()
            self._closed = True
            self._wake.set()  # let the reaper see it and exit

    def __enter__(self) -> QualityStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN … COMMIT around the block (ROLLBACK if it raises); a nested call joins the outer one."""
        with self._use() as conn:
            if self._depth > 0:
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            conn.execute("BEGIN TRANSACTION")
            self._depth = 1
            try:
                yield conn
            except BaseException:
                self._depth = 0
                conn.execute("ROLLBACK")
                raise
            self._depth = 0
            conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run a read query and return a DataFrame (escape hatch for the quality assets)."""
        with self._use() as conn:
            return conn.execute(sql, params or []).df()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        """Run one statement (in its own transaction unless inside :meth:`transaction`); returns its rows."""
        self._check_writable()
        with self.transaction() as conn:
            cur = conn.execute(sql, params or [])
            try:
                return cur.fetchall()
            except duckdb.InvalidInputException:  # statement without a result set
                return []

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database file."""
        self._check_writable()
        with self._use() as conn:
            conn.execute("CHECKPOINT")

    def snapshot(self, dest: str | Path) -> Path:
        """Write a consistent copy of the database to ``dest`` (checkpoint, copy under the lock, atomic rename).

        A reader can open the copy read-only while this store keeps writing.
        """
        self._check_writable()
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        with self._lock:
            with self._use() as conn:
                conn.execute("CHECKPOINT")
            was_open = self._conn is not None
            self._disconnect()  # so the file on disk is complete and unchanging while it is copied
            try:
                shutil.copyfile(self.path, tmp)
            finally:
                if was_open and self.idle_release_s != 0:
                    self._connect()
        tmp.replace(dest)
        return dest

    # ------------------------------------------------------------------------------------ migrations
    def _migrate(self, conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL, "
            "description VARCHAR)"
        )
        current = self._db_version(conn)
        latest = MIGRATIONS[-1][0]
        if current > latest:
            raise RuntimeError(
                f"{self.path}: database schema version {current} is newer than this code knows ({latest})"
            )
        pending = [m for m in MIGRATIONS if m[0] > current]
        if not pending:
            return
        conn.execute("BEGIN TRANSACTION")
        try:
            for version, description, statements in pending:
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?, ?, ?)", [version, _now(), description])
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _db_version(conn: duckdb.DuckDBPyConnection) -> int:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _check_version(self, conn: duckdb.DuckDBPyConnection) -> None:
        try:
            current = self._db_version(conn)
        except duckdb.CatalogException:
            current = 0
        latest = MIGRATIONS[-1][0]
        if current != latest:
            raise RuntimeError(
                f"{self.path}: schema version {current}, this code needs {latest}; open it once for writing "
                "to migrate"
            )

    @property
    def schema_version(self) -> int:
        with self._use() as conn:
            return self._db_version(conn)

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"{self.path}: store is open read-only")

    # ---------------------------------------------------------------------------------------- images
    def add_images(self, rows: Iterable[dict]) -> None:
        """Insert or replace images by ``image_id``."""
        self._check_writable()
        records = []
        for i, row in enumerate(rows):
            for field in ("image_id", "file_name", "width", "height"):
                if row.get(field) is None:
                    raise DataError("images", row.get("image_id", i), field, "missing")
            width, height = int(row["width"]), int(row["height"])
            if width <= 0 or height <= 0:
                raise DataError(
                    "images", row["image_id"], "width/height", f"non-positive size {width}x{height}"
                )
            records.append(
                {
                    "image_id": int(row["image_id"]),
                    "file_name": str(row["file_name"]),
                    "width": width,
                    "height": height,
                    "region": None if row.get("region") is None else str(row["region"]),
                    "split": None if row.get("split") is None else str(row["split"]),
                    "source": None if row.get("source") is None else str(row["source"]),
                }
            )
        if not records:
            return
        df = pd.DataFrame.from_records(records).astype(
            {"region": "object", "split": "object", "source": "object"}
        )
        with self.transaction() as conn:
            conn.register("_new_images", df)
            try:
                conn.execute(
                    "INSERT OR REPLACE INTO images SELECT image_id, file_name, width, height, region, split, "
                    "source FROM _new_images"
                )
            finally:
                conn.unregister("_new_images")

    def get_image(self, image_id: int) -> dict | None:
        with self._use() as conn:
            cur = conn.execute("SELECT * FROM images WHERE image_id = ?", [int(image_id)])
            return _one(cur)

    def images(self) -> pd.DataFrame:
        return self.query("SELECT * FROM images ORDER BY image_id")

    # ------------------------------------------------------------------------------------ annotators
    def add_annotator(
        self,
        name: str,
        role: str = "annotator",
        *,
        annotator_id: str | None = None,
        expertise: Sequence[str] | None = None,
        profile: dict | None = None,
        active: bool = True,
        exist_ok: bool = False,
    ) -> tuple[str, str]:
        """Create an annotator; returns ``(annotator_id, token)``. The token is shown once: only its hash is kept.

        ``annotator_id`` defaults to ``name``. With ``exist_ok`` an existing annotator is updated and given a
        new token (the old one stops working).
        """
        self._check_writable()
        annotator_id = str(annotator_id or name)
        _check_choice(role, ROLES, "role", annotator_id)
        if not annotator_id or "." in annotator_id or len(annotator_id) > 128:
            raise DataError(
                "annotators", annotator_id, "annotator_id", "must be 1-128 characters without '.'"
            )
        token, token_hash = make_token(annotator_id)
        values = [name, role, token_hash, list(expertise or []), _json(profile), bool(active)]
        with self.transaction() as conn:
            exists = conn.execute(
                "SELECT 1 FROM annotators WHERE annotator_id = ?", [annotator_id]
            ).fetchone()
            if exists and not exist_ok:
                raise DataError("annotators", annotator_id, "annotator_id", "annotator already exists")
            if exists:
                conn.execute(
                    "UPDATE annotators SET name = ?, role = ?, token_hash = ?, expertise = ?, profile = ?, "
                    "active = ? WHERE annotator_id = ?",
                    [*values, annotator_id],
                )
            else:
                conn.execute(
                    "INSERT INTO annotators VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [annotator_id, *values, _now()]
                )
        return annotator_id, token

    def get_annotator(self, annotator_id: str, *, with_secret: bool = False) -> dict | None:
        """One annotator as a dict (``profile`` parsed); ``token_hash`` only with ``with_secret``."""
        with self._use() as conn:
            row = _one(conn.execute("SELECT * FROM annotators WHERE annotator_id = ?", [str(annotator_id)]))
        if row is None:
            return None
        row["profile"] = json.loads(row["profile"]) if row["profile"] else None
        row["expertise"] = list(row["expertise"] or [])
        if not with_secret:
            row.pop("token_hash")
        return row

    def annotators(self, active_only: bool = False) -> pd.DataFrame:
        where = "WHERE active" if active_only else ""
        return self.query(
            "SELECT annotator_id, name, role, expertise, profile, active, created_at FROM annotators "
            f"{where} ORDER BY annotator_id"
        )

    def set_annotator_active(self, annotator_id: str, active: bool) -> None:
        self._check_writable()
        with self.transaction() as conn:
            conn.execute(
                "UPDATE annotators SET active = ? WHERE annotator_id = ?", [bool(active), annotator_id]
            )

    # ------------------------------------------------------------------------------------------ tasks
    def create_tasks(self, rows: Iterable[dict]) -> list[int]:
        """Insert tasks; returns their ids in input order. Missing fields default to kind 'annotate',
        status 'pending', priority 0, unassigned."""
        self._check_writable()
        rows = list(rows)
        if not rows:
            return []
        now = _now()
        records = []
        for i, row in enumerate(rows):
            for field in ("image_id", "stage"):
                if row.get(field) is None:
                    raise DataError("tasks", i, field, "missing")
            kind = row.get("kind", "annotate")
            status = row.get("status", "pending")
            _check_choice(kind, TASK_KINDS, "kind", i)
            _check_choice(status, TASK_STATUSES, "status", i)
            records.append(
                {
                    "image_id": int(row["image_id"]),
                    "stage": int(row["stage"]),
                    "kind": kind,
                    "annotator_id": row.get("annotator_id"),
                    "status": status,
                    "priority": float(row.get("priority", 0.0)),
                    "batch": row.get("batch"),
                    "mask_id": None if row.get("mask_id") is None else int(row["mask_id"]),
                    "payload": _json(row.get("payload")),
                }
            )
        df = pd.DataFrame.from_records(records).astype(
            {"annotator_id": "object", "batch": "object", "payload": "object", "mask_id": "Int64"}
        )
        with self.transaction() as conn:
            ids = [
                r[0]
                for r in conn.execute("SELECT nextval('task_id_seq') FROM range(?)", [len(df)]).fetchall()
            ]
            df.insert(0, "task_id", ids)
            df["created_at"] = now
            df["updated_at"] = now
            conn.register("_new_tasks", df)
            try:
                conn.execute(f"INSERT INTO tasks ({_TASK_COLUMNS}) SELECT {_TASK_COLUMNS} FROM _new_tasks")
            finally:
                conn.unregister("_new_tasks")
        return [int(i) for i in ids]

    def get_task(self, task_id: int) -> dict | None:
        with self._use() as conn:
            row = _one(conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", [int(task_id)]))
        return _task_out(row) if row else None

    def tasks_for(self, annotator_id: str, status: str | Sequence[str] | None = None) -> list[dict]:
        """Tasks assigned to ``annotator_id``, highest priority first (then oldest)."""
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE annotator_id = ?"
        params: list[Any] = [str(annotator_id)]
        sql, params = _status_filter(sql, params, status, TASK_STATUSES)
        with self._use() as conn:
            rows = _all(conn.execute(sql + " ORDER BY priority DESC, task_id", params))
        return [_task_out(r) for r in rows]

    def has_task_on_image(self, annotator_id: str, image_id: int) -> bool:
        """Whether ``annotator_id`` has (or had) a task on ``image_id``, whatever its status."""
        sql = "SELECT 1 FROM tasks WHERE image_id = ? AND annotator_id = ? LIMIT 1"
        with self._use() as conn:
            return conn.execute(sql, [int(image_id), str(annotator_id)]).fetchone() is not None

    def tasks(self, status: str | Sequence[str] | None = None, stage: int | None = None) -> pd.DataFrame:
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE 1 = 1"
        params: list[Any] = []
        sql, params = _status_filter(sql, params, status, TASK_STATUSES)
        if stage is not None:
            sql += " AND stage = ?"
            params.append(int(stage))
        return self.query(sql + " ORDER BY task_id", params)

    def set_task_status(self, task_id: int, status: str) -> None:
        self._check_writable()
        _check_choice(status, TASK_STATUSES, "status", task_id)
        with self.transaction() as conn:
            n = conn.execute(
                "UPDATE tasks SET status = ?, updated_at = ? WHERE task_id = ? RETURNING task_id",
                [status, _now(), int(task_id)],
            ).fetchall()
            if not n:
                raise KeyError(f"task {task_id} does not exist")

    def assign_task(self, task_id: int, annotator_id: str | None, actor: str | None = None) -> None:
        """Assign (or with None, unassign) a task; recorded as an 'assign' event."""
        self._check_writable()
        with self.transaction() as conn:
            n = conn.execute(
                "UPDATE tasks SET annotator_id = ?, updated_at = ? WHERE task_id = ? RETURNING task_id",
                [annotator_id, _now(), int(task_id)],
            ).fetchall()
            if not n:
                raise KeyError(f"task {task_id} does not exist")
            self._event(conn, "assign", actor, task_id=task_id, payload={"annotator_id": annotator_id})

    def skip_task(self, task_id: int, actor: str, reason: str | None = None) -> int:
        """Mark a task skipped and record a 'skip' event; returns the event id."""
        self._check_writable()
        with self.transaction() as conn:
            self.set_task_status(task_id, "skipped")
            return self._event(conn, "skip", actor, task_id=task_id, payload={"reason": reason})

    def complete_task(self, task_id: int, actor: str) -> int:
        """Mark a task done and record a 'done' event; returns the event id."""
        self._check_writable()
        with self.transaction() as conn:
            self.set_task_status(task_id, "done")
            return self._event(conn, "done", actor, task_id=task_id)

    # ------------------------------------------------------------------------------------------ masks
    def commit_mask(
        self,
        *,
        task_id: int | None,
        image_id: int,
        annotator_id: str | None,
        stage: int,
        source: str,
        rle: dict,
        predicted_iou: float | None,
        clicks: int,
        seconds: float,
        manual_fix: bool = False,
        request_id: str | None = None,
        status: str = "accepted",
        stability_score: float | None = None,
        prompt: dict | None = None,
    ) -> int:
        """Store one mask and its 'commit' event in one transaction; returns the mask id.

        Idempotent by ``request_id``: committing the same id again returns the first mask's id and writes
        nothing. The RLE must match the image's size and be non-empty. Durable when it returns.
        """
        self._check_writable()
        _check_choice(source, MASK_SOURCES, "source", request_id)
        _check_choice(status, MASK_STATUSES, "status", request_id)
        with self.transaction() as conn:
            if request_id is not None:
                found = conn.execute(
                    "SELECT mask_id FROM masks WHERE request_id = ?", [request_id]
                ).fetchone()
                if found:
                    return int(found[0])
            return self._insert_mask(
                conn,
                image_id=image_id,
                task_id=task_id,
                annotator_id=annotator_id,
                stage=stage,
                source=source,
                rle=rle,
                predicted_iou=predicted_iou,
                stability_score=stability_score,
                clicks=clicks,
                seconds=seconds,
                manual_fix=manual_fix,
                status=status,
                request_id=request_id,
                prompt=prompt,
                version=1,
                parent=None,
                root=None,
                event_kind="commit",
            )

    def _insert_mask(
        self, conn: duckdb.DuckDBPyConnection, *, rle: dict, image_id: int, event_kind: str | None, **f: Any
    ) -> int:
        image = conn.execute(
            "SELECT width, height FROM images WHERE image_id = ?", [int(image_id)]
        ).fetchone()
        if image is None:
            raise DataError("masks", f.get("request_id"), "image_id", f"image {image_id} is not in the store")
        try:
            runs = rle_utils.check_rle(rle, image[1], image[0])
        except (ValueError, TypeError) as exc:
            where = f"{exc.field}: " if isinstance(exc, rle_utils.RleError) else ""
            raise DataError("masks", f.get("request_id"), "segmentation", f"{where}{exc}") from None
        if isinstance(rle["counts"], list):  # store uncompressed RLE in the compressed form
            rle = rle_utils.encode(rle_utils.decode(rle))
        size = [int(v) for v in rle["size"]]
        area = rle_utils.area(rle)
        bbox = rle_utils.bbox_xywh(rle)
        if area <= 0:
            raise DataError("masks", f.get("request_id"), "segmentation", "empty mask")
        # not reached (check_rle admits only what pycocotools reads as written): the last guard
        if area != sum(runs[1::2]):
            raise DataError("masks", f.get("request_id"), "segmentation", "pycocotools reads another mask")
        counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
        mask_id = int(conn.execute("SELECT nextval('mask_id_seq')").fetchone()[0])
        root = f["root"] if f["root"] is not None else mask_id
        conn.execute(
            f"INSERT INTO masks ({_MASK_COLUMNS}) VALUES ({', '.join(['?'] * 24)})",
            [
                mask_id,
                int(image_id),
                None if f["task_id"] is None else int(f["task_id"]),
                f["annotator_id"],
                int(f["stage"]),
                f["source"],
                json.dumps({"size": size, "counts": counts}, separators=(",", ":")),
                *bbox,
                int(area),
                None if f["predicted_iou"] is None else float(f["predicted_iou"]),
                None if f["stability_score"] is None else float(f["stability_score"]),
                int(f["clicks"]),
                float(f["seconds"]),
                bool(f["manual_fix"]),
                f["status"],
                int(f["version"]),
                f["parent"],
                root,
                _json(f["prompt"]),
                _now(),
                f["request_id"],
            ],
        )
        if event_kind is not None:
            self._event(
                conn,
                event_kind,
                f["annotator_id"],
                mask_id=mask_id,
                task_id=f["task_id"],
                payload={
                    "changes": [{"mask_id": mask_id, "before": None, "after": f["status"]}],
                    "request_id": f["request_id"],
                    "clicks": int(f["clicks"]),
                    "seconds": float(f["seconds"]),
                },
            )
        return mask_id

    def get_mask(self, mask_id: int) -> dict | None:
        """One mask row as a dict with ``rle`` (parsed) and ``prompt`` (parsed)."""
        with self._use() as conn:
            row = _one(conn.execute(f"SELECT {_MASK_COLUMNS} FROM masks WHERE mask_id = ?", [int(mask_id)]))
        if row is None:
            return None
        row["rle"] = json.loads(row["segmentation"])
        row["prompt"] = json.loads(row["prompt"]) if row["prompt"] else None
        return row

    def mask_for_request(self, request_id: str) -> int | None:
        with self._use() as conn:
            row = conn.execute("SELECT mask_id FROM masks WHERE request_id = ?", [request_id]).fetchone()
        return int(row[0]) if row else None

    def masks(
        self,
        stage: int | None = None,
        status: str | Sequence[str] | None = "accepted",
        image_id: int | None = None,
        *,
        task_id: int | None = None,
        annotator_id: str | None = None,
    ) -> pd.DataFrame:
        """Masks as a DataFrame (columns of the masks table plus ``rle``, the parsed segmentation dict).

        ``status=None`` returns every status; a list selects several.
        """
        sql = f"SELECT {_MASK_COLUMNS} FROM masks WHERE 1 = 1"
        params: list[Any] = []
        sql, params = _status_filter(sql, params, status, MASK_STATUSES)
        for column, value in (("stage", stage), ("image_id", image_id), ("task_id", task_id)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(int(value))
        if annotator_id is not None:
            sql += " AND annotator_id = ?"
            params.append(str(annotator_id))
        df = self.query(sql + " ORDER BY mask_id", params)
        df["rle"] = [json.loads(s) for s in df["segmentation"]]
        return df

    def mask_sources(self, status: str | Sequence[str] | None = "accepted") -> pd.DataFrame:
        """``mask_id, stage, image_id, source`` of the masks with ``status`` (no pixels; see :meth:`masks`)."""
        sql = "SELECT mask_id, stage, image_id, source FROM masks WHERE 1 = 1"
        sql, params = _status_filter(sql, [], status, MASK_STATUSES)
        return self.query(sql + " ORDER BY mask_id", params)

    def image_ids_with_masks(self, stage: int, source: str | None = None) -> set[int]:
        """Images that hold a mask of ``stage`` (of ``source`` when given), whatever its status."""
        sql, params = "SELECT DISTINCT image_id FROM masks WHERE stage = ?", [int(stage)]
        if source is not None:
            sql, params = sql + " AND source = ?", [*params, source]
        return {int(i) for i in self.query(sql, params)["image_id"]}

    def mask_versions(self, root_mask_id: int, columns: Sequence[str]) -> pd.DataFrame:
        """Every version of one lineage (``columns`` of the masks table, no pixels), oldest first."""
        unknown = [c for c in columns if c not in _MASK_COLUMN_NAMES]
        if unknown:
            raise ValueError(f"not columns of the masks table: {unknown}")
        sql = f"SELECT {', '.join(columns)} FROM masks WHERE root_mask_id = ? ORDER BY version, mask_id"
        return self.query(sql, [int(root_mask_id)])

    # ------------------------------------------------------------------------------ events / history
    def _event(
        self,
        conn: duckdb.DuckDBPyConnection,
        kind: str,
        actor: str | None,
        *,
        mask_id: int | None = None,
        task_id: int | None = None,
        payload: dict | None = None,
    ) -> int:
        _check_choice(kind, EVENT_KINDS, "kind")
        row = conn.execute(
            "INSERT INTO events (mask_id, task_id, actor, kind, payload, created_at) VALUES (?, ?, ?, ?, ?, ?) "
            "RETURNING event_id",
            [
                None if mask_id is None else int(mask_id),
                None if task_id is None else int(task_id),
                actor,
                kind,
                _json(payload),
                _now(),
            ],
        ).fetchone()
        return int(row[0])

    def events(self, kind: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM events"
        params: list[Any] = []
        if kind is not None:
            sql += " WHERE kind = ?"
            params.append(kind)
        return self.query(sql + " ORDER BY event_id", params)

    def reviewed_mask_ids(self) -> set[int]:
        """Masks a reviewer accepted or fixed (``review_accept`` / ``review_fix`` events)."""
        df = self.query("SELECT DISTINCT mask_id FROM events WHERE kind IN ('review_accept', 'review_fix')")
        return {int(i) for i in df["mask_id"].dropna()}

    def _lineage(self, conn: duckdb.DuckDBPyConnection, mask_id: int) -> list[int]:
        row = conn.execute("SELECT root_mask_id FROM masks WHERE mask_id = ?", [int(mask_id)]).fetchone()
        if row is None:
            raise KeyError(f"mask {mask_id} does not exist")
        return [
            r[0]
            for r in conn.execute("SELECT mask_id FROM masks WHERE root_mask_id = ?", [row[0]]).fetchall()
        ]

    def _lineage_events(self, conn: duckdb.DuckDBPyConnection, mask_id: int) -> list[dict]:
        ids = self._lineage(conn, mask_id)
        rows = _all(
            conn.execute(
                "SELECT event_id, mask_id, task_id, actor, kind, payload, created_at FROM events "
                "WHERE list_contains(?, mask_id) ORDER BY event_id",
                [ids],
            )
        )
        for r in rows:
            r["payload"] = json.loads(r["payload"]) if r["payload"] else {}
        reverted = {r["payload"].get("reverted_event_id") for r in rows if r["kind"] == "revert"}
        for r in rows:
            r["reverted"] = r["event_id"] in reverted
        return rows

    def history(self, mask_id: int) -> list[dict]:
        """Every event of the mask's lineage (all its versions), oldest first; each has ``reverted``."""
        with self._use() as conn:
            rows = self._lineage_events(conn, mask_id)
        for r in rows:
            r["created_at"] = r["created_at"].isoformat()
        return rows

    def revert_target(self, mask_id: int) -> dict | None:
        """The change :meth:`revert` would undo next (latest un-reverted commit / review), or None."""
        with self._use() as conn:
            events = self._lineage_events(conn, mask_id)
        live = [e for e in events if e["kind"] in _CHANGE_KINDS and not e["reverted"]]
        return live[-1] if live else None

    def revert(self, mask_id: int, actor: str) -> dict:
        """Undo the latest not-yet-reverted change in the mask's lineage.

        A commit → the mask becomes 'reverted'; a review accept / reject → the mask's previous status comes back;
        a review fix → the fixed version becomes 'reverted' and the version it replaced is restored. Calling it
        again walks further back. Returns ``{"event_id", "reverted_event_id", "changes"}``.
        """
        self._check_writable()
        with self.transaction() as conn:
            events = self._lineage_events(conn, mask_id)
            live = [e for e in events if e["kind"] in _CHANGE_KINDS and not e["reverted"]]
            if not live:
                raise ValueError(f"mask {mask_id}: nothing left to revert")
            target = live[-1]
            changes = []
            for change in target["payload"].get("changes", []):
                restored = change["before"] or "reverted"
                current = conn.execute(
                    "SELECT status FROM masks WHERE mask_id = ?", [change["mask_id"]]
                ).fetchone()
                conn.execute("UPDATE masks SET status = ? WHERE mask_id = ?", [restored, change["mask_id"]])
                changes.append({"mask_id": change["mask_id"], "before": current[0], "after": restored})
            event_id = self._event(
                conn,
                "revert",
                actor,
                mask_id=target["mask_id"],
                task_id=target["task_id"],
                payload={
                    "reverted_event_id": target["event_id"],
                    "reverted_kind": target["kind"],
                    "changes": changes,
                },
            )
        return {"event_id": event_id, "reverted_event_id": target["event_id"], "changes": changes}

    def comment(self, actor: str, text: str, mask_id: int | None = None, task_id: int | None = None) -> int:
        """Record a comment on a mask and/or task; returns the event id."""
        self._check_writable()
        if mask_id is None and task_id is None:
            raise ValueError("a comment needs a mask_id or a task_id")
        with self.transaction() as conn:
            if mask_id is not None:
                self._lineage(conn, mask_id)  # existence check
            return self._event(
                conn, "comment", actor, mask_id=mask_id, task_id=task_id, payload={"text": text}
            )

    # ----------------------------------------------------------------------------------------- review
    def review(
        self,
        mask_id: int,
        reviewer: str,
        verdict: str,
        comment: str | None = None,
        fixed_rle: dict | None = None,
        *,
        task_id: int | None = None,
        clicks: int = 0,
        seconds: float = 0.0,
        manual_fix: bool = True,
        prompt: dict | None = None,
    ) -> dict:
        """Record a reviewer's verdict on a mask.

        accept → status 'accepted'; reject → 'rejected'; fix (needs ``fixed_rle``) → a new version (source
        'human', by the reviewer, ``manual_fix`` as given: a mask drawn by hand, or False for one the reviewer
        made with the model's clicks, whose ``prompt`` is kept) is accepted and the reviewed one becomes
        'superseded'.
        A review task given as ``task_id`` is marked done. Returns ``{"review_id", "mask_id", "status",
        "fixed_mask_id", "event_id"}``.
        """
        self._check_writable()
        _check_choice(verdict, VERDICTS, "verdict", mask_id)
        if verdict == "fix" and fixed_rle is None:
            raise ValueError("verdict 'fix' needs fixed_rle")
        with self.transaction() as conn:
            row = _one(conn.execute(f"SELECT {_MASK_COLUMNS} FROM masks WHERE mask_id = ?", [int(mask_id)]))
            if row is None:
                raise KeyError(f"mask {mask_id} does not exist")
            if row["status"] in ("superseded", "reverted"):
                raise ValueError(f"mask {mask_id} is {row['status']}; review its current version instead")
            fixed_id = None
            if verdict == "fix":
                fixed_id = self._insert_mask(
                    conn,
                    image_id=row["image_id"],
                    task_id=row["task_id"],
                    annotator_id=reviewer,
                    stage=row["stage"],
                    source="human",
                    rle=fixed_rle,
                    predicted_iou=None,
                    stability_score=None,
                    clicks=clicks,
                    seconds=seconds,
                    manual_fix=manual_fix,
                    status="accepted",
                    request_id=None,
                    prompt=prompt,
                    version=row["version"] + 1,
                    parent=row["mask_id"],
                    root=row["root_mask_id"],
                    event_kind=None,
                )
                changes = [
                    {"mask_id": row["mask_id"], "before": row["status"], "after": "superseded"},
                    {"mask_id": fixed_id, "before": None, "after": "accepted"},
                ]
            else:
                changes = [
                    {
                        "mask_id": row["mask_id"],
                        "before": row["status"],
                        "after": "accepted" if verdict == "accept" else "rejected",
                    }
                ]
            conn.execute(
                "UPDATE masks SET status = ? WHERE mask_id = ?", [changes[0]["after"], row["mask_id"]]
            )
            review_id = int(
                conn.execute(
                    "INSERT INTO reviews (mask_id, task_id, reviewer, verdict, comment, fixed_mask_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING review_id",
                    [row["mask_id"], task_id, reviewer, verdict, comment, fixed_id, _now()],
                ).fetchone()[0]
            )
            event_id = self._event(
                conn,
                f"review_{verdict}",
                reviewer,
                mask_id=row["mask_id"],
                task_id=task_id if task_id is not None else row["task_id"],
                payload={
                    "review_id": review_id,
                    "comment": comment,
                    "fixed_mask_id": fixed_id,
                    "changes": changes,
                },
            )
            if task_id is not None:
                self.set_task_status(task_id, "done")
        return {
            "review_id": review_id,
            "mask_id": int(row["mask_id"]),
            "status": changes[0]["after"],
            "fixed_mask_id": fixed_id,
            "event_id": event_id,
        }

    def reviews(self) -> pd.DataFrame:
        return self.query("SELECT * FROM reviews ORDER BY review_id")

    # ------------------------------------------------------------------------------------ gold scores
    def add_gold_scores(self, rows: Iterable[dict]) -> None:
        """Append rows ``{annotator_id, mask_id, gold_ann_id, iou}``."""
        self._check_writable()
        now = _now()
        values = [
            [r.get("annotator_id"), r.get("mask_id"), r.get("gold_ann_id"), float(r["iou"]), now]
            for r in rows
        ]
        if not values:
            return
        with self.transaction() as conn:
            conn.executemany("INSERT INTO gold_scores VALUES (?, ?, ?, ?, ?)", values)

    def add_gold_score(
        self, *, annotator_id: str | None, mask_id: int | None, gold_ann_id: int | None, iou: float
    ) -> None:
        """Append one gold score row."""
        self.add_gold_scores(
            [{"annotator_id": annotator_id, "mask_id": mask_id, "gold_ann_id": gold_ann_id, "iou": iou}]
        )

    def gold_scores(self) -> pd.DataFrame:
        return self.query("SELECT * FROM gold_scores ORDER BY created_at")


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


def turn_request_path(path: str | Path) -> Path:
    """The file whose modification time says "another process waits for this DuckDB file": ``<path>.turn``."""
    path = Path(path)
    return path.with_name(path.name + ".turn")


def request_turn(path: str | Path) -> int | None:
    """Ask the process holding the DuckDB file at ``path`` for a turn (touch ``<path>.turn``).

    A holder opened with ``max_hold_s`` gives the file up shortly after; call it again on every retry while
    waiting (a request counts for :data:`TURN_REQUEST_FRESH_S` seconds). Returns the marker's new modification
    time in ns, or None if it could not be written (a read-only folder: then the holder is not told).
    """
    marker = turn_request_path(path)
    try:
        marker.touch()
        return marker.stat().st_mtime_ns
    except OSError:
        return None


def withdraw_turn_request(path: str | Path) -> None:
    """Mark the request for a turn as served (the requester got the file): the holder stops waiting for it.

    Another waiting process renews its own request on its next retry."""
    try:
        os.utime(turn_request_path(path), ns=(0, 0))
    except OSError:
        pass


# ----------------------------------------------------------------------------------------- helpers
def _one(cur: duckdb.DuckDBPyConnection) -> dict | None:
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description], row, strict=True))


def _all(cur: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _task_out(row: dict) -> dict:
    row["payload"] = json.loads(row["payload"]) if row.get("payload") else None
    return row


def _status_filter(
    sql: str, params: list[Any], status: str | Sequence[str] | None, allowed: tuple[str, ...]
) -> tuple[str, list[Any]]:
    if status is None:
        return sql, params
    statuses = [status] if isinstance(status, str) else list(status)
    for s in statuses:
        _check_choice(s, allowed, "status")
    sql += f" AND status IN ({', '.join(['?'] * len(statuses))})"
    return sql, params + statuses
