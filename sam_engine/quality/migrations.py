"""The store's schema: apply the migrations of :mod:`sam_engine.quality.tables` a file lacks; check versions.

Every migration newer than the file's ``schema_version`` is applied in one transaction when the store opens the
file for writing; a read-only open needs the file at this code's version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb

from .tables import MIGRATIONS

SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(conn: duckdb.DuckDBPyConnection, path: str | Path) -> None:
    """Bring the file at ``path`` (open as ``conn``) to the newest schema; refuses a newer one."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL, "
        "description VARCHAR)"
    )
    current = db_version(conn)
    latest = MIGRATIONS[-1][0]
    if current > latest:
        raise RuntimeError(
            f"{path}: database schema version {current} is newer than this code knows ({latest})"
        )
    pending = [m for m in MIGRATIONS if m[0] > current]
    if not pending:
        return
    applied_at = datetime.now(UTC).replace(tzinfo=None)
    conn.execute("BEGIN TRANSACTION")
    try:
        for version, description, statements in pending:
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, ?, ?)", [version, applied_at, description])
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def db_version(conn: duckdb.DuckDBPyConnection) -> int:
    """The file's schema version (0 before the first migration)."""
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def check_version(conn: duckdb.DuckDBPyConnection, path: str | Path) -> None:
    """Refuse a file whose schema is not this code's (a read-only open cannot migrate it)."""
    try:
        current = db_version(conn)
    except duckdb.CatalogException:
        current = 0
    latest = MIGRATIONS[-1][0]
    if current != latest:
        raise RuntimeError(
            f"{path}: schema version {current}, this code needs {latest}; open it once for writing to migrate"
        )
