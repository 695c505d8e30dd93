"""pandera table schemas and the typed config."""

from __future__ import annotations

import json

import numpy as np
import pandera.errors
import pydantic
import pytest

from sam_engine.config import load_config
from sam_engine.data import rle as rle_utils
from sam_engine.data.corpus import ImageRecord, MaskCorpus
from sam_engine.data.schemas import MasksSchema, masks_frame


def _corpus(seg, bbox, area, piou=0.9):
    im = ImageRecord(1, path=__file__, width=20, height=10, file_name="x.png")  # type: ignore[arg-type]
    ann = {
        "id": 1,
        "image_id": 1,
        "segmentation": seg,
        "bbox": bbox,
        "area": area,
        "predicted_iou": piou,
        "stability_score": 0.97,
    }
    return MaskCorpus(images=[im], annotations={1: [ann]})


def _good():
    m = np.zeros((10, 20), dtype=bool)
    m[2:5, 3:9] = True
    seg = rle_utils.encode(m)
    return seg, rle_utils.bbox_xywh(seg), int(m.sum())


def test_valid_mask_table_passes():
    df = masks_frame(_corpus(*_good()))
    assert len(df) == 1 and json.loads(df.segmentation[0])["size"] == [10, 20]


@pytest.mark.parametrize("case", ["rle_size", "bbox", "area", "iou"])
def test_invalid_mask_rows_fail(case):
    seg, bbox, area = _good()
    piou = 0.9
    if case == "rle_size":
        seg = rle_utils.encode(np.ones((11, 20), dtype=bool))
        area = 220
    elif case == "bbox":
        bbox = [15, 2, 10, 3]
    elif case == "area":
        area = 0
    else:
        piou = 1.5
    with pytest.raises(pandera.errors.SchemaError):
        masks_frame(_corpus(seg, bbox, area, piou))


def test_schema_is_lazy_reportable():
    seg, bbox, area = _good()
    df = masks_frame(_corpus(seg, bbox, area))
    df.loc[0, "stability_score"] = -1
    with pytest.raises(pandera.errors.SchemaErrors) as err:
        MasksSchema.validate(df, lazy=True)
    assert "stability_score" in str(err.value)


def test_profiles_and_overrides(monkeypatch, tmp_path):
    smoke = load_config("smoke")
    default = load_config("default")
    assert smoke.corpus.public_images < default.corpus.public_images
    assert default.corpus.public_images >= 2000
    stages = default.stages
    assert default.corpus.pool_images >= 2 * (stages.stage1_images + stages.stage2_images)  # stage 3 the most
    assert default.corpus.gold_images >= 200
    monkeypatch.setenv("SAM_ENGINE_PROFILE", "smoke")
    monkeypatch.setenv("SAM_ENGINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SAM_ENGINE_OVERRIDES", json.dumps({"corpus": {"gold_images": 7}}))
    cfg = load_config(overrides={"seed": 5})
    assert (
        cfg.profile == "smoke" and cfg.data_dir == tmp_path and cfg.corpus.gold_images == 7 and cfg.seed == 5
    )
    assert cfg.corpus.public_images == smoke.corpus.public_images
    with pytest.raises(ValueError):
        load_config("huge")
    with pytest.raises(pydantic.ValidationError):
        load_config("smoke", {"corpus": {"no_such_field": 1}})
