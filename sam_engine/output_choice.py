"""Which of a first click's three outputs to show: the IoU head's scores re-fitted per model version on masks
people made in the engine (never gold).

For one click the model answers with three masks (SAM's ambiguity outputs) and an IoU head that predicts each
one's IoU; the predictor shows the highest. Here that head ranks its outputs poorly: on run N's gold objects
v2's chosen outputs averaged IoU 0.734 while always taking the first output gave 0.741 and the better of the
three 0.816 (the difference in predicted IoU between two outputs was uncorrelated with which was better).

:class:`OutputChoice` predicts each output's IoU with the object from what the answer itself shows — the head's
score, the mask's stability (share of its pixels whose logit clears the threshold by 1), its size against the
other outputs' and the colour contrast across its outline (:func:`~sam_engine.amg.contrast.edge_contrast`), plus
a bias per output — by ridge least squares on first clicks at objects people segmented
(:func:`fit_output_choice`). :class:`ChoicePredictor` returns those predictions as the scores of an answer to
prompts without a previous mask, so everything that shows "the best" output (the annotation session, the click
protocol) shows the re-scored one. Answers that refine a previous mask keep the model's scores.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .wrapped_predictor import PredictorWrapper

FEATURES = ("bias_0", "bias_1", "bias_2", "predicted_iou", "stability", "relative_log_area", "log_contrast")
MIN_OBJECTS = 50  # fewer labelled objects fit no choice: the IoU head stays


def choice_features(
    logits: np.ndarray, scores: np.ndarray, image: np.ndarray, threshold: float
) -> np.ndarray:
    """(C, len(FEATURES)) features of an answer's C = 3 outputs: ``logits`` (C, H, W), ``scores`` (C,)."""
    from .amg.contrast import edge_contrast

    logits = np.asarray(logits, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if logits.ndim != 3 or len(logits) != 3 or len(scores) != 3:
        raise ValueError(
            f"output choice: needs 3 outputs, got logits {logits.shape} and {len(scores)} scores"
        )
    masks = logits > threshold
    firm = (logits > threshold + 1.0).sum(axis=(1, 2))
    loose = (logits > threshold - 1.0).sum(axis=(1, 2))
    stability = firm / np.maximum(loose, 1)
    log_area = np.log1p(masks.sum(axis=(1, 2)))
    contrast = np.log1p(edge_contrast(image, masks))
    return np.column_stack([np.eye(3), scores, stability, log_area - log_area.mean(), contrast])


@dataclass(frozen=True)
class OutputChoice:
    """A fitted re-scoring: ``weights`` over :data:`FEATURES`; ``objects`` labelled first clicks it saw."""

    weights: tuple[float, ...]
    objects: int

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ValueError(f"output choice: {len(self.weights)} weights for features {list(FEATURES)}")

    def scores(
        self, logits: np.ndarray, scores: np.ndarray, image: np.ndarray, threshold: float
    ) -> np.ndarray:
        """The outputs' predicted IoUs (clipped to [0, 1])."""
        x = choice_features(logits, scores, image, threshold)
        return np.clip(x @ np.asarray(self.weights), 0.0, 1.0).astype(np.float32)

    def as_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "weights": list(self.weights), "objects": self.objects}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutputChoice:
        if list(d.get("features", FEATURES)) != list(FEATURES):
            raise ValueError(f"output choice: stored features {d.get('features')} are not {list(FEATURES)}")
        return cls(tuple(float(w) for w in d["weights"]), int(d["objects"]))


def recorded_output_choice(checkpoint: str | Path) -> OutputChoice | None:
    """The choice recorded beside a model-store checkpoint (``meta.json``'s ``data.output_choice``, written by the
    version's gold evaluation), or None; a damaged record raises a :class:`~sam_engine.data.errors.DataError`
    that names the file, the version and the field."""
    import json

    from .data.errors import DataError

    meta = Path(checkpoint).parent / "meta.json"
    if not meta.exists():
        return None
    try:
        stored = (json.loads(meta.read_text()).get("data") or {}).get("output_choice")
        return OutputChoice.from_dict(stored) if stored else None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(str(meta), meta.parent.name, "data.output_choice", str(e)) from None


def fit_output_choice(
    predictor: Any,
    corpus: Any,
    max_objects: int = 600,
    seed: int = 0,
    ridge: float = 1e-3,
    workers: int | None = None,
) -> OutputChoice | None:
    """Fit :class:`OutputChoice` on the first clicks (the protocol's, at each object's deepest point) at a seeded
    sample of ``corpus``'s objects; None with fewer than :data:`MIN_OBJECTS` objects. The images are spread
    over forked workers (:func:`~sam_engine.parallel.fork_map`; ``workers`` None: one per torch thread), with
    the same result as one process."""
    from .evaluation.interactive import corpus_objects
    from .parallel import fork_map

    objects = corpus_objects(corpus, max_objects, seed, min_area=16)
    groups = [list(g) for _, g in itertools.groupby(objects, key=lambda o: o.image_key)]
    threshold = float(getattr(predictor, "mask_threshold", 0.0))
    answers = fork_map(lambda group: _first_clicks(predictor, group, threshold), groups, workers)
    rows = [r for part in answers for r in part[0]]
    targets = [t for part in answers for t in part[1]]
    if len(rows) < MIN_OBJECTS:
        return None
    a = np.concatenate(rows)
    b = np.concatenate(targets)
    weights = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ b)
    return OutputChoice(tuple(float(w) for w in weights), len(rows))


def _first_clicks(
    predictor: Any, objects: list[Any], threshold: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Features and IoUs of the three outputs answering each object's first click (objects of one image)."""
    from .evaluation.clicks import clicks_to_arrays, first_click
    from .evaluation.interactive import set_image

    rows, targets = [], []
    image = None
    for obj in objects:
        gt = np.asarray(obj.gt() if callable(obj.gt) else obj.gt, dtype=bool)
        click = first_click(gt, obj.ignore) if gt.any() else None
        if click is None:
            continue
        if image is None:
            image = obj.image() if callable(obj.image) else obj.image
            set_image(predictor, image, obj.image_key)
        coords, labels = clicks_to_arrays([click])
        logits, scores, _ = predictor.predict(coords, labels, None, None, True, True)
        logits = np.asarray(logits, dtype=np.float32)
        masks = logits > threshold
        inter = (masks & gt).sum(axis=(1, 2))
        union = (masks | gt).sum(axis=(1, 2))
        rows.append(choice_features(logits, scores, image, threshold))
        targets.append(inter / np.maximum(union, 1))
    return rows, targets


class ChoicePredictor(PredictorWrapper):
    """An interactive predictor whose answers to fresh prompts (no previous mask) carry :class:`OutputChoice`
    scores; every other call and attribute is the wrapped predictor's."""

    def __init__(self, predictor: Any, choice: OutputChoice) -> None:
        super().__init__(predictor)
        self.choice = choice
        self._image: np.ndarray | None = None

    def set_image(self, image: np.ndarray, image_key: Hashable | None = None) -> None:
        super().set_image(image, image_key)
        self._image = image

    def reset_image(self) -> None:
        super().reset_image()
        self._image = None

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        **extra: Any,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As the wrapped ``predict``; a fresh three-output answer gets the re-scored IoUs."""
        if mask_input is not None or not multimask_output or self._image is None:
            return self.base.predict(
                point_coords, point_labels, box, mask_input, multimask_output, return_logits, **extra
            )
        logits, scores, low = self.base.predict(point_coords, point_labels, box, None, True, True, **extra)
        logits = np.asarray(logits)
        if len(logits) != 3:
            return (logits if return_logits else logits > self.mask_threshold), scores, low
        rescored = self.choice.scores(logits, scores, self._image, self.mask_threshold)
        return (logits if return_logits else logits > self.mask_threshold), rescored, low
