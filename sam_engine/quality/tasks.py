"""The store's task queue: who works on which image next, and what became of it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from sam_engine.data.errors import DataError

from .lease import LeasedDuckDB
from .rows import all_rows, check_choice, one_row, status_filter, to_json, utc_now
from .tables import TASK_KINDS, TASK_STATUSES

_TASK_COLUMNS = "task_id, image_id, stage, kind, annotator_id, status, priority, created_at, updated_at, batch, mask_id, payload"


def _task_out(row: dict) -> dict:
    row["payload"] = json.loads(row["payload"]) if row.get("payload") else None
    return row


class TaskQueue(LeasedDuckDB):
    """The ``tasks`` table (a part of :class:`~sam_engine.quality.store.QualityStore`)."""

    # ------------------------------------------------------------------------------------------ tasks
    def create_tasks(self, rows: Iterable[dict]) -> list[int]:
        """Insert tasks; returns their ids in input order. Missing fields default to kind 'annotate',
        status 'pending', priority 0, unassigned."""
        self._check_writable()
        rows = list(rows)
        if not rows:
            return []
        now = utc_now()
        records = []
        for i, row in enumerate(rows):
            for field in ("image_id", "stage"):
                if row.get(field) is None:
                    raise DataError("tasks", i, field, "missing")
            kind = row.get("kind", "annotate")
            status = row.get("status", "pending")
            check_choice(kind, TASK_KINDS, "kind", i)
            check_choice(status, TASK_STATUSES, "status", i)
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
                    "payload": to_json(row.get("payload")),
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
            row = one_row(
                conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", [int(task_id)])
            )
        return _task_out(row) if row else None

    def tasks_for(self, annotator_id: str, status: str | Sequence[str] | None = None) -> list[dict]:
        """Tasks assigned to ``annotator_id``, highest priority first (then oldest)."""
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE annotator_id = ?"
        params: list[Any] = [str(annotator_id)]
        sql, params = status_filter(sql, params, status, TASK_STATUSES)
        with self._use() as conn:
            rows = all_rows(conn.execute(sql + " ORDER BY priority DESC, task_id", params))
        return [_task_out(r) for r in rows]

    def has_task_on_image(self, annotator_id: str, image_id: int) -> bool:
        """Whether ``annotator_id`` has (or had) a task on ``image_id``, whatever its status."""
        sql = "SELECT 1 FROM tasks WHERE image_id = ? AND annotator_id = ? LIMIT 1"
        with self._use() as conn:
            return conn.execute(sql, [int(image_id), str(annotator_id)]).fetchone() is not None

    def tasks(self, status: str | Sequence[str] | None = None, stage: int | None = None) -> pd.DataFrame:
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE 1 = 1"
        params: list[Any] = []
        sql, params = status_filter(sql, params, status, TASK_STATUSES)
        if stage is not None:
            sql += " AND stage = ?"
            params.append(int(stage))
        return self.query(sql + " ORDER BY task_id", params)

    def set_task_status(self, task_id: int, status: str) -> None:
        self._check_writable()
        check_choice(status, TASK_STATUSES, "status", task_id)
        with self.transaction() as conn:
            n = conn.execute(
                "UPDATE tasks SET status = ?, updated_at = ? WHERE task_id = ? RETURNING task_id",
                [status, utc_now(), int(task_id)],
            ).fetchall()
            if not n:
                raise KeyError(f"task {task_id} does not exist")

    def assign_task(self, task_id: int, annotator_id: str | None, actor: str | None = None) -> None:
        """Assign (or with None, unassign) a task; recorded as an 'assign' event."""
        self._check_writable()
        with self.transaction() as conn:
            n = conn.execute(
                "UPDATE tasks SET annotator_id = ?, updated_at = ? WHERE task_id = ? RETURNING task_id",
                [annotator_id, utc_now(), int(task_id)],
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
