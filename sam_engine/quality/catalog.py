"""The store's images and annotators: what there is to label, and who labels it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import pandas as pd

from sam_engine.data.errors import DataError

from .lease import LeasedDuckDB
from .rows import check_choice, one_row, to_json, utc_now
from .tables import ROLES
from .tokens import make_token


class Catalog(LeasedDuckDB):
    """The ``images`` and ``annotators`` tables (a part of :class:`~sam_engine.quality.store.QualityStore`)."""

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
            return one_row(cur)

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
        check_choice(role, ROLES, "role", annotator_id)
        if not annotator_id or "." in annotator_id or len(annotator_id) > 128:
            raise DataError(
                "annotators", annotator_id, "annotator_id", "must be 1-128 characters without '.'"
            )
        token, token_hash = make_token(annotator_id)
        values = [name, role, token_hash, list(expertise or []), to_json(profile), bool(active)]
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
                    "INSERT INTO annotators VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [annotator_id, *values, utc_now()],
                )
        return annotator_id, token

    def get_annotator(self, annotator_id: str, *, with_secret: bool = False) -> dict | None:
        """One annotator as a dict (``profile`` parsed); ``token_hash`` only with ``with_secret``."""
        with self._use() as conn:
            row = one_row(
                conn.execute("SELECT * FROM annotators WHERE annotator_id = ?", [str(annotator_id)])
            )
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
