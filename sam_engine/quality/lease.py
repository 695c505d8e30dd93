"""The single-writer lease on a DuckDB file: which process holds the file, and how others get a turn.

Single writer: DuckDB lets one process hold a file open for writing, and a read-only open from another process
fails while it does (read-only opens share the file with each other). A :class:`LeasedDuckDB` (the quality
store is one) respects that rule as follows:

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
* readers use :func:`~sam_engine.quality.store.connect_read_only`: a read-only store that keeps its
  connection for one short burst of calls (released on ``close``, after :data:`READ_IDLE_RELEASE_S` idle
  seconds, or after ``burst_s`` when a writer waits), so a quick read pass of a few queries takes one turn.
  A pass that must see one consistent state runs inside ``reader.transaction()``, which is never interrupted
  (keep it short: the writer waits for it). Alternatives while the server is busy: its ``/api/export/*``
  endpoints, or a consistent copy from :meth:`LeasedDuckDB.snapshot`.

A process that cannot write next to the file cannot ask for a turn; it then waits for the holder to idle.

Within one process the store is thread-safe: one re-entrant lock serialises calls, and a transaction holds it
from BEGIN to COMMIT.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import duckdb
import pandas as pd

LOCK_RETRY_CAP_S = 0.1  # longest back-off between two open attempts while another process holds the file
TURN_REQUEST_FRESH_S = 1.0  # a request for a turn (touch of ``<file>.turn``) counts for this long
DEFAULT_YIELD_S = 0.3  # longest a store with ``max_hold_s`` stays closed when it gives a turn
READ_IDLE_RELEASE_S = 0.2  # a reader closes the file after this many idle seconds (or when closed)
READ_BURST_S = 0.5  # a reader that a writer waits for closes the file after holding it this long
assert DEFAULT_YIELD_S > LOCK_RETRY_CAP_S, "a pause shorter than a waiter's retry interval can pass unseen"
assert TURN_REQUEST_FRESH_S > 2 * LOCK_RETRY_CAP_S, "a waiter must renew its request before it goes stale"


class StoreBusyError(RuntimeError):
    """Another process held a conflicting lock on the DuckDB file for longer than the store waits."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


class LeasedDuckDB:
    """One DuckDB file through one connection, opened when a call needs it and given up by the rules above.

    ``max_hold_s``: once the file has been held that long and another process asked for a turn, give it up until
    that process is in, for at most ``yield_s`` seconds (``None``: never). ``yield_s`` must exceed
    :data:`LOCK_RETRY_CAP_S`. ``turns_given`` counts the turns given. A subclass prepares the file (its schema)
    by overriding :meth:`_prepare`, which runs before the reaper starts.
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
        self._reaper: threading.Thread | None = None
        self._prepare()
        # the background thread that releases an idle file and gives turns (when either is configured)
        if (idle_release_s is not None and idle_release_s > 0) or max_hold_s is not None:
            self._reaper = threading.Thread(target=self._reap, name="duckdb-lease-reaper", daemon=True)
            self._reaper.start()

    def _prepare(self) -> None:
        """Get the file ready before first use; here: a writable file's folder exists."""
        if not self.read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)

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
                raise RuntimeError(f"{self.path}: store is closed")
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

    def __enter__(self) -> Self:
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
        """Run a read query and return a DataFrame."""
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

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"{self.path}: store is open read-only")


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
