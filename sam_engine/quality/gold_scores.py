"""The store's gold scores: each annotator's IoU on honeypot objects (what consensus weights them by)."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from .lease import LeasedDuckDB
from .rows import utc_now


class GoldScores(LeasedDuckDB):
    """The ``gold_scores`` table (a part of :class:`~sam_engine.quality.store.QualityStore`)."""

    # ------------------------------------------------------------------------------------ gold scores
    def add_gold_scores(self, rows: Iterable[dict]) -> None:
        """Append rows ``{annotator_id, mask_id, gold_ann_id, iou}``."""
        self._check_writable()
        now = utc_now()
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
