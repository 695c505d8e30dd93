"""Colour contrast across a mask's outline: high on an object's own outline, low inside one surface."""

from __future__ import annotations

import numpy as np
import pytest

from sam_engine.amg.contrast import edge_contrast


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(90, 6, size=(64, 80, 3))
    img[16:48, 20:52] = rng.normal((200, 50, 40), 6, size=(32, 32, 3))  # one red object on grey
    return np.clip(img, 0, 255).astype(np.uint8)


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((64, 80), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_edge_contrast_is_high_on_an_objects_outline_and_low_inside_one_surface():
    img = _scene()
    masks = np.stack(
        [
            _box(16, 48, 20, 52),  # the object
            _box(22, 42, 26, 46),  # inside the object: red on both sides of its outline
            _box(4, 60, 6, 70),  # around the object: grey on both sides
            _box(16, 48, 20, 36),  # the object's left half: one side of its outline is red on red
            np.zeros((64, 80), bool),
        ]
    )
    whole, inside, around, half, empty = edge_contrast(img, masks)
    assert whole > 5.0 > 1.0 > max(inside, around)
    assert whole > half > max(inside, around)
    assert empty == 0.0
    # a grey image's whole frame has no outer ring: nothing to contrast with
    assert edge_contrast(img, np.ones((1, 64, 80), bool))[0] == 0.0
    # grayscale images work too, and the result does not depend on the other masks in the batch
    red = img[..., 0]
    assert edge_contrast(red, masks[:1])[0] > 5.0
    assert edge_contrast(img, masks[1:2])[0] == pytest.approx(inside)


def test_edge_contrast_names_a_mismatch():
    with pytest.raises(ValueError, match="do not match the image"):
        edge_contrast(_scene(), np.zeros((2, 10, 10), bool))
    with pytest.raises(ValueError, match="width"):
        edge_contrast(_scene(), np.zeros((1, 64, 80), bool), width=0)
