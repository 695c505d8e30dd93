"""Consensus of several annotators' masks of one image: match by IoU, merge by weighted pixel vote, flag.

Matching: annotators are taken in order of weight (then id); the first one's masks seed the objects; every
further annotator's masks are matched to the objects' current consensus masks by the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment`` on IoU), pairs at IoU >= ``match_iou`` (0.5) join, the rest start
new objects. One annotator contributes at most one mask per object.

Merge: a pixel is in the consensus mask when the weights of the members that cover it reach
``vote_threshold`` (0.5) of the members' total weight; the weight of an annotator is its accuracy on gold
honeypots (:func:`sam_engine.workforce.gold.annotator_weights`), ``default_weight`` when unknown.

Agreement of an object = mean pairwise IoU of its member masks. An object is flagged for review when its
agreement is below ``min_agreement`` or when fewer than ``min(min_support, annotators on the image)``
annotators drew it (a singleton: one annotator's object the others did not draw: a miss by the others or a
spurious mask; the reviewer decides). Flagged objects are committed with status ``flag_status`` and a review
task is created per flagged mask; the others are committed ``accepted``. All with ``source='consensus'``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from ..data import rle as rle_utils

if TYPE_CHECKING:
    from sam_engine.quality.store import QualityStore


@dataclass(frozen=True)
class ConsensusConfig:
    """Thresholds of matching, voting and flagging (see the module docstring)."""

    match_iou: float = 0.5
    vote_threshold: float = 0.5
    min_agreement: float = 0.75
    min_support: int = 2
    default_weight: float = 0.5
    min_weight: float = 0.05
    flag_status: str = "pending_review"

    def __post_init__(self) -> None:
        if not 0.0 < self.match_iou <= 1.0:
            raise ValueError(f"match_iou must be in (0, 1], got {self.match_iou}")
        if not 0.0 < self.vote_threshold <= 1.0:
            raise ValueError(f"vote_threshold must be in (0, 1], got {self.vote_threshold}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in [0, 1], got {self.min_agreement}")
        if self.min_support < 1:
            raise ValueError(f"min_support must be >= 1, got {self.min_support}")


@dataclass(frozen=True)
class AnnotatorMask:
    """One annotator's mask of one object (``mask`` as HxW bool)."""

    mask_id: Any
    annotator_id: Any
    mask: np.ndarray


@dataclass
class ConsensusObject:
    """One merged object: consensus mask, members, agreement, and whether (and why) it is flagged."""

    mask: np.ndarray
    member_mask_ids: list[Any]
    annotator_ids: list[Any]
    agreement: float | None  # mean pairwise IoU of members; None for a single member
    support: int
    flagged: bool = False
    reason: str = ""
    member_ious: dict[Any, float] = field(default_factory=dict)  # annotator -> IoU with the consensus


def _vote(members: Sequence[AnnotatorMask], weights: Sequence[float], threshold: float) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    stack = np.stack([m.mask for m in members]).astype(np.float64)
    score = np.tensordot(w, stack, axes=1)
    out = score >= threshold * w.sum() - 1e-9
    if not out.any():  # disjoint members: keep the heaviest member's mask
        out = members[int(np.argmax(w))].mask.copy()
    return out


def consensus_image(
    masks: Sequence[AnnotatorMask],
    weights: Mapping[Any, float] | None = None,
    config: ConsensusConfig | None = None,
) -> list[ConsensusObject]:
    """Merge the masks several annotators drew on one image into consensus objects (largest first)."""
    config = config or ConsensusConfig()
    weights = weights or {}

    def weight(a: Any) -> float:
        return max(config.min_weight, float(weights.get(a, config.default_weight)))

    by_annotator: dict[Any, list[AnnotatorMask]] = {}
    for m in masks:
        if m.mask.shape != masks[0].mask.shape:
            raise ValueError(f"mask {m.mask_id}: shape {m.mask.shape} differs from {masks[0].mask.shape}")
        by_annotator.setdefault(m.annotator_id, []).append(m)
    order = sorted(by_annotator, key=lambda a: (-weight(a), str(a)))
    n_annotators = len(order)

    clusters: list[list[AnnotatorMask]] = []
    refs: list[np.ndarray] = []
    for a in order:
        own = by_annotator[a]
        matched: set[int] = set()
        if clusters:
            iou = np.array([[rle_utils.mask_iou(m.mask, r, empty=0.0) for r in refs] for m in own])
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols, strict=True):
                if iou[r, c] >= config.match_iou:
                    clusters[c].append(own[r])
                    matched.add(r)
                    members = clusters[c]
                    refs[c] = _vote(members, [weight(x.annotator_id) for x in members], config.vote_threshold)
        for r, m in enumerate(own):
            if r not in matched:
                clusters.append([m])
                refs.append(m.mask.copy())

    needed = min(config.min_support, n_annotators)
    out = []
    for members, ref in zip(clusters, refs, strict=True):
        ious = [rle_utils.mask_iou(x.mask, y.mask, empty=0.0) for x, y in itertools.combinations(members, 2)]
        agreement = float(np.mean(ious)) if ious else None
        reasons = []
        if len(members) < needed:
            reasons.append("singleton" if len(members) == 1 else "low_support")
        if agreement is not None and agreement < config.min_agreement:
            reasons.append("low_agreement")
        out.append(
            ConsensusObject(
                mask=ref,
                member_mask_ids=[m.mask_id for m in members],
                annotator_ids=[m.annotator_id for m in members],
                agreement=agreement,
                support=len(members),
                flagged=bool(reasons),
                reason=",".join(reasons),
                member_ious={m.annotator_id: rle_utils.mask_iou(m.mask, ref, empty=0.0) for m in members},
            )
        )
    out.sort(key=lambda o: -int(o.mask.sum()))
    return out


@dataclass
class ConsensusReport:
    """What one consensus run did."""

    images: int = 0
    objects: int = 0
    flagged: int = 0
    mask_ids: list[Any] = field(default_factory=list)
    review_task_ids: list[Any] = field(default_factory=list)
    agreement: list[dict] = field(default_factory=list)  # one row per object: image, agreement, support, flag

    def agreement_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            self.agreement, columns=["image_id", "mask_id", "agreement", "support", "flagged", "reason"]
        )


def run_consensus(
    store: QualityStore,
    stage: int,
    *,
    weights: Mapping[Any, float] | None = None,
    config: ConsensusConfig | None = None,
    image_ids: Iterable[int] | None = None,
    create_reviews: bool = True,
    reviewer_roles: Sequence[str] = ("reviewer",),
    batch: str | None = None,
) -> ConsensusReport:
    """Consensus for every image of ``stage`` that two or more annotators worked and that has none yet
    (honeypot submissions are left out: gold images are scored against their GT instead).

    Reads accepted human masks, commits ``source='consensus'`` masks (``accepted``, or ``config.flag_status``
    when flagged) and, with ``create_reviews``, one review task per flagged mask. ``weights`` default to
    the annotators' shrunk gold accuracy (:func:`~sam_engine.workforce.gold.annotator_weights`).
    """
    config = config or ConsensusConfig()
    if weights is None:
        from .gold import annotator_weights

        weights = annotator_weights(store.gold_scores())
    human = store.masks(stage=stage, status="accepted")
    human = human[human["source"] == "human"]
    tasks = store.tasks(stage=stage)
    honeypots = set(tasks.loc[tasks["kind"] == "honeypot", "task_id"]) if len(tasks) else set()
    human = human[~human["task_id"].isin(honeypots)]  # gold images are scored against GT, not merged
    done = set(_consensus_images(store, stage))
    if image_ids is not None:
        wanted = set(int(i) for i in image_ids)
        human = human[human["image_id"].isin(wanted)]
    report = ConsensusReport()
    flagged: list[tuple[int, Any]] = []
    for image_id, group in human.groupby("image_id", sort=True):
        if int(image_id) in done or group["annotator_id"].nunique() < 2:
            continue
        items = [
            AnnotatorMask(row.mask_id, row.annotator_id, rle_utils.decode(row.rle))
            for row in group.itertuples(index=False)
        ]
        objects = consensus_image(items, weights, config)
        report.images += 1
        with store.transaction():
            for obj in objects:
                mask_id = store.commit_mask(
                    task_id=None,
                    image_id=int(image_id),
                    annotator_id=None,
                    stage=stage,
                    source="consensus",
                    rle=rle_utils.encode(obj.mask),
                    predicted_iou=obj.agreement,
                    clicks=0,
                    seconds=0.0,
                    status=config.flag_status if obj.flagged else "accepted",
                )
                report.mask_ids.append(mask_id)
                if obj.flagged:
                    flagged.append((int(image_id), mask_id))
                report.agreement.append(
                    {
                        "image_id": int(image_id),
                        "mask_id": mask_id,
                        "agreement": obj.agreement,
                        "support": obj.support,
                        "flagged": obj.flagged,
                        "reason": obj.reason,
                    }
                )
        report.objects += len(objects)
        report.flagged += sum(o.flagged for o in objects)
    if create_reviews and flagged:
        from .queue import create_review_tasks

        report.review_task_ids = create_review_tasks(
            store, flagged, stage=stage, roles=reviewer_roles, batch=batch
        )
    return report


def _consensus_images(store: QualityStore, stage: int) -> list[int]:
    df = store.masks(stage=stage, status=None)
    if not len(df):
        return []
    return sorted(set(df.loc[df["source"] == "consensus", "image_id"].astype(int)))


def resolved_masks(store: QualityStore, stage: int) -> pd.DataFrame:
    """The stage's accepted masks with overlap images resolved: consensus masks where an image has them,
    the human / model masks otherwise (what a training set should read)."""
    df = store.masks(stage=stage, status="accepted")
    if not len(df):
        return df
    with_consensus = set(df.loc[df["source"] == "consensus", "image_id"])
    keep = (df["source"] == "consensus") | ~df["image_id"].isin(with_consensus)
    return df[keep].reset_index(drop=True)
