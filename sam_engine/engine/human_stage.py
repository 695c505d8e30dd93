"""Human work in stages 1 and 2: tasks into the store, then simulated (or real) annotators complete them.

With ``annotators="simulated"`` the simulated annotators work every pending task through the same
session API the browser uses; with ``"human"`` the functions only collect what people have finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..annotation.session import SegmentationService
from ..data.corpus import ImageRecord
from ..model_store import ModelRef
from ..parallel import fork_map
from ..workforce.consensus import ConsensusConfig, run_consensus
from ..workforce.gold import GoldStandard, annotator_weights
from ..workforce.queue import QueueConfig, create_stage_tasks
from ..workforce.simulated import SimulatedAnnotator, SimulatedReviewer
from .annotators import ensure_annotators
from .models import version_predictor
from .workspace import Workspace

if TYPE_CHECKING:
    from sam_engine.quality.store import QualityStore


def register_images(store: QualityStore, records: list[ImageRecord], split: str, source: str) -> None:
    store.add_images(
        [
            {
                "image_id": r.image_id,
                "file_name": r.file_name,
                "width": r.width,
                "height": r.height,
                "region": r.region,
                "split": split,
                "source": source,
            }
            for r in records
        ]
    )


def create_tasks(
    ws: Workspace,
    store: QualityStore,
    stage: int,
    images: list[ImageRecord],
    *,
    kind: str = "annotate",
    honeypots: bool = True,
    priorities: list[float] | None = None,
) -> dict[str, Any]:
    """Create (once) the tasks of a stage batch; re-running with tasks already there creates nothing."""
    s = ws.cfg.stages
    batch = f"stage{stage}-{kind}"
    existing = store.tasks(stage=stage)
    if len(existing) and (existing["batch"] == batch).any():
        part = existing[existing["batch"] == batch]
        return {"batch": batch, "created": 0, "tasks": int(len(part))}
    regions = sorted({r.region for r in ws.pool.images if r.region})
    ensure_annotators(store, s.annotators, s.reviewers, regions)
    register_images(store, images, f"stage{stage}", "pool")
    gold_ids = [im.image_id for im in ws.gold.images] if honeypots else []
    if gold_ids:
        register_images(store, ws.gold.images, "gold", "gold")
    config = QueueConfig(
        overlap_fraction=s.overlap_fraction if stage == 1 else 0.0,
        overlap_k=s.overlap_k,
        honeypot_rate=s.honeypot_rate if honeypots else 0.0,
        seed=ws.cfg.seed + stage,
    )
    ids = create_stage_tasks(
        store,
        stage,
        [r.image_id for r in images],
        kind=kind,
        gold_images=gold_ids,
        config=config,
        batch=batch,
        priorities=priorities,
    )
    return {"batch": batch, "created": len(ids), "tasks": len(ids)}


def simulate_stage(
    ws: Workspace, store, stage: int, model: ModelRef, log_fn: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Simulated annotators work every pending annotation task of ``stage``; reviewers work the reviews."""
    s = ws.cfg.stages
    regions = sorted({r.region for r in ws.pool.images if r.region})
    profiles = ensure_annotators(store, s.annotators, s.reviewers, regions)
    gt = ws.ground_truth()
    gold = GoldStandard({im.image_id: ws.gold.masks_for(im.image_id) for im in ws.gold.images})
    service = SegmentationService(version_predictor(ws, model), ws.load, cache_size=8)
    jobs: list[tuple[SimulatedAnnotator, Any]] = []
    for aid, profile in profiles.items():
        # "in_progress" tasks were interrupted (masks and the "done" status are committed together, so such a
        # task has no masks yet): they are worked again
        pending = [
            t
            for t in store.tasks_for(aid, status=["pending", "in_progress"])
            if t["stage"] == stage and t["kind"] in ("annotate", "honeypot", "complete")
        ]
        sim = SimulatedAnnotator(
            aid, profile, service, store, gt, seed=ws.cfg.seed, gold=gold, image_budget_s=s.image_budget_s
        )
        jobs += [(sim, task) for task in pending]
    done = 0
    try:
        for segment in _independent_runs(jobs):
            # the clicks run in worker processes; the store is written here, task by task, in queue order
            started = [(sim, sim.start(task)) for sim, task in segment]
            results = fork_map(lambda job: job[0].annotate(job[1]), started)
            for (sim, st), result in zip(started, results, strict=True):
                sim.finish(st, result)
                done += 1
    finally:
        service.close()
    if log_fn:
        for aid, profile in profiles.items():
            n = sum(1 for sim, _ in jobs if sim.annotator_id == aid)
            if n:
                log_fn(f"stage {stage}: {aid} ({profile.name}) finished {n} tasks")
    return {"tasks_worked": done}


def work_stage2(
    ws: Workspace, store, model: ModelRef, log_fn: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Stage 2's people, simulated: reviewers first work the proposals routed to them, then annotators complete
    what no accepted mask covers, so an object a reviewer accepted or fixed is not drawn a second time."""
    verdicts = review_stage(ws, store, 2, model)
    worked = simulate_stage(ws, store, 2, model, log_fn=log_fn)
    return {**worked, "review_verdicts": verdicts}


def _independent_runs(jobs: list[tuple[Any, Any]]) -> list[list[tuple[Any, Any]]]:
    """Consecutive runs of tasks that can be worked at once: a ``complete`` task reads the accepted masks of
    its image, so it starts a new run when an earlier task of the run is on the same image."""
    runs: list[list[tuple[Any, Any]]] = []
    images: set[int] = set()
    for sim, task in jobs:
        image_id = int(task["image_id"])
        if not runs or (task["kind"] == "complete" and image_id in images):
            runs.append([])
            images = set()
        runs[-1].append((sim, task))
        images.add(image_id)
    return runs


def review_stage(ws: Workspace, store: QualityStore, stage: int, model: ModelRef | None = None) -> int:
    """Simulated reviewers work the stage's open review tasks; returns the number of verdicts. With
    ``model`` they fix with its clicks from each mask's stored prompt before tracing one by hand."""
    gt = ws.ground_truth()
    pending = store.tasks(status="pending", stage=stage)
    to_review = bool(len(pending)) and bool((pending["kind"] == "review").any())
    service = None
    if model is not None and to_review:  # a click session only where there is something to fix
        service = SegmentationService(version_predictor(ws, model), ws.load, cache_size=8)
    n = 0
    try:
        for i in range(ws.cfg.stages.reviewers):
            n += len(SimulatedReviewer(f"rev_{i + 1:02d}", store, gt, service=service).work_queue())
        # review tasks nobody was assigned to go to the first reviewer
        open_reviews = store.tasks(status="pending", stage=stage)
        open_reviews = open_reviews[open_reviews["kind"] == "review"]
        if len(open_reviews):
            reviewer = SimulatedReviewer("rev_01", store, gt, service=service)
            for task in open_reviews.to_dict("records"):
                n += len(reviewer.work(task))
    finally:
        if service is not None:
            service.close()
    return n


def consolidate(
    ws: Workspace, store: QualityStore, stage: int, model: ModelRef | None = None
) -> dict[str, Any]:
    """Consensus over overlapping images (weighted by gold accuracy), then review of flagged masks (fixed
    with ``model``'s clicks where it has one, :func:`review_stage`)."""
    weights = annotator_weights(store.gold_scores())
    report = run_consensus(store, stage, weights=weights, config=ConsensusConfig())
    verdicts = review_stage(ws, store, stage, model) if ws.cfg.stages.reviewers else 0
    return {"consensus_images": report.images, "flagged": report.flagged, "review_verdicts": verdicts}
