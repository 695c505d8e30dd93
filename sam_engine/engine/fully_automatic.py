"""Stage 3: model v2 prompted with a point grid writes SA-1B shards (one partition per shard), checked by QA.

Shards go to the data folder's ``shards/`` or, with ``shards_url`` set, to that fsspec URL (written in a local
staging folder byte for byte as locally, then uploaded with a per-shard manifest entry). The model runs on the
workspace's device; on a GPU, ``stages.amg_gpu_images_per_call`` images share each encoder call.
"""

from __future__ import annotations

from typing import Any

from ..data.corpus import ImageRecord
from ..model_store import ModelRef
from .models import amg_params, calibrated_amg_params
from .workspace import Workspace


def stage3_amg(
    ws: Workspace, model: ModelRef | None = None, target: str = "stage3"
) -> tuple[Any, int | None]:
    """AMG settings and images per ``generate_batch`` call for a whole-image pass on ``ws.device``.

    The thresholds are ``model``'s, calibrated on gold for ``target``'s precision (stage 3's by default)
    (:func:`~sam_engine.engine.models.calibrated_amg_params`; the configured ones without a model or a
    calibration). CPU: the writer's default batching (``encoder_batch_size`` images per call). GPU:
    ``amg_gpu_images_per_call`` images per call, all in one encoder batch.
    """
    from ..amg.params import AmgParams

    params = calibrated_amg_params(ws, model, target) if model is not None else amg_params(ws)
    if ws.device.type != "cuda":
        return params, None
    n = ws.cfg.stages.amg_gpu_images_per_call
    return AmgParams(**{**params.model_dump(), "encoder_batch_size": n}), n


def write_engine_shard(
    ws: Workspace, index: int, images: list[ImageRecord], model: ModelRef
) -> dict[str, Any]:
    """Write shard ``index`` with model ``model``; the same model, images and seed give a byte-identical tar
    (locally or at ``shards_url``)."""
    from ..stage3 import write_shard

    sam = ws.load_model(model)
    params, per_call = stage3_amg(ws, model)
    seed = ws.cfg.seed
    images = [ws.localize(r) for r in images]  # a remote pool's images through the workspace cache
    if ws.cfg.shards_url is None:
        r = write_shard(index, images, sam, params, ws.cfg.shards_dir, seed=seed, images_per_call=per_call)
        return {
            "index": r.index,
            "path": str(r.path),
            "sha256": r.sha256,
            "bytes": r.num_bytes,
            "images": len(r.image_ids),
            "image_ids": list(r.image_ids),
            "covered_image_ids": _covered(r.image_ids, r.mask_counts),
            "masks": r.num_masks,
            "blurred_boxes": r.blurred_boxes,
            "masks_per_image": r.num_masks / max(1, len(r.image_ids)),
            "model_sha256": model.sha256,
        }
    from ..stage3 import write_shard_to

    staging = ws.cfg.data_dir / "shard_staging"
    staging.mkdir(parents=True, exist_ok=True)
    e = write_shard_to(
        ws.cfg.shards_url,
        index,
        images,
        sam,
        params,
        seed=seed,
        staging_dir=staging,
        images_per_call=per_call,
    )
    return {
        "index": e["index"],
        "path": e["path"],
        "sha256": e["sha256"],
        "bytes": e["bytes"],
        "images": e["num_images"],
        "image_ids": list(e["image_ids"]),
        "covered_image_ids": _covered(e["image_ids"], e["mask_counts"]),
        "masks": e["num_masks"],
        "blurred_boxes": e["blurred_boxes"],
        "masks_per_image": e["num_masks"] / max(1, e["num_images"]),
        "model_sha256": model.sha256,
    }


def _covered(image_ids: list[int], mask_counts: list[int]) -> list[int]:
    """The images of a shard that carry at least one kept mask."""
    return [int(i) for i, n in zip(image_ids, mask_counts, strict=True) if n > 0]


def qa_shard(ws: Workspace, shard_path, n: int | None = None) -> dict[str, Any]:
    """Seeded QA sample of a shard (a path or a URL), judged by the simulated reviewer against the hidden
    ground truth."""
    from ..qa import SimulatedQaJudge, review, sample_shard

    s = ws.cfg.stages
    items = sample_shard(ws.local_file(shard_path), n or s.qa_masks_per_shard, ws.cfg.seed)
    reviewer = SimulatedQaJudge(ws.ground_truth(), threshold=s.qa_good_iou)
    est = review(items, reviewer).estimate()
    return {
        "reviewed": est.reviewed,
        "good": est.good,
        "share_good": est.share,
        "ci_low": est.low,
        "ci_high": est.high,
    }
