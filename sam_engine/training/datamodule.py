"""Training data: images resized (longest side) and padded to the model frame, with up to K masks each.

Works over any :class:`~sam_engine.data.corpus.MaskCorpus` (COCO, SA-1B, the engine's own masks). Images
are resized exactly as :class:`~sam_engine.predictor.SamPredictor` does (PIL bilinear, longest side =
``img_size``) and zero-padded bottom/right; masks follow the same resize and are binarised at 0.5.
The K masks of an image are drawn with a generator seeded by (seed, epoch, image index), so a run is
reproducible whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import rle as rle_utils
from ..data.corpus import MaskCorpus
from ..data.errors import DataError
from ..data.images import DEFAULT_MAX_PIXELS, load_image
from ..evaluation.interactive import EvalObject, corpus_objects
from ..model.transforms import ResizeLongestSide, preprocess_shape


def split_by_image(corpus: MaskCorpus, val_fraction: float, seed: int) -> tuple[MaskCorpus, MaskCorpus]:
    """Seeded train / val split of a corpus by image (at least one image each when there are two or more)."""
    ids = sorted(im.image_id for im in corpus.images)
    n_val = int(round(len(ids) * val_fraction))
    if len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    perm = np.random.default_rng(seed).permutation(len(ids))
    val_ids = {ids[i] for i in perm[:n_val]}
    return corpus.subset(set(ids) - val_ids), corpus.subset(val_ids)


class EpochSampler(Sampler):
    """A seeded permutation of the dataset per epoch, yielding (index, epoch) keys.

    Lightning calls :meth:`set_epoch` at the start of each epoch.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        for i in order:
            yield int(i), self.epoch


class MaskDataset(Dataset):
    """Per item: ``image`` uint8 (3,S,S), ``size`` (h, w) of the resized content, ``masks`` bool (K,S,S), ``valid`` (K,).

    With probability ``zoom_prob`` an item is a crop around one of the image's masks instead of the whole
    image, drawn as :class:`~sam_engine.zoom.ZoomPredictor` crops (the mask's box enlarged 1.3-2.5 times, at
    least 48 px, shifted a little), so the model also learns the zoomed-in views that answer clicks; its K
    masks are then drawn among the masks that reach into the crop, cut to it.
    """

    def __init__(
        self,
        corpus: MaskCorpus,
        img_size: int,
        masks_per_image: int = 8,
        seed: int = 0,
        min_area: int = 4,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        zoom_prob: float = 0.0,
    ) -> None:
        self.corpus = corpus
        self.img_size = img_size
        self.k = masks_per_image
        self.seed = seed
        self.max_pixels = max_pixels
        self.zoom_prob = zoom_prob
        self.transform = ResizeLongestSide(img_size)
        self.items: list[tuple[int, list[dict]]] = []
        for idx, rec in enumerate(corpus.images):
            anns = [
                a
                for a in corpus.masks_for(rec.image_id)
                if not a.get("iscrowd", 0) and a.get("area", min_area) >= min_area
            ]
            if anns:
                self.items.append((idx, anns))
        if not self.items:
            raise DataError(
                corpus.source or "corpus", "-", "annotations", "no image has a usable mask to train on"
            )

    def __len__(self) -> int:
        return len(self.items)

    def _resize_mask(self, mask: np.ndarray, h: int, w: int) -> np.ndarray:
        if mask.shape == (h, w):
            return mask
        img = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)
        return np.asarray(img) >= 128

    def _decode(self, rec: Any, ann: dict, j: int) -> np.ndarray:
        try:
            m = rle_utils.decode(ann["segmentation"])
        except Exception as e:  # noqa: BLE001
            raise DataError(
                self.corpus.source or rec.path, ann.get("id", j), "segmentation", f"cannot decode: {e}"
            ) from e
        if m.shape != (rec.height, rec.width):
            raise DataError(
                self.corpus.source or rec.path,
                ann.get("id", j),
                "segmentation",
                f"mask size {m.shape} differs from image size {(rec.height, rec.width)}",
            )
        return m

    def _zoom_crop(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
        """A crop (x0, y0, x1, y1) around ``mask`` as the zoomed-in predictor draws them, or None when the
        object fills the image (the predictor answers those on the whole image)."""
        from ..zoom import zoom_box

        h, w = mask.shape
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        bh, bw = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
        shift = rng.uniform(-0.15, 0.15, 2) * (bw, bh)
        pts = np.array([[cols[0], rows[0]], [cols[-1], rows[-1]]], dtype=np.float64) + shift
        x0, y0, x1, y1 = zoom_box(None, pts, (h, w), float(rng.uniform(1.3, 2.5)), 48, 1)
        if (x1 - x0) >= 0.8 * w and (y1 - y0) >= 0.8 * h:
            return None
        return x0, y0, x1, y1

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rec_idx, anns = self.items[index]
        rec = self.corpus.images[rec_idx]
        image = load_image(rec.path, self.max_pixels)
        if image.shape[:2] != (rec.height, rec.width):
            raise DataError(
                rec.path,
                rec.image_id,
                "width/height",
                f"image is {image.shape[1]}x{image.shape[0]}, record says {rec.width}x{rec.height}",
            )
        rng = np.random.default_rng([self.seed, epoch, index])
        decoded: dict[int, np.ndarray] = {}
        crop = None
        if self.zoom_prob > 0 and rng.random() < self.zoom_prob:
            anchor = int(rng.integers(len(anns)))
            decoded[anchor] = self._decode(rec, anns[anchor], anchor)
            if decoded[anchor].any():
                crop = self._zoom_crop(decoded[anchor], rng)
        candidates = list(range(len(anns)))
        if crop is not None:
            x0, y0, x1, y1 = crop
            image = image[y0:y1, x0:x1]
            candidates = [j for j in candidates if _box_meets(anns[j].get("bbox"), crop)]
        ih, iw = image.shape[:2]
        h, w = preprocess_shape(ih, iw, self.img_size)
        resized = self.transform.apply_image(np.ascontiguousarray(image))
        s = self.img_size
        out_img = np.zeros((3, s, s), dtype=np.uint8)
        out_img[:, :h, :w] = resized.transpose(2, 0, 1)
        pick = rng.choice(len(candidates), size=min(self.k, len(candidates)), replace=False)
        masks = np.zeros((self.k, s, s), dtype=bool)
        valid = np.zeros(self.k, dtype=bool)
        for slot, c in enumerate(sorted(pick)):
            j = candidates[c]
            m = decoded[j] if j in decoded else self._decode(rec, anns[j], j)
            if crop is not None:
                m = m[y0:y1, x0:x1]
            m = self._resize_mask(m, h, w)
            masks[slot, :h, :w] = m
            valid[slot] = m.any()
        return {
            "image": torch.from_numpy(out_img),
            "size": torch.tensor([h, w], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "valid": torch.from_numpy(valid),
        }


def _box_meets(bbox: Any, crop: tuple[int, int, int, int]) -> bool:
    """Whether a COCO xywh box reaches into the crop (x0, y0, x1, y1); True when the box is unknown."""
    if not bbox or len(bbox) != 4:
        return True
    bx, by, bw, bh = (float(v) for v in bbox)
    x0, y0, x1, y1 = crop
    return bx < x1 and by < y1 and bx + bw > x0 and by + bh > y0


def group_by_image(objects: list[EvalObject]) -> list[list[EvalObject]]:
    """Consecutive objects of one image as one list (the validation batches)."""
    groups: list[list[EvalObject]] = []
    for obj in objects:
        if groups and groups[-1][0].image_key == obj.image_key:
            groups[-1].append(obj)
        else:
            groups.append([obj])
    return groups


def _first(batch: list[Any]) -> Any:
    return batch[0]


class MaskDataModule(L.LightningDataModule):
    """Train batches of images with K masks each; validation = a held-out slice of click-protocol objects."""

    def __init__(
        self,
        corpus: MaskCorpus,
        img_size: int,
        batch_size: int = 16,
        masks_per_image: int = 8,
        val_corpus: MaskCorpus | None = None,
        val_fraction: float = 0.05,
        val_max_objects: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        min_area: int = 4,
        zoom_prob: float = 0.0,
    ) -> None:
        super().__init__()
        self.zoom_prob = zoom_prob
        self.corpus = corpus
        self.img_size = img_size
        self.batch_size = batch_size
        self.masks_per_image = masks_per_image
        self.val_corpus = val_corpus
        self.val_fraction = val_fraction
        self.val_max_objects = val_max_objects
        self.seed = seed
        self.num_workers = num_workers
        self.min_area = min_area
        self.train_set: MaskDataset | None = None
        self.val_groups: list[list[EvalObject]] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.val_corpus is None and self.val_fraction > 0:
            train, val = split_by_image(self.corpus, self.val_fraction, self.seed)
        else:
            train, val = self.corpus, self.val_corpus
        self.train_set = MaskDataset(
            train, self.img_size, self.masks_per_image, self.seed, self.min_area, zoom_prob=self.zoom_prob
        )
        if val is not None and val.images and self.val_max_objects > 0:
            objs = corpus_objects(
                val, max_objects=self.val_max_objects, seed=self.seed, min_area=self.min_area
            )
            self.val_groups = group_by_image(objs)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        bs = min(self.batch_size, len(self.train_set))
        return DataLoader(
            self.train_set,
            batch_size=bs,
            sampler=EpochSampler(len(self.train_set), self.seed),
            num_workers=self.num_workers,
            drop_last=True,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_groups:
            return []
        return DataLoader(self.val_groups, batch_size=1, shuffle=False, collate_fn=_first, num_workers=0)
