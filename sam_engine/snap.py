"""Region snapping: masks follow the image's own edges, and a click decides the region it lands on.

A model that sees a 256 px image and predicts masks on a 128x128 grid draws boundaries a few pixels off, which
costs small objects most of their IoU. Interactive tools have long worked on an over-segmentation of the
image instead of on pixels (Lazy Snapping's regions, CVAT's and Label Studio's superpixel brushes): the image
is cut once into small regions that follow its edges (Felzenszwalb-Huttenlocher graph segmentation,
``skimage.segmentation.felzenszwalb``), and a mask is the set of regions whose mean mask probability is above
one half. A click is a hard constraint on its region, as in Lazy Snapping: a positive click's region is in
the mask, a negative click's region out, so every click is obeyed by construction.

:class:`SnapPredictor` wraps any interactive predictor (``set_image`` / ``predict``, optionally ``coarse``)
and keeps its surface; regions are computed once per image and kept in a :class:`RegionCache` shared by every
predictor of a process. :meth:`Regions.snap_mask` serves the automatic mask generator (binary masks).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .wrapped_predictor import PredictorWrapper


@dataclass(frozen=True)
class SnapParams:
    """Over-segmentation settings (``felzenszwalb``'s ``scale``, ``sigma``, ``min_size``) and the share of a
    region the mask must cover (mean probability) for the region to be in."""

    scale: float = 100.0
    sigma: float = 0.0  # no pre-smoothing: a blurred edge would become a thin region of its own
    min_size: int = 5
    threshold: float = 0.5


class Regions:
    """One image's over-segmentation: ``labels`` (H, W) int, region ``counts``."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.flat = self.labels.ravel()
        self.n = int(self.labels.max()) + 1 if self.labels.size else 0
        self.counts = np.bincount(self.flat, minlength=self.n).astype(np.float64)

    @property
    def nbytes(self) -> int:
        """Memory held by the label map and the region sizes."""
        return int(self.labels.nbytes + self.counts.nbytes)

    @classmethod
    def of(cls, image: np.ndarray, params: SnapParams = SnapParams()) -> Regions:
        """Over-segment an HxWx3 uint8 RGB image."""
        from skimage.segmentation import felzenszwalb

        return cls(felzenszwalb(image, scale=params.scale, sigma=params.sigma, min_size=params.min_size))

    def region_mean(self, values: np.ndarray) -> np.ndarray:
        """Mean of an (H, W) array over each region: (n,)."""
        return (
            np.bincount(self.flat, weights=values.ravel().astype(np.float64), minlength=self.n) / self.counts
        )

    def snap_probability(
        self,
        prob: np.ndarray,
        threshold: float = 0.5,
        clicks: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """The (H, W) bool mask of the regions whose mean of ``prob`` exceeds ``threshold``; the region under
        each click (``clicks`` N x 2 xy, ``labels`` 1 positive / 0 negative, others ignored) set by it, later
        clicks last."""
        keep = self.region_mean(prob) > threshold
        if clicks is not None and labels is not None:
            h, w = self.labels.shape
            for (x, y), lab in zip(np.asarray(clicks, dtype=np.float64), np.asarray(labels), strict=True):
                xi, yi = int(round(x)), int(round(y))
                if lab in (0, 1) and 0 <= xi < w and 0 <= yi < h:
                    keep[self.labels[yi, xi]] = lab == 1
        return keep[self.labels]

    def snap_logits(
        self,
        logits: np.ndarray,
        threshold: float = 0.5,
        clicks: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """:meth:`snap_probability` of ``sigmoid(logits)``."""
        prob = 1.0 / (1.0 + np.exp(-np.clip(logits, -30.0, 30.0)))
        return self.snap_probability(prob, threshold, clicks, labels)

    def snap_mask(self, mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """A binary mask snapped to the regions (majority of each region's pixels)."""
        return self.snap_probability(mask.astype(np.float32), threshold)


class RegionCache:
    """Least-recently-used :class:`Regions` by image key; safe to share across threads and predictors.

    Bounded by entries and by bytes (the label maps). The default budget is sized for a default run's gold
    set and the pool images people annotate (about 0.4 MB each), so that a process that answers the clicks of
    several evaluations reuses each gold image's regions: an over-segmentation costs as much as several clicks.
    Forked workers (:mod:`sam_engine.parallel`) inherit the entries present when they start; what they add
    stays in them.
    """

    def __init__(self, max_entries: int = 1024, max_bytes: int = 256 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[tuple[Hashable, tuple[int, ...]], Regions] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable | None, image: np.ndarray, params: SnapParams) -> Regions:
        if key is None:
            return Regions.of(image, params)
        full = (key, image.shape, params)
        with self._lock:
            hit = self._entries.get(full)
            if hit is not None:
                self._entries.move_to_end(full)
                return hit
        regions = Regions.of(image, params)
        with self._lock:
            old = self._entries.pop(full, None)  # another thread may have stored it meanwhile
            self.nbytes += regions.nbytes - (old.nbytes if old is not None else 0)
            self._entries[full] = regions
            while len(self._entries) > 1 and (
                len(self._entries) > self.max_entries or self.nbytes > self.max_bytes
            ):
                self.nbytes -= self._entries.popitem(last=False)[1].nbytes
        return regions

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self.nbytes = 0


DEFAULT_REGION_CACHE = RegionCache()


class SnapPredictor(PredictorWrapper):
    """An interactive predictor whose masks are snapped to the image's regions, clicks deciding theirs.

    Scores and the low-res logits (what is fed back as ``mask_input``) are the wrapped predictor's.
    """

    def __init__(
        self, predictor: Any, params: SnapParams = SnapParams(), cache: RegionCache | None = None
    ) -> None:
        super().__init__(predictor)
        self.params = params
        self.cache = DEFAULT_REGION_CACHE if cache is None else cache
        self.regions: Regions | None = None

    def set_image(self, image: np.ndarray, image_key: Hashable | None = None) -> None:
        super().set_image(image, image_key)
        self.regions = self.cache.get(image_key, image, self.params)

    def reset_image(self) -> None:
        super().reset_image()
        self.regions = None

    def coarse(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The wrapped predictor's quick whole-image answer (logits), unsnapped: a preview."""
        return self.base.coarse(*args, **kwargs)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        **extra: Any,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As the wrapped ``predict``; masks snapped (with ``return_logits``, the logits' signs follow the
        snapped masks)."""
        if self.regions is None:
            raise RuntimeError("no image set: call set_image() first")
        logits, scores, low = self.base.predict(
            point_coords, point_labels, box, mask_input, multimask_output, True, **extra
        )
        logits = np.asarray(logits) - self.mask_threshold
        snapped = np.stack(
            [self.regions.snap_logits(m, self.params.threshold, point_coords, point_labels) for m in logits]
        )
        if return_logits:
            return np.where(snapped, np.maximum(logits, 1.0), np.minimum(logits, -1.0)), scores, low
        return snapped, scores, low
