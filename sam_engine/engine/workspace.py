"""Everything a stage needs, resolved from the config: stores, the model store, tracking, predictors."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..config import EngineConfig
from ..data import corpora
from ..data.corpus import MaskCorpus
from ..data.images import load_image
from ..model_store import ModelRef, ModelStore
from ..tracking import TrackingSettings


@dataclass
class Workspace:
    """A view of one engine data folder."""

    cfg: EngineConfig

    @cached_property
    def model_store(self) -> ModelStore:
        return ModelStore(self.cfg.models_dir)

    @cached_property
    def tracking(self) -> TrackingSettings:
        return TrackingSettings.from_config(self.cfg)

    def open_store(self, read_only: bool = False):
        """The DuckDB store, to use in a ``with`` block. A writer releases the file after every call
        (``idle_release_s=0``); a reader (:func:`~sam_engine.quality.store.connect_read_only`) keeps it for one
        short burst of calls, so a read pass takes one turn. Both ask a busy holder (the annotation server) for a
        turn, so Dagster steps, the server and readers take turns under DuckDB's single-writer rule."""
        from ..quality.store import QualityStore, connect_read_only

        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if read_only:
            return connect_read_only(self.cfg.duckdb_path)
        return QualityStore(self.cfg.duckdb_path, idle_release_s=0)

    # corpora -----------------------------------------------------------------------------------
    @cached_property
    def pool(self) -> MaskCorpus:
        return corpora.load_pool(self.cfg)

    @cached_property
    def pool_gt(self) -> MaskCorpus | None:
        return corpora.load_pool_ground_truth(self.cfg)

    @cached_property
    def gold(self) -> MaskCorpus:
        return corpora.load_gold(self.cfg)

    @cached_property
    def _records(self) -> dict:
        recs = {im.image_id: im for im in self.pool.images}
        recs.update({im.image_id: im for im in self.gold.images})
        return recs

    def record(self, image_id: int):
        return self._records[int(image_id)]

    def load(self, image_id: int) -> np.ndarray:
        """Pixels of a pool or gold image."""
        return load_image(self.record(image_id).path, self.cfg.corpus.max_pixels)

    def ground_truth(self) -> dict[int, list[dict]]:
        """Hidden ground truth of pool and gold images, for simulated annotators and evaluation only."""
        gt: dict[int, list[dict]] = {}
        if self.pool_gt is not None:
            gt.update(self.pool_gt.annotations)
        gt.update(self.gold.annotations)
        return gt

    # models ------------------------------------------------------------------------------------
    def load_model(self, ref: ModelRef | str | Path):
        from ..model.checkpoint import load_model

        path = ref.checkpoint if isinstance(ref, ModelRef) else ref
        model = load_model(path)
        model.eval()
        return model

    def predictor(self, ref: ModelRef | str | Path):
        from ..predictor import SamPredictor

        return SamPredictor(self.load_model(ref))
