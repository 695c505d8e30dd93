"""Zoom-in refinement: predict again on a crop around the object, at the model's full input resolution.

A SAM model sees an image at ``img_size`` pixels and predicts masks on a grid 4x its embedding (64x64 for the
256 px CPU model), so a 20 px object gets a few mask cells. Interactive segmentation tools therefore zoom in
once the object is roughly known (RITM's and FocalClick's "zoom-in" / focus crop): the crop around the current
mask and the clicks, enlarged by ``expansion``, is encoded on its own, and the clicks are answered there.

:class:`ZoomPredictor` wraps a :class:`~sam_engine.predictor.SamPredictor` and keeps its interface and its
contract, so the click protocol, the annotation sessions and the simulated annotators use it unchanged:

- every call is a pure function of (image, prompts, ``mask_input``): no per-object state, so one predictor can
  serve interleaved sessions;
- returned low-res logits are in the full image's frame (as SAM's), so they can be fed back as ``mask_input``;
  the crop is derived from that fed-back mask (its box plus the clicks), so it follows the object;
- the first click (no fed-back mask) is answered on the whole image; with ``refine_first`` its most confident
  output is then refined once on the crop around it (the same click, that output as mask input), so even a
  single click gets the zoomed resolution;
- :meth:`ZoomPredictor.coarse` is the whole-image pass alone (decoder only, from the cached embedding): a
  server can show it at once and pass it back as ``predict(..., coarse=)``, which then only refines;
- crop embeddings live in their own :class:`~sam_engine.predictor.EmbeddingCache` (``crop_cache``, 256
  entries by default, apart from the whole-image cache) under ``(image_key, crop box)``; crop boxes snap
  outwards to a ``snap`` px grid, so small changes of the mask reuse the same crop.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import torch
import torch.nn.functional as F

from sam_engine.model.sam import Sam
from sam_engine.model.transforms import preprocess_shape
from sam_engine.predictor import EmbeddingCache, SamPredictor
from sam_engine.snap import SnapPredictor

OUTSIDE_LOGIT = -20.0  # logit given to pixels outside the crop (and to the padding of a fed-back crop mask)


def zoom_box(
    mask: np.ndarray | None,
    points: np.ndarray | None,
    image_size: tuple[int, int],
    expansion: float,
    min_size: int,
    snap: int,
) -> tuple[int, int, int, int]:
    """The crop (x0, y0, x1, y1), end exclusive, around ``mask`` (H, W bool) and ``points`` (N, 2) xy.

    The tight box of both is enlarged ``expansion`` times about its centre, to at least ``min_size`` px a
    side, shifted inside the image, and snapped outwards to multiples of ``snap`` px.
    """
    h, w = image_size
    xs: list[float] = []
    ys: list[float] = []
    if mask is not None and mask.any():
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        xs += [cols[0], cols[-1] + 1]
        ys += [rows[0], rows[-1] + 1]
    if points is not None and len(points):
        pts = np.asarray(points, dtype=np.float64)
        xs += [pts[:, 0].min(), pts[:, 0].max() + 1]
        ys += [pts[:, 1].min(), pts[:, 1].max() + 1]
    if not xs:
        return 0, 0, w, h

    def side(lo: float, hi: float, limit: int) -> tuple[int, int]:
        length = min(max((hi - lo) * expansion, min_size), limit)
        start = min(max((lo + hi) / 2 - length / 2, 0.0), limit - length)
        a = int(np.floor(start / snap) * snap)
        b = int(min(np.ceil((start + length) / snap) * snap, limit))
        return max(a, 0), b

    x0, x1 = side(min(xs), max(xs), w)
    y0, y1 = side(min(ys), max(ys), h)
    return x0, y0, x1, y1


class ZoomPredictor:
    """A :class:`SamPredictor` that answers clicks on a crop around the object (see the module docstring)."""

    def __init__(
        self,
        predictor: SamPredictor,
        expansion: float = 1.7,
        min_size: int = 48,
        snap: int = 16,
        refine_first: bool = True,
        max_crop_fraction: float = 0.8,
        crop_cache: EmbeddingCache | None = None,
    ) -> None:
        if expansion < 1.0:
            raise ValueError(f"ZoomPredictor: expansion {expansion} must be >= 1")
        self.base = predictor
        self.model = predictor.model
        # crops get their own cache, so they never push whole-image embeddings (which sessions count on) out
        self._crop = SamPredictor(
            predictor.model, cache=crop_cache if crop_cache is not None else EmbeddingCache(256)
        )
        self.expansion = expansion
        self.min_size = min_size
        self.snap = max(1, snap)
        self.refine_first = refine_first
        self.max_crop_fraction = max_crop_fraction
        self._image: np.ndarray | None = None
        self.stats = {"zoomed": 0, "crop_encodes": 0}

    # ---- the SamPredictor surface ------------------------------------------------------------------------
    refines = True  # a RefiningPredictor: coarse() then predict(..., coarse=)

    @property
    def is_image_set(self) -> bool:
        return self.base.is_image_set

    @property
    def original_size(self) -> tuple[int, int] | None:
        return self.base.original_size

    @property
    def image_key(self) -> Hashable | None:
        return self.base.image_key

    @property
    def mask_threshold(self) -> float:
        """The logit above which a pixel is in a mask (to threshold what :meth:`coarse` returns)."""
        return float(self.model.mask_threshold)

    def set_image(self, image: np.ndarray, image_key: Hashable | None = None) -> None:
        """Embed the whole image (cached under ``image_key``) and keep it for cropping."""
        self.base.set_image(image, image_key=image_key)
        self._image = image

    def reset_image(self) -> None:
        self.base.reset_image()
        self._image = None

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        coarse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`SamPredictor.predict`: masks at image size, predicted IoUs, full-frame low-res logits.

        ``coarse``: what :meth:`coarse` returned for the same prompts (reused instead of computed again).
        """
        if self._image is None or not self.base.is_image_set:
            raise RuntimeError("no image set: call set_image() first")
        if mask_input is None:
            if coarse is None:
                coarse = self.coarse(point_coords, point_labels, box, None, multimask_output)
            masks, scores, low = coarse
            if not self.refine_first or (point_coords is None and box is None):
                return (masks if return_logits else masks > self.model.mask_threshold), scores, low
            best = int(np.argmax(scores))
            refined = self._zoomed(point_coords, point_labels, box, masks[best], False)
            if refined is not None:
                masks, low = masks.copy(), low.copy()
                masks[best], low[best] = refined[0][0], refined[2][0]
            return (masks if return_logits else masks > self.model.mask_threshold), scores, low
        focus = self._mask_focus(mask_input, self._image.shape[:2])
        out = self._zoomed(point_coords, point_labels, box, focus, multimask_output)
        if out is None:  # nothing to zoom in on: the whole-image answer stands
            out = (
                coarse
                if coarse is not None
                else self.coarse(point_coords, point_labels, box, mask_input, multimask_output)
            )
        masks, scores, low = out
        return (masks if return_logits else masks > self.model.mask_threshold), scores, low

    def coarse(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole-image pass alone: mask logits at image size, predicted IoUs, low-res logits."""
        if self._image is None or not self.base.is_image_set:
            raise RuntimeError("no image set: call set_image() first")
        return self.base.predict(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits=True
        )

    # ---- internals --------------------------------------------------------------------------------------
    def _zoomed(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        focus_logits: np.ndarray,
        multimask_output: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Predict on the crop around ``focus_logits`` (H, W) and the prompts; None when no zoom applies."""
        image = self._image
        assert image is not None
        h, w = image.shape[:2]
        crop = self._crop_of((h, w), point_coords, box, focus_logits)
        if crop is None:
            return None
        x0, y0, x1, y1 = crop
        key = self.base.image_key
        crop_key = None if key is None else ("zoom", key, (x0, y0, x1, y1))
        if crop_key is None or not self._crop.is_image_set or self._crop.image_key != crop_key:
            if crop_key is None or (self.model, crop_key) not in self._crop.cache:
                self.stats["crop_encodes"] += 1
            self._crop.set_image(np.ascontiguousarray(image[y0:y1, x0:x1]), image_key=crop_key)
        self.stats["zoomed"] += 1
        offset = np.array([x0, y0], dtype=np.float64)
        coords = None if point_coords is None else np.asarray(point_coords, dtype=np.float64) - offset
        crop_box = None if box is None else np.asarray(box, dtype=np.float64).reshape(-1) - np.tile(offset, 2)
        mask_in = self._low_res_of(focus_logits[y0:y1, x0:x1])
        masks_c, scores, _ = self._crop.predict(
            coords, point_labels, crop_box, mask_in, multimask_output, return_logits=True
        )
        full = np.full((masks_c.shape[0], h, w), OUTSIDE_LOGIT, dtype=np.float32)
        full[:, y0:y1, x0:x1] = masks_c
        low = np.concatenate([self._low_res_of(m) for m in full])
        return full, scores, low

    def _low_res_of(self, logits: np.ndarray) -> np.ndarray:
        """Image-frame logits (h, w) to the model's (1, 4e, 4e) mask-input frame (resize, pad, downsample)."""
        size = self.model.img_size
        nh, nw = preprocess_shape(logits.shape[0], logits.shape[1], size)
        t = torch.as_tensor(logits, dtype=torch.float32)[None, None]
        t = F.interpolate(t, (nh, nw), mode="bilinear", align_corners=False)
        canvas = torch.full((1, 1, size, size), OUTSIDE_LOGIT)
        canvas[..., :nh, :nw] = t
        low = self.model.prompt_encoder.mask_input_size
        return F.interpolate(canvas, low, mode="bilinear", align_corners=False, antialias=True)[0].numpy()

    def _full_logits(self, low_res: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """Full-frame low-res logits (4e, 4e) to logits at ``image_size`` (SAM's postprocessing)."""
        input_size = preprocess_shape(image_size[0], image_size[1], self.model.img_size)
        t = torch.as_tensor(low_res, dtype=torch.float32, device=self.model.device)[None, None]
        with torch.inference_mode():
            up = self.model.postprocess_masks(t, input_size, image_size)
        return up[0, 0].cpu().numpy()

    def _mask_focus(self, mask_input: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        mask_arr = np.asarray(mask_input, dtype=np.float32)
        low_size = tuple(self.model.prompt_encoder.mask_input_size)
        if mask_arr.shape != (1, *low_size):
            raise ValueError(
                f"predict: mask_input must be (1, {low_size[0]}, {low_size[1]}), got {mask_arr.shape}"
            )
        return self._full_logits(mask_arr[0], image_size)

    def _crop_of(
        self,
        image_size: tuple[int, int],
        point_coords: np.ndarray | None,
        box: np.ndarray | None,
        focus_logits: np.ndarray,
    ) -> tuple[int, int, int, int] | None:
        """The crop box for these prompts around ``focus_logits``; None when the object fills the image."""
        h, w = image_size
        points = np.asarray(point_coords, dtype=np.float64) if point_coords is not None else None
        if box is not None:
            b = np.asarray(box, dtype=np.float64).reshape(2, 2)
            points = b if points is None else np.concatenate([points, b])
        x0, y0, x1, y1 = zoom_box(
            focus_logits > self.model.mask_threshold, points, (h, w), self.expansion, self.min_size, self.snap
        )
        if (x1 - x0) >= self.max_crop_fraction * w and (y1 - y0) >= self.max_crop_fraction * h:
            return None  # the object fills the image: nothing to gain
        return x0, y0, x1, y1


def interactive_predictor(
    model: Sam,
    cache: EmbeddingCache | None = None,
    zoom: bool = True,
    expansion: float = 1.7,
    snap: bool = False,
) -> SamPredictor | ZoomPredictor | SnapPredictor:
    """The predictor the engine answers clicks with: a :class:`SamPredictor`, zoomed in unless ``zoom`` is off,
    its masks snapped to the image's regions with ``snap`` (:mod:`sam_engine.snap`)."""
    base = SamPredictor(model, cache=cache)
    out = ZoomPredictor(base, expansion=expansion) if zoom else base
    return SnapPredictor(out) if snap else out


def predictor_lanes(
    model: Sam,
    lanes: int,
    zoom: bool = True,
    expansion: float = 1.7,
    cache: EmbeddingCache | None = None,
    snap: bool = False,
) -> list[SamPredictor | ZoomPredictor | SnapPredictor]:
    """``lanes`` interactive predictors over one model, sharing the whole-image embedding cache (``cache``; the
    process-wide default when None) and one crop cache.

    For :class:`~sam_engine.annotation.session.SegmentationService`: each lane answers one call at a time, so
    N lanes answer N concurrent annotators at once.
    """
    if lanes < 1:
        raise ValueError(f"predictor_lanes: lanes {lanes} must be >= 1")
    crops = EmbeddingCache(256)
    out: list[SamPredictor | ZoomPredictor | SnapPredictor] = []
    for _ in range(lanes):
        base = SamPredictor(model, cache=cache)
        lane = ZoomPredictor(base, expansion=expansion, crop_cache=crops) if zoom else base
        out.append(SnapPredictor(lane) if snap else lane)
    return out
