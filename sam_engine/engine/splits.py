"""Which pool images each stage works on: a seeded, disjoint split (stage 1 small, stage 2 larger, stage 3 the rest)."""

from __future__ import annotations

import numpy as np

from ..config import EngineConfig
from ..data.corpus import ImageRecord, MaskCorpus
from ..stage3 import plan_shards


def stage_split(pool: MaskCorpus, cfg: EngineConfig) -> dict[int, list[ImageRecord]]:
    """{1: stage-1 images, 2: stage-2 images, 3: stage-3 images}; same seed and pool, same split."""
    s = cfg.stages
    order = np.random.default_rng(np.random.SeedSequence([cfg.seed, 101])).permutation(len(pool.images))
    images = [pool.images[i] for i in order]
    n1 = min(s.stage1_images, len(images))
    n2 = min(s.stage2_images, len(images) - n1)
    rest = images[n1 + n2 :]
    n3 = len(rest) if s.stage3_images is None else min(s.stage3_images, len(rest))
    by_id = lambda xs: sorted(xs, key=lambda r: r.image_id)  # noqa: E731
    return {1: by_id(images[:n1]), 2: by_id(images[n1 : n1 + n2]), 3: by_id(rest[:n3])}


def shard_partitions(cfg: EngineConfig, n_images: int) -> list[str]:
    """Partition keys of the stage-3 shards (``shard_00000`` ...) for ``n_images`` stage-3 images."""
    per = cfg.stages.images_per_shard
    return [f"shard_{i:05d}" for i in range((n_images + per - 1) // per)]


def shard_images(
    stage3: list[ImageRecord], cfg: EngineConfig, partition: str
) -> tuple[int, list[ImageRecord]]:
    """(shard index, its images) of partition ``shard_NNNNN``: the stage-3 images in shards of
    ``stages.images_per_shard`` by image id (:func:`sam_engine.stage3.plan_shards`)."""
    index = int(partition.split("_")[-1])
    plan = plan_shards(stage3, cfg.stages.images_per_shard)
    return index, plan[index] if 0 <= index < len(plan) else []
