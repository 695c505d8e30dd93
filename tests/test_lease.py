"""The single-writer lease alone (sam_engine.quality.lease), on a DuckDB file with no store schema."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sam_engine.quality.lease import LeasedDuckDB, StoreBusyError, turn_request_path

REPO = Path(__file__).resolve().parent.parent


def _table(db: LeasedDuckDB) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")


def test_transactions_nest_and_roll_back_whole(tmp_path: Path) -> None:
    db = LeasedDuckDB(tmp_path / "a.duckdb")
    _table(db)
    with db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with db.transaction() as inner:  # joins the outer one
            inner.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (3)")
        raise RuntimeError("abort")
    assert db.query("SELECT x FROM t ORDER BY x")["x"].tolist() == [1, 2]
    db.close()
    with pytest.raises(RuntimeError, match="closed"):
        db.query("SELECT 1")


def test_read_only_refuses_writes_and_idle_release_zero_closes_after_each_call(tmp_path: Path) -> None:
    path = tmp_path / "a.duckdb"
    with LeasedDuckDB(path) as db:
        _table(db)
    reader = LeasedDuckDB(path, read_only=True, idle_release_s=0)
    assert reader.query("SELECT count(*) AS n FROM t")["n"].tolist() == [0]
    assert not reader.holds_connection
    with pytest.raises(PermissionError, match="read-only"):
        reader.execute("INSERT INTO t VALUES (1)")
    reader.close()


def test_a_busy_file_asks_for_a_turn_then_fails_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.duckdb"
    code = f"""
        import duckdb, sys, time
        conn = duckdb.connect({str(path)!r})
        print("holding", flush=True)
        time.sleep(30)
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert child.stdout.readline().strip() == "holding"
        before = time.time()
        with pytest.raises(StoreBusyError, match=str(path)):
            LeasedDuckDB(path, lock_timeout_s=0.3).query("SELECT 1")
        assert turn_request_path(path).stat().st_mtime >= before - 1  # it asked the holder for a turn
    finally:
        child.kill()
        child.wait(timeout=10)
    assert LeasedDuckDB(path).query("SELECT 1 AS one")["one"].tolist() == [1]  # free again


def test_max_hold_needs_a_pause_longer_than_a_waiters_retry(tmp_path: Path) -> None:
    from sam_engine.quality.lease import LOCK_RETRY_CAP_S

    with pytest.raises(ValueError, match="LOCK_RETRY_CAP_S"):
        LeasedDuckDB(tmp_path / "a.duckdb", max_hold_s=1.0, yield_s=LOCK_RETRY_CAP_S)
    with pytest.raises(ValueError, match="max_hold_s"):
        LeasedDuckDB(tmp_path / "a.duckdb", max_hold_s=0)
