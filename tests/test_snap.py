"""Region snapping: masks follow the image's regions, clicks decide their region, the predictor surface holds."""

from __future__ import annotations

import numpy as np
import pytest

from sam_engine.snap import RegionCache, Regions, SnapParams, SnapPredictor


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a red square (the object) and a blue bar beside it."""
    img = np.full((60, 80, 3), 128, dtype=np.uint8)
    obj = np.zeros((60, 80), dtype=bool)
    obj[10:40, 15:45] = True
    img[obj] = (200, 30, 30)
    img[45:55, 5:75] = (30, 30, 200)
    return img, obj


def test_a_blurry_probability_snaps_to_the_object():
    img, obj = _scene()
    regions = Regions.of(img, SnapParams(scale=50))
    yy, xx = np.mgrid[0:60, 0:80]
    # a blob offset by 3 px with soft edges: wrong near the boundary, right in the middle
    prob = 1 / (1 + np.exp(-(14.0 - np.maximum(abs(yy - 27), abs(xx - 32)))))
    raw = prob > 0.5
    snapped = regions.snap_probability(prob)
    iou = lambda a, b: (a & b).sum() / (a | b).sum()  # noqa: E731
    assert iou(raw, obj) < 0.9 < iou(snapped, obj) and iou(snapped, obj) > 0.99


def test_clicks_decide_their_region():
    img, obj = _scene()
    regions = Regions.of(img, SnapParams(scale=50))
    nothing = np.zeros((60, 80))
    pos = regions.snap_probability(nothing, clicks=np.array([[30.0, 20.0]]), labels=np.array([1]))
    assert pos[20, 30] and (pos & obj).sum() == pos.sum()  # the square's region, nothing else
    neg = regions.snap_probability(np.ones((60, 80)), clicks=np.array([[30.0, 20.0]]), labels=np.array([0]))
    assert not neg[20, 30]
    # later clicks win; boxes' corner labels and clicks off the image are ignored
    both = regions.snap_probability(
        nothing, clicks=np.array([[30.0, 20.0], [31.0, 21.0], [500.0, 3.0]]), labels=np.array([1, 0, 1])
    )
    assert not both.any()


class _Fixed:
    """A predictor that answers every prompt with the same blurry logits."""

    model = None
    mask_threshold = 0.0

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits
        self.calls: list[dict] = []

    def set_image(self, image, image_key=None):
        self.image = image

    def reset_image(self):
        pass

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
        **extra,
    ):
        self.calls.append(extra)
        out = self.logits[None] if return_logits else self.logits[None] > 0
        return out, np.array([0.5], dtype=np.float32), np.zeros((1, 8, 8), dtype=np.float32)


def test_snap_predictor_keeps_the_surface_and_obeys_clicks():
    img, obj = _scene()
    logits = np.full((60, 80), -5.0)
    logits[12:42, 17:47] = 5.0  # the object, 2 px off
    base = _Fixed(logits)
    cache = RegionCache(2)
    pred = SnapPredictor(base, SnapParams(scale=50), cache)
    with pytest.raises(RuntimeError):
        pred.predict(np.array([[30.0, 20.0]]), np.array([1]))
    pred.set_image(img, image_key="a")
    masks, scores, low = pred.predict(np.array([[30.0, 20.0]]), np.array([1]), coarse="passed through")
    assert masks.dtype == bool and (masks[0] == obj).all()
    assert base.calls[-1] == {"coarse": "passed through"} and low.shape == (1, 8, 8)
    # a negative click on the object removes its region whatever the model says
    masks, _, _ = pred.predict(np.array([[30.0, 20.0], [20.0, 15.0]]), np.array([1, 0]))
    assert not masks[0, 15, 20]
    logit_out, _, _ = pred.predict(np.array([[30.0, 20.0]]), np.array([1]), return_logits=True)
    assert ((logit_out[0] > 0) == obj).all()
    assert pred.mask_threshold == 0.0
    first = pred.regions
    pred.set_image(img, image_key="a")
    assert pred.regions is first  # cached by image key


def test_snap_mask_majority():
    img, obj = _scene()
    regions = Regions.of(img, SnapParams(scale=50))
    noisy = obj.copy()
    noisy[10:13, 15:45] = False  # a bitten edge
    noisy[40:42, 15:45] = True  # a spilled edge
    assert (regions.snap_mask(noisy) == obj).all()


def test_region_cache_is_bounded_by_bytes_and_evicts_the_least_recently_used():
    img, _ = _scene()
    params = SnapParams(scale=50)
    one = Regions.of(img, params).nbytes
    cache = RegionCache(max_entries=100, max_bytes=int(2.5 * one))
    a = cache.get("a", img, params)
    cache.get("b", img, params)
    assert cache.get("a", img, params) is a  # a hit, and "a" is now the most recently used
    cache.get("c", img, params)  # over the budget: "b", the least recently used, goes
    assert len(cache) == 2 and cache.nbytes == 2 * one
    assert cache.get("a", img, params) is a
    assert ("b", img.shape, params) not in cache._entries
    # an entry bigger than the whole budget is still kept, alone
    tiny = RegionCache(max_bytes=1)
    first = tiny.get("a", img, params)
    assert tiny.get("a", img, params) is first and len(tiny) == 1
    tiny.get("b", img, params)
    assert len(tiny) == 1 and tiny.nbytes == one
    tiny.clear()
    assert len(tiny) == 0 and tiny.nbytes == 0
    assert tiny.get("a", img, params) is not first  # computed again
