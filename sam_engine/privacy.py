"""Privacy blur applied to images before they enter a shard: pluggable detectors, Gaussian blur of their boxes.

A detector is any callable ``detector(image HxWx3 uint8 RGB) -> list[(x, y, w, h)]``. The default is OpenCV's
Haar frontal-face cascade (files shipped in ``cv2.data.haarcascades``); a licence-plate cascade is available.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h in pixels

FACE_CASCADE = "haarcascade_frontalface_default.xml"
PLATE_CASCADE = "haarcascade_russian_plate_number.xml"


class Detector(Protocol):
    def __call__(self, image: np.ndarray) -> list[Box]: ...


class HaarCascadeDetector:
    """An OpenCV Haar cascade run on the grayscale image (with histogram equalization)."""

    def __init__(
        self,
        cascade: str = FACE_CASCADE,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: tuple[int, int] = (24, 24),
    ) -> None:
        path = Path(cascade)
        if not path.is_file():
            path = Path(cv2.data.haarcascades) / cascade
        if not path.is_file():
            raise FileNotFoundError(f"Haar cascade {cascade!r} not found (looked in {cv2.data.haarcascades})")
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise ValueError(f"cannot load Haar cascade {path}")
        self.name = path.name
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def __call__(self, image: np.ndarray) -> list[Box]:
        gray = cv2.equalizeHist(cv2.cvtColor(_check_image(image), cv2.COLOR_RGB2GRAY))
        found = self.classifier.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=self.min_size
        )
        boxes = [tuple(int(v) for v in b) for b in np.asarray(found).reshape(-1, 4)]
        return sorted(boxes)  # type: ignore[return-value]


def face_detector() -> HaarCascadeDetector:
    """The default detector: OpenCV's frontal-face Haar cascade."""
    return HaarCascadeDetector(FACE_CASCADE)


def plate_detector() -> HaarCascadeDetector:
    """OpenCV's licence-plate Haar cascade (trained on Russian plates; a weak generic detector)."""
    return HaarCascadeDetector(PLATE_CASCADE, min_neighbors=3, min_size=(30, 10))


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {getattr(image, 'shape', type(image))}")
    return image


def blur_boxes(image: np.ndarray, boxes: Sequence[Box], margin: float = 0.1, passes: int = 3) -> np.ndarray:
    """A copy of ``image`` with each box (grown by ``margin`` of its size) replaced by a strong Gaussian blur."""
    out = _check_image(image).copy()
    h, w = out.shape[:2]
    for x, y, bw, bh in boxes:
        mx, my = int(round(bw * margin)), int(round(bh * margin))
        x0, y0 = max(0, x - mx), max(0, y - my)
        x1, y1 = min(w, x + bw + mx), min(h, y + bh + my)
        if x1 <= x0 or y1 <= y0:
            continue
        region = out[y0:y1, x0:x1]
        k = max(3, (min(x1 - x0, y1 - y0) // 2) | 1)
        for _ in range(passes):
            region = cv2.GaussianBlur(region, (k, k), 0, borderType=cv2.BORDER_REPLICATE)
        out[y0:y1, x0:x1] = region
    return out


@dataclass
class BlurStep:
    """Detect with every detector, then blur all boxes. ``margin`` grows each box by that share of its size."""

    detectors: list[Detector] = field(default_factory=lambda: [face_detector()])
    margin: float = 0.1

    def detect(self, image: np.ndarray) -> list[Box]:
        boxes: list[Box] = []
        for detector in self.detectors:
            boxes.extend(detector(image))
        return boxes

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, list[Box]]:
        """(blurred copy, boxes found)."""
        boxes = self.detect(image)
        return (blur_boxes(image, boxes, self.margin) if boxes else _check_image(image).copy()), boxes


def blur_faces(image: np.ndarray) -> tuple[np.ndarray, list[Box]]:
    """Blur faces with the default detector; returns (blurred copy, boxes)."""
    return BlurStep()(image)
