"""COCO / image-folder ingestion on real files and on every kind of bad input."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_engine.data import rle as rle_utils
from sam_engine.data.coco import corpus_to_coco, load_coco
from sam_engine.data.errors import DataError
from sam_engine.data.folder import attach_ground_truth, load_image_folder
from sam_engine.data.images import load_image, safe_join
from sam_engine.data.schemas import images_frame, masks_frame

# ---------------------------------------------------------------------------------------------- real COCO files


@pytest.mark.parametrize("split,n_ann,n_crowd", [("train", 705, 6), ("val", 815, 11)])
def test_real_coco_tiny_loads_every_record(coco_tiny, split, n_ann, n_crowd):
    corpus = load_coco(coco_tiny / "annotations" / f"instances_{split}2017.json", coco_tiny / f"{split}2017")
    assert len(corpus.quarantine) == 0, corpus.quarantine.summary()
    assert len(corpus.images) == 80
    anns = [a for v in corpus.annotations.values() for a in v]
    assert len(anns) == n_ann
    assert sum(a["iscrowd"] for a in anns) == n_crowd
    # polygons and crowd RLE were normalised to compressed RLE that decodes to the official pycocotools mask
    from pycocotools.coco import COCO

    official = COCO(str(coco_tiny / "annotations" / f"instances_{split}2017.json"))
    for ann in anns[:40] + [a for a in anns if a["iscrowd"]]:
        expected = official.annToMask(official.anns[ann["id"]]).astype(bool)
        assert np.array_equal(rle_utils.decode(ann["segmentation"]), expected)
    masks_frame(corpus)
    images_frame(corpus)


def test_corpus_round_trips_through_coco(tmp_path, coco_tiny):
    corpus = load_coco(coco_tiny / "annotations" / "instances_val2017.json", coco_tiny / "val2017")
    doc = corpus_to_coco(corpus)
    (tmp_path / "a.json").write_text(json.dumps(doc))
    again = load_coco(tmp_path / "a.json", coco_tiny / "val2017")
    assert again.num_masks == corpus.num_masks and len(again.quarantine) == 0
    for im in corpus.images[:10]:
        for a, b in zip(corpus.masks_for(im.image_id), again.masks_for(im.image_id), strict=True):
            assert a["segmentation"] == b["segmentation"]


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def small_dataset(tmp_path):
    """Three valid 40x30 images with one mask each; returns (json path, images dir, doc)."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    images, anns = [], []
    for i in range(1, 4):
        arr = np.full((30, 40, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(arr).save(images_dir / f"{i}.png")
        m = np.zeros((30, 40), dtype=bool)
        m[5:15, 5 + i : 20 + i] = True
        seg = rle_utils.encode(m)
        images.append({"id": i, "file_name": f"{i}.png", "width": 40, "height": 30})
        anns.append(
            {
                "id": 100 + i,
                "image_id": i,
                "category_id": 1,
                "segmentation": seg,
                "bbox": rle_utils.bbox_xywh(seg),
                "area": int(m.sum()),
                "iscrowd": 0,
            }
        )
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path, images_dir, doc


def _load_with(path, images_dir, doc):
    path.write_text(json.dumps(doc))
    return load_coco(path, images_dir, verify_images=True)


def _only_error(corpus):
    assert len(corpus.quarantine) == 1, corpus.quarantine.summary()
    return corpus.quarantine.errors[0]


def test_valid_dataset_has_empty_quarantine(small_dataset):
    corpus = load_coco(small_dataset[0], small_dataset[1])
    assert len(corpus.images) == 3 and corpus.num_masks == 3 and len(corpus.quarantine) == 0


def test_truncated_image(small_dataset):
    path, images_dir, doc = small_dataset
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
        images_dir / "2.png"
    )
    data = (images_dir / "2.png").read_bytes()
    (images_dir / "2.png").write_bytes(data[: len(data) // 2])
    corpus = _load_with(path, images_dir, doc)
    errors = corpus.quarantine.errors
    assert any(e.field == "image" and "2.png" in e.file and e.record == "image 2" for e in errors)
    assert any(e.field == "image_id" and e.record == "annotation 102" for e in errors)
    assert [im.image_id for im in corpus.images] == [1, 3] and corpus.num_masks == 2


def test_corrupt_image(small_dataset):
    path, images_dir, doc = small_dataset
    (images_dir / "3.png").write_bytes(b"this is not an image at all")
    corpus = _load_with(path, images_dir, doc)
    assert any(e.field == "image" and e.record == "image 3" for e in corpus.quarantine.errors)
    assert {im.image_id for im in corpus.images} == {1, 2}


def test_zero_size_image_record(small_dataset):
    path, images_dir, doc = small_dataset
    doc["images"][0]["width"] = 0
    e = _only_error_or_cascade(_load_with(path, images_dir, doc), "image 1")
    assert e.field == "width" and "positive" in e.message


def _only_error_or_cascade(corpus, record):
    errors = [e for e in corpus.quarantine.errors if e.record == record]
    assert len(errors) == 1, corpus.quarantine.summary()
    return errors[0]


def test_image_over_pixel_limit(small_dataset):
    path, images_dir, doc = small_dataset
    corpus = load_coco(path, images_dir, max_pixels=1000)
    assert len(corpus.images) == 0
    assert all(
        e.field == "size" and "limit" in e.message for e in corpus.quarantine.errors if "image" in e.record
    )


def test_decompression_bomb_is_refused(tmp_path):
    big = tmp_path / "bomb.png"
    Image.new("L", (6000, 6000)).save(big)  # 36 MP of zeros compresses to a few KB
    with pytest.raises(DataError) as err:
        load_image(big, max_pixels=10_000_000)
    assert err.value.field == "size" and "bomb.png" in err.value.file


def test_malformed_json_missing_keys_and_wrong_types(small_dataset, tmp_path):
    path, images_dir, doc = small_dataset
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError) as err:
        load_coco(bad, images_dir)
    assert err.value.field == "json" and "bad.json" in err.value.file
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataError) as err:
        load_coco(bad, images_dir)
    assert err.value.field == "images"
    d = copy.deepcopy(doc)
    del d["images"][1]["file_name"]
    d["annotations"][0]["image_id"] = "1"
    del d["annotations"][2]["segmentation"]
    corpus = _load_with(path, images_dir, d)
    fields = {(e.record, e.field) for e in corpus.quarantine.errors}
    assert ("images[1]", "file_name") in fields
    assert ("annotation 101", "image_id") in fields
    assert ("annotations[2]", "segmentation") in fields
    assert [im.image_id for im in corpus.images] == [1, 3]


def test_rle_size_differs_from_image(small_dataset):
    path, images_dir, doc = small_dataset
    doc["annotations"][1]["segmentation"] = rle_utils.encode(np.ones((31, 40), dtype=bool))
    e = _only_error(_load_with(path, images_dir, doc))
    assert (e.record, e.field) == ("annotation 102", "segmentation.size")


def test_rle_counts_running_past_the_image(small_dataset):
    path, images_dir, doc = small_dataset
    doc["annotations"][0]["segmentation"] = {"size": [30, 40], "counts": [10, 2000]}
    e = _only_error(_load_with(path, images_dir, doc))
    assert (e.record, e.field) == ("annotation 101", "segmentation.counts")
    # a compressed string whose runs cover more pixels than the image
    long = mask_utils.encode(np.asfortranarray(np.ones((60, 40), dtype=np.uint8)))["counts"].decode()
    doc["annotations"][0]["segmentation"] = {"size": [30, 40], "counts": long}
    e = _only_error(_load_with(path, images_dir, doc))
    assert e.field == "segmentation.counts"


def test_polygon_with_fewer_than_three_points(small_dataset):
    path, images_dir, doc = small_dataset
    doc["annotations"][2]["segmentation"] = [[1, 1, 10, 10]]
    e = _only_error(_load_with(path, images_dir, doc))
    assert (e.record, e.field) == ("annotation 103", "segmentation[0]") and "3" in e.message


def test_bbox_outside_the_image(small_dataset):
    path, images_dir, doc = small_dataset
    doc["annotations"][0]["bbox"] = [30, 5, 25, 10]
    e = _only_error(_load_with(path, images_dir, doc))
    assert (e.record, e.field) == ("annotation 101", "bbox")


def test_duplicate_ids(small_dataset):
    path, images_dir, doc = small_dataset
    doc["images"].append(dict(doc["images"][0]))
    doc["annotations"].append(dict(doc["annotations"][0]))
    corpus = _load_with(path, images_dir, doc)
    fields = {(e.record, e.field) for e in corpus.quarantine.errors}
    assert fields == {("image 1", "id"), ("annotation 101", "id")}
    assert len(corpus.images) == 3 and corpus.num_masks == 3


def test_annotation_pointing_at_a_missing_image(small_dataset):
    path, images_dir, doc = small_dataset
    doc["annotations"][0]["image_id"] = 99
    e = _only_error(_load_with(path, images_dir, doc))
    assert (e.record, e.field) == ("annotation 101", "image_id") and "99" in e.message


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "sub/../../x.png"])
def test_file_name_escaping_the_dataset_folder(small_dataset, name):
    path, images_dir, doc = small_dataset
    shutil.copy(images_dir / "1.png", images_dir.parent / "outside.png")
    doc["images"][0]["file_name"] = name
    corpus = _load_with(path, images_dir, doc)
    e = next(e for e in corpus.quarantine.errors if e.record == "image 1")
    assert e.field == "file_name"
    assert len(corpus.images) == 2
    with pytest.raises(DataError):
        safe_join(images_dir, name)


def test_image_size_mismatch_with_json(small_dataset):
    path, images_dir, doc = small_dataset
    doc["images"][2]["width"] = 41
    e = _only_error_or_cascade(_load_with(path, images_dir, doc), "image 3")
    assert e.field == "width/height"


# ---------------------------------------------------------------------------------------------- image folder


def test_image_folder_formats_and_orientation(tmp_path):
    root = tmp_path / "pool"
    (root / "forest").mkdir(parents=True)
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[:, :10] = (255, 0, 0)
    Image.fromarray(rgb).save(root / "forest" / "a.jpg", quality=95)
    Image.fromarray(rgb).save(root / "b.webp", lossless=True)
    Image.fromarray((np.arange(600).reshape(20, 30) % 256).astype(np.uint8), "L").save(root / "gray.png")
    Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16)).save(root / "deep.png")
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "clear.png")
    # EXIF orientation 6: stored 30x20 landscape, displayed rotated to 20x30 portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(root / "rotated.jpg", exif=exif.tobytes(), quality=95)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    corpus = load_image_folder(root)
    by_name = {im.file_name: im for im in corpus.images}
    assert set(by_name) == {"forest/a.jpg", "b.webp", "gray.png", "deep.png", "clear.png", "rotated.jpg"}
    assert by_name["forest/a.jpg"].region == "forest" and by_name["b.webp"].region is None
    assert (by_name["rotated.jpg"].width, by_name["rotated.jpg"].height) == (20, 30)
    rotated = load_image(by_name["rotated.jpg"].path)
    assert rotated.shape == (30, 20, 3)
    # orientation 6 means "rotate 90 degrees clockwise to display": the red left band ends up on top
    assert rotated[0, :, 0].mean() > 150 and rotated[-1, :, 0].mean() < 100
    assert load_image(by_name["deep.png"].path).min() == 255  # 16-bit white stays white
    assert load_image(by_name["clear.png"].path).min() == 255  # transparent composited on white
    g = load_image(by_name["gray.png"].path)
    assert g.shape == (20, 30, 3) and (g[..., 0] == g[..., 2]).all()
    assert [e.field for e in corpus.quarantine.errors] == ["image"]
    assert "broken.png" in corpus.quarantine.errors[0].file
    # ids are stable when images are added
    Image.fromarray(rgb).save(root / "new.png")
    again = {im.file_name: im.image_id for im in load_image_folder(root).images}
    assert all(again[n] == im.image_id for n, im in by_name.items())


def test_image_folder_with_coco_ground_truth(tmp_path, small_dataset):
    path, images_dir, doc = small_dataset
    pool = load_image_folder(images_dir)
    gt = load_coco(path, images_dir)
    joined = attach_ground_truth(pool, gt)
    assert joined.num_masks == 3
    assert set(joined.annotations) == {im.image_id for im in pool.images}
