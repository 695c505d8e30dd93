"""A mask's shape: pieces, holes and outline length, the cues of a wrong automatic mask."""

from __future__ import annotations

import numpy as np
import pytest

from sam_engine.amg.shape import SHAPE_KEYS, shape_features


def _canvas() -> np.ndarray:
    return np.zeros((40, 50), bool)


def test_shape_tells_a_solid_square_from_fragments_a_ring_and_a_ragged_outline():
    square = _canvas()
    square[10:30, 10:30] = True
    fragments = square.copy()
    fragments[20, :] = False  # cut in two halves, plus a speck
    fragments[2, 45] = True
    ring = square.copy()
    ring[15:25, 15:25] = False
    ragged = square.copy()
    ragged[12:28:2, 24:30] = False  # slots cut into one side: a comb
    f = shape_features(np.stack([square, fragments, ring, ragged, _canvas()]))
    assert set(f) == set(SHAPE_KEYS)
    assert f["components"].tolist() == [1, 3, 1, 1, 0]
    assert f["main_component_share"][0] == 1.0
    assert f["main_component_share"][1] == pytest.approx(200 / 381)
    assert f["hole_share"][0] == 0.0 and f["hole_share"][2] == pytest.approx(100 / 400)
    # a square of side s has 4s - 4 boundary pixels: the ratio is about 4 for any size
    assert f["outline_ratio"][0] == pytest.approx(76 / 20)
    assert f["outline_ratio"][3] > f["outline_ratio"][0] + 0.5
    assert f["outline_ratio"][2] > f["outline_ratio"][0]  # the hole's edge is outline too
    assert [f[k][4] for k in SHAPE_KEYS] == [0.0, 0.0, 0.0, 0.0]


def test_the_image_border_is_no_outline():
    corner = _canvas()
    corner[:10, :10] = True  # touches the top and left image borders
    inside = _canvas()
    inside[5:15, 5:15] = True
    whole = np.ones((1, 40, 50), bool)
    f = shape_features(np.stack([corner, inside]))
    assert f["outline_ratio"][0] == pytest.approx(19 / 10)  # the right and bottom sides only
    assert f["outline_ratio"][1] == pytest.approx(36 / 10)
    assert shape_features(whole)["outline_ratio"][0] == 0.0


def test_shape_features_want_a_stack_of_masks():
    with pytest.raises(ValueError, match="N, H, W"):
        shape_features(_canvas())
