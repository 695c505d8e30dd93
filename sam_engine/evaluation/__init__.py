"""Evaluation: the interactive click protocol and its metrics (mIoU@k, NoC@85/90, NoF)."""

from .clicks import Click, first_click, next_click, padded_distance
from .interactive import (
    ClickProtocol,
    EvalObject,
    ObjectResult,
    corpus_objects,
    evaluate_corpus,
    evaluate_objects,
    iou,
    noc,
    run_clicks,
    summarize,
)

__all__ = [
    "Click",
    "ClickProtocol",
    "EvalObject",
    "ObjectResult",
    "corpus_objects",
    "evaluate_corpus",
    "evaluate_objects",
    "first_click",
    "iou",
    "next_click",
    "noc",
    "padded_distance",
    "run_clicks",
    "summarize",
]
