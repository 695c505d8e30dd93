"""Zoom-in refinement (sam_engine/zoom.py): crop geometry, frames, purity, and that it answers on the crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_engine.model import build_sam
from sam_engine.predictor import EmbeddingCache, SamPredictor
from sam_engine.zoom import ZoomPredictor, interactive_predictor, zoom_box


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam("tiny", seed=0).eval()


def _image(h: int = 200, w: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img[60:90, 100:140] = (250, 20, 20)
    return img


def _disk(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_zoom_box_encloses_mask_and_points_enlarged_and_snapped():
    mask = np.zeros((200, 300), bool)
    mask[60:90, 100:140] = True  # 40 x 30
    x0, y0, x1, y1 = zoom_box(mask, np.array([[150.0, 95.0]]), (200, 300), 1.5, 16, 8)
    assert x0 <= 100 and x1 >= 151 and y0 <= 60 and y1 >= 96  # mask and point inside
    assert all(v % 8 == 0 for v in (x0, y0, x1, y1))  # snapped outwards
    assert x1 - x0 >= 1.5 * 51 and y1 - y0 >= 1.5 * 36  # enlarged about the union's box
    # at least min_size a side, shifted inside the image at the border
    assert zoom_box(None, np.array([[2.0, 2.0]]), (200, 300), 1.5, 64, 1) == (0, 0, 64, 64)
    assert zoom_box(None, np.array([[299.0, 199.0]]), (200, 300), 1.5, 64, 1) == (236, 136, 300, 200)
    # never larger than the image; nothing to frame -> the whole image
    assert zoom_box(np.ones((50, 40), bool), None, (50, 40), 3.0, 16, 16) == (0, 0, 40, 50)
    assert zoom_box(None, None, (50, 40), 1.5, 16, 16) == (0, 0, 40, 50)


def test_first_click_refines_only_the_best_output_and_keeps_the_contract(model, monkeypatch):
    img = _image()
    base = SamPredictor(model, cache=EmbeddingCache(8))
    zoom = ZoomPredictor(base, expansion=1.7)
    pts, lab = np.array([[120.0, 75.0]]), np.array([1])
    zoom.set_image(img, image_key="a")
    real = base.predict

    def small_best(*args, **kwargs):  # an untrained model's masks fill the image; make the best one small
        masks, scores, low = real(*args, **kwargs)
        masks = masks.copy()
        masks[int(np.argmax(scores))] = np.where(_disk(200, 300, 120, 75, 20), 5.0, -5.0)
        return masks, scores, low

    monkeypatch.setattr(base, "predict", small_best)
    pm, ps, pl = base.predict(pts, lab, None, None, True, return_logits=True)
    zm, zs, zl = zoom.predict(pts, lab, multimask_output=True)
    assert zoom.stats == {"zoomed": 1, "crop_encodes": 1}  # the best output was answered again on a crop
    assert zm.shape == pm.shape and zm.dtype == bool and zl.shape == pl.shape == (3, 64, 64)
    np.testing.assert_allclose(zs, ps)  # the ranking is the whole-image pass's
    best = int(np.argmax(ps))
    others = [i for i in range(3) if i != best]
    assert np.array_equal(zm[others], pm[others] > 0) and np.array_equal(zl[others], pl[others])
    assert not np.array_equal(zl[best], pl[best])
    assert not zm[best][:, :60].any()  # outside the crop around the disk nothing is drawn
    zoom.predict(pts, lab, multimask_output=True)  # same prompts: the crop embedding is reused
    assert zoom.stats == {"zoomed": 2, "crop_encodes": 1}


def test_coarse_is_the_whole_image_pass_and_refining_it_equals_predict(model, monkeypatch):
    """``coarse`` is the base predictor's answer (logits); ``predict(coarse=)`` refines it without running the
    whole-image pass again and gives what ``predict`` alone gives, on a first click and on a later one."""
    img = _image()
    base = SamPredictor(model, cache=EmbeddingCache(8))
    zoom = ZoomPredictor(base, expansion=1.7)
    zoom.set_image(img, image_key="p")
    real, calls = base.predict, []

    def small_best(*args, **kwargs):  # as above: a small best output, so the zoom applies
        calls.append(1)
        masks, scores, low = real(*args, **kwargs)
        masks = masks.copy()
        masks[int(np.argmax(scores))] = np.where(_disk(200, 300, 120, 75, 20), 5.0, -5.0)
        return masks, scores, low

    monkeypatch.setattr(base, "predict", small_best)
    pts, lab = np.array([[120.0, 75.0]]), np.array([1])
    cm, cs, cl = zoom.coarse(pts, lab)
    bm, bs, bl = small_best(pts, lab, None, None, True, return_logits=True)
    assert cm.dtype == np.float32 and np.array_equal(cm, bm) and np.array_equal(cl, bl)
    assert zoom.mask_threshold == model.mask_threshold
    calls.clear()
    first = zoom.predict(pts, lab, coarse=(cm, cs, cl))
    assert calls == [] and zoom.stats["zoomed"] == 1  # refined on the crop only
    for a, b in zip(first, zoom.predict(pts, lab), strict=True):
        assert np.array_equal(a, b)
    best = int(np.argmax(first[1]))
    pts2, lab2 = np.vstack([pts, [[126.0, 82.0]]]), np.array([1, 1])
    prev = first[2][best][None]
    again = zoom.predict(pts2, lab2, None, prev, coarse=zoom.coarse(pts2, lab2, None, prev))
    for a, b in zip(again, zoom.predict(pts2, lab2, None, prev), strict=True):
        assert np.array_equal(a, b)


def test_answers_come_from_the_crop_at_the_right_place(model, monkeypatch):
    """A fake crop model that draws a disk around each clicked point: the pasted mask must sit around the
    clicks in image coordinates, and nothing outside the crop."""
    img = _image()
    zoom = ZoomPredictor(SamPredictor(model, cache=EmbeddingCache(8)), expansion=1.7, refine_first=False)
    zoom.set_image(img, image_key="b")
    seen = {}

    def crop_predict(coords, labels, box, mask_input, multimask_output, return_logits):
        h, w = zoom._crop.original_size
        seen["size"], seen["coords"], seen["mask_input"] = (h, w), coords.copy(), mask_input
        m = np.zeros((h, w), bool)
        for x, y in coords:
            m |= _disk(h, w, x, y, 6)
        logits = np.where(m, 10.0, -10.0).astype(np.float32)[None]
        return logits, np.array([0.9], np.float32), np.zeros((1, 64, 64), np.float32)

    monkeypatch.setattr(zoom._crop, "predict", crop_predict)
    prev = np.where(_disk(200, 300, 120, 75, 15), 10.0, -10.0).astype(np.float32)
    mask_input = zoom._low_res_of(prev)
    pts = np.array([[120.0, 75.0], [133.0, 80.0]])
    masks, scores, low = zoom.predict(pts, np.array([1, 1]), None, mask_input, multimask_output=False)
    assert zoom.stats["zoomed"] == 1 and masks.shape == (1, 200, 300) and low.shape == (1, 64, 64)
    h, w = seen["size"]
    assert h < 200 and w < 300  # answered on a crop, not the whole image
    want = _disk(200, 300, 120, 75, 6) | _disk(200, 300, 133, 80, 6)
    assert np.array_equal(masks[0], want)
    # the fed-back mask reached the crop in the crop's frame: its foreground covers the disk's crop
    crop_fg = seen["mask_input"][0] > 0
    assert crop_fg.any() and not crop_fg.all()


def test_round_trip_of_the_low_res_frame(model):
    img = _image()
    zoom = ZoomPredictor(SamPredictor(model, cache=EmbeddingCache(8)))
    zoom.set_image(img)
    mask = _disk(200, 300, 150, 100, 40)
    low = zoom._low_res_of(np.where(mask, 10.0, -10.0).astype(np.float32))
    back = zoom._full_logits(low[0], (200, 300)) > 0
    inter, union = (back & mask).sum(), (back | mask).sum()
    assert inter / union > 0.95


def test_pure_interleaved_objects_get_the_same_answers(model):
    """No per-object state: clicks on two objects, interleaved, equal the same clicks run one after another."""
    img = _image(seed=3)

    def run(order):
        zoom = ZoomPredictor(SamPredictor(model, cache=EmbeddingCache(16)), expansion=1.7)
        zoom.set_image(img, image_key="c")
        state = {0: (np.array([[60.0, 50.0]]), None), 1: (np.array([[220.0, 150.0]]), None)}
        out = {0: [], 1: []}
        for k in order:
            pts, logits = state[k]
            masks, scores, low = zoom.predict(
                pts, np.ones(len(pts), int), None, None if logits is None else logits[None], len(pts) == 1
            )
            best = int(np.argmax(scores))
            out[k].append(masks[best])
            state[k] = (np.vstack([pts, pts[-1] + [9.0, 7.0]]), low[best])
        return out

    a = run([0, 1, 0, 1, 0, 1])
    b = run([0, 0, 0, 1, 1, 1])
    for k in (0, 1):
        assert all(np.array_equal(x, y) for x, y in zip(a[k], b[k], strict=True))


def test_bad_mask_input_is_a_clear_error_and_factory_switch(model):
    zoom = interactive_predictor(model, cache=EmbeddingCache(2))
    assert isinstance(zoom, ZoomPredictor)
    assert type(interactive_predictor(model, zoom=False)) is SamPredictor
    with pytest.raises(RuntimeError, match="set_image"):
        zoom.predict(np.array([[1.0, 1.0]]), np.array([1]))
    zoom.set_image(_image())
    with pytest.raises(ValueError, match="mask_input"):
        zoom.predict(np.array([[1.0, 1.0]]), np.array([1]), None, np.zeros((1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="expansion"):
        ZoomPredictor(SamPredictor(model), expansion=0.5)


def test_predictor_lanes_share_caches_and_answer_alike(model):
    """Lanes over one model share the whole-image and crop caches: a crop one lane encoded is a hit for the
    other, and both answer the same clicks with the same masks."""
    from sam_engine.zoom import predictor_lanes

    img = _image(seed=5)
    a, b = predictor_lanes(model, 2, cache=EmbeddingCache(4))
    assert a.base.cache is b.base.cache and a._crop.cache is b._crop.cache
    pts, labels = np.array([[120.0, 75.0]]), np.array([1])
    fed_back = a._low_res_of(np.where(_disk(200, 300, 120, 75, 20), 5.0, -5.0))  # a small object's logits
    a.set_image(img, image_key="lane")
    ma, sa, _ = a.predict(pts, labels, None, fed_back)
    b.set_image(img, image_key="lane")
    mb, sb, _ = b.predict(pts, labels, None, fed_back)
    assert a.stats["crop_encodes"] == 1 and b.stats["crop_encodes"] == 0  # b reused a's crop embedding
    assert np.array_equal(ma, mb) and np.allclose(sa, sb)
    assert [type(p) for p in predictor_lanes(model, 3, zoom=False)] == [SamPredictor] * 3
    with pytest.raises(ValueError, match="lanes"):
        predictor_lanes(model, 0)
