"""SamPredictor: coordinate transforms, embedding cache, batched vs single prompts, padding labels."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from sam_engine.model import ResizeLongestSide, build_sam
from sam_engine.model.hybrid_encoder import packed_channels
from sam_engine.model.transforms import preprocess_shape
from sam_engine.predictor import EmbeddingCache, SamPredictor


@pytest.fixture(scope="module")
def model():
    return build_sam("tiny", seed=0).eval()


def make_image(seed: int, h: int = 90, w: int = 140) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    img[h // 4 : h // 2, w // 3 : w // 2] = rng.integers(0, 256, 3)
    return img


class CountingEncoder(torch.nn.Module):
    """Wraps an encoder and counts the images it embeds."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.img_size = inner.img_size
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.inner(x)


@pytest.fixture()
def counting_model():
    m = build_sam("tiny", seed=0).eval()
    m.image_encoder = CountingEncoder(m.image_encoder)
    return m


def test_predict_with_8x_masks_feeds_its_logits_back():
    model = build_sam("tiny_hybrid", seed=0).eval()
    p = SamPredictor(model, cache=EmbeddingCache())
    p.set_image(make_image(2))
    assert p.get_image_embedding().shape == (1, packed_channels(64, 8), 16, 16)
    masks, iou, low = p.predict(np.array([[70, 30]]), np.array([1]))
    assert masks.shape == (3, 90, 140) and iou.shape == (3,) and low.shape == (3, 128, 128)
    again, _, low2 = p.predict(np.array([[70, 30], [20, 20]]), np.array([1, 0]), mask_input=low[:1])
    assert again.shape == (3, 90, 140) and low2.shape == (3, 128, 128)
    assert not np.array_equal(low2, low)  # the fed-back logits and the new click change the answer
    with pytest.raises(ValueError, match="mask_input must be"):
        p.predict(np.array([[1, 2]]), np.array([1]), mask_input=np.zeros((1, 64, 64)))


@pytest.mark.parametrize("h,w", [(90, 140), (300, 17), (256, 256), (1, 500)])
def test_transform_round_trip(h, w):
    t = ResizeLongestSide(256)
    nh, nw = preprocess_shape(h, w, 256)
    assert max(nh, nw) == 256
    rng = np.random.default_rng(h * w)
    pts = rng.uniform(0, [w, h], size=(7, 2))
    moved = t.apply_coords(pts, (h, w))
    np.testing.assert_allclose(t.inverse_coords(moved, (h, w)), pts, atol=1e-9)
    np.testing.assert_allclose(t.apply_coords(np.array([[w, h]]), (h, w)), [[nw, nh]], atol=1e-9)
    boxes = np.concatenate([pts[:3], pts[3:6]], axis=1)
    np.testing.assert_allclose(
        t.apply_boxes(boxes, (h, w)).reshape(-1, 2), t.apply_coords(boxes.reshape(-1, 2), (h, w))
    )
    torch.testing.assert_close(
        t.apply_coords_torch(torch.from_numpy(pts), (h, w)),
        torch.from_numpy(moved).float(),
        atol=1e-4,
        rtol=1e-6,
    )
    torch.testing.assert_close(
        t.apply_boxes_torch(torch.from_numpy(boxes), (h, w)),
        torch.from_numpy(t.apply_boxes(boxes, (h, w))).float(),
        atol=1e-4,
        rtol=1e-6,
    )
    assert pts.base is None or not np.shares_memory(pts, moved)


def test_image_transform_shapes():
    t = ResizeLongestSide(256)
    out = t.apply_image(make_image(0, 90, 140))
    assert (
        out.shape == (preprocess_shape(90, 140, 256) + (3,)) and out.dtype == np.uint8 and out.flags.writeable
    )
    torch_out = t.apply_image_torch(torch.rand(2, 3, 90, 140))
    assert torch_out.shape == (2, 3, *preprocess_shape(90, 140, 256))


def test_predict_shapes_and_errors(model):
    p = SamPredictor(model, cache=EmbeddingCache())
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(np.array([[1, 2]]), np.array([1]))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        p.set_image(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        p.set_image(np.zeros((10, 10, 3), dtype=np.float32))
    img = make_image(1)
    p.set_image(img)
    assert p.original_size == (90, 140) and p.input_size == preprocess_shape(90, 140, 256)
    assert p.get_image_embedding().shape == (1, 64, 16, 16)
    masks, iou, low = p.predict(np.array([[70, 30]]), np.array([1]))
    assert (
        masks.shape == (3, 90, 140) and masks.dtype == bool and iou.shape == (3,) and low.shape == (3, 64, 64)
    )
    masks, iou, low = p.predict(box=np.array([10, 10, 80, 60]), mask_input=low[:1], multimask_output=False)
    assert masks.shape == (1, 90, 140) and iou.shape == (1,) and low.shape == (1, 64, 64)
    logits, _, _ = p.predict(np.array([[70, 30]]), np.array([1]), return_logits=True)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits > 0, p.predict(np.array([[70, 30]]), np.array([1]))[0])
    with pytest.raises(ValueError, match="point_labels"):
        p.predict(np.array([[1, 2]]), np.array([1, 0]))
    with pytest.raises(ValueError, match="point_coords must be"):
        p.predict(np.array([1, 2]), np.array([1]))
    with pytest.raises(ValueError, match="box must be"):
        p.predict(box=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="mask_input must be"):
        p.predict(np.array([[1, 2]]), np.array([1]), mask_input=np.zeros((1, 32, 32)))
    for bad in (np.nan, np.inf, 1e39):  # 1e39 is finite in float64 but inf in float32
        with pytest.raises(ValueError, match="NaN or infinite"):
            p.predict(np.array([[bad, 2.0]]), np.array([1]))
        with pytest.raises(ValueError, match="NaN or infinite"):
            p.predict(box=np.array([0.0, 0.0, bad, 5.0]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        p.predict_torch(torch.tensor([[[np.nan, 1.0]]]), torch.tensor([[1]]))
    p.reset_image()
    with pytest.raises(RuntimeError):
        p.get_image_embedding()


def test_cache_hit_encodes_once(counting_model):
    cache = EmbeddingCache(max_entries=2)
    a = SamPredictor(counting_model, cache=cache)
    b = SamPredictor(counting_model, cache=cache)
    img = make_image(2)
    a.set_image(img, image_key="img-2")
    b.set_image(img, image_key="img-2")  # another predictor, same cache: no new encode
    assert counting_model.image_encoder.images == 1
    assert cache.hits == 1 and (counting_model, "img-2") in cache
    torch.testing.assert_close(a.get_image_embedding(), b.get_image_embedding())
    b.set_image(make_image(3), image_key="img-3")
    b.set_image(make_image(4), image_key="img-4")  # evicts img-2 (LRU, 2 entries)
    assert counting_model.image_encoder.images == 3 and len(cache) == 2
    assert (counting_model, "img-2") not in cache
    a.set_image(img)  # no key: always encoded, never cached
    a.set_image(img)
    assert counting_model.image_encoder.images == 5 and len(cache) == 2
    b.set_image(make_image(5, 40, 50), image_key="img-4")  # same key, other size: stale entry recomputed
    assert counting_model.image_encoder.images == 6 and b.original_size == (40, 50)
    cache.invalidate_model(counting_model)
    assert len(cache) == 0


def test_cache_is_per_model(counting_model, model):
    cache = EmbeddingCache()
    img = make_image(5)
    SamPredictor(counting_model, cache=cache).set_image(img, image_key="k")
    other = SamPredictor(model, cache=cache)
    other.set_image(img, image_key="k")
    assert len(cache) == 2 and cache.hits == 0
    with torch.inference_mode():
        expected = model.image_encoder(
            model.preprocess(
                torch.from_numpy(ResizeLongestSide(256).apply_image(img)).permute(2, 0, 1).float()
            )[None]
        )
    torch.testing.assert_close(other.get_image_embedding(), expected)


def test_cache_threads(counting_model):
    cache = EmbeddingCache(max_entries=8)
    images = [make_image(10 + i) for i in range(4)]
    reference = SamPredictor(counting_model, cache=EmbeddingCache()).encode_images(images)
    start = counting_model.image_encoder.images
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            p = SamPredictor(counting_model, cache=cache)
            for j in range(4):
                i = (j + offset) % 4
                p.set_image(images[i], image_key=i)
                torch.testing.assert_close(p.get_image_embedding(), reference[i].features)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(cache) == 4 and cache.hits + cache.misses == 12
    assert counting_model.image_encoder.images - start == cache.misses


def test_encode_images_batches(counting_model):
    p = SamPredictor(counting_model, cache=EmbeddingCache())
    images = [make_image(20, 90, 140), make_image(21, 200, 60), make_image(22, 64, 64)]
    entries = p.encode_images(images, image_keys=["a", None, "c"], batch_size=2)
    assert counting_model.image_encoder.images == 3
    assert [e.original_size for e in entries] == [(90, 140), (200, 60), (64, 64)]
    for img, entry in zip(images, entries, strict=True):
        q = SamPredictor(counting_model, cache=EmbeddingCache())
        q.set_image(img)
        torch.testing.assert_close(q.get_image_embedding(), entry.features, atol=1e-5, rtol=1e-5)
    p.encode_images(images[:1], image_keys=["a"])
    assert counting_model.image_encoder.images == 6  # the 3 checks above; "a" was a cache hit
    with pytest.raises(ValueError, match="image_keys"):
        p.encode_images(images, image_keys=["a"])


def test_batched_predict_torch_equals_single(model):
    p = SamPredictor(model, cache=EmbeddingCache())
    p.set_image(make_image(30))
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, [140, 90], size=(5, 2, 2))
    labels = np.array([[1, 0], [1, 1], [0, 1], [1, -1], [1, 0]])
    batched = p.predict_torch(
        torch.as_tensor(p.transform.apply_coords(coords, p.original_size), dtype=torch.float32),
        torch.as_tensor(labels),
        multimask_output=True,
    )
    for i in range(5):
        masks, iou, low = p.predict(coords[i], labels[i], multimask_output=True)
        np.testing.assert_allclose(iou, batched[1][i].numpy(), atol=1e-5)
        np.testing.assert_allclose(low, batched[2][i].numpy(), atol=1e-4)
        assert (masks != batched[0][i].numpy()).mean() < 1e-3
    boxes = np.array([[5, 5, 60, 40], [20, 10, 130, 85]], dtype=np.float64)
    _, iou_b, low_b = p.predict_torch(
        boxes=torch.as_tensor(p.transform.apply_boxes(boxes, p.original_size), dtype=torch.float32),
        multimask_output=False,
    )
    for i in range(2):
        _, iou, low = p.predict(box=boxes[i], multimask_output=False)
        np.testing.assert_allclose(low, low_b[i].numpy(), atol=1e-4)


def test_padding_points_are_ignored(model):
    p = SamPredictor(model, cache=EmbeddingCache())
    p.set_image(make_image(31))
    fg = np.array([[50.0, 30.0]])
    a = p.predict(np.concatenate([fg, [[0.0, 0.0]]]), np.array([1, -1]))
    b = p.predict(np.concatenate([fg, [[139.0, 89.0]]]), np.array([1, -1]))
    np.testing.assert_array_equal(a[2], b[2])
    c = p.predict(np.concatenate([fg, [[139.0, 89.0]]]), np.array([1, 0]))
    assert not np.allclose(a[2], c[2])


def test_predict_is_inference_only(model):
    p = SamPredictor(model, cache=EmbeddingCache())
    p.set_image(make_image(32))
    masks, iou, low = p.predict_torch(torch.tensor([[[10.0, 10.0]]]), torch.tensor([[1]]))
    assert not low.requires_grad and torch.is_inference(low)
    # the model itself still trains afterwards
    out, _ = model.decode(torch.randn(1, 64, 16, 16), torch.tensor([[[10.0, 10.0]]]), torch.tensor([[1]]))
    assert out.requires_grad
