"""Quality assurance of automatic masks: a seeded sample per shard, verdicts, and the share of good masks.

The share of good masks is estimated from the reviewed sample with a Wilson score interval. A simulated
reviewer judges a mask good when its IoU with the best-matching ground-truth mask reaches a threshold.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sam_engine.data import rle as rle_utils
from sam_engine.data.sa1b import read_shard_records


@dataclass(frozen=True)
class QaItem:
    """One sampled mask: where it lives and what it is."""

    shard: str
    image_id: int
    annotation_id: int
    segmentation: dict
    predicted_iou: float
    stability_score: float

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.shard, self.image_id, self.annotation_id)


def _rng(seed: int, shard: str) -> np.random.Generator:
    """A generator that depends only on the seed and the shard name (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}:{shard}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_documents(docs: list[dict], shard: str, n: int, seed: int) -> list[QaItem]:
    """A seeded sample of ``n`` masks (all when fewer) from a shard's per-image documents, without repeats."""
    flat = [(doc["image"]["image_id"], ann) for doc in docs for ann in doc["annotations"]]
    if n <= 0 or not flat:
        return []
    picks = _rng(seed, shard).choice(len(flat), size=min(n, len(flat)), replace=False)
    out = []
    for i in sorted(picks.tolist()):
        image_id, ann = flat[i]
        out.append(
            QaItem(
                shard,
                int(image_id),
                int(ann["id"]),
                ann["segmentation"],
                float(ann["predicted_iou"]),
                float(ann["stability_score"]),
            )
        )
    return out


def sample_shard(path: str | Path, n: int, seed: int) -> list[QaItem]:
    """A seeded sample of ``n`` masks from one SA-1B tar shard (keyed by the shard's file name)."""
    path = Path(path)
    return sample_documents(read_shard_records(path), path.name, n, seed)


def wilson_interval(good: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion ``good / n`` (``(0, 1)`` when ``n == 0``)."""
    if n < 0 or not 0 <= good <= n:
        raise ValueError(f"need 0 <= good <= n, got good={good}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = good / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class QaEstimate:
    """Estimated share of good masks with its Wilson interval."""

    reviewed: int
    good: int
    share: float
    low: float
    high: float
    confidence: float = 0.95


@dataclass
class Verdict:
    shard: str
    image_id: int
    annotation_id: int
    good: bool
    reviewer: str = ""
    note: str = ""


@dataclass
class VerdictCollector:
    """Verdicts on sampled masks; a mask judged again by the same reviewer keeps the latest verdict."""

    verdicts: dict[tuple[str, int, int, str], Verdict] = field(default_factory=dict)

    def add(self, item: QaItem, good: bool, reviewer: str = "", note: str = "") -> None:
        self.verdicts[(*item.key, reviewer)] = Verdict(*item.key, bool(good), reviewer, note)

    def __len__(self) -> int:
        return len(self.verdicts)

    def records(self) -> list[dict]:
        """Plain rows (for a table of QA reviews)."""
        return [asdict(v) for v in self.verdicts.values()]

    def estimate(self, z: float = 1.96, shard: str | None = None) -> QaEstimate:
        """Share of good masks over all verdicts (or one shard's), with its Wilson interval."""
        vs = [v for v in self.verdicts.values() if shard is None or v.shard == shard]
        good = sum(v.good for v in vs)
        low, high = wilson_interval(good, len(vs), z)
        confidence = math.erf(z / math.sqrt(2))
        return QaEstimate(len(vs), good, good / len(vs) if vs else 0.0, low, high, confidence)

    def by_shard(self, z: float = 1.96) -> dict[str, QaEstimate]:
        return {s: self.estimate(z, s) for s in sorted({v.shard for v in self.verdicts.values()})}


class SimulatedQaJudge:
    """The QA check's stand-in for a person: judges a sampled shard mask good when its IoU with the
    best-matching ground-truth mask is at least ``threshold`` (the stages' reviewers, who fix masks, are
    :class:`sam_engine.workforce.simulated.SimulatedReviewer`).

    ``ground_truth`` maps image id to a list of COCO RLEs (or annotations with a ``segmentation``).
    """

    def __init__(self, ground_truth: dict[int, list[dict]], threshold: float = 0.75, name: str = "simulated"):
        self.ground_truth = {
            int(k): [g.get("segmentation", g) if "counts" not in g else g for g in v]
            for k, v in ground_truth.items()
        }
        self.threshold = threshold
        self.name = name

    def best_iou(self, item: QaItem) -> float:
        gt = self.ground_truth.get(item.image_id, [])
        if not gt:
            return 0.0
        return float(rle_utils.iou_matrix([item.segmentation], gt).max())

    def __call__(self, item: QaItem) -> bool:
        return self.best_iou(item) >= self.threshold


def review(
    items: Iterable[QaItem],
    judge: Callable[[QaItem], bool],
    collector: VerdictCollector | None = None,
    reviewer: str | None = None,
) -> VerdictCollector:
    """Run ``judge`` on every item and collect the verdicts."""
    collector = collector if collector is not None else VerdictCollector()
    name = reviewer if reviewer is not None else getattr(judge, "name", "")
    for item in items:
        collector.add(item, judge(item), name)
    return collector
