"""Export the store's masks as a COCO instances dataset or as SA-1B per-image records.

Both keep the stored compressed RLE as is (``counts`` a string), so ``pycocotools.mask.decode`` reads them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import pandas as pd

from sam_engine.quality.store import QualityStore

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def _selection(
    store: QualityStore,
    stage: int | None,
    status: str | Sequence[str] | None,
    image_ids: Iterable[int] | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    masks = store.masks(stage=stage, status=status)
    images = store.images()
    if image_ids is not None:
        wanted = {int(i) for i in image_ids}
        masks = masks[masks["image_id"].isin(wanted)]
        images = images[images["image_id"].isin(wanted)]
    else:
        images = images[images["image_id"].isin(set(masks["image_id"]))]
    return masks.reset_index(drop=True), images.reset_index(drop=True)


def _opt(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _image_entry(row: object) -> dict:
    entry = {
        "id": int(row.image_id),
        "file_name": str(row.file_name),
        "width": int(row.width),
        "height": int(row.height),
    }
    if isinstance(row.region, str):
        entry["region"] = row.region
    return entry


def coco_dataset(
    store: QualityStore,
    *,
    stage: int | None = None,
    status: str | Sequence[str] | None = "accepted",
    image_ids: Iterable[int] | None = None,
) -> dict:
    """A COCO instances dict (one category ``object``; annotation id = mask id; extra fields: stage, source,
    annotator_id, predicted_iou, stability_score, status, version)."""
    masks, images = _selection(store, stage, status, image_ids)
    annotations = []
    for m in masks.itertuples(index=False):
        annotations.append(
            {
                "id": int(m.mask_id),
                "image_id": int(m.image_id),
                "category_id": CATEGORY["id"],
                "segmentation": {"size": list(m.rle["size"]), "counts": m.rle["counts"]},
                "area": int(m.area),
                "bbox": [float(m.bbox_x), float(m.bbox_y), float(m.bbox_w), float(m.bbox_h)],
                "iscrowd": 0,
                "stage": int(m.stage),
                "source": m.source,
                "annotator_id": m.annotator_id if isinstance(m.annotator_id, str) else None,
                "predicted_iou": _opt(m.predicted_iou),
                "stability_score": _opt(m.stability_score),
                "status": m.status,
                "version": int(m.version),
            }
        )
    return {
        "info": {"description": "sam-engine annotation export", "version": "1.0"},
        "images": [_image_entry(r) for r in images.itertuples(index=False)],
        "annotations": annotations,
        "categories": [CATEGORY],
    }


def sa1b_records(
    store: QualityStore,
    *,
    stage: int | None = None,
    status: str | Sequence[str] | None = "accepted",
    image_ids: Iterable[int] | None = None,
) -> list[dict]:
    """One SA-1B per-image dict per image: ``{"image": {image_id, width, height, file_name}, "annotations":
    [{id, segmentation, bbox, area, predicted_iou, stability_score, crop_box, point_coords}]}``.

    ``point_coords`` are the positive clicks of the prompt that produced the mask (empty for masks made
    without clicks); ``crop_box`` is the whole image.
    """
    masks, images = _selection(store, stage, status, image_ids)
    by_image = {int(k): g for k, g in masks.groupby("image_id")} if len(masks) else {}
    out = []
    for img in images.itertuples(index=False):
        anns = []
        group = by_image.get(int(img.image_id))
        for m in [] if group is None else group.itertuples(index=False):
            prompt = _prompt(m)
            anns.append(
                {
                    "id": int(m.mask_id),
                    "segmentation": {"size": list(m.rle["size"]), "counts": m.rle["counts"]},
                    "bbox": [float(m.bbox_x), float(m.bbox_y), float(m.bbox_w), float(m.bbox_h)],
                    "area": int(m.area),
                    "predicted_iou": _opt(m.predicted_iou),
                    "stability_score": _opt(m.stability_score),
                    "crop_box": [0.0, 0.0, float(img.width), float(img.height)],
                    "point_coords": [
                        [p[0], p[1]] for p in prompt.get("points", []) if len(p) < 3 or p[2] == 1
                    ],
                }
            )
        out.append(
            {
                "image": {
                    "image_id": int(img.image_id),
                    "width": int(img.width),
                    "height": int(img.height),
                    "file_name": str(img.file_name),
                },
                "annotations": anns,
            }
        )
    return out


def _prompt(row: object) -> dict:
    text = getattr(row, "prompt", None)
    if isinstance(text, str) and text:
        return json.loads(text)
    return {}
