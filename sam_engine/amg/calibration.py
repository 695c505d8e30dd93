"""Automatic-mask thresholds chosen per model version on gold images, to reach a target precision.

SAM keeps masks with predicted IoU > 0.88 and stability >= 0.95; those numbers presume SAM's calibration. A
model trained here has its own, so each version's thresholds are measured instead: the generator runs with
relaxed filters on a seeded half of the gold images (the *calibration* half), every candidate is scored
against the gold ground truth (its best IoU with any gold mask: whole, part or subpart), and
:func:`choose_thresholds` picks the (predicted IoU, stability) pair that keeps the most correct masks (IoU
above ``match_iou``) while their share among the kept masks stays at or above the target precision. The
generator then runs with those thresholds on the other half (*held out*), and the precision measured there is
reported beside the calibration precision, so a threshold that only fits its own half shows.
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


@dataclass(frozen=True)
class Thresholds:
    """A calibrated filter: keep masks with predicted IoU > ``pred_iou`` and stability >= ``stability``."""

    pred_iou: float
    stability: float

    def apply(self, params: AmgParams) -> AmgParams:
        """``params`` with these thresholds."""
        return params.model_copy(
            update={"pred_iou_thresh": self.pred_iou, "stability_score_thresh": self.stability}
        )


def best_ious(records: Sequence[dict], gt: Sequence[dict]) -> np.ndarray:
    """For each generated record, its highest IoU with any ground-truth mask of the image (0 without GT)."""
    if not records:
        return np.zeros(0)
    if not gt:
        return np.zeros(len(records))
    iou = rle_utils.iou_matrix([r["segmentation"] for r in records], [a["segmentation"] for a in gt])
    return np.asarray(iou).max(axis=1)


def score_candidates(
    generate: Callable[[Any], list[dict]], images: Sequence[tuple[Any, Sequence[dict]]]
) -> pd.DataFrame:
    """Run ``generate`` on each (image, ground truth) and score every record: image index, predicted IoU,
    stability, best IoU with the ground truth."""
    rows = []
    for k, (image, gt) in enumerate(images):
        records = generate(image)
        for rec, best in zip(records, best_ious(records, gt), strict=True):
            rows.append((k, rec["predicted_iou"], rec["stability_score"], float(best)))
    return pd.DataFrame(rows, columns=["image", "predicted_iou", "stability", "best_iou"])


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

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["thresholds"] = asdict(self.thresholds)
        return out


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
    settings). The relaxed candidates of the calibration half are generated once for all targets; each
    target's thresholds then run for real on the held-out half (``held_out(name, records, gt)`` sees every
    held-out image's records, e.g. to score recall). Without any candidate to measure, ``params``' own
    thresholds stand.
    """
    calib_idx, held_idx = split_halves(len(images), seed)
    calib = [images[i] for i in calib_idx]
    held = [images[i] for i in held_idx]
    scored = score_candidates(generator_for(relaxed.apply(params)), calib)
    grid = tuple(sorted({relaxed.stability, *(g for g in STABILITY_GRID if g > relaxed.stability)}))
    out = {}
    for name, target in targets.items():
        configured = Thresholds(params.pred_iou_thresh, params.stability_score_thresh)
        chosen, c_prec, c_kept = choose_thresholds(scored, target, match_iou, grid, fallback=configured)
        generate = generator_for(chosen.apply(params))

        def run(image: Any, gt: Sequence[dict], name: str = name, generate: Any = generate) -> list[dict]:
            records = generate(image)
            if held_out is not None:
                held_out(name, records, gt)
            return records

        held_scored = score_candidates(lambda pair: run(*pair), [((im, gt), gt) for im, gt in held])
        h_prec = float((held_scored["best_iou"] > match_iou).mean()) if len(held_scored) else float("nan")
        out[name] = Calibration(
            thresholds=chosen,
            target_precision=target,
            match_iou=match_iou,
            calibration_images=len(calib),
            calibration_precision=c_prec,
            calibration_masks_per_image=c_kept / max(1, len(calib)),
            heldout_images=len(held),
            heldout_precision=h_prec,
            heldout_masks_per_image=len(held_scored) / max(1, len(held)),
        )
    return out
