"""Face blur on a real photo shipped by scikit-image (the astronaut), and the pluggable detector protocol."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from sam_engine.privacy import BlurStep, HaarCascadeDetector, blur_boxes, blur_faces, plate_detector


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def test_face_found_and_blurred(astronaut: np.ndarray):
    blurred, boxes = blur_faces(astronaut)
    assert len(boxes) >= 1
    # the astronaut's face is in the upper middle of the 512x512 photo
    x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
    cx, cy = x + w / 2, y + h / 2
    assert 150 < cx < 300 and 60 < cy < 200 and w > 40
    before = astronaut[y : y + h, x : x + w].astype(float)
    after = blurred[y : y + h, x : x + w].astype(float)
    # detail is gone: high-frequency energy (neighbour differences) and variance drop
    assert np.abs(np.diff(after, axis=1)).mean() < 0.3 * np.abs(np.diff(before, axis=1)).mean()
    assert after.var() < before.var()
    # pixels far from the face are unchanged
    np.testing.assert_array_equal(blurred[400:, :], astronaut[400:, :])
    np.testing.assert_array_equal(blurred[:, 420:], astronaut[:, 420:])
    assert blurred.shape == astronaut.shape and blurred.dtype == np.uint8


def test_blur_is_deterministic_and_does_not_touch_input(astronaut: np.ndarray):
    copy = astronaut.copy()
    a, _ = blur_faces(astronaut)
    b, _ = blur_faces(astronaut)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(astronaut, copy)


def test_pluggable_detector_and_margin():
    image = np.random.default_rng(0).integers(0, 256, size=(100, 120, 3), dtype=np.uint8)
    step = BlurStep(detectors=[lambda im: [(10, 20, 30, 30)]], margin=0.0)
    out, boxes = step(image)
    assert boxes == [(10, 20, 30, 30)]
    assert not np.array_equal(out[20:50, 10:40], image[20:50, 10:40])
    mask = np.ones(image.shape[:2], dtype=bool)
    mask[20:50, 10:40] = False
    np.testing.assert_array_equal(out[mask], image[mask])


def test_no_detection_leaves_image_unchanged():
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    out, boxes = BlurStep()(image)
    assert boxes == []
    np.testing.assert_array_equal(out, image)


def test_boxes_clipped_to_image():
    image = np.random.default_rng(1).integers(0, 256, size=(50, 50, 3), dtype=np.uint8)
    out = blur_boxes(image, [(40, 40, 30, 30), (-5, -5, 10, 10)])
    assert out.shape == image.shape


def test_plate_detector_loads_and_bad_cascade_errors():
    assert plate_detector().name.endswith(".xml")
    with pytest.raises(FileNotFoundError):
        HaarCascadeDetector("no_such_cascade.xml")
    with pytest.raises(ValueError):
        blur_faces(np.zeros((10, 10), dtype=np.uint8))
