"""Interactive-segmentation evaluation: run the click protocol against any predictor and score it.

A predictor is anything with ``set_image(image)`` (optionally ``image_key=``) and
``predict(point_coords, point_labels, box, mask_input, multimask_output, return_logits)`` returning
``(masks (C,H,W), scores (C,), low_res_logits (C,h,w))`` as numpy, like :class:`sam_engine.predictor.SamPredictor`.

Metrics (per object, then averaged overall and per region): IoU after 1/3/5 clicks for the most confident
output and for the oracle best-of-C output, NoC@85/90 (clicks until IoU >= k, capped at ``max_clicks``) and
NoF (objects that never reach k).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from ..data import rle as rle_utils
from ..data.corpus import MaskCorpus
from ..data.errors import DataError
from ..data.images import DEFAULT_MAX_PIXELS, load_image
from .clicks import Click, clicks_to_arrays, first_click, next_click


class Predictor(Protocol):
    def set_image(self, image: np.ndarray, *args: Any, **kwargs: Any) -> None: ...

    def predict(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class ClickProtocol:
    """How the clicks are run.

    ``multimask``: ``"first"`` asks for the 3 ambiguity-aware outputs on the first click only and the single
    output afterwards (how SAM is trained and recommended to be used); ``"always"`` / ``"never"`` as named.
    ``stop_early``: stop an object once it has ``max(report_clicks)`` clicks and has reached every threshold
    (later clicks cannot change any reported metric).
    """

    max_clicks: int = 20
    thresholds: tuple[float, ...] = (0.85, 0.90)
    report_clicks: tuple[int, ...] = (1, 3, 5)
    multimask: Literal["first", "always", "never"] = "first"
    feed_logits: bool = True
    stop_early: bool = True

    def __post_init__(self) -> None:
        if self.max_clicks < 1:
            raise ValueError("max_clicks must be >= 1")
        if self.multimask not in ("first", "always", "never"):
            raise ValueError(f"unknown multimask mode {self.multimask!r}")


@dataclass
class ObjectResult:
    """Per-click history of one object."""

    ious: list[float] = field(default_factory=list)  # most-confident output, after each click
    oracle_ious: list[float] = field(default_factory=list)  # best output, after each click
    scores: list[float] = field(default_factory=list)  # predicted IoU of the chosen output
    # after each click: is the newest click's pixel on its side of the chosen mask (inside for a positive
    # click, outside for a negative one)?
    obeyed: list[bool] = field(default_factory=list)
    clicks: list[Click] = field(default_factory=list)
    final_mask: np.ndarray | None = None


@dataclass
class EvalObject:
    """One object to evaluate: the image (array or loader), its GT mask and optional ignore mask."""

    image_key: Any
    image: np.ndarray | Callable[[], np.ndarray]
    gt: np.ndarray | Callable[[], np.ndarray]
    ignore: np.ndarray | None = None
    image_id: Any = None
    object_id: Any = None
    region: str | None = None


def iou(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of two boolean masks over the pixels outside ``ignore`` (1.0 when both are empty there)."""
    return rle_utils.mask_iou(
        np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool), empty=1.0, ignore=ignore
    )


def noc(ious: list[float] | np.ndarray, threshold: float, max_clicks: int = 20) -> tuple[int, bool]:
    """(clicks until IoU >= threshold, reached?); ``max_clicks`` when never reached within the cap."""
    arr = np.asarray(ious[:max_clicks], dtype=np.float64)
    hit = np.flatnonzero(arr >= threshold)
    if hit.size:
        return int(hit[0]) + 1, True
    return max_clicks, False


def _key(threshold: float) -> str:
    return f"{round(threshold * 100):d}"


def _accepts_image_key(predictor: Any) -> bool:
    try:
        return "image_key" in inspect.signature(predictor.set_image).parameters
    except (TypeError, ValueError):
        return False


def set_image(predictor: Any, image: np.ndarray, image_key: Any = None) -> None:
    """Call ``predictor.set_image``, passing ``image_key`` only when the predictor takes one."""
    if image_key is not None and _accepts_image_key(predictor):
        predictor.set_image(image, image_key=image_key)
    else:
        predictor.set_image(image)


def run_clicks(
    predictor: Predictor,
    gt: np.ndarray,
    ignore: np.ndarray | None = None,
    protocol: ClickProtocol | None = None,
) -> ObjectResult:
    """Run the click protocol on one object; the predictor's image must already be set."""
    protocol = protocol or ClickProtocol()
    gt = np.asarray(gt, dtype=bool)
    if ignore is not None:
        ignore = np.asarray(ignore, dtype=bool)
        if ignore.shape != gt.shape:
            raise ValueError(f"ignore mask shape {ignore.shape} differs from GT shape {gt.shape}")
    result = ObjectResult()
    clicked = np.zeros(gt.shape, dtype=bool)
    clicks: list[Click] = []
    logits: np.ndarray | None = None
    pred = np.zeros(gt.shape, dtype=bool)
    need = max(protocol.report_clicks) if protocol.report_clicks else 1
    top = max(protocol.thresholds) if protocol.thresholds else 0.0
    for n in range(1, protocol.max_clicks + 1):
        click = first_click(gt, ignore) if n == 1 else next_click(gt, pred, ignore, clicked)
        if click is None:  # nothing left to fix: the score stays where it is
            break
        clicks.append(click)
        clicked[click.y, click.x] = True
        coords, labels = clicks_to_arrays(clicks)
        multimask = protocol.multimask == "always" or (protocol.multimask == "first" and n == 1)
        masks, scores, low_res = predictor.predict(
            point_coords=coords,
            point_labels=labels,
            box=None,
            mask_input=logits[None] if (logits is not None and protocol.feed_logits) else None,
            multimask_output=multimask,
            return_logits=False,
        )
        masks = np.asarray(masks) > 0 if np.asarray(masks).dtype != bool else np.asarray(masks)
        if masks.ndim != 3 or masks.shape[1:] != gt.shape:
            raise ValueError(f"predictor returned masks of shape {masks.shape}; expected (C, {gt.shape})")
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        best = int(np.argmax(scores))
        pred = masks[best]
        logits = np.asarray(low_res)[best]
        per_output = [iou(gt, m, ignore) for m in masks]
        result.ious.append(per_output[best])
        result.oracle_ious.append(max(per_output))
        result.scores.append(float(scores[best]))
        result.obeyed.append(bool(pred[click.y, click.x]) == (click.label == 1))
        if protocol.stop_early and n >= need and result.ious[-1] >= top:
            break
    # An object stopped early keeps its last score for the clicks it did not need.
    while result.ious and len(result.ious) < need:
        result.ious.append(result.ious[-1])
        result.oracle_ious.append(result.oracle_ious[-1])
    result.clicks = clicks
    result.final_mask = pred
    return result


def _resolve(value: np.ndarray | Callable[[], np.ndarray]) -> np.ndarray:
    return value() if callable(value) else value


def evaluate_objects(
    predictor: Predictor,
    objects: Iterable[EvalObject],
    protocol: ClickProtocol | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = 1,
) -> pd.DataFrame:
    """Run the protocol on every object (images set once per run of equal ``image_key``); one row per object.

    ``workers`` other than 1 spreads the images over forked worker processes
    (:func:`~sam_engine.parallel.fork_map`; None: one per torch thread); the table is the same, in order.
    """
    protocol = protocol or ClickProtocol()
    if workers != 1:
        return _evaluate_in_workers(predictor, objects, protocol, progress, workers)
    rows = []
    current_key: Any = object()
    for i, obj in enumerate(objects):
        if obj.image_key != current_key:
            set_image(predictor, _resolve(obj.image), obj.image_key)
            current_key = obj.image_key
        gt = np.asarray(_resolve(obj.gt), dtype=bool)
        res = run_clicks(predictor, gt, obj.ignore, protocol)
        row: dict[str, Any] = {
            "image_id": obj.image_id,
            "object_id": obj.object_id,
            "region": obj.region,
            "area": int(gt.sum()),
            "n_clicks": len(res.clicks),
        }
        for k in protocol.report_clicks:
            row[f"iou@{k}"] = res.ious[min(k, len(res.ious)) - 1]
            row[f"oracle_iou@{k}"] = res.oracle_ious[min(k, len(res.oracle_ious)) - 1]
        for t in protocol.thresholds:
            clicks, reached = noc(res.ious, t, protocol.max_clicks)
            row[f"noc@{_key(t)}"] = clicks
            row[f"fail@{_key(t)}"] = not reached
        row["ious"] = [round(v, 5) for v in res.ious]
        row["obeyed"] = list(res.obeyed)
        row["clicks"] = [(c.x, c.y, c.label) for c in res.clicks]
        rows.append(row)
        if progress is not None:
            progress(i + 1)
    return pd.DataFrame(rows)


def _evaluate_in_workers(
    predictor: Predictor,
    objects: Iterable[EvalObject],
    protocol: ClickProtocol,
    progress: Callable[[int], None] | None,
    workers: int | None,
) -> pd.DataFrame:
    from ..parallel import fork_map

    groups = [list(g) for _, g in itertools.groupby(objects, key=lambda o: o.image_key)]
    ends = np.cumsum([len(g) for g in groups]).tolist()
    frames = fork_map(
        lambda group: evaluate_objects(predictor, group, protocol),
        groups,
        workers,
        progress=None if progress is None else (lambda done: progress(ends[done - 1])),
    )
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _summary_of(df: pd.DataFrame, protocol: ClickProtocol) -> dict[str, float]:
    out: dict[str, float] = {"n_objects": int(len(df))}
    if len(df) == 0:
        return out
    for k in protocol.report_clicks:
        out[f"miou@{k}"] = float(df[f"iou@{k}"].mean())
        out[f"oracle_miou@{k}"] = float(df[f"oracle_iou@{k}"].mean())
    for t in protocol.thresholds:
        out[f"noc@{_key(t)}"] = float(df[f"noc@{_key(t)}"].mean())
        out[f"nof@{_key(t)}"] = int(df[f"fail@{_key(t)}"].sum())
    return out


def summarize(df: pd.DataFrame, protocol: ClickProtocol | None = None) -> dict[str, Any]:
    """Overall metrics plus ``by_region`` (objects whose region is set)."""
    protocol = protocol or ClickProtocol()
    summary: dict[str, Any] = _summary_of(df, protocol)
    summary["n_images"] = int(df["image_id"].nunique()) if len(df) else 0
    by_region: dict[str, dict[str, float]] = {}
    if len(df) and "region" in df:
        for region, part in df[df["region"].notna()].groupby("region", sort=True):
            by_region[str(region)] = _summary_of(part, protocol)
    summary["by_region"] = by_region
    return summary


def compliance_by_click(df: pd.DataFrame, max_clicks: int | None = None) -> dict[int, tuple[float, int]]:
    """Click number -> (share of clicks whose pixel ended on its side of the returned mask, clicks counted),
    over the objects of an :func:`evaluate_objects` table that reached that click."""
    out: dict[int, tuple[float, int]] = {}
    if "obeyed" not in df or not len(df):
        return out
    longest = max(len(v) for v in df["obeyed"])
    for k in range(1, min(longest, max_clicks or longest) + 1):
        vals = [bool(v[k - 1]) for v in df["obeyed"] if len(v) >= k]
        out[k] = (float(np.mean(vals)), len(vals))
    return out


def corpus_objects(
    corpus: MaskCorpus,
    max_objects: int | None = None,
    seed: int = 0,
    min_area: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[EvalObject]:
    """The objects of a corpus (crowd annotations skipped), optionally a seeded subsample, grouped by image."""
    candidates: list[tuple[int, int]] = []  # (image index, annotation index)
    for i, rec in enumerate(corpus.images):
        for j, ann in enumerate(corpus.masks_for(rec.image_id)):
            if ann.get("iscrowd", 0):
                continue
            if ann.get("area") is not None and ann["area"] < min_area:
                continue
            candidates.append((i, j))
    if max_objects is not None and len(candidates) > max_objects:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(candidates), size=max_objects, replace=False)
        candidates = [candidates[k] for k in sorted(pick)]

    cache: dict[int, np.ndarray] = {}

    def image_loader(i: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            if i not in cache:
                cache.clear()
                rec = corpus.images[i]
                img = load_image(rec.path, max_pixels=max_pixels)
                if img.shape[:2] != (rec.height, rec.width):
                    raise DataError(
                        rec.path,
                        rec.image_id,
                        "width/height",
                        f"image is {img.shape[1]}x{img.shape[0]}, record says {rec.width}x{rec.height}",
                    )
                cache[i] = img
            return cache[i]

        return load

    def gt_loader(i: int, j: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            rec = corpus.images[i]
            ann = corpus.masks_for(rec.image_id)[j]
            try:
                mask = rle_utils.decode(ann["segmentation"])
            except Exception as e:  # noqa: BLE001
                raise DataError(
                    corpus.source or rec.path, ann.get("id", j), "segmentation", f"cannot decode: {e}"
                ) from e
            if mask.shape != (rec.height, rec.width):
                raise DataError(
                    corpus.source or rec.path,
                    ann.get("id", j),
                    "segmentation",
                    f"mask size {mask.shape} differs from image size {(rec.height, rec.width)}",
                )
            return mask

        return load

    objects = []
    for i, j in candidates:
        rec = corpus.images[i]
        ann = corpus.masks_for(rec.image_id)[j]
        objects.append(
            EvalObject(
                image_key=rec.image_id,
                image=image_loader(i),
                gt=gt_loader(i, j),
                image_id=rec.image_id,
                object_id=ann.get("id", j),
                region=rec.region,
            )
        )
    return objects


def evaluate_corpus(
    predictor: Predictor,
    corpus: MaskCorpus,
    protocol: ClickProtocol | None = None,
    max_objects: int | None = None,
    seed: int = 0,
    min_area: int = 1,
    workers: int | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Evaluate a predictor on a corpus's objects: per-object DataFrame and summary dict (images spread over
    ``workers`` processes, by default one per torch thread; see :func:`evaluate_objects`)."""
    protocol = protocol or ClickProtocol()
    objects = corpus_objects(corpus, max_objects, seed, min_area)
    df = evaluate_objects(predictor, _skip_empty(objects), protocol, workers=workers)
    return df, summarize(df, protocol)


def _skip_empty(objects: list[EvalObject]) -> Iterator[EvalObject]:
    for obj in objects:
        gt = _resolve(obj.gt)
        if gt.any():
            obj.gt = gt
            yield obj
