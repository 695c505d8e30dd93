"""Gold-standard honeypots: score a submitted mask against expert GT, give feedback, track accuracy.

A honeypot is a gold-set image served as an ordinary task. Each mask submitted on it is scored by the IoU
of its best-matching GT object: among the GT objects containing the annotator's click when a click is given
(a click inside a part and its whole may mean either, so the best of those), else among all GT objects of
the image. The score goes to ``gold_scores`` and the annotator gets the IoU and a message at once.
Per-annotator accuracy is the mean gold IoU; consensus weights shrink it toward a prior so one lucky or
unlucky honeypot does not dominate: ``w = (sum IoU + prior_n * prior_mean) / (n + prior_n)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..data import rle as rle_utils
from ..data.corpus import MaskCorpus

if TYPE_CHECKING:
    from sam_engine.quality.store import QualityStore

# (lower IoU bound, message), best first.
FEEDBACK_BANDS: tuple[tuple[float, str], ...] = (
    (0.90, "Excellent: matches the reference mask."),
    (0.75, "Good: the outline could follow the object's boundary more tightly."),
    (0.50, "Partial: parts of the object are missing or extra area is included."),
    (0.0, "Does not match a reference object: check which object you meant and its extent."),
)
PASS_IOU = 0.75


@dataclass(frozen=True)
class GoldFeedback:
    """Immediate feedback for one honeypot mask."""

    mask_id: Any
    gold_ann_id: Any
    iou: float
    passed: bool
    message: str


def feedback_message(iou: float) -> str:
    """The message for a gold IoU (see ``FEEDBACK_BANDS``)."""
    for bound, message in FEEDBACK_BANDS:
        if iou >= bound:
            return message
    return FEEDBACK_BANDS[-1][1]


def _rle(segmentation: Any) -> dict:
    return json.loads(segmentation) if isinstance(segmentation, str) else segmentation


def best_match(
    rle: dict, gold: Sequence[Mapping[str, Any]], point: tuple[float, float] | None = None
) -> tuple[Any, float]:
    """(id, IoU) of the GT annotation in ``gold`` that best matches ``rle`` (``(None, 0.0)`` if none).

    ``gold`` items have ``id`` and ``segmentation`` (COCO RLE). With ``point`` (x, y), only GT objects that
    contain it compete, when any does.
    """
    if not gold:
        return None, 0.0
    rles = [_rle(g["segmentation"]) for g in gold]
    candidates = list(range(len(gold)))
    if point is not None:
        x, y = int(round(point[0])), int(round(point[1]))
        inside = []
        for i, r in enumerate(rles):
            m = rle_utils.decode(r)
            if 0 <= y < m.shape[0] and 0 <= x < m.shape[1] and m[y, x]:
                inside.append(i)
        candidates = inside or candidates
    ious = rle_utils.iou_matrix([rle], [rles[i] for i in candidates])[0]
    k = int(np.argmax(ious))
    return gold[candidates[k]]["id"], float(ious[k])


class GoldStandard:
    """The gold set's annotations by image id, and scoring of honeypot submissions into the store."""

    def __init__(self, annotations: Mapping[int, Sequence[Mapping[str, Any]]]):
        self.annotations = {int(k): list(v) for k, v in annotations.items()}

    @classmethod
    def from_corpus(cls, corpus: MaskCorpus) -> GoldStandard:
        return cls(corpus.annotations)

    def is_gold(self, image_id: int) -> bool:
        return int(image_id) in self.annotations

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.annotations)

    def score(
        self,
        store: QualityStore,
        *,
        mask_id: Any,
        image_id: int,
        annotator_id: Any,
        rle: dict,
        point: tuple[float, float] | None = None,
    ) -> GoldFeedback:
        """Score one submitted mask, record it in ``gold_scores`` and return the annotator's feedback."""
        if not self.is_gold(image_id):
            raise KeyError(f"image {image_id} is not in the gold set")
        gold_id, iou = best_match(rle, self.annotations[int(image_id)], point)
        _record(store, annotator_id, mask_id, gold_id, iou)
        return GoldFeedback(mask_id, gold_id, iou, iou >= PASS_IOU, feedback_message(iou))

    def score_task(self, store: QualityStore, task_id: Any) -> list[GoldFeedback]:
        """Score every mask committed for honeypot task ``task_id`` that has no gold score yet."""
        task = store.get_task(task_id)
        if task is None:
            raise KeyError(f"task {task_id} does not exist")
        image_id = int(task["image_id"])
        masks = store.masks(status=None, task_id=task_id)
        masks = masks[masks["source"] == "human"]
        scored = set(store.gold_scores()["mask_id"].dropna().astype(int))
        out = []
        for row in masks.itertuples(index=False):
            if int(row.mask_id) in scored:
                continue
            out.append(
                self.score(
                    store,
                    mask_id=row.mask_id,
                    image_id=image_id,
                    annotator_id=row.annotator_id,
                    rle=row.rle,
                    point=first_positive_point(row.prompt),
                )
            )
        return out

    def recall(self, rles: Sequence[dict], image_id: int, iou: float = 0.5) -> float:
        """Share of the image's GT objects matched by some submitted mask at ``iou`` (honeypot recall)."""
        gold = self.annotations.get(int(image_id), [])
        if not gold:
            return 1.0
        if not rles:
            return 0.0
        m = rle_utils.iou_matrix([_rle(g["segmentation"]) for g in gold], list(rles))
        return float((m.max(axis=1) >= iou).mean())


def first_positive_point(prompt: Any) -> tuple[float, float] | None:
    """The first positive click of a stored prompt (``{"points": [[x, y, label], ...]}``), if any."""
    if prompt is None or (isinstance(prompt, float) and np.isnan(prompt)):
        return None
    if isinstance(prompt, str):
        prompt = json.loads(prompt)
    for x, y, label in (prompt or {}).get("points") or []:
        if int(label) == 1:
            return float(x), float(y)
    return None


def _record(store: QualityStore, annotator_id: Any, mask_id: Any, gold_ann_id: Any, iou: float) -> None:
    store.add_gold_score(
        annotator_id=None if annotator_id is None else str(annotator_id),
        mask_id=None if mask_id is None else int(mask_id),
        gold_ann_id=None if gold_ann_id is None else int(gold_ann_id),
        iou=float(iou),
    )


def gold_accuracy(scores: pd.DataFrame) -> pd.DataFrame:
    """Per annotator: honeypot masks scored, mean gold IoU, share passing (IoU >= ``PASS_IOU``)."""
    cols = ["annotator_id", "gold_n", "gold_iou", "gold_pass_rate"]
    if not len(scores):
        return pd.DataFrame(columns=cols)
    g = scores.groupby("annotator_id")["iou"]
    out = pd.DataFrame(
        {
            "gold_n": g.size(),
            "gold_iou": g.mean(),
            "gold_pass_rate": g.apply(lambda s: (s >= PASS_IOU).mean()),
        }
    ).reset_index()
    return out[cols]


def annotator_weights(
    scores: pd.DataFrame, prior_mean: float = 0.7, prior_n: float = 3.0
) -> dict[Any, float]:
    """Consensus weight per annotator: gold IoU shrunk toward ``prior_mean`` by ``prior_n`` pseudo-scores."""
    if not len(scores):
        return {}
    g = scores.groupby("annotator_id")["iou"].agg(["sum", "size"])
    w = (g["sum"] + prior_n * prior_mean) / (g["size"] + prior_n)
    return {k: float(v) for k, v in w.items()}
