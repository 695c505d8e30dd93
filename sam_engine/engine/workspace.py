"""Everything a stage needs, resolved from the config: stores, the model store, tracking, predictors.

Also where things are and run: the device of predictors and the automatic mask generator (``train.device``,
resolved once), the shard location (``shards_url``, else the data folder's ``shards/``) and published model
checkpoints (``models_url``). Remote files (a remote ``corpus.pool_images_dir``'s images too) are read
through a local cache (``storage_cache/`` in the data folder, or ``$SAM_ENGINE_CACHE_DIR``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import EngineConfig
from ..data import corpora
from ..data.corpus import ImageRecord, MaskCorpus
from ..model_store import ModelRef, ModelStore
from ..tracking import TrackingSettings

if TYPE_CHECKING:
    import torch

    from ..output_choice import OutputChoice

WRITER_IDLE_RELEASE_S = 0.5  # a Dagster step's store closes the file after this many idle seconds
WRITER_MAX_HOLD_S = 2.0  # ... and gives it up after this long when another process asks (as the server does)
CHECKPOINT_URL = "checkpoint_url"  # key in ModelRef.data: where models_url holds the version's checkpoint


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
        """The DuckDB store, to use in a ``with`` block. A writer keeps the file through a burst of calls and
        releases it after :data:`WRITER_IDLE_RELEASE_S` idle seconds, or after :data:`WRITER_MAX_HOLD_S` when
        another process asked for a turn (opening the file costs about 30 ms here, and a stage makes thousands
        of calls); a reader (:func:`~sam_engine.quality.store.connect_read_only`) keeps it for one
        short burst of calls, so a read pass takes one turn. Both ask a busy holder (the annotation server) for a
        turn, so Dagster steps, the server and readers take turns under DuckDB's single-writer rule."""
        from ..quality.store import QualityStore, connect_read_only

        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if read_only:
            return connect_read_only(self.cfg.duckdb_path)
        return QualityStore(
            self.cfg.duckdb_path, idle_release_s=WRITER_IDLE_RELEASE_S, max_hold_s=WRITER_MAX_HOLD_S
        )

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
        """Pixels of a pool or gold image (a remote pool's image through the cache)."""
        from .. import storage

        return storage.load_image_at(self.record(image_id).path, self.cfg.corpus.max_pixels, self.cache_dir)

    def localize(self, record: ImageRecord) -> ImageRecord:
        """``record`` with a local ``path`` (a remote image's cached copy), for readers that open the file
        themselves (training data, the shard writer)."""
        if isinstance(record.path, os.PathLike):
            return record
        return replace(record, path=self.local_file(record.path))

    def ground_truth(self) -> dict[int, list[dict]]:
        """Hidden ground truth of pool and gold images, for simulated annotators and evaluation only."""
        gt: dict[int, list[dict]] = {}
        if self.pool_gt is not None:
            gt.update(self.pool_gt.annotations)
        gt.update(self.gold.annotations)
        return gt

    # where files live --------------------------------------------------------------------------
    @cached_property
    def cache_dir(self) -> Path:
        """Local cache for remote pool images, shards and checkpoints."""
        from ..storage import data_cache_dir

        return data_cache_dir(self.cfg.data_dir)

    def local_file(self, location: str | Path) -> Path:
        """A local path with the content of ``location``: local paths unchanged, URLs via the cache."""
        from .. import storage

        if storage.is_local(location):
            text = os.fspath(location)
            return storage.local_path(text) if text.startswith("file:") else Path(text)
        return storage.cached_local(location, self.cache_dir)

    @property
    def shards_location(self) -> str:
        """Where stage-3 shards go: ``shards_url`` when set, else the data folder's ``shards/``."""
        return self.cfg.shards_url or str(self.cfg.shards_dir)

    def shard_manifest(self) -> dict[str, Any]:
        """The shard manifest (``manifest.json`` merged with per-shard ``manifest.d/`` entries remotely)."""
        from ..stage3 import read_manifest

        return read_manifest(self.shards_location)

    def shard_paths(self) -> list[Path]:
        """Local files of the shards the manifest lists, by index (remote shards via the cache)."""
        from .. import storage
        from ..stage3 import shard_paths

        loc = self.cfg.shards_url
        if loc is None:
            return shard_paths(self.cfg.shards_dir)
        if storage.is_local(loc):
            return shard_paths(storage.local_path(loc))
        out = []
        for name in sorted(self.shard_manifest()["shards"]):
            url = storage.join(loc, name)
            if storage.exists(url):
                out.append(storage.cached_local(url, self.cache_dir))
        return out

    # device ------------------------------------------------------------------------------------
    @cached_property
    def device(self) -> torch.device:
        """``train.device`` resolved: ``auto`` is CUDA when torch sees a GPU, else the CPU."""
        from ..device import resolve_device

        try:
            return resolve_device(self.cfg.train.device)
        except ValueError as e:
            raise ValueError(f"config train.device: {e}") from None

    # models ------------------------------------------------------------------------------------
    def checkpoint(self, ref: ModelRef | str | Path) -> Path:
        """A local checkpoint file for ``ref``: the model store's file, else its published copy (cached)."""
        if not isinstance(ref, ModelRef):
            return self.local_file(ref)
        local = Path(ref.checkpoint)
        url = ref.data.get(CHECKPOINT_URL)
        if local.exists() or not url:
            return local
        return self.local_file(url)

    def publish_model(self, ref: ModelRef) -> ModelRef:
        """Upload ``ref``'s checkpoint and metadata to ``models_url/<name>/`` (verified by sha256) and record
        the URL in the store; a no-op without ``models_url`` or when this version is already published there."""
        from .. import storage

        if not self.cfg.models_url:
            return ref
        url = storage.join(self.cfg.models_url, ref.name, "model.pt")
        if ref.data.get(CHECKPOINT_URL) == url and storage.exists(url):
            return ref  # published (and verified) when this version was stored
        storage.upload(ref.checkpoint, url)
        got = storage.sha256(url)
        if got != ref.sha256:
            raise OSError(f"{url}: uploaded sha256 {got} differs from the model store's {ref.sha256}")
        ref = self.model_store.update(ref.name, data={**ref.data, CHECKPOINT_URL: url})
        storage.write_json(storage.join(self.cfg.models_url, ref.name, "meta.json"), ref.to_dict(), indent=2)
        return ref

    def load_model(self, ref: ModelRef | str | Path):
        """The model of ``ref`` (a ModelRef, a path or a URL) in eval mode on :attr:`device`."""
        from ..model.checkpoint import load_model

        model = load_model(self.checkpoint(ref))
        model.to(self.device)
        model.eval()
        return model

    def predictor(self, ref: ModelRef | str | Path, choice: OutputChoice | None = None):
        """The interactive predictor of ``ref`` (zoomed in when ``model.zoom_in``); with ``choice``, a first
        click's outputs scored by it (:mod:`sam_engine.output_choice`). The predictor the engine's stages use,
        with the choice ``ref``'s gold evaluation fitted, is :func:`sam_engine.engine.models.version_predictor`."""
        from ..output_choice import ChoicePredictor
        from ..zoom import interactive_predictor

        m = self.cfg.model
        predictor = interactive_predictor(
            self.load_model(ref), zoom=m.zoom_in, expansion=m.zoom_expansion, snap=m.snap
        )
        return predictor if choice is None else ChoicePredictor(predictor, choice)
