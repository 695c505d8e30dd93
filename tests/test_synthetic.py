"""The embedded default corpora: determinism, formats, domain-B structure."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from sam_engine.config import load_config
from sam_engine.data import synthetic
from sam_engine.data.corpora import (
    generate_corpora,
    load_gold,
    load_pool,
    load_pool_ground_truth,
    load_public,
)


def _tree_digest(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_same_seed_gives_byte_identical_files_whatever_the_workers(tmp_path):
    overrides = {"corpus": {"public_images": 70, "pool_images": 70, "gold_images": 4}}
    a = load_config("smoke", {**overrides, "data_dir": str(tmp_path / "a")})
    b = load_config("smoke", {**overrides, "data_dir": str(tmp_path / "b")})
    generate_corpora(a, workers=1)
    generate_corpora(b, workers=2)
    assert _tree_digest(a.corpora_dir) == _tree_digest(b.corpora_dir)
    c = load_config("smoke", {**overrides, "data_dir": str(tmp_path / "c"), "seed": 1})
    generate_corpora(c, workers=1)
    assert _tree_digest(a.corpora_dir) != _tree_digest(c.corpora_dir)


def test_regeneration_is_idempotent(smoke_cfg, smoke_corpora):
    before = _tree_digest(smoke_cfg.corpora_dir)
    manifest = generate_corpora(smoke_cfg, workers=1)
    assert manifest == smoke_corpora
    assert _tree_digest(smoke_cfg.corpora_dir) == before


def test_generated_coco_decodes_to_the_generator_masks(smoke_cfg, smoke_corpora):
    coco = COCO(str(smoke_cfg.corpora_dir / "public" / "train.json"))
    assert len(coco.getImgIds()) == smoke_corpora["counts"]["public"]["train_images"]
    img_id = sorted(coco.getImgIds())[0]
    index = img_id - synthetic.ID_OFFSETS[synthetic.DOMAIN_PUBLIC]
    scene = synthetic.public_scene(smoke_cfg.seed, index, tuple(smoke_cfg.corpus.public_size))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
    assert len(anns) == len(scene.annotations) > 0
    for ann, expected in zip(anns, scene.annotations, strict=True):
        decoded = coco.annToMask(ann).astype(bool)
        from sam_engine.data.rle import decode

        assert np.array_equal(decoded, decode(expected["segmentation"]))
        assert ann["area"] == int(decoded.sum())


def test_pool_has_regions_parts_occlusion_and_varied_sizes(smoke_cfg, smoke_corpora):
    gt = load_pool_ground_truth(smoke_cfg)
    pool = load_pool(smoke_cfg)
    assert pool.num_masks == 0, "the pool itself carries no masks: ground truth lives apart"
    assert {im.image_id for im in pool.images} == {im.image_id for im in gt.images}
    levels = {a["level"] for anns in gt.annotations.values() for a in anns}
    assert levels == {"whole", "part", "subpart"}
    # a part's mask lies inside its whole's mask
    from sam_engine.data.rle import decode

    anns = [a for anns in gt.annotations.values() for a in anns]
    by_id = {a["id"]: a for a in anns}
    child = next(a for a in anns if a["level"] == "part" and a["parent_id"] in by_id)
    cm, pm = decode(child["segmentation"]), decode(by_id[child["parent_id"]]["segmentation"])
    assert not (cm & ~pm).any() and pm.sum() > cm.sum()
    shapes = {(im.width, im.height) for im in pool.images}
    assert len(shapes) > len(pool.images) // 2
    aspects = [im.width / im.height for im in pool.images]
    assert min(aspects) < 0.9 and max(aspects) > 1.1
    assert len({im.region for im in pool.images}) >= 5
    small = [a for a in anns if a["area"] < 0.002 * 144 * 144 * 4]
    assert small, "domain B has small objects"


def test_domain_b_is_more_cluttered_than_domain_a(smoke_cfg, smoke_corpora):
    pub = load_public(smoke_cfg)
    gold = load_gold(smoke_cfg)
    per_img_a = pub.num_masks / len(pub.images)
    per_img_b = gold.num_masks / len(gold.images)
    assert per_img_b > 3 * per_img_a


def test_region_styles_differ():
    a = synthetic.pool_scene(0, 0, (128, 128), 6)
    names = set()
    for i in range(30):
        names.add(synthetic.pool_scene(0, i, (96, 128), 6).region)
    assert len(names) >= 5
    assert a.image.dtype == np.uint8 and a.image.ndim == 3
    assert json.dumps(a.annotations)  # JSON-ready
