"""Stage 2 (semi-automatic): route model v1's proposals by predicted IoU and choose images for human work.

Routing (:func:`route`): predicted IoU >= ``accept_iou`` → auto-accepted (``source='model'``, ``accepted``);
``review_iou`` <= predicted IoU < ``accept_iou`` → review queue (``pending_review`` plus a review task per
mask); below ``review_iou`` → discarded (not stored unless ``keep_discarded``, then ``rejected``).

Diversity sampler (:func:`sample_images`): images for human "complete" work, ordered by

    score = w_conf * (1 - mean predicted IoU of the image's proposals)      (low model confidence)
          + w_region * region_deficit(region)                               (under-covered regions)
          + w_cover * (1 - coverage of the image by accepted masks)        (optional, 0 by default)

where ``region_deficit(r) = max(0, t_r - c_r / C) / t_r`` compares region r's share of the human-annotated
images so far (``c_r`` of ``C``, counting each image already chosen in this call) with its target share
``t_r`` (uniform over regions by default). An image with no proposal has mean predicted IoU 0. Picking is
greedy and updates the deficits after every pick, so one region does not take the whole batch; ties break
in a seeded random order.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .data import rle as rle_utils

if TYPE_CHECKING:
    from sam_engine.quality.store import QualityStore

ACCEPT, REVIEW, DISCARD = "accept", "review", "discard"


@dataclass(frozen=True)
class RoutingConfig:
    """Predicted-IoU thresholds of stage-2 routing, and the stability score each route needs too (a
    proposal without a stability score passes those)."""

    accept_iou: float = 0.9
    review_iou: float = 0.7
    accept_stability: float = 0.0
    review_stability: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.review_iou <= self.accept_iou <= 1.0:
            raise ValueError(
                f"need 0 <= review_iou <= accept_iou <= 1, got review_iou={self.review_iou}, "
                f"accept_iou={self.accept_iou}"
            )


def route(
    predicted_iou: float | None, config: RoutingConfig | None = None, stability: float | None = None
) -> str:
    """``accept`` / ``review`` / ``discard`` for one proposal (a missing predicted IoU is discarded)."""
    config = config or RoutingConfig()
    if predicted_iou is None or not np.isfinite(predicted_iou):
        return DISCARD
    stab = float("inf") if stability is None or not np.isfinite(stability) else stability
    if predicted_iou >= config.accept_iou and stab >= config.accept_stability:
        return ACCEPT
    if predicted_iou >= config.review_iou and stab >= config.review_stability:
        return REVIEW
    return DISCARD


@dataclass
class Routed:
    """Proposals split by route (each list keeps the input dicts)."""

    accept: list[dict] = field(default_factory=list)
    review: list[dict] = field(default_factory=list)
    discard: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {ACCEPT: len(self.accept), REVIEW: len(self.review), DISCARD: len(self.discard)}


def route_proposals(
    proposals: Sequence[Mapping[str, Any]],
    config: RoutingConfig | None = None,
    score_key: str = "predicted_iou",
) -> Routed:
    """Split proposals (SA-1B style dicts with ``predicted_iou``) into accept / review / discard by
    ``score_key`` (the predicted IoU, or a calibrated ``quality``) and the stability score."""
    out = Routed()
    for i, p in enumerate(proposals):
        for key in {"predicted_iou", score_key}:
            if key not in p:
                raise ValueError(f"proposal {i}: missing field {key!r}")
        getattr(out, route(p[score_key], config, p.get("stability_score"))).append(dict(p))
    return out


@dataclass
class RoutingReport:
    image_id: int
    counts: dict[str, int]
    mean_predicted_iou: float
    coverage: float
    mask_ids: dict[str, list[Any]] = field(default_factory=dict)
    review_task_ids: list[Any] = field(default_factory=list)


def _rle(segmentation: Any) -> dict:
    return json.loads(segmentation) if isinstance(segmentation, str) else segmentation


def coverage(rles: Sequence[dict], height: int, width: int) -> float:
    """Share of the image's pixels covered by the union of ``rles``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not rles:
        return 0.0
    union = np.zeros((height, width), dtype=bool)
    for r in rles:
        m = rle_utils.decode(_rle(r))
        if m.shape != (height, width):
            raise ValueError(f"mask size {m.shape} differs from the image's ({height}, {width})")
        union |= m
    return float(union.mean())


def mean_predicted_iou(proposals: Sequence[Mapping[str, Any]]) -> float:
    """Mean predicted IoU of an image's proposals (0 when the model proposed nothing)."""
    vals = [float(p["predicted_iou"]) for p in proposals if p.get("predicted_iou") is not None]
    return float(np.mean(vals)) if vals else 0.0


def proposal_prompt(proposal: Mapping[str, Any]) -> dict | None:
    """The prompt that made a generated mask (its ``point_coords``, SA-1B's field), in the session's stored
    form, so a reviewer can start a fix from it; None when the proposal does not record one."""
    points = proposal.get("point_coords")
    if not points:
        return None
    return {"points": [[float(x), float(y), 1] for x, y in points], "box": None}


def commit_proposals(
    store: QualityStore,
    image_id: int,
    proposals: Sequence[Mapping[str, Any]],
    *,
    height: int,
    width: int,
    stage: int = 2,
    config: RoutingConfig | None = None,
    create_reviews: bool = True,
    keep_discarded: bool = False,
    reviewer_roles: Sequence[str] = ("reviewer",),
    batch: str | None = None,
    score_key: str = "predicted_iou",
) -> RoutingReport:
    """Route one image's proposals and write them to the store (``source='model'``).

    Each proposal needs ``segmentation`` (COCO RLE) and ``predicted_iou``; ``stability_score`` and the
    prompt (``point_coords``) are stored when present. Empty masks are discarded whatever their score.
    """
    routed = route_proposals(proposals, config, score_key)
    empty = [p for p in routed.accept + routed.review if rle_utils.area(_rle(p["segmentation"])) == 0]
    if empty:  # an empty mask is no object: discard whatever its score
        routed.accept = [p for p in routed.accept if all(p is not e for e in empty)]
        routed.review = [p for p in routed.review if all(p is not e for e in empty)]
        routed.discard.extend(empty)
    status = {ACCEPT: "accepted", REVIEW: "pending_review", DISCARD: "rejected"}
    ids: dict[str, list[Any]] = {ACCEPT: [], REVIEW: [], DISCARD: []}
    groups = [ACCEPT, REVIEW] + ([DISCARD] if keep_discarded else [])
    with store.transaction():
        for name in groups:
            for p in getattr(routed, name):
                if name == DISCARD and rle_utils.area(_rle(p["segmentation"])) == 0:
                    continue  # the store keeps no empty mask
                ids[name].append(
                    store.commit_mask(
                        task_id=None,
                        image_id=int(image_id),
                        annotator_id=None,
                        stage=stage,
                        source="model",
                        rle=_rle(p["segmentation"]),
                        predicted_iou=float(p["predicted_iou"]),
                        stability_score=p.get("stability_score"),
                        clicks=0,
                        seconds=0.0,
                        status=status[name],
                        prompt=proposal_prompt(p),
                    )
                )
    report = RoutingReport(
        image_id=int(image_id),
        counts=routed.counts(),
        mean_predicted_iou=mean_predicted_iou(proposals),
        coverage=coverage([_rle(p["segmentation"]) for p in routed.accept], height, width),
        mask_ids=ids,
    )
    if create_reviews and ids[REVIEW]:
        from .workforce.queue import create_review_tasks

        report.review_task_ids = create_review_tasks(
            store, [(int(image_id), m) for m in ids[REVIEW]], stage=stage, roles=reviewer_roles, batch=batch
        )
    return report


def store_coverage(
    store: QualityStore, image_sizes: Mapping[int, tuple[int, int]], stage: int | None = None
) -> pd.Series:
    """Coverage by accepted masks (of ``stage``, or all stages) of each image in ``image_sizes``
    (image_id -> (height, width)), as a Series indexed by image id."""
    masks = store.masks(stage=stage, status="accepted")
    by_image = {} if not len(masks) else {k: list(g["segmentation"]) for k, g in masks.groupby("image_id")}
    return pd.Series(
        {int(i): coverage(by_image.get(int(i), []), h, w) for i, (h, w) in image_sizes.items()}, dtype=float
    )


@dataclass(frozen=True)
class SamplerWeights:
    """Weights of the diversity sampler's score (see the module docstring)."""

    confidence: float = 1.0
    region: float = 1.0
    coverage: float = 0.0

    def __post_init__(self) -> None:
        if min(self.confidence, self.region, self.coverage) < 0:
            raise ValueError(f"sampler weights must be >= 0, got {self}")


def region_deficit(counts: Mapping[str, float], targets: Mapping[str, float]) -> dict[str, float]:
    """``max(0, t_r - c_r / C) / t_r`` per region of ``targets`` (1 for every region while C is 0)."""
    total = float(sum(counts.get(r, 0.0) for r in targets))
    out = {}
    for r, t in targets.items():
        if t <= 0:
            out[r] = 0.0
        elif total == 0:
            out[r] = 1.0
        else:
            out[r] = max(0.0, t - counts.get(r, 0.0) / total) / t
    return out


def sample_images(
    candidates: pd.DataFrame,
    n: int | None = None,
    *,
    weights: SamplerWeights | None = None,
    region_counts: Mapping[str, float] | None = None,
    region_targets: Mapping[str, float] | None = None,
    seed: int = 0,
) -> list[int]:
    """Order candidate images for human work, best first (at most ``n``).

    ``candidates`` columns: ``image_id``, ``region``, ``mean_predicted_iou`` and, when ``weights.coverage``
    > 0, ``coverage``. ``region_counts``: human-annotated images per region so far. ``region_targets``:
    target shares (normalized; default uniform over the candidates' and counts' regions).
    """
    weights = weights or SamplerWeights()
    needed = ["image_id", "region", "mean_predicted_iou"] + (["coverage"] if weights.coverage > 0 else [])
    missing = [c for c in needed if c not in candidates.columns]
    if missing:
        raise ValueError(f"sample_images: candidates lack column(s) {missing}")
    if candidates["image_id"].duplicated().any():
        raise ValueError("sample_images: duplicate image_id in candidates")
    df = candidates.reset_index(drop=True)
    regions = df["region"].fillna("").astype(str)
    counts = {str(k): float(v) for k, v in (region_counts or {}).items()}
    if region_targets is None:
        names = sorted(set(regions) | set(counts))
        targets = {r: 1.0 / len(names) for r in names}
    else:
        s = float(sum(region_targets.values()))
        if s <= 0:
            raise ValueError("region_targets must have a positive sum")
        targets = {str(r): float(v) / s for r, v in region_targets.items()}
        for r in set(regions):
            targets.setdefault(r, 0.0)
    conf = 1.0 - df["mean_predicted_iou"].fillna(0.0).clip(0.0, 1.0).to_numpy(dtype=float)
    base = weights.confidence * conf
    if weights.coverage > 0:
        base = base + weights.coverage * (
            1.0 - df["coverage"].fillna(0.0).clip(0.0, 1.0).to_numpy(dtype=float)
        )
    tie = np.random.default_rng(seed).permutation(len(df))
    heaps: dict[str, list[tuple[float, int, int]]] = {}
    for i, r in enumerate(regions):
        heaps.setdefault(r, []).append((-float(base[i]), int(tie[i]), i))
    for h in heaps.values():
        heapq.heapify(h)
    limit = len(df) if n is None else min(int(n), len(df))
    out: list[int] = []
    while len(out) < limit:
        deficit = region_deficit(counts, targets)
        best = None
        for r, h in heaps.items():
            if not h:
                continue
            neg, t, i = h[0]
            key = (-neg + weights.region * deficit.get(r, 0.0), -t)
            if best is None or key > best[0]:
                best = (key, r)
        assert best is not None
        _, _, i = heapq.heappop(heaps[best[1]])
        counts[best[1]] = counts.get(best[1], 0.0) + 1.0
        out.append(int(df.at[i, "image_id"]))
    return out
