"""Stage 2: model v1 proposes masks; confident ones are accepted, medium ones reviewed, and people complete
what it missed on images chosen by the diversity sampler (low confidence, under-covered regions first)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
from tqdm import tqdm

from ..data.corpus import ImageRecord
from ..model_store import ModelRef
from ..stage2 import RoutingConfig, SamplerWeights, commit_proposals, sample_images
from .human_stage import register_images
from .models import amg_params, stored_evaluation
from .workspace import Workspace

if TYPE_CHECKING:
    from sam_engine.quality.store import QualityStore


def propose(
    ws: Workspace,
    store: QualityStore,
    images: list[ImageRecord],
    model: ModelRef,
    log_fn: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Run v1's automatic mask generator on the stage-2 images and route every proposal.

    Images whose proposals are already in the store are not proposed again (idempotent re-runs).
    Returns one row per image: region, proposals, accepted, review, discarded, mean predicted IoU.
    """
    from ..amg.generator import AutomaticMaskGenerator

    register_images(store, images, "stage2", "pool")
    routing, params, score_key = stage2_routing(ws, model)
    done_ids = store.image_ids_with_masks(2, source="model")
    prior = _proposal_log(ws)
    todo = [rec for rec in images if not (rec.image_id in done_ids and rec.image_id in prior)]
    generated: dict[int, list[dict]] = {}
    if todo:
        from ..parallel import fork_map

        generate = AutomaticMaskGenerator(ws.load_model(model), params).generate
        bar = tqdm(total=len(todo), desc="stage-2 proposals", leave=False, disable=None)
        found = fork_map(
            lambda rec: generate(ws.load(rec.image_id)), todo, progress=lambda n: bar.update(n - bar.n)
        )
        bar.close()
        generated = {rec.image_id: p for rec, p in zip(todo, found, strict=True)}
    rows = []
    for rec in images:
        if rec.image_id not in generated:
            rows.append(prior[rec.image_id])
            continue
        proposals = generated[rec.image_id]
        report = commit_proposals(
            store,
            rec.image_id,
            proposals,
            height=rec.height,
            width=rec.width,
            stage=2,
            config=routing,
            batch="stage2-review",
            score_key=score_key,
        )
        c = report.counts
        rows.append(
            {
                "image_id": rec.image_id,
                "region": rec.region,
                "proposals": len(proposals),
                "accepted": c.get("accept", 0),
                "review": c.get("review", 0),
                "discarded": c.get("discard", 0),
                "mean_predicted_iou": report.mean_predicted_iou,
                "coverage": report.coverage,
            }
        )
    df = pd.DataFrame(rows)
    _save_proposal_log(ws, df)
    if log_fn:
        log_fn(
            f"stage 2: {int(df['proposals'].sum())} proposals on {len(df)} images; "
            f"{int(df['accepted'].sum())} accepted, {int(df['review'].sum())} to review"
        )
    return df


def stage2_routing(ws: Workspace, model: ModelRef) -> tuple[RoutingConfig, Any, str]:
    """Routing thresholds, generator settings and the score routed on for ``model``'s proposals.

    With a gold calibration (:func:`~sam_engine.engine.models.amg_calibration`), the generator keeps what
    passes the review filter and proposals are routed on the calibrated quality (or, without a quality model,
    on predicted IoU and stability) at the auto-accept and review cuts. Without one: the configured
    ``stage2_accept_iou`` / ``stage2_review_iou`` on predicted IoU and the configured generator settings.
    """
    from ..amg.calibration import Calibration

    s = ws.cfg.stages
    cal = (stored_evaluation(ws, model) or {}).get("calibration") or {}
    if "stage2_accept" not in cal or "stage2_review" not in cal:
        routing = RoutingConfig(accept_iou=s.stage2_accept_iou, review_iou=s.stage2_review_iou)
        return routing, amg_params(ws), "predicted_iou"
    accept, review = Calibration.from_dict(cal["stage2_accept"]), Calibration.from_dict(cal["stage2_review"])
    a, r = accept.thresholds, review.thresholds
    if review.quality_model is not None and a.quality is not None and r.quality is not None:
        routing = RoutingConfig(accept_iou=max(a.quality, r.quality), review_iou=r.quality)
        return routing, review.apply(amg_params(ws)), "quality"
    routing = RoutingConfig(
        accept_iou=max(a.pred_iou, r.pred_iou),
        review_iou=r.pred_iou,
        accept_stability=max(a.stability, r.stability),
        review_stability=r.stability,
    )
    return routing, review.apply(amg_params(ws)), "predicted_iou"


def _log_path(ws: Workspace):
    return ws.cfg.data_dir / "stage2_proposals.parquet"


def _proposal_log(ws: Workspace) -> dict[int, dict[str, Any]]:
    path = _log_path(ws)
    if not path.exists():
        return {}
    return {int(r["image_id"]): r for r in pd.read_parquet(path).to_dict("records")}


def _save_proposal_log(ws: Workspace, df: pd.DataFrame) -> None:
    path = _log_path(ws)
    tmp = path.with_suffix(".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


def choose_for_completion(ws: Workspace, store: QualityStore, proposals: pd.DataFrame) -> list[int]:
    """The diversity sampler's pick of stage-2 images for human completion (best first)."""
    masks = store.masks(status="accepted")
    region_of = {im.image_id: im.region for im in ws.pool.images}
    counts: dict[str, float] = {}
    if len(masks):
        human = masks[masks["source"].isin(["human", "consensus"])]
        for image_id in set(human["image_id"].astype(int)):
            r = region_of.get(image_id)
            if r:
                counts[r] = counts.get(r, 0.0) + 1
    return sample_images(
        proposals[["image_id", "region", "mean_predicted_iou"]],
        ws.cfg.stages.stage2_complete_images,
        weights=SamplerWeights(),
        region_counts=counts,
        seed=ws.cfg.seed,
    )
