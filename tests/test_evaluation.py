"""Click protocol and interactive metrics against fake predictors whose outputs are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from sam_engine.data import rle
from sam_engine.data.corpus import ImageRecord, MaskCorpus
from sam_engine.data.images import save_png
from sam_engine.evaluation import (
    Click,
    ClickProtocol,
    EvalObject,
    corpus_objects,
    evaluate_corpus,
    evaluate_objects,
    first_click,
    iou,
    next_click,
    noc,
    padded_distance,
    run_clicks,
    summarize,
)


def rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


class ComponentPredictor:
    """Predicts the union of the flat-colour connected components under positive clicks, minus negatives."""

    def __init__(self, n_outputs: int = 3):
        self.n_outputs = n_outputs
        self.calls: list[dict] = []

    def set_image(self, image, image_key=None):
        code = image[..., 0].astype(np.int64) * 65536 + image[..., 1].astype(np.int64) * 256 + image[..., 2]
        labels = np.zeros(code.shape, dtype=np.int64)
        offset = 0
        for value in np.unique(code):
            lab, n = ndimage.label(code == value)
            labels[lab > 0] = lab[lab > 0] + offset
            offset += n
        self.labels = labels
        self.keys = getattr(self, "keys", []) + [image_key]

    def predict(
        self,
        point_coords,
        point_labels,
        box=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
    ):
        self.calls.append(
            {
                "coords": point_coords.copy(),
                "labels": point_labels.copy(),
                "mask_input": mask_input,
                "multimask": multimask_output,
            }
        )
        mask = np.zeros(self.labels.shape, dtype=bool)
        for (x, y), lab in zip(point_coords.astype(int), point_labels, strict=True):
            comp = self.labels == self.labels[y, x]
            mask = mask | comp if lab == 1 else mask & ~comp
        c = self.n_outputs if multimask_output else 1
        masks = np.repeat(mask[None], c, axis=0)
        scores = np.linspace(0.9, 0.1, c)
        return masks, scores, np.zeros((c, 8, 8), dtype=np.float32)


class ScriptedPredictor:
    """Returns the given (masks, scores) in order and records every call."""

    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.calls: list[dict] = []

    def set_image(self, image):
        self.image = image

    def predict(
        self,
        point_coords,
        point_labels,
        box=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
    ):
        n = len(self.calls)
        self.calls.append(
            {
                "coords": point_coords.copy(),
                "labels": point_labels.copy(),
                "mask_input": mask_input,
                "multimask": multimask_output,
            }
        )
        masks, scores = self.outputs[min(n, len(self.outputs) - 1)]
        low = np.full((len(masks), 4, 4), float(n), dtype=np.float32)
        return np.asarray(masks), np.asarray(scores, dtype=np.float32), low


def test_padded_distance_counts_border_as_outside():
    m = np.ones((5, 5), dtype=bool)
    dt = padded_distance(m)
    assert dt[0, 0] == 1.0 and dt[2, 2] == 3.0
    assert padded_distance(np.zeros((3, 3), bool)).max() == 0.0


def test_padded_distance_is_scipys_euclidean_transform_and_places_the_same_clicks():
    from scipy import ndimage

    def exact(m):
        return ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:90, :130]

    def blob():
        cy, cx, r = rng.integers(0, 90), rng.integers(0, 130), rng.integers(4, 60)
        return ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) ^ (rng.random((90, 130)) < 0.02)

    masks = np.stack([blob() for _ in range(6)])
    masks[5] = False  # an empty slice stays zero
    batch = padded_distance(masks)
    assert batch.shape == masks.shape
    for m, d in zip(masks, batch, strict=True):
        np.testing.assert_array_equal(d, exact(m))
        np.testing.assert_array_equal(padded_distance(m), d)
    # the protocol's strict comparisons and first-maximum ties see what the exact transform gives
    for _ in range(20):
        gt, pred = blob(), blob()
        fn, fp = exact(gt & ~pred), exact(pred & ~gt)
        deepest = fn if fn.max() > fp.max() else fp
        y, x = divmod(int(np.argmax(deepest)), deepest.shape[1])
        c = next_click(gt, pred)
        assert (c.x, c.y, c.positive) == (x, y, bool(fn.max() > fp.max()))


def test_padded_distance_hands_depths_beyond_the_exact_range_to_scipy(monkeypatch):
    from scipy import ndimage

    from sam_engine.evaluation import clicks

    calls, real = [], ndimage.distance_transform_edt

    def spy(a, *args, **kwargs):
        calls.append(a.shape)
        return real(a, *args, **kwargs)

    monkeypatch.setattr(clicks.ndimage, "distance_transform_edt", spy)
    m = np.ones((40, 50), dtype=bool)  # depths reach 20
    first = clicks.padded_distance(m)
    assert calls == []  # within the exact range: OpenCV only
    monkeypatch.setattr(clicks, "_EXACT_DEPTH", 5.0)
    np.testing.assert_array_equal(clicks.padded_distance(m), first)
    assert calls == [(42, 52)]  # beyond it: scipy, on the padded mask


def test_first_click_is_deepest_pixel_first_in_row_major_order():
    gt = rect((12, 12), 2, 8, 2, 10)  # 6 rows x 8 cols: depth 3 on rows 4-5, cols 4-7
    assert first_click(gt) == Click(x=4, y=4, positive=True)
    with pytest.raises(ValueError):
        first_click(np.zeros((4, 4), bool))


def test_next_click_positive_on_larger_false_negative_region():
    gt = rect((20, 20), 2, 18, 2, 18)
    pred = rect((20, 20), 2, 18, 2, 8)  # misses cols 8-17 -> FN band 10 wide
    c = next_click(gt, pred)
    assert c.positive
    assert gt[c.y, c.x] and not pred[c.y, c.x]
    assert padded_distance(gt & ~pred)[c.y, c.x] == padded_distance(gt & ~pred).max()


def test_next_click_negative_on_false_positive_and_tie_goes_negative():
    gt = rect((12, 12), 2, 8, 2, 10)
    pred = gt | rect((12, 12), 9, 12, 0, 12)  # 3 FP rows at the bottom edge
    assert next_click(gt, pred) == Click(x=1, y=10, positive=False)
    # FN and FP regions of equal depth: the protocol's strict '>' picks the negative click
    gt2 = rect((10, 10), 0, 3, 0, 3)
    pred2 = rect((10, 10), 7, 10, 7, 10)
    c = next_click(gt2, pred2)
    assert not c.positive and pred2[c.y, c.x]
    assert next_click(gt2, gt2) is None


def test_next_click_skips_clicked_pixels_and_ignore():
    gt = rect((10, 10), 0, 10, 0, 5)
    pred = np.zeros_like(gt)
    c1 = next_click(gt, pred)
    clicked = np.zeros_like(gt)
    clicked[c1.y, c1.x] = True
    c2 = next_click(gt, pred, clicked=clicked)
    assert (c2.x, c2.y) != (c1.x, c1.y)
    assert next_click(gt, pred, ignore=gt) is None


def test_iou_with_ignore_and_noc():
    gt = rect((10, 10), 2, 6, 2, 6)
    pred = rect((10, 10), 1, 7, 1, 7)
    band = rect((10, 10), 1, 7, 1, 7) & ~gt
    assert iou(gt, pred) == pytest.approx(16 / 36)
    assert iou(gt, pred, ignore=band) == 1.0
    assert noc([0.5, 0.86, 0.95], 0.85) == (2, True)
    assert noc([0.5, 0.86, 0.95], 0.90) == (3, True)
    assert noc([0.1] * 30, 0.9, max_clicks=20) == (20, False)
    assert noc([0.1] * 19 + [0.95], 0.9, max_clicks=20) == (20, True)


def test_one_mask_iou_whose_caller_names_the_empty_rule():
    """The protocol's iou and the simulated workforce share rle.mask_iou; two empty masks give what the caller
    says (the protocol: 1.0), an empty mask against an object 0.0 whatever the rule."""
    empty = np.zeros((10, 10), dtype=bool)
    obj = rect((10, 10), 2, 6, 2, 6)
    assert iou(empty, empty) == 1.0
    assert rle.mask_iou(empty, empty, empty=0.0) == 0.0 and rle.mask_iou(empty, empty, empty=1.0) == 1.0
    assert rle.mask_iou(empty, obj, empty=1.0) == 0.0
    assert rle.mask_iou(obj, obj, empty=0.0) == 1.0
    with pytest.raises(TypeError):
        rle.mask_iou(obj, obj)  # no default: every caller chooses


def test_component_predictor_two_part_object():
    # object = two separate rectangles of the same label; one click gets the big part, the second the small
    img = np.zeros((30, 30, 3), dtype=np.uint8)
    img[2:22, 2:22] = (200, 0, 0)
    img[25:29, 25:29] = (0, 200, 0)
    gt = rect((30, 30), 2, 22, 2, 22) | rect((30, 30), 25, 29, 25, 29)
    pred = ComponentPredictor()
    pred.set_image(img)
    res = run_clicks(pred, gt, protocol=ClickProtocol(max_clicks=5, stop_early=True))
    assert res.ious[0] == pytest.approx(400 / 416)
    assert res.ious[1] == 1.0
    assert res.clicks[0].positive and res.clicks[1].positive
    assert gt[res.clicks[1].y, res.clicks[1].x] and res.clicks[1].y >= 25
    # multimask on the first click only; the chosen low-res logits are fed back from click 2 on
    assert [c["multimask"] for c in pred.calls[:2]] == [True, False]
    assert pred.calls[0]["mask_input"] is None and pred.calls[1]["mask_input"].shape == (1, 8, 8)
    assert len(pred.calls[1]["coords"]) == 2


def test_scripted_negative_click_most_confident_and_oracle():
    shape = (12, 12)
    gt = rect(shape, 2, 8, 2, 10)
    over = gt | rect(shape, 9, 12, 0, 12)
    wrong = rect(shape, 0, 2, 0, 2)
    # click 1: most confident output is 'over', the oracle output is the GT itself
    outputs = [([over, gt, wrong], [0.9, 0.5, 0.1]), ([gt], [0.95])]
    pred = ScriptedPredictor(outputs)
    res = run_clicks(pred, gt, protocol=ClickProtocol(max_clicks=4, report_clicks=(1, 3)))
    assert res.ious[0] == pytest.approx(iou(gt, over))
    assert res.oracle_ious[0] == 1.0
    assert res.clicks[1] == Click(x=1, y=10, positive=False)
    np.testing.assert_array_equal(pred.calls[1]["labels"], [1, 0])
    assert float(pred.calls[1]["mask_input"][0, 0, 0]) == 0.0  # logits from call 0, the chosen output
    assert res.ious[1] == 1.0 and len(res.ious) == 3  # stopped early, padded to the reported 3 clicks


def test_evaluate_objects_summary_by_region():
    shape = (12, 12)
    gt = rect(shape, 2, 8, 2, 10)
    half = rect(shape, 2, 8, 2, 6)
    perfect = ScriptedPredictor([([gt], [1.0])])
    objs = [
        EvalObject(
            image_key=i,
            image=np.zeros((12, 12, 3), np.uint8),
            gt=gt,
            image_id=i,
            object_id=i,
            region="north" if i < 2 else "south",
        )
        for i in range(4)
    ]
    df = evaluate_objects(perfect, objs, ClickProtocol(multimask="never"))
    assert list(df["iou@1"]) == [1.0] * 4 and list(df["noc@90"]) == [1] * 4
    df.loc[2:, "iou@1"] = iou(gt, half)
    df.loc[2:, "noc@90"] = 20
    df.loc[2:, "fail@90"] = True
    s = summarize(df, ClickProtocol())
    assert s["by_region"]["north"]["miou@1"] == 1.0
    assert s["by_region"]["south"]["miou@1"] == pytest.approx(0.5)
    assert s["miou@1"] == pytest.approx(0.75)
    assert s["nof@90"] == 2 and s["noc@90"] == pytest.approx(10.5)
    assert s["n_objects"] == 4 and s["n_images"] == 4


def _tiny_corpus(tmp_path, n_images=3, seed=0):
    rng = np.random.default_rng(seed)
    images, anns = [], {}
    aid = 0
    for i in range(n_images):
        h, w = 40, 56
        img = np.full((h, w, 3), 30, dtype=np.uint8)
        masks = []
        for k in range(3):
            y0, x0 = rng.integers(0, h - 12), rng.integers(0, w - 12)
            m = rect((h, w), y0, y0 + rng.integers(6, 12), x0, x0 + rng.integers(6, 12))
            for prev in masks:
                m &= ~prev
            if m.sum() < 10:
                continue
            img[m] = (40 + 60 * k, 200 - 50 * k, 90 + 20 * i)
            masks.append(m)
        path = tmp_path / f"im{i}.png"
        save_png(img, path)
        images.append(ImageRecord(i, path, w, h, path.name, region=f"r{i % 2}"))
        anns[i] = []
        for m in masks:
            # keep only the visible part's largest component so the component predictor can be perfect
            lab, n = ndimage.label(m)
            big = lab == (1 + np.argmax(np.bincount(lab.ravel())[1:]))
            anns[i].append(
                {
                    "id": aid,
                    "image_id": i,
                    "segmentation": rle.encode(big),
                    "area": int(big.sum()),
                    "iscrowd": 0,
                }
            )
            aid += 1
    return MaskCorpus(images=images, annotations=anns, source="tiny")


def test_evaluate_corpus_with_component_predictor(tmp_path):
    corpus = _tiny_corpus(tmp_path)
    pred = ComponentPredictor()
    df, summary = evaluate_corpus(pred, corpus, workers=1)
    assert len(df) == corpus.num_masks
    assert summary["miou@1"] == 1.0 and summary["noc@90"] == 1.0 and summary["nof@90"] == 0
    assert set(summary["by_region"]) == {"r0", "r1"}
    assert pred.keys == [0, 1, 2]  # one set_image per image


def test_evaluate_corpus_in_worker_processes_gives_the_same_table(tmp_path):
    corpus = _tiny_corpus(tmp_path)
    serial, _ = evaluate_corpus(ComponentPredictor(), corpus, workers=1)
    pred = ComponentPredictor()
    seen = []
    parallel, summary = evaluate_corpus(pred, corpus, workers=2)
    df = evaluate_objects(pred, corpus_objects(corpus), workers=2, progress=seen.append)
    pd.testing.assert_frame_equal(parallel, serial)
    pd.testing.assert_frame_equal(df, serial)
    assert not hasattr(pred, "keys") and pred.calls == []  # every click was answered in a worker process
    assert seen[-1] == corpus.num_masks and seen == sorted(seen)


def test_corpus_objects_subsample_is_seeded_and_grouped(tmp_path):
    corpus = _tiny_corpus(tmp_path, n_images=6)
    a = [(o.image_id, o.object_id) for o in corpus_objects(corpus, max_objects=5, seed=3)]
    b = [(o.image_id, o.object_id) for o in corpus_objects(corpus, max_objects=5, seed=3)]
    c = [(o.image_id, o.object_id) for o in corpus_objects(corpus, max_objects=5, seed=4)]
    assert a == b and len(a) == 5 and a == sorted(a)
    assert a != c


def test_bad_segmentation_names_the_record(tmp_path):
    corpus = _tiny_corpus(tmp_path, n_images=1)
    corpus.annotations[0][0]["segmentation"] = rle.encode(np.ones((5, 5), bool))
    with pytest.raises(Exception, match="segmentation"):
        evaluate_corpus(ComponentPredictor(), corpus)


# ---------------------------------------------------------------------------------------------- folder benchmark


def _write_folder(tmp_path):
    """GrabCut-style (0/128/255 single object) and instance-id (255 void) masks beside their images."""
    from PIL import Image

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    img = np.full((30, 40, 3), 20, np.uint8)
    img[5:20, 5:20] = (200, 30, 30)
    img[22:28, 25:38] = (30, 200, 30)
    Image.fromarray(img).save(images / "scene.tif")
    Image.fromarray(img).save(images / "scene2.png")
    grab = np.zeros((30, 40), np.uint8)
    grab[5:20, 5:20] = 255
    grab[4, 4:21] = 128  # ignored band above the object
    Image.fromarray(grab).save(masks / "scene.bmp")
    inst = np.zeros((30, 40), np.uint8)
    inst[5:20, 5:20] = 1
    inst[22:28, 25:38] = 2
    inst[21, :] = 255
    pal = Image.fromarray(inst, mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    pal.save(masks / "scene2_1.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(masks / "orphan.png")
    return images, masks


def test_mask_objects_formats():
    from sam_engine.evaluation.benchmark_folder import mask_objects

    grab = np.array([[0, 128, 255, 255]])
    [(oid, obj, ign)] = mask_objects(grab)
    assert obj.tolist() == [[False, False, True, True]] and ign.tolist() == [[False, True, False, False]]
    assert mask_objects(np.array([[0, 1, 1]]))[0][1].tolist() == [[False, True, True]]
    inst = mask_objects(np.array([[0, 1, 2, 255]]))
    assert [o[0] for o in inst] == [1, 2] and inst[0][2].tolist() == [[False, False, False, True]]
    with pytest.raises(ValueError):
        mask_objects(grab, "weird")


def test_run_benchmark_on_folder(tmp_path):
    import json

    import pandas as pd

    from sam_engine.evaluation.benchmark_folder import folder_objects, run_benchmark

    images, masks = _write_folder(tmp_path)
    objects, orphans = folder_objects(images, masks)
    assert [o.object_id for o in objects] == ["scene.bmp:1", "scene2_1.png:1", "scene2_1.png:2"]
    assert [p.name for p in orphans] == ["orphan.png"]
    assert objects[0].ignore is not None and objects[0].ignore.sum() == 17
    summary = run_benchmark(ComponentPredictor(), images, masks, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "per_object.csv")
    assert len(table) == 3 and list(table["image"]) == ["scene.tif", "scene2.png", "scene2.png"]
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["n_objects"] == 3 and saved["unmatched_masks"] == ["orphan.png"]
    assert summary["noc@90"] == saved["noc@90"] and summary["nof@90"] == 0 and summary["miou@1"] > 0.95


def test_benchmark_folder_cli_with_a_model(tmp_path):
    from sam_engine.evaluation.benchmark_folder import main
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import save_checkpoint

    images, masks = _write_folder(tmp_path)
    micro = {
        "img_size": 64,
        "patch_size": 8,
        "encoder_embed_dim": 32,
        "encoder_depth": 1,
        "encoder_num_heads": 2,
        "encoder_window_size": 4,
        "encoder_global_attn_indexes": [0],
        "out_chans": 32,
        "mask_in_chans": 8,
        "decoder_depth": 1,
        "decoder_mlp_dim": 32,
        "decoder_num_heads": 2,
        "iou_head_hidden_dim": 32,
    }
    ckpt = save_checkpoint(build_sam(micro, seed=0), tmp_path / "m.pt")
    out = tmp_path / "out"
    assert (
        main(
            [
                "--images",
                str(images),
                "--masks",
                str(masks),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--max-clicks",
                "3",
            ]
        )
        == 0
    )
    assert (out / "per_object.csv").exists() and (out / "summary.json").exists()
    assert (
        main(["--images", str(images), "--masks", str(tmp_path / "empty_dir_missing"), "--out", str(out)])
        != 0
    )
