"""AMG parts against hand-computed cases, and the generator on a fake and on a random tiny model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from sam_engine.amg import AmgParams, AutomaticMaskGenerator
from sam_engine.amg.crops import generate_crop_boxes, uncrop_masks
from sam_engine.amg.encode import masks_to_rle, masks_to_uncompressed_rle
from sam_engine.amg.filters import (
    count_true,
    covers_too_much,
    masks_to_boxes,
    near_crop_edge,
    stability_score,
)
from sam_engine.amg.grid import build_layer_grids, build_point_grid
from sam_engine.amg.nms import batched_nms, box_iou, nms
from sam_engine.amg.postprocess import remove_small_regions
from sam_engine.data import rle as rle_utils


# ------------------------------------------------------------------------------------------------ grid
def test_point_grid_centres_row_major():
    g = build_point_grid(2)
    np.testing.assert_allclose(g, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    assert build_point_grid(32).shape == (1024, 2)


def test_layer_grids_downscale():
    grids = build_layer_grids(8, 2, 2)
    assert [len(g) for g in grids] == [64, 16, 4]


# ------------------------------------------------------------------------------------------- stability
def test_stability_score_hand_case():
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -2.0]], [[3.0, 3.0], [0.9, -0.99]]])
    # mask 0: > +1 -> 1 pixel, > -1 -> 3 pixels; mask 1: 2 and 4
    s = stability_score(logits, 0.0, 1.0)
    torch.testing.assert_close(s, torch.tensor([1 / 3, 0.5]))
    # moved threshold: > 1.5 vs > -0.5 -> (1, 2) and (2, 3)
    torch.testing.assert_close(stability_score(logits, 0.5, 1.0), torch.tensor([0.5, 2 / 3]))


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 7, 9), (3, 51, 37), (2, 64, 255 * 8 + 16), (1, 1, 8)])
def test_count_true_and_stability_match_plain_sums(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    m = x > 0.3
    assert torch.equal(count_true(m), m.reshape(shape[0], -1).sum(1).to(torch.int32))
    full = torch.ones(shape, dtype=torch.bool)
    assert count_true(full).tolist() == [shape[1] * shape[2]] * shape[0]
    reference = (x > 1).sum(dim=(1, 2)) / (x > -1).sum(dim=(1, 2))
    torch.testing.assert_close(stability_score(x, 0.0, 1.0), reference.float(), rtol=0, atol=0)


def test_stability_empty_is_nan():
    assert torch.isnan(stability_score(torch.full((1, 3, 3), -5.0), 0.0, 1.0))[0]


# ------------------------------------------------------------------------------------------------ boxes
def test_masks_to_boxes_inclusive_and_empty():
    m = torch.zeros(3, 6, 8, dtype=torch.bool)
    m[0, 1:3, 2:5] = True
    m[1, 5, 7] = True
    boxes = masks_to_boxes(m)
    assert boxes.tolist() == [[2, 1, 4, 2], [7, 5, 7, 5], [0, 0, 0, 0]]


def test_near_crop_edge():
    crop = [0, 0, 100, 100]
    image = [0, 0, 200, 200]
    boxes = torch.tensor([[10, 10, 99, 50], [0, 30, 50, 60], [30, 30, 60, 60], [30, 30, 60, 79]])
    # touches the inner right edge -> drop; touches the image's left edge -> keep; inside -> keep;
    # 21 px from the inner bottom edge -> keep
    assert near_crop_edge(boxes, crop, image, 20.0).tolist() == [True, False, False, False]
    # a crop in the middle: near its left edge (x = 50) is not near the image's
    assert near_crop_edge(torch.tensor([[55, 90, 65, 100]]), [50, 50, 150, 150], image, 20.0).tolist() == [
        True
    ]
    assert near_crop_edge(torch.tensor([[75, 90, 85, 100]]), [50, 50, 150, 150], image, 20.0).tolist() == [
        False
    ]
    # the whole image as a crop: nothing is an inner edge
    assert not near_crop_edge(boxes, image, image, 20.0).any()


def test_covers_too_much():
    areas = torch.tensor([94, 95, 100])
    assert covers_too_much(areas, 10, 10, 0.95).tolist() == [False, True, True]
    assert not covers_too_much(areas, 10, 10, None).any()


# -------------------------------------------------------------------------------------------------- NMS
def _greedy_reference(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        ok = True
        for j in kept:
            x0, y0 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            x1, y1 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(x1 - x0, 0) * max(y1 - y0, 0)
            a = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            b = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            union = a + b - inter
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def test_nms_chain_keeps_box_whose_suppressor_was_suppressed():
    # A (0.9) suppresses B (0.8, IoU 0.8); B would suppress C (IoU 0.8) but B is gone; IoU(A, C) < 0.7.
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10], [2.0, 0, 12, 10]])
    iou = box_iou(boxes, boxes)
    assert iou[0, 1] > 0.7 and iou[1, 2] > 0.7 and iou[0, 2] < 0.7
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.7)
    assert keep.tolist() == [0, 2]


def test_box_iou_hand_case():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [2.0, 2, 4, 4]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60), st.sampled_from([0.3, 0.5, 0.7]))
def test_nms_matches_greedy_reference(seed: int, n: int, thr: float):
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 40, size=(n, 2))
    wh = rng.integers(0, 25, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.integers(0, 5, size=n).astype(np.float32)  # ties on purpose
    keep = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr)
    assert keep.tolist() == _greedy_reference(boxes, scores, thr)


def test_batched_nms_categories_do_not_interact():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert sorted(batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist()) == [0, 1]


# ------------------------------------------------------------------------------------------------ crops
def test_crop_boxes_hand_computed():
    boxes, layers = generate_crop_boxes(100, 200, 1, 512 / 1500)
    # short side 100, overlap int(0.3413 * 100) = 34, crop w = ceil((34 + 200) / 2) = 117, h = ceil(134 / 2) = 67
    assert boxes == [
        [0, 0, 200, 100],
        [0, 0, 117, 67],
        [0, 33, 117, 100],
        [83, 0, 200, 67],
        [83, 33, 200, 100],
    ]
    assert layers == [0, 1, 1, 1, 1]
    boxes2, layers2 = generate_crop_boxes(100, 200, 2, 512 / 1500)
    assert len(boxes2) == 1 + 4 + 16 and layers2.count(2) == 16
    assert all(0 <= b[0] < b[2] <= 200 and 0 <= b[1] < b[3] <= 100 for b in boxes2)


def test_uncrop_masks_places_crop():
    m = torch.ones(1, 2, 3, dtype=torch.bool)
    out = uncrop_masks(m, [4, 1, 7, 3], 5, 10)
    assert out.shape == (1, 5, 10) and out.sum() == 6 and out[0, 1:3, 4:7].all()


# -------------------------------------------------------------------------------------------------- RLE
@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 5), st.integers(1, 40), st.integers(1, 40))
def test_rle_agrees_with_pycocotools(seed: int, n: int, h: int, w: int):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) < rng.random()
    masks[0, 0, 0] = True  # a mask that starts with foreground (zero-length first run)
    t = torch.from_numpy(masks)
    ours = masks_to_rle(t)
    for i, r in enumerate(ours):
        ref = mask_utils.encode(np.asfortranarray(masks[i].astype(np.uint8)))
        assert r["counts"] == ref["counts"].decode("ascii") and r["size"] == [h, w]
        decoded = mask_utils.decode({"size": r["size"], "counts": r["counts"].encode("ascii")})
        np.testing.assert_array_equal(decoded.astype(bool), masks[i])
    for r, u in zip(ours, masks_to_uncompressed_rle(t), strict=True):
        assert u["counts"] == rle_utils.counts_runs(r["counts"])
        assert sum(u["counts"]) == h * w


# ------------------------------------------------------------------------------------------- cleanup
def test_remove_small_regions_holes_and_islands():
    m = np.zeros((20, 20), dtype=bool)
    m[2:12, 2:12] = True
    m[5, 5] = False  # 1-px hole
    m[16:18, 16:18] = True  # 4-px island
    filled, changed = remove_small_regions(m, 5, "holes")
    assert changed and filled[5, 5] and filled[16, 16]
    cleaned, changed = remove_small_regions(filled, 5, "islands")
    assert changed and not cleaned[16:18, 16:18].any() and cleaned[2:12, 2:12].all()
    same, changed = remove_small_regions(cleaned, 5, "islands")
    assert not changed and np.array_equal(same, cleaned)


# ---------------------------------------------------------------------------------------- generator
class SquareSam(torch.nn.Module):
    """A fake SAM: for a point it predicts three squares around it (half sizes ``halves`` in model px).

    Mask k gets logit +8 inside its square and -8 outside (so after bilinear upsampling only a thin band is
    unstable); predicted IoUs are ``ious``.
    """

    mask_threshold = 0.0

    def __init__(self, img_size: int = 64, halves=(4, 8, 30), ious=(0.95, 0.9, 0.5)):
        super().__init__()
        self.img_size = img_size
        self.halves = halves
        self.ious = torch.tensor(ious)
        self.register_buffer("dummy", torch.zeros(1))
        self.image_encoder = lambda x: x[:, :1, :: img_size // 16, :: img_size // 16]

    @property
    def device(self):
        return self.dummy.device

    def preprocess(self, x):
        return F.pad(x, (0, self.img_size - x.shape[-1], 0, self.img_size - x.shape[-2]))

    def decode(self, emb, point_coords, point_labels, multimask_output=True):
        b = point_coords.shape[0]
        low = self.img_size // 4
        ys, xs = torch.meshgrid(torch.arange(low) * 4 + 2.0, torch.arange(low) * 4 + 2.0, indexing="ij")
        pts = point_coords[:, 0, :].float()
        out = []
        for half in self.halves:
            inside = ((xs[None] - pts[:, 0, None, None]).abs() <= half) & (
                (ys[None] - pts[:, 1, None, None]).abs() <= half
            )
            out.append(torch.where(inside, 8.0, -8.0))
        return torch.stack(out, 1), self.ious.expand(b, 3)

    def postprocess_masks(self, masks, input_size, original_size):
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_generator_filters_and_nms_on_fake_model():
    model = SquareSam()
    params = AmgParams(
        points_per_side=4, pred_iou_thresh=0.88, stability_score_thresh=0.5, max_mask_area_ratio=None
    )
    recs = AutomaticMaskGenerator(model, params).generate(_image(64, 64))
    # IoU 0.5 masks (the big squares) are filtered; per point the small and mid squares survive, and
    # box NMS removes nothing since the grid points are 16 px apart (IoU of neighbours < 0.7).
    assert len(recs) == 16 * 2
    for r in recs:
        assert set(r) == {
            "segmentation",
            "area",
            "bbox",
            "predicted_iou",
            "point_coords",
            "stability_score",
            "crop_box",
        }
        m = rle_utils.decode(r["segmentation"])
        assert m.sum() == r["area"] > 0
        x, y, w, h = r["bbox"]
        ys, xs = np.nonzero(m)
        assert [x, y, x + w, y + h] == [xs.min(), ys.min(), xs.max(), ys.max()]
        assert r["predicted_iou"] > 0.88 and r["stability_score"] >= 0.5
        px, py = r["point_coords"][0]
        assert m[int(py), int(px)]  # the prompt point lies inside its mask
        assert r["crop_box"] == [0.0, 0.0, 64.0, 64.0]


def test_generator_keeps_more_than_255_masks_per_batch_and_image():
    # pycocotools' area() fails on more than 255 RLEs in one call under NumPy 2; 144 points x 2 kept masks
    # in one batch (and one image) must still give every record its area
    model = SquareSam()
    params = AmgParams(
        points_per_side=12,
        points_per_batch=144,
        pred_iou_thresh=0.88,
        stability_score_thresh=0.5,
        box_nms_thresh=1.0,
        max_mask_area_ratio=None,
    )
    recs = AutomaticMaskGenerator(model, params).generate(_image(192, 192))
    assert len(recs) == 144 * 2
    for r in recs[::17]:
        assert rle_utils.decode(r["segmentation"]).sum() == r["area"] > 0


def test_generator_nms_removes_duplicates():
    # two points 2 px apart give nearly identical squares: NMS keeps one per mask size
    model = SquareSam(halves=(8, 12, 12), ious=(0.95, 0.9, 0.89))
    params = AmgParams(
        points_per_side=None,
        point_grids=[[(0.5, 0.5), (0.51, 0.5)]],
        pred_iou_thresh=0.88,
        stability_score_thresh=0.5,
        max_mask_area_ratio=None,
    )
    recs = AutomaticMaskGenerator(model, params).generate(_image(64, 64))
    ious = sorted(r["predicted_iou"] for r in recs)
    assert len(recs) == 2
    assert ious == pytest.approx([0.9, 0.95])  # the 0.89 copy of the same box lost to the 0.9 one


def test_generator_drops_masks_covering_most_of_the_image():
    model = SquareSam(halves=(100, 6, 6), ious=(0.99, 0.95, 0.2))
    grid = [[(0.5, 0.5)]]
    base = {"points_per_side": None, "point_grids": grid, "stability_score_thresh": 0.5}
    kept = AutomaticMaskGenerator(model, AmgParams(**base, max_mask_area_ratio=None)).generate(_image(40, 40))
    dropped = AutomaticMaskGenerator(model, AmgParams(**base)).generate(_image(40, 40))
    assert max(r["area"] for r in kept) == 40 * 40
    assert len(dropped) == len(kept) - 1 and all(r["area"] < 0.95 * 1600 for r in dropped)


def test_generator_crop_layers_edge_filter_and_crop_nms():
    model = SquareSam(halves=(4, 6, 6), ious=(0.95, 0.9, 0.1))
    params = AmgParams(
        points_per_side=4, crop_n_layers=1, stability_score_thresh=0.5, max_mask_area_ratio=None
    )
    gen = AutomaticMaskGenerator(model, params)
    image = _image(96, 128)
    recs = gen.generate(image)
    crops = {tuple(r["crop_box"]) for r in recs}
    assert (0.0, 0.0, 128.0, 96.0) in crops and len(crops) > 1
    for r in recs:
        x0, y0, cw, ch = r["crop_box"]
        bx, by, bw, bh = r["bbox"]
        # no kept box lies within 20 px of an inner crop edge
        for edge, img_edge, val in (
            (x0, 0, bx),
            (y0, 0, by),
            (x0 + cw, 128, bx + bw),
            (y0 + ch, 96, by + bh),
        ):
            if edge != img_edge:
                assert abs(val - edge) > 20
    # cross-crop NMS leaves no pair of boxes with IoU > crop_nms_thresh
    boxes = torch.tensor([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (r["bbox"] for r in recs)])
    iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
    assert (iou <= 0.7).all()


def test_generator_cleanup_fills_holes():
    class HoleSam(SquareSam):
        def decode(self, emb, point_coords, point_labels, multimask_output=True):
            logits, iou = super().decode(emb, point_coords, point_labels, multimask_output)
            logits[:, :, 8, 8] = -8.0  # a hole in the middle (4x4 px after upsampling) of each square
            return logits, iou

    model = HoleSam(halves=(12, 12, 12), ious=(0.95, 0.2, 0.2))
    base = {"points_per_side": None, "point_grids": [[(0.5, 0.5)]], "stability_score_thresh": 0.3}
    raw = AutomaticMaskGenerator(model, AmgParams(**base)).generate(_image(64, 64))
    clean = AutomaticMaskGenerator(model, AmgParams(**base, min_mask_region_area=50)).generate(_image(64, 64))
    assert len(raw) == len(clean) == 1
    assert clean[0]["area"] > raw[0]["area"]
    assert rle_utils.decode(clean[0]["segmentation"])[33, 33]
    assert not rle_utils.decode(raw[0]["segmentation"])[33, 33]


def test_params_validation():
    with pytest.raises(ValueError):
        AmgParams(points_per_side=None)
    with pytest.raises(ValueError):
        AmgParams(points_per_side=None, point_grids=[[(0.5, 0.5)]], crop_n_layers=1)
    with pytest.raises(ValueError):
        AmgParams(unknown=1)


@pytest.fixture(scope="module", params=["tiny", "tiny_hybrid"])
def tiny_model(request):
    from sam_engine.model import build_sam

    return build_sam(request.param, seed=0)


def test_tiny_model_batch_equals_single_and_is_deterministic(tiny_model):
    params = AmgParams(
        points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, encoder_batch_size=2
    )
    gen = AutomaticMaskGenerator(tiny_model, params)
    images = [_image(48, 64, 1), _image(70, 50, 2)]
    batch = gen.generate_batch(images)
    again = gen.generate_batch(images)
    assert batch == again
    for im, recs in zip(images, batch, strict=True):
        single = gen.generate(im)
        assert [r["segmentation"] for r in single] == [r["segmentation"] for r in recs]
        for r in recs:
            assert r["segmentation"]["size"] == list(im.shape[:2])
    assert tiny_model.training  # the generator restores the model's mode


def test_generator_accepts_a_predictor(tiny_model):
    from sam_engine.predictor import SamPredictor

    gen = AutomaticMaskGenerator(SamPredictor(tiny_model), AmgParams(points_per_side=2))
    assert gen.model is tiny_model
    with pytest.raises(TypeError):
        AutomaticMaskGenerator(object())
    with pytest.raises(ValueError):
        gen.generate(np.zeros((8, 8), dtype=np.uint8))


def test_decode_where_equals_decode_on_the_kept_rows(tiny_model):
    torch.manual_seed(0)
    emb = tiny_model.image_encoder(torch.randn(1, 3, tiny_model.img_size, tiny_model.img_size))
    coords = torch.rand(24, 1, 2) * tiny_model.img_size
    labels = torch.ones(24, 1, dtype=torch.int64)
    with torch.inference_mode():
        low_res, iou = tiny_model.decode(emb, coords, labels, multimask_output=True)
        cut = iou.max(dim=1).values.median()
        rows, kept, iou_all = tiny_model.decode_where(
            emb, coords, labels, lambda q: (q > cut).any(dim=1), multimask_output=True
        )
    assert 0 < len(rows) < 24
    assert torch.equal(rows, torch.nonzero((iou > cut).any(dim=1)).flatten())
    torch.testing.assert_close(iou_all, iou)
    torch.testing.assert_close(kept, low_res[rows])


def test_generator_output_same_with_and_without_iou_first_decoding(tiny_model):
    """Skipping the masks of points whose IoUs all fail changes nothing in the output."""

    class DecodeOnly:  # the model without decode_where: every point's masks are decoded
        def __init__(self, model):
            self._m = model

        def __getattr__(self, name):
            if name == "decode_where":
                raise AttributeError(name)
            return getattr(self._m, name)

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():  # random weights predict IoUs near 0; lift them so a positive cut splits them
        model.mask_decoder.iou_prediction_head.layers[-1].bias += 0.5
    image = _image(64, 80, 3)
    loose = {"stability_score_thresh": 0.0, "box_nms_thresh": 1.0, "max_mask_area_ratio": None}
    probe = AutomaticMaskGenerator(model, AmgParams(points_per_side=6, pred_iou_thresh=0.0, **loose))
    scores = sorted(r["predicted_iou"] for r in probe.generate(image))
    assert len(scores) >= 4 and scores[0] > 0
    cut = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    params = AmgParams(points_per_side=6, pred_iou_thresh=cut, **loose)
    fast = AutomaticMaskGenerator(model, params).generate(image)
    plain = AutomaticMaskGenerator(DecodeOnly(model), params).generate(image)
    assert fast and fast == plain


class PointIoUSam(SquareSam):
    """SquareSam whose predicted IoU rises with the point's x, with ``decode_where`` like Sam's."""

    def decode(self, emb, point_coords, point_labels, multimask_output=True):
        low, _ = super().decode(emb, point_coords, point_labels, multimask_output)
        iou = (point_coords[:, 0, 0:1] / self.img_size).expand(-1, 3).clone()
        return low, iou

    def decode_where(self, emb, coords, labels, keep, multimask_output=True):
        low, iou = self.decode(emb, coords, labels)
        rows = torch.nonzero(keep(iou)).flatten()
        return rows, low[rows], iou


def test_top_points_fraction_decodes_only_the_most_promising_points():
    model = PointIoUSam(halves=(4, 5, 6))
    base = {
        "points_per_side": 4,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.5,
        "box_nms_thresh": 1.0,
    }
    every = AutomaticMaskGenerator(model, AmgParams(**base)).generate(_image(64, 64))
    half = AutomaticMaskGenerator(model, AmgParams(**base, top_points_fraction=0.5)).generate(_image(64, 64))
    xs = lambda recs: sorted({r["point_coords"][0][0] for r in recs})  # noqa: E731
    assert len(xs(every)) == 4 and xs(half) == xs(every)[2:]  # the two right-most grid columns


def test_snapping_and_the_quality_filter_refine_the_records():
    from sam_engine.amg.calibration import FEATURES, QualityModel

    img = np.full((64, 64, 3), 90, dtype=np.uint8)
    img[16:48, 16:48] = (220, 40, 40)  # one object; SquareSam's 8 px square at its centre is too small
    model = SquareSam(halves=(8, 14, 30), ious=(0.95, 0.9, 0.89))
    base = {
        "points_per_side": 1,
        "pred_iou_thresh": 0.5,
        "stability_score_thresh": 0.5,
        "box_nms_thresh": 1.0,
        "max_mask_area_ratio": None,
    }
    raw = AutomaticMaskGenerator(model, AmgParams(**base)).generate(img)
    snapped = AutomaticMaskGenerator(model, AmgParams(**base, snap_scale=50.0)).generate(img)
    obj = np.zeros((64, 64), bool)
    obj[16:48, 16:48] = True

    def iou(r):
        m = rle_utils.decode(r["segmentation"])
        return (m & obj).sum() / (m | obj).sum()

    assert max(iou(r) for r in snapped) == 1.0 > max(iou(r) for r in raw)
    assert all(0.0 <= r["region_agreement"] <= 1.0 for r in snapped)
    # a quality model that dislikes masks as large as the image keeps the object only
    assert any(r["area"] == 64 * 64 for r in snapped)
    qm = QualityModel((0.0, 0.0, 0.0, -10.0, 0.0), -5.0, (0.0,) * 5, (1.0,) * 5, FEATURES[:5]).as_dict()
    kept = AutomaticMaskGenerator(
        model, AmgParams(**base, snap_scale=50.0, quality_model=qm, quality_thresh=0.5)
    ).generate(img)
    assert [iou(r) for r in kept] == [1.0] and kept[0]["quality"] >= 0.5
    # every record carries its outline's contrast: the red object against grey stands out
    assert kept[0]["edge_contrast"] > 5.0
