"""OpenCV's GrabCut driven by clicks: the classical baseline the promptable model is measured against.

:class:`GrabCutPredictor` has the predictor surface the click protocol uses (``set_image`` / ``predict``),
so :func:`~sam_engine.evaluation.interactive.evaluate_objects` runs it exactly as it runs the model, on the
same objects and clicks. How the clicks drive it (the usual way to give GrabCut point input):

- every click is a disk of ``radius`` px, definite foreground (positive) or definite background (negative);
- the rest starts from the previous answer, fed back through ``mask_input`` as the protocol feeds back a
  model's logits: inside it probable foreground, outside probable background; on the first click, with no
  previous answer, a square of ``init_fraction`` x the shorter image side around the click is probable
  foreground (GrabCut needs a foreground region to fit its colour model to);
- ``cv2.grabCut(..., GC_INIT_WITH_MASK)`` runs ``iterations`` rounds; the answer is the foreground
  connected to a positive click.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


class GrabCutPredictor:
    """Click-driven GrabCut with the ``set_image`` / ``predict`` surface of a SAM predictor (one output)."""

    def __init__(
        self, radius: int = 5, iterations: int = 5, init_fraction: float = 0.3, seed: int = 0
    ) -> None:
        self.radius = radius
        self.iterations = iterations
        self.init_fraction = init_fraction
        self.seed = seed
        self._image: np.ndarray | None = None

    def set_image(self, image: np.ndarray, *args: Any, **kwargs: Any) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"GrabCutPredictor: expected an HxWx3 uint8 RGB image, got {image.shape}")
        self._image = np.ascontiguousarray(image[..., ::-1])  # OpenCV works in BGR

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = False,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mask (1, H, W), score (1,), the mask again as float (1, H, W) to feed back)."""
        if self._image is None:
            raise RuntimeError("no image set: call set_image() first")
        if point_coords is None or point_labels is None or len(point_coords) == 0:
            raise ValueError("GrabCutPredictor: needs at least one click")
        h, w = self._image.shape[:2]
        coords = np.asarray(point_coords, dtype=np.float64).round().astype(int)
        labels = np.asarray(point_labels).astype(int)
        trimap = np.full((h, w), cv2.GC_PR_BGD, dtype=np.uint8)
        if mask_input is not None and np.asarray(mask_input).shape[-2:] == (h, w):
            trimap[np.asarray(mask_input).reshape(h, w) > 0] = cv2.GC_PR_FGD
        else:
            half = max(self.radius + 1, int(self.init_fraction * min(h, w) / 2))
            for (x, y), lab in zip(coords, labels, strict=True):
                if lab == 1:
                    trimap[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1] = cv2.GC_PR_FGD
        for (x, y), lab in zip(coords, labels, strict=True):
            if lab in (0, 1):
                cv2.circle(trimap, (int(x), int(y)), self.radius, cv2.GC_FGD if lab == 1 else cv2.GC_BGD, -1)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(self.seed)
        if (trimap == cv2.GC_BGD).any() or (trimap == cv2.GC_PR_BGD).any():
            cv2.grabCut(self._image, trimap, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        fg = (trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)
        mask = _connected_to(fg, [(x, y) for (x, y), lab in zip(coords, labels, strict=True) if lab == 1])
        return mask[None], np.ones(1, dtype=np.float32), mask[None].astype(np.float32) * 2 - 1


def _connected_to(mask: np.ndarray, seeds: list[tuple[int, int]]) -> np.ndarray:
    """The connected components (8-connected) of ``mask`` that hold a seed pixel."""
    if not seeds or not mask.any():
        return mask
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = {int(labels[y, x]) for x, y in seeds if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]}
    keep.discard(0)
    return np.isin(labels, list(keep)) if keep else mask
