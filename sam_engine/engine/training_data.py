"""Training data from the people's work: the stages' accepted masks in the store as training corpora, and the
corpora each model version trains on (v1: stage 1; v2: stages 1-2 with v1's pseudo-labels; v3: the stage-3
shards with stages 1-2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ..data import rle as rle_utils
from ..data.corpus import MaskCorpus
from ..workforce.consensus import resolved_masks
from .workspace import Workspace

if TYPE_CHECKING:
    from sam_engine.quality.store import QualityStore


def stage_masks_frame(
    store: QualityStore, stage: int, gold_ids: set[int], people_only: bool = False
) -> pd.DataFrame:
    """The stage's accepted, consensus-resolved masks on pool images (honeypot work excluded); with
    ``people_only``, without the model's proposals (``source='model'``, accepted automatically or in review)."""
    df = resolved_masks(store, stage)
    if len(df):
        df = df[~df["image_id"].isin(gold_ids)]
    if len(df) and people_only:
        df = df[df["source"] != "model"]
    return df.reset_index(drop=True)


def masks_corpus(ws: Workspace, frames: list[pd.DataFrame]) -> MaskCorpus:
    """A training corpus from store masks (image records from the pool; remote images as cached files)."""
    anns: dict[int, list[dict]] = {}
    for df in frames:
        for row in df.itertuples(index=False):
            rle = row.rle
            anns.setdefault(int(row.image_id), []).append(
                {
                    "id": int(row.mask_id),
                    "image_id": int(row.image_id),
                    "segmentation": rle,
                    "area": int(row.area),
                    "bbox": rle_utils.bbox_xywh(rle),
                    "iscrowd": 0,
                }
            )
    images = [ws.localize(ws.record(i)) for i in sorted(anns)]
    return MaskCorpus(images=images, annotations=anns, source=f"{ws.cfg.duckdb_path}")


def store_masks_corpus(ws: Workspace, stages: list[int], people_only: bool = False) -> MaskCorpus:
    """The training corpus of ``stages``' accepted masks on pool images (:func:`stage_masks_frame`)."""
    with ws.open_store(read_only=True) as store:
        gold_ids = {im.image_id for im in ws.gold.images}
        frames = [stage_masks_frame(store, s, gold_ids, people_only) for s in stages]
    return masks_corpus(ws, frames)


def merge_corpora(a: MaskCorpus, b: MaskCorpus) -> MaskCorpus:
    """Both corpora's masks, image by image (an image in both keeps ``a``'s record and gets both masks)."""
    images = {im.image_id: im for im in a.images}
    anns = {k: list(v) for k, v in a.annotations.items()}
    for im in b.images:
        images.setdefault(im.image_id, im)
        anns.setdefault(im.image_id, []).extend(b.masks_for(im.image_id))
    return MaskCorpus(images=sorted(images.values(), key=lambda r: r.image_id), annotations=anns)


def v2_corpus(ws: Workspace, pseudo_labels: MaskCorpus) -> MaskCorpus:
    """v2's training data: the stage-1/2 masks (only those people made when ``train.v2_people_masks_only``)
    with v1's pseudo-labels on the stage-3 images (:mod:`~sam_engine.engine.pseudo_labels`; empty when off)."""
    people = store_masks_corpus(ws, [1, 2], people_only=ws.cfg.train.v2_people_masks_only)
    return merge_corpora(people, pseudo_labels)


def v3_corpus(ws: Workspace, shards: MaskCorpus) -> MaskCorpus:
    """v3's training data: the stage-3 shards' masks with the stage-1/2 masks, only those people made when
    ``train.v3_people_masks_only`` (stage 2's accepted model proposals left out)."""
    people_only = ws.cfg.train.v3_people_masks_only
    return merge_corpora(shards, store_masks_corpus(ws, [1, 2], people_only=people_only))
