"""Automatic-mask filters chosen per model version on gold images, to reach a target precision.

SAM keeps masks with predicted IoU > 0.88 and stability >= 0.95; those numbers presume SAM's calibration. A
model trained here has its own, and a few thousand CPU steps leave its IoU head a weak ranker, so each
version's filter is measured instead. The generator runs with relaxed filters on a seeded half of the gold
images (the *calibration* half) and every candidate is scored against the gold ground truth (its best IoU
with any gold mask: whole, part or subpart). Then, as Platt scaling calibrates a classifier:

- a :class:`QualityModel` (logistic regression) learns the probability that a candidate is right (IoU above
  ``match_iou``) from what the generator knows about it: the predicted IoU, the stability score, how well the
  mask agrees with the image's regions (:mod:`sam_engine.snap`), its size, the colour contrast across its
  outline (:mod:`.contrast`) and its shape (pieces, holes, ragged outline; :mod:`.shape`);
- :func:`choose_threshold` picks, for each target precision, the lowest probability cut whose kept candidates
  are right at least that often (keeping the most right ones).

The generator then runs with that model and cut on the other half (*held out*), and the precision measured
there is reported beside the calibration precision, so a filter that only fits its own half shows.
:func:`choose_thresholds` is the same search over SAM's two thresholds alone (predicted IoU, stability).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..data import rle as rle_utils
from .params import AmgParams

STABILITY_GRID = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95)
FEATURES = (
    "predicted_iou",
    "stability_score",
    "region_agreement",
    "log_area",
    "log_area_squared",
    "log_edge_contrast",
    "log_components",
    "main_component_share",
    "hole_share",
    "outline_ratio",
)
# what a stored quality model without a feature list was fitted on (evaluations made before edge contrast)
_FEATURES_BEFORE_CONTRAST = FEATURES[:5]


@dataclass(frozen=True)
class Thresholds:
    """A calibrated filter: keep masks with predicted IoU > ``pred_iou`` and stability >= ``stability`` and,
    with a quality model, quality >= ``quality``."""

    pred_iou: float
    stability: float
    quality: float | None = None

    def apply(self, params: AmgParams, quality_model: dict | None = None) -> AmgParams:
        """``params`` with these thresholds (and ``quality_model`` when the quality cut is set)."""
        update: dict[str, Any] = {"pred_iou_thresh": self.pred_iou, "stability_score_thresh": self.stability}
        if self.quality is not None and quality_model is not None:
            update.update({"quality_model": quality_model, "quality_thresh": self.quality})
        return params.model_copy(update=update)


def record_features(
    records: Sequence[dict], image_area: int, features: Sequence[str] = FEATURES
) -> np.ndarray:
    """The named ``features`` (default :data:`FEATURES`) of generated records: (N, len(features)). The size
    enters as log area fraction and its square, since both very small masks (specks) and very large ones
    (background) are rarely objects; the colour contrast across the outline (:mod:`.contrast`) as its log;
    the pieces (as log(1 + n)), the main piece's share, holes and outline length of :mod:`.shape`.
    A record without these measurements (no snapping; an older generator) gets the same value for every
    record (1 for ``region_agreement``, ``edge_contrast``, ``components`` and ``main_component_share``, 0
    for the others), so the feature then tells the model nothing."""
    rows = []
    for r in records:
        log_area = float(np.log(max(1, r["area"]) / max(1, image_area)))
        values = {
            "predicted_iou": r["predicted_iou"],
            "stability_score": r["stability_score"],
            "region_agreement": r.get("region_agreement", 1.0),
            "log_area": log_area,
            "log_area_squared": log_area**2,
            "log_edge_contrast": float(np.log(r.get("edge_contrast", 1.0) + 0.05)),
            "log_components": float(np.log1p(r.get("components", 1.0))),
            "main_component_share": r.get("main_component_share", 1.0),
            "hole_share": r.get("hole_share", 0.0),
            "outline_ratio": r.get("outline_ratio", 0.0),
        }
        rows.append(tuple(values[f] for f in features))
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(features))


@dataclass(frozen=True)
class QualityModel:
    """Logistic regression on standardised features: P(candidate right) = sigmoid(w . (x - mean) / std + b)."""

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    features: tuple[str, ...] = FEATURES  # the record features, in the order of the weights

    def score_records(self, records: Sequence[dict], image_area: int) -> np.ndarray:
        """P(right) of each generated record (its :func:`record_features` in this model's feature order)."""
        return self.score(record_features(records, image_area, self.features))

    def score(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.std)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias)))

    @classmethod
    def fit(
        cls, x: np.ndarray, y: np.ndarray, l2: float = 1e-2, features: Sequence[str] = FEATURES
    ) -> QualityModel:
        """Maximum-likelihood fit (L2-regularised, L-BFGS) of labels ``y`` (bool) on ``x``, the columns of
        which are the named ``features``."""
        from scipy.optimize import minimize

        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.shape[1] != len(features):
            raise ValueError(f"QualityModel.fit: {x.shape[1]} feature columns for {len(features)} names")
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - mean) / std

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            logit = z @ theta[:-1] + theta[-1]
            p = 1.0 / (1.0 + np.exp(-logit))
            nll = np.mean(np.logaddexp(0.0, logit) - y * logit) + l2 * np.sum(theta[:-1] ** 2)
            grad = np.append(z.T @ (p - y) / len(y) + 2 * l2 * theta[:-1], np.mean(p - y))
            return float(nll), grad

        theta = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B").x
        return cls(
            tuple(theta[:-1].tolist()),
            float(theta[-1]),
            tuple(mean.tolist()),
            tuple(std.tolist()),
            tuple(features),
        )

    def as_dict(self) -> dict[str, list]:
        return {
            "weights": list(self.weights),
            "bias": [self.bias],
            "mean": list(self.mean),
            "std": list(self.std),
            "features": list(self.features),
        }

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> QualityModel:
        features = tuple(d.get("features", _FEATURES_BEFORE_CONTRAST))
        if len(features) != len(d["weights"]):
            raise ValueError(f"quality model: {len(d['weights'])} weights for features {list(features)}")
        return cls(tuple(d["weights"]), float(d["bias"][0]), tuple(d["mean"]), tuple(d["std"]), features)


def choose_threshold(
    scores: np.ndarray, good: np.ndarray, target_precision: float, min_kept: int = 5
) -> tuple[float, float, int]:
    """The lowest cut on ``scores`` whose kept candidates (score >= cut) are ``good`` at least
    ``target_precision`` of the time, keeping the most good ones; (cut, precision, kept). With no such
    cut, the top-scored candidate's own score (keep the most confident one)."""
    if not len(scores):
        return 1.0, float("nan"), 0
    order = np.argsort(-np.asarray(scores), kind="stable")
    s, g = np.asarray(scores)[order], np.asarray(good, dtype=bool)[order]
    hits = np.cumsum(g)
    kept = np.arange(1, len(s) + 1)
    last_of_run = np.append(s[1:] != s[:-1], True)
    ok = np.flatnonzero(last_of_run & (hits / kept >= target_precision) & (kept >= min(min_kept, len(s))))
    j = ok[np.argmax(hits[ok])] if len(ok) else int(np.flatnonzero(last_of_run)[0])
    return float(s[j]), float(hits[j] / kept[j]), int(kept[j])


def best_ious(records: Sequence[dict], gt: Sequence[dict]) -> np.ndarray:
    """For each generated record, its highest IoU with any ground-truth mask of the image (0 without GT)."""
    if not records:
        return np.zeros(0)
    if not gt:
        return np.zeros(len(records))
    iou = rle_utils.iou_matrix([r["segmentation"] for r in records], [a["segmentation"] for a in gt])
    return np.asarray(iou).max(axis=1)


def generate_all(
    generate: Callable[[Any], list[dict]], images: Sequence[tuple[Any, Sequence[dict]]]
) -> list[list[dict]]:
    """``generate`` on each (image, ground truth)'s image, spread over worker processes
    (:func:`~sam_engine.parallel.fork_map`), in order."""
    from ..parallel import fork_map

    return fork_map(lambda pair: generate(pair[0]), images)


def score_records(records_of: Sequence[list[dict]], truths: Sequence[Sequence[dict]]) -> pd.DataFrame:
    """Every record of every image scored: image index, the quality model's features, the generator's
    quality, best IoU with that image's ground truth."""
    frames = []
    for k, (records, gt) in enumerate(zip(records_of, truths, strict=True)):
        if not records:
            continue
        area = int(np.prod(records[0]["segmentation"]["size"]))
        df = pd.DataFrame(record_features(records, area), columns=list(FEATURES))
        df.insert(0, "image", k)
        df["quality"] = [r.get("quality", np.nan) for r in records]
        df["best_iou"] = best_ious(records, gt)
        frames.append(df)
    columns = ["image", *FEATURES, "quality", "best_iou"]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return out.assign(stability=out["stability_score"])


def score_candidates(
    generate: Callable[[Any], list[dict]], images: Sequence[tuple[Any, Sequence[dict]]]
) -> pd.DataFrame:
    """Run ``generate`` on each (image, ground truth) and score every record (:func:`score_records`)."""
    return score_records(generate_all(generate, images), [gt for _, gt in images])


def precision_at(scored: pd.DataFrame, thresholds: Thresholds, match_iou: float = 0.9) -> tuple[float, int]:
    """(share of the masks the thresholds keep whose best IoU exceeds ``match_iou``, masks kept)."""
    kept = scored[
        (scored["predicted_iou"] > thresholds.pred_iou) & (scored["stability"] >= thresholds.stability)
    ]
    if not len(kept):
        return float("nan"), 0
    return float((kept["best_iou"] > match_iou).mean()), int(len(kept))


def choose_thresholds(
    scored: pd.DataFrame,
    target_precision: float,
    match_iou: float = 0.9,
    stability_grid: Sequence[float] = STABILITY_GRID,
    min_kept: int = 5,
    fallback: Thresholds | None = None,
) -> tuple[Thresholds, float, int]:
    """The thresholds that keep the most correct masks at precision >= ``target_precision`` (at least
    ``min_kept`` masks kept); (thresholds, precision, masks kept). With no such pair, the strictest
    thresholds that keep anything, so nothing wrong passes silently: the caller reports the precision.
    With no candidate at all there is nothing to measure: ``fallback`` (if given) is returned."""
    if not len(scored) and fallback is not None:
        return fallback, float("nan"), 0
    min_kept = min(min_kept, len(scored))
    best: tuple[int, Thresholds, float, int] | None = None
    for stab in stability_grid:
        part = scored[scored["stability"] >= stab].sort_values("predicted_iou", ascending=False)
        if not len(part):
            continue
        good = (part["best_iou"].to_numpy() > match_iou).cumsum()
        kept = np.arange(1, len(part) + 1)
        scores = part["predicted_iou"].to_numpy()
        # a cut can only fall between distinct scores: the last row of each run of equal scores
        last_of_run = np.append(scores[1:] != scores[:-1], True)
        ok = np.flatnonzero(last_of_run & (good / kept >= target_precision) & (kept >= max(1, min_kept)))
        if not len(ok):
            continue
        j = ok[np.argmax(good[ok])]
        # keep "predicted IoU > cut": the next (lower) score, or just below the last one kept
        cut = float(scores[j + 1]) if j + 1 < len(scores) else float(np.nextafter(scores[j], -np.inf))
        candidate = (int(good[j]), Thresholds(cut, float(stab)), float(good[j] / kept[j]), int(kept[j]))
        if best is None or candidate[0] > best[0]:
            best = candidate
    if best is None:  # keep only the most confident candidate
        if not len(scored):
            return Thresholds(1.0, 1.0), float("nan"), 0
        top = scored.loc[scored["predicted_iou"].idxmax()]
        strict = Thresholds(float(np.nextafter(top["predicted_iou"], -np.inf)), float(top["stability"]))
        precision, kept_n = precision_at(scored, strict, match_iou)
        return strict, precision, kept_n
    return best[1], best[2], best[3]


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured: the thresholds, and precision / masks per image on both halves."""

    thresholds: Thresholds
    target_precision: float
    match_iou: float
    calibration_images: int
    calibration_precision: float
    calibration_masks_per_image: float
    heldout_images: int
    heldout_precision: float
    heldout_masks_per_image: float
    quality_model: dict | None = None  # QualityModel.as_dict() when the filter is a quality cut

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["thresholds"] = asdict(self.thresholds)
        return out

    def apply(self, params: AmgParams) -> AmgParams:
        """``params`` with this calibrated filter."""
        return self.thresholds.apply(params, self.quality_model)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**{**d, "thresholds": Thresholds(**d["thresholds"])})


def _record_passes(record: dict, t: Thresholds) -> bool:
    ok = record["predicted_iou"] > t.pred_iou and record["stability_score"] >= t.stability
    return ok and (t.quality is None or record.get("quality", 1.0) >= t.quality)


def _passing(scored: pd.DataFrame, t: Thresholds) -> np.ndarray:
    ok = (scored["predicted_iou"] > t.pred_iou) & (scored["stability_score"] >= t.stability)
    if t.quality is not None:
        ok &= scored["quality"].fillna(1.0) >= t.quality
    return ok.to_numpy()


def _held_out_runs(
    generator_for: Callable[[AmgParams], Callable[[Any], list[dict]]],
    held: Sequence[tuple[Any, Sequence[dict]]],
    params: AmgParams,
    model: QualityModel | None,
    chosen_by: dict[str, tuple[Thresholds, float, int]],
) -> tuple[pd.DataFrame, list[tuple[list[dict], Sequence[dict]]]]:
    """One generator run on the held-out half at the loosest of the chosen filters; every stricter one is that
    run's records filtered. A cut on the score NMS ranks by commutes with that NMS (a mask is suppressed only
    by a higher-ranked one, which passes any cut it passes): exact for quality cuts, and for predicted-IoU
    cuts without a quality model (a stability cut there is the approximation)."""
    filters = [t for t, _, _ in chosen_by.values()]
    qualities = [t.quality for t in filters if t.quality is not None]
    loosest = Thresholds(
        min(t.pred_iou for t in filters),
        min(t.stability for t in filters),
        min(qualities) if qualities else None,
    )
    generate = generator_for(loosest.apply(params, model.as_dict() if model is not None else None))
    records = generate_all(generate, held)
    truths = [gt for _, gt in held]
    return score_records(records, truths), list(zip(records, truths, strict=True))


def split_halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``n`` items into a calibration half and a held-out half."""
    order = np.random.default_rng([seed, 23]).permutation(n).tolist()
    return sorted(order[: n // 2]), sorted(order[n // 2 :])


def calibrate(
    generator_for: Callable[[AmgParams], Callable[[Any], list[dict]]],
    images: Sequence[tuple[Any, Sequence[dict]]],
    params: AmgParams,
    targets: dict[str, float],
    *,
    match_iou: float = 0.9,
    relaxed: Thresholds = Thresholds(0.3, 0.5),
    seed: int = 0,
    held_out: Callable[[str, list[dict], Sequence[dict]], None] | None = None,
) -> dict[str, Calibration]:
    """For each named target precision, choose thresholds on one half of ``images`` (each (image, ground
    truth)) and measure them on the other.

    ``generator_for(params)`` returns a function image -> records (an automatic mask generator with those
    settings). The relaxed candidates of the calibration half are generated once for all targets, and the
    held-out half once at the loosest chosen filter (:func:`_held_out_runs`); ``held_out(name, records, gt)``
    sees each target's records of every held-out image, e.g. to score recall. ``relaxed`` is loosened to
    ``params``' own thresholds where those are looser. Without any candidate to measure, ``params``' own
    thresholds stand.
    """
    calib_idx, held_idx = split_halves(len(images), seed)
    calib = [images[i] for i in calib_idx]
    held = [images[i] for i in held_idx]
    # never stricter than the configured filter: the calibration sees at least what it would keep
    relaxed = Thresholds(
        min(relaxed.pred_iou, params.pred_iou_thresh), min(relaxed.stability, params.stability_score_thresh)
    )
    scored = score_candidates(generator_for(relaxed.apply(params)), calib)
    grid = tuple(sorted({relaxed.stability, *(g for g in STABILITY_GRID if g > relaxed.stability)}))
    good = (scored["best_iou"] > match_iou).to_numpy()
    model = None
    if len(scored) >= 20 and 3 <= good.sum() <= len(good) - 3:  # both classes seen: learn the quality
        model = QualityModel.fit(scored[list(FEATURES)].to_numpy(), good)
        quality = model.score(scored[list(FEATURES)].to_numpy())
    chosen_by: dict[str, tuple[Thresholds, float, int]] = {}
    for name, target in targets.items():
        if model is not None:
            cut, c_prec, c_kept = choose_threshold(quality, good, target)
            chosen_by[name] = (Thresholds(relaxed.pred_iou, relaxed.stability, cut), c_prec, c_kept)
        else:
            configured = Thresholds(params.pred_iou_thresh, params.stability_score_thresh)
            chosen_by[name] = choose_thresholds(scored, target, match_iou, grid, fallback=configured)
    held_scored, held_records = _held_out_runs(generator_for, held, params, model, chosen_by)
    out = {}
    for name, target in targets.items():
        chosen, c_prec, c_kept = chosen_by[name]
        kept = _passing(held_scored, chosen)
        if held_out is not None:
            for records, truth in held_records:
                held_out(name, [r for r in records if _record_passes(r, chosen)], truth)
        h_prec = float((held_scored.loc[kept, "best_iou"] > match_iou).mean()) if kept.any() else float("nan")
        out[name] = Calibration(
            thresholds=chosen,
            target_precision=target,
            match_iou=match_iou,
            calibration_images=len(calib),
            calibration_precision=c_prec,
            calibration_masks_per_image=c_kept / max(1, len(calib)),
            heldout_images=len(held),
            heldout_precision=h_prec,
            heldout_masks_per_image=int(kept.sum()) / max(1, len(held)),
            quality_model=model.as_dict() if model is not None and chosen.quality is not None else None,
        )
    return out
