"""The store's masks and their lineage: commits, versions, events, history, revert, review.

Every change is an event; a mask's versions share a ``root_mask_id``, and a revert undoes the newest change of
a lineage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

from sam_engine.data import rle as rle_utils
from sam_engine.data.errors import DataError

from .lease import LeasedDuckDB
from .rows import all_rows, check_choice, one_row, status_filter, to_json, utc_now
from .tables import EVENT_KINDS, MASK_SOURCES, MASK_STATUSES, VERDICTS

_CHANGE_KINDS = ("commit", "review_accept", "review_fix", "review_reject")
_MASK_COLUMNS = (
    "mask_id, image_id, task_id, annotator_id, stage, source, segmentation, bbox_x, bbox_y, bbox_w, bbox_h, "
    "area, predicted_iou, stability_score, clicks, seconds, manual_fix, status, version, parent_mask_id, "
    "root_mask_id, prompt, created_at, request_id"
)
_MASK_COLUMN_NAMES = frozenset(c.strip() for c in _MASK_COLUMNS.split(","))


class MaskRecords(LeasedDuckDB):
    """The ``masks``, ``events`` and ``reviews`` tables (part of
    :class:`~sam_engine.quality.store.QualityStore`)."""

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
        check_choice(source, MASK_SOURCES, "source", request_id)
        check_choice(status, MASK_STATUSES, "status", request_id)
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
                to_json(f["prompt"]),
                utc_now(),
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
            row = one_row(
                conn.execute(f"SELECT {_MASK_COLUMNS} FROM masks WHERE mask_id = ?", [int(mask_id)])
            )
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
        sql, params = status_filter(sql, params, status, MASK_STATUSES)
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
        sql, params = status_filter(sql, [], status, MASK_STATUSES)
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
        check_choice(kind, EVENT_KINDS, "kind")
        row = conn.execute(
            "INSERT INTO events (mask_id, task_id, actor, kind, payload, created_at) VALUES (?, ?, ?, ?, ?, ?) "
            "RETURNING event_id",
            [
                None if mask_id is None else int(mask_id),
                None if task_id is None else int(task_id),
                actor,
                kind,
                to_json(payload),
                utc_now(),
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
        rows = all_rows(
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
        check_choice(verdict, VERDICTS, "verdict", mask_id)
        if verdict == "fix" and fixed_rle is None:
            raise ValueError("verdict 'fix' needs fixed_rle")
        with self.transaction() as conn:
            row = one_row(
                conn.execute(f"SELECT {_MASK_COLUMNS} FROM masks WHERE mask_id = ?", [int(mask_id)])
            )
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
                    [row["mask_id"], task_id, reviewer, verdict, comment, fixed_id, utc_now()],
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
