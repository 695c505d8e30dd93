"""Self-training data for v2: v1's automatic masks, cut at stage 2's calibrated auto-accept threshold, on the
images stage 3 will take.

v2 learns from them beside the masks people made in stages 1-2 (``train.v2_pseudo_labels``): images the model
has not seen, labelled by its predecessor where it is confident. They are training data only. They live in the
data folder's ``pseudo_labels/`` (one SA-1B shard with its manifest, written atomically; the same v1, images and
seed write the same bytes) and never in the dataset, which stage 3 writes over the same images with v2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.corpus import ImageRecord, MaskCorpus
from ..model_store import ModelRef
from .fully_automatic import stage3_amg
from .workspace import Workspace

TARGET = "stage2_accept"  # the calibration whose cut the pseudo-labels keep


def pseudo_label_dir(ws: Workspace) -> Path:
    """Where the pseudo-label shard and its manifest live (apart from the dataset's shards)."""
    return ws.cfg.data_dir / "pseudo_labels"


def write_pseudo_labels(ws: Workspace, images: list[ImageRecord], model: ModelRef) -> dict[str, Any]:
    """Run ``model``'s generator at its calibrated ``stage2_accept`` cut on ``images`` and write the masks as
    shard 0 of :func:`pseudo_label_dir`. Returns what was written (``path`` None when there are no images or
    ``train.v2_pseudo_labels`` is off)."""
    from ..stage3 import write_shard

    info: dict[str, Any] = {"path": None, "images": 0, "masks": 0, "masks_per_image": 0.0}
    info["model_sha256"] = model.sha256
    if not images or not ws.cfg.train.v2_pseudo_labels:
        return info
    params, per_call = stage3_amg(ws, model, TARGET)
    records = [ws.localize(r) for r in images]
    r = write_shard(
        0,
        records,
        ws.load_model(model),
        params,
        pseudo_label_dir(ws),
        seed=ws.cfg.seed,
        images_per_call=per_call,
    )
    info.update(
        path=str(r.path),
        sha256=r.sha256,
        images=len(r.image_ids),
        image_ids=list(r.image_ids),
        masks=r.num_masks,
        masks_per_image=r.num_masks / max(1, len(r.image_ids)),
    )
    return info


def pseudo_label_corpus(info: dict[str, Any], ws: Workspace) -> MaskCorpus:
    """The masks :func:`write_pseudo_labels` wrote (``info`` is what it returned); empty when it wrote none."""
    from ..data.errors import DataError
    from ..data.sa1b import read_shards
    from ..io import sha256_file

    if not info.get("path") or not info.get("masks"):
        return MaskCorpus(images=[], annotations={})
    path = Path(info["path"])
    if not path.exists() or sha256_file(path) != info["sha256"]:
        raise DataError(
            path, path.name, "sha256", "missing or changed since v1 wrote it: re-materialize v1_pseudo_labels"
        )
    corpus = read_shards([path], cache_dir=pseudo_label_dir(ws) / "cache")
    if len(corpus.quarantine):  # v2 must not quietly train without what it was meant to learn from
        raise corpus.quarantine.errors[0]
    return corpus
