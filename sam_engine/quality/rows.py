"""Row helpers shared by the store's table families: timestamps, JSON columns, enum checks, result rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np

from sam_engine.data.errors import DataError


def utc_now() -> datetime:
    """UTC now, naive (DuckDB's TIMESTAMP)."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_json(value: Any) -> str | None:
    """A JSON column's text (None stays NULL); numpy values and datetimes become plain JSON."""
    return None if value is None else json.dumps(value, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def check_choice(value: Any, allowed: tuple[str, ...], field: str, record: Any = None) -> None:
    """Refuse a value outside an enum column's allowed values (a DataError naming the field)."""
    if value not in allowed:
        raise DataError("quality store", record, field, f"{value!r} is not one of {list(allowed)}")


def one_row(cur: duckdb.DuckDBPyConnection) -> dict | None:
    """The cursor's next row as a dict, or None."""
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description], row, strict=True))


def all_rows(cur: duckdb.DuckDBPyConnection) -> list[dict]:
    """The cursor's rows as dicts."""
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def status_filter(
    sql: str, params: list[Any], status: str | Sequence[str] | None, allowed: tuple[str, ...]
) -> tuple[str, list[Any]]:
    """``sql`` and ``params`` with ``AND status IN (...)`` for ``status`` (one or several; None: any)."""
    if status is None:
        return sql, params
    statuses = [status] if isinstance(status, str) else list(status)
    for s in statuses:
        check_choice(s, allowed, "status")
    sql += f" AND status IN ({', '.join(['?'] * len(statuses))})"
    return sql, params + statuses
