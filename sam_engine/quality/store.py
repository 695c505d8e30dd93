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
from BEGIN to COMMIT.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from sam_engine.data import rle as rle_utils
from sam_engine.data.errors import DataError

from .lease import DEFAULT_YIELD_S, READ_BURST_S, READ_IDLE_RELEASE_S, LeasedDuckDB
from .migrations import check_version, db_version, migrate
from .tables import (
    EVENT_KINDS,
    MASK_SOURCES,
    MASK_STATUSES,
    ROLES,
    TASK_KINDS,
    TASK_STATUSES,
    VERDICTS,
)
from .tokens import make_token

_CHANGE_KINDS = ("commit", "review_accept", "review_fix", "review_reject")
_MASK_COLUMNS = (
    "mask_id, image_id, task_id, annotator_id, stage, source, segmentation, bbox_x, bbox_y, bbox_w, bbox_h, "
    "area, predicted_iou, stability_score, clicks, seconds, manual_fix, status, version, parent_mask_id, "
    "root_mask_id, prompt, created_at, request_id"
)
_MASK_COLUMN_NAMES = frozenset(c.strip() for c in _MASK_COLUMNS.split(","))
_TASK_COLUMNS = "task_id, image_id, stage, kind, annotator_id, status, priority, created_at, updated_at, batch, mask_id, payload"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


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


class QualityStore(LeasedDuckDB):
    """DuckDB store of the annotation engine; see the module docstring for the contract, and
    :class:`~sam_engine.quality.lease.LeasedDuckDB` for how it holds and shares the file."""

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
        super().__init__(
            path,
            read_only,
            idle_release_s=idle_release_s,
            lock_timeout_s=lock_timeout_s,
            max_hold_s=max_hold_s,
            yield_s=yield_s,
        )
        if read_only:
            if not self.path.exists():
                raise FileNotFoundError(
                    f"{self.path}: quality store does not exist (open it for writing once)"
                )
            with self._use() as conn:
                check_version(conn, self.path)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._use() as conn:
                migrate(conn, self.path)
        self._start_reaper()

    @property
    def schema_version(self) -> int:
        with self._use() as conn:
            return db_version(conn)

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
