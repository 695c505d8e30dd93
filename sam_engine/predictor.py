"""Interactive prediction on one image: encode once, then decode many prompts cheaply.

``SamPredictor`` mirrors the reference predictor's API. Image embeddings are kept in an
``EmbeddingCache`` (LRU, thread-safe) keyed by (model, image_key) and shared by every predictor that
uses the same cache object (by default one process-wide cache).

:class:`InteractivePredictor` is the surface every click answerer has (this one, the zoom-in, the region
snapping and the output choice, which wrap one another); :class:`RefiningPredictor` adds the quick
whole-image answer (``coarse``) of one that refines on a crop. ``refines`` says which one a predictor is, so a
caller never guesses from attributes a wrapper may pass through.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from sam_engine.model.sam import Sam
from sam_engine.model.transforms import ResizeLongestSide

_model_tokens = itertools.count()
_token_lock = threading.Lock()


def model_token(model: Sam) -> int:
    """A process-unique id for ``model`` (unlike ``id()``, never reused after the model is freed)."""
    with _token_lock:
        token = getattr(model, "_embedding_cache_token", None)
        if token is None:
            token = next(_model_tokens)
            model._embedding_cache_token = token  # type: ignore[attr-defined]
        return token


@dataclass(frozen=True)
class CachedEmbedding:
    """An image embedding (1xCxhxw) with the sizes needed to map prompts and masks."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class EmbeddingCache:
    """Least-recently-used cache of image embeddings; safe to share across threads and predictors.

    Entries are keyed by (model token, image_key). After changing a model's weights in place, call
    :meth:`invalidate_model` (or :meth:`clear`).
    """

    def __init__(self, max_entries: int = 64) -> None:
        if max_entries < 1:
            raise ValueError("EmbeddingCache: max_entries must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, Hashable], CachedEmbedding] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, model: Sam, image_key: Hashable) -> CachedEmbedding | None:
        key = (model_token(model), image_key)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, model: Sam, image_key: Hashable, entry: CachedEmbedding) -> None:
        key = (model_token(model), image_key)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def invalidate_model(self, model: Sam) -> None:
        token = model_token(model)
        with self._lock:
            for key in [k for k in self._entries if k[0] == token]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, item: tuple[Sam, Hashable]) -> bool:
        model, image_key = item
        with self._lock:
            return (model_token(model), image_key) in self._entries


DEFAULT_EMBEDDING_CACHE = EmbeddingCache()


def _check_image(image: np.ndarray, name: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{name}: expected an HxWx3 uint8 RGB array, got {desc}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: empty image {image.shape}")


def _finite(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` unchanged, or a ValueError if it holds NaN / inf (also after the float32 cast)."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"predict: {name} holds NaN or infinite values (in float32)")
    return t


Answer = tuple[np.ndarray, np.ndarray, np.ndarray]  # masks (or logits) (3,H,W), scores (3,), low-res logits


class InteractivePredictor(Protocol):
    """What answers clicks: set an image, then predict masks for point / box / mask prompts."""

    @property
    def refines(self) -> bool:
        """Whether this is a :class:`RefiningPredictor`."""
        ...

    @property
    def mask_threshold(self) -> float: ...

    def set_image(self, image: np.ndarray, image_key: Hashable | None = None) -> None: ...

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        **extra: Any,
    ) -> Answer: ...


class RefiningPredictor(InteractivePredictor, Protocol):
    """An interactive predictor that refines on a crop: :meth:`coarse` is its whole-image answer (logits), which
    ``predict(..., coarse=)`` then only refines."""

    def coarse(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> Answer: ...


class SamPredictor:
    """Set an image once, then predict masks for point / box / mask prompts."""

    refines = False  # one pass on the whole image

    @property
    def mask_threshold(self) -> float:
        """The logit above which a pixel is in a mask."""
        return float(self.model.mask_threshold)

    def __init__(self, model: Sam, cache: EmbeddingCache | None = None) -> None:
        self.model = model
        self.cache = DEFAULT_EMBEDDING_CACHE if cache is None else cache
        self.transform = ResizeLongestSide(model.img_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.image_key: Hashable | None = None

    def _prepare(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        resized = self.transform.apply_image(image)
        # a copy: the resized image may be a read-only view of the caller's array (no resize needed)
        tensor = torch.tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
        input_size = (int(tensor.shape[1]), int(tensor.shape[2]))
        return self.model.preprocess(tensor.to(torch.float32)), input_size

    def encode_images(
        self,
        images: Sequence[np.ndarray],
        image_keys: Sequence[Hashable | None] | None = None,
        batch_size: int = 8,
    ) -> list[CachedEmbedding]:
        """Embed several images, ``batch_size`` at a time through the encoder (cache hits are reused).

        Returns one ``CachedEmbedding`` per image; those with a key are stored in the cache. A cached
        entry whose image size differs from the given image is treated as stale and recomputed.
        """
        keys = list(image_keys) if image_keys is not None else [None] * len(images)
        if len(keys) != len(images):
            raise ValueError(f"encode_images: {len(images)} images but {len(keys)} image_keys")
        out: list[CachedEmbedding | None] = [None] * len(images)
        todo = []
        for i, (image, key) in enumerate(zip(images, keys, strict=True)):
            _check_image(image, f"images[{i}]")
            hit = self.cache.get(self.model, key) if key is not None else None
            if hit is not None and hit.original_size == tuple(image.shape[:2]):
                out[i] = hit
            else:
                todo.append(i)
        with torch.inference_mode():
            for start in range(0, len(todo), max(1, batch_size)):
                chunk = todo[start : start + max(1, batch_size)]
                prepared = [self._prepare(images[i]) for i in chunk]
                feats = self.model.image_encoder(torch.stack([p[0] for p in prepared]))
                for j, i in enumerate(chunk):
                    entry = CachedEmbedding(
                        features=feats[j : j + 1].clone(),
                        original_size=(int(images[i].shape[0]), int(images[i].shape[1])),
                        input_size=prepared[j][1],
                    )
                    if keys[i] is not None:
                        self.cache.put(self.model, keys[i], entry)
                    out[i] = entry
        return [e for e in out if e is not None]

    def set_image(self, image: np.ndarray, image_key: Hashable | None = None) -> None:
        """Embed ``image`` (HxWx3 uint8 RGB), or reuse the cached embedding for ``image_key``."""
        _check_image(image)
        entry = self.encode_images([image], [image_key])[0]
        self.set_embedding(entry, image_key)

    def set_embedding(self, entry: CachedEmbedding, image_key: Hashable | None = None) -> None:
        """Use an embedding computed elsewhere (e.g. by :meth:`encode_images`)."""
        self.features = entry.features
        self.original_size = entry.original_size
        self.input_size = entry.input_size
        self.image_key = image_key
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The current image embedding, 1xCxhxw."""
        self._require_image()
        assert self.features is not None
        return self.features

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image set: call set_image() first")

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One prompt set on the current image, coordinates in original-image pixels.

        ``point_coords`` (N,2) xy, ``point_labels`` (N,) (1 fg, 0 bg, 2/3 box corners, -1 padding),
        ``box`` (4,) xyxy, ``mask_input`` (1,4h,4w) low-res logits from a previous call.
        Returns masks (C,H,W) bool (float logits if ``return_logits``), iou (C,), low-res logits (C,4h,4w)
        with C = 3 for multimask output, else 1.
        """
        self._require_image()
        assert self.original_size is not None
        coords_t = labels_t = box_t = mask_t = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("predict: point_labels are required with point_coords")
            coords = np.asarray(point_coords, dtype=np.float64)
            labels = np.asarray(point_labels)
            if coords.ndim != 2 or coords.shape[1] != 2:
                raise ValueError(f"predict: point_coords must be (N, 2), got {coords.shape}")
            if labels.shape != (coords.shape[0],):
                raise ValueError(f"predict: point_labels must be ({coords.shape[0]},), got {labels.shape}")
            coords = self.transform.apply_coords(coords, self.original_size)
            coords_t = _finite(
                torch.as_tensor(coords, dtype=torch.float32, device=self.device)[None], "point_coords"
            )
            labels_t = torch.as_tensor(labels, dtype=torch.int64, device=self.device)[None]
        elif point_labels is not None:
            raise ValueError("predict: point_labels given without point_coords")
        if box is not None:
            box_arr = np.asarray(box, dtype=np.float64).reshape(-1)
            if box_arr.shape != (4,):
                raise ValueError(f"predict: box must be (4,) xyxy, got {np.shape(box)}")
            box_arr = self.transform.apply_boxes(box_arr, self.original_size)
            box_t = _finite(torch.as_tensor(box_arr, dtype=torch.float32, device=self.device)[None], "box")
        if mask_input is not None:
            lr = self.model.prompt_encoder.mask_input_size
            mask_arr = np.asarray(mask_input, dtype=np.float32)
            if mask_arr.shape != (1, *lr):
                raise ValueError(f"predict: mask_input must be (1, {lr[0]}, {lr[1]}), got {mask_arr.shape}")
            mask_t = _finite(torch.as_tensor(mask_arr, device=self.device)[None], "mask_input")
        masks, iou, low_res = self.predict_torch(
            coords_t, labels_t, box_t, mask_t, multimask_output=multimask_output, return_logits=return_logits
        )
        return masks[0].cpu().numpy(), iou[0].cpu().numpy(), low_res[0].cpu().numpy()

    def predict_torch(
        self,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B prompt sets on the current image, coordinates already transformed (``transform.apply_*``).

        ``point_coords`` BxNx2, ``point_labels`` BxN, ``boxes`` Bx4, ``mask_input`` Bx1x4hx4w.
        Returns masks BxCxHxW (bool unless ``return_logits``), iou BxC, low-res logits BxCx4hx4w.
        """
        self._require_image()
        assert self.original_size is not None and self.input_size is not None
        for name, t in (("point_coords", point_coords), ("boxes", boxes), ("mask_input", mask_input)):
            if t is not None:
                _finite(t, name)
        with torch.inference_mode():
            low_res, iou = self.model.decode(
                self.features,
                point_coords=point_coords,
                point_labels=point_labels,
                boxes=boxes,
                mask_input=mask_input,
                multimask_output=multimask_output,
            )
            masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
            if not return_logits:
                masks = masks > self.model.mask_threshold
        return masks, iou, low_res
