"""pandera schemas for the engine's tables, checked where they are written and where they enter an asset.

Masks tables carry the image size next to each mask so a row can be checked on its own: the RLE must
decode at exactly that size, the bbox must lie inside the image, area must be positive and the scores
must lie in [0, 1].
"""

from __future__ import annotations

import json

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from . import rle as rle_utils
from .corpus import MaskCorpus


class ImagesSchema(pa.DataFrameModel):
    """One row per image."""

    image_id: Series[int] = pa.Field(unique=True, ge=0)
    file_name: Series[str]
    width: Series[int] = pa.Field(gt=0)
    height: Series[int] = pa.Field(gt=0)
    region: Series[str] = pa.Field(nullable=True)

    class Config:
        strict = False
        coerce = True


class MasksSchema(pa.DataFrameModel):
    """One row per mask; ``segmentation`` is a COCO compressed RLE as JSON text."""

    mask_id: Series[int] = pa.Field(unique=True)
    image_id: Series[int]
    height: Series[int] = pa.Field(gt=0)
    width: Series[int] = pa.Field(gt=0)
    segmentation: Series[str]
    bbox_x: Series[float] = pa.Field(ge=0)
    bbox_y: Series[float] = pa.Field(ge=0)
    bbox_w: Series[float] = pa.Field(ge=0)
    bbox_h: Series[float] = pa.Field(ge=0)
    area: Series[int] = pa.Field(gt=0)
    predicted_iou: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    stability_score: Series[float] = pa.Field(ge=0, le=1, nullable=True)

    class Config:
        strict = False
        coerce = True

    @pa.dataframe_check(error="bbox lies outside the image")
    def bbox_inside_image(cls, df: pd.DataFrame) -> Series[bool]:
        return (df.bbox_x + df.bbox_w <= df.width + 1e-6) & (df.bbox_y + df.bbox_h <= df.height + 1e-6)

    @pa.dataframe_check(error="RLE does not decode at the image's size, or its area differs")
    def rle_matches_image(cls, df: pd.DataFrame) -> Series[bool]:
        ok = []
        for seg, h, w, area in zip(df.segmentation, df.height, df.width, df.area, strict=True):
            try:
                rle = json.loads(seg)
                ok.append(list(rle["size"]) == [int(h), int(w)] and rle_utils.area(rle) == int(area))
            except Exception:  # noqa: BLE001 - any failure to parse is a failed check
                ok.append(False)
        return pd.Series(ok, index=df.index)


def images_frame(corpus: MaskCorpus) -> pd.DataFrame:
    """The images table of a corpus, validated."""
    df = pd.DataFrame(
        [
            {
                "image_id": im.image_id,
                "file_name": im.file_name,
                "width": im.width,
                "height": im.height,
                "region": im.region,
            }
            for im in corpus.images
        ],
        columns=["image_id", "file_name", "width", "height", "region"],
    )
    return ImagesSchema.validate(df)


def masks_frame(corpus: MaskCorpus) -> pd.DataFrame:
    """The masks table of a corpus (one row per annotation), validated."""
    sizes = {im.image_id: (im.height, im.width) for im in corpus.images}
    rows = []
    for image_id, anns in corpus.annotations.items():
        h, w = sizes[image_id]
        for a in anns:
            x, y, bw, bh = a["bbox"]
            rows.append(
                {
                    "mask_id": a["id"],
                    "image_id": image_id,
                    "height": h,
                    "width": w,
                    "segmentation": json.dumps(a["segmentation"]),
                    "bbox_x": x,
                    "bbox_y": y,
                    "bbox_w": bw,
                    "bbox_h": bh,
                    "area": a["area"],
                    "predicted_iou": a.get("predicted_iou"),
                    "stability_score": a.get("stability_score"),
                }
            )
    cols = list(MasksSchema.to_schema().columns)
    return MasksSchema.validate(pd.DataFrame(rows, columns=cols))
