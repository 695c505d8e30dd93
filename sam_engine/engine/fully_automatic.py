"""Stage 3: model v2 prompted with a point grid writes SA-1B shards (one partition per shard), checked by QA."""

from __future__ import annotations

from typing import Any

from ..data.corpus import ImageRecord
from ..model_store import ModelRef
from .models import amg_params
from .workspace import Workspace


def write_engine_shard(
    ws: Workspace, index: int, images: list[ImageRecord], model: ModelRef
) -> dict[str, Any]:
    """Write shard ``index`` with model ``model``; the same model, images and seed give a byte-identical tar."""
    from ..stage3 import write_shard

    r = write_shard(index, images, ws.load_model(model), amg_params(ws), ws.cfg.shards_dir, seed=ws.cfg.seed)
    return {
        "index": r.index,
        "path": str(r.path),
        "sha256": r.sha256,
        "bytes": r.num_bytes,
        "images": len(r.image_ids),
        "image_ids": list(r.image_ids),
        "masks": r.num_masks,
        "blurred_boxes": r.blurred_boxes,
        "masks_per_image": r.num_masks / max(1, len(r.image_ids)),
        "model_sha256": model.sha256,
    }


def qa_shard(ws: Workspace, shard_path, n: int | None = None) -> dict[str, Any]:
    """Seeded QA sample of a shard, judged by the simulated reviewer against the hidden ground truth."""
    from ..qa import SimulatedReviewer, review, sample_shard

    s = ws.cfg.stages
    items = sample_shard(shard_path, n or s.qa_masks_per_shard, ws.cfg.seed)
    reviewer = SimulatedReviewer(ws.ground_truth(), threshold=s.qa_good_iou)
    est = review(items, reviewer).estimate()
    return {
        "reviewed": est.reviewed,
        "good": est.good,
        "share_good": est.share,
        "ci_low": est.low,
        "ci_high": est.high,
    }
