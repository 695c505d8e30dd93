"""Automatic mask generation: SAM's grid-prompt algorithm, batched and vectorized.

Per image (and per crop when ``crop_n_layers > 0``): a grid of single-point prompts is decoded in batches of
``points_per_batch``, 3 masks per point. Masks are kept when predicted IoU > ``pred_iou_thresh`` and the
stability score >= ``stability_score_thresh``, binarized at the mask threshold, dropped when their box lies
within ``crop_edge_tolerance`` px of an inner crop edge, then box-NMSed within the crop by predicted IoU.
Crops are merged by NMS that prefers smaller crops; optional hole / island cleanup is followed by NMS again;
masks covering at least ``max_mask_area_ratio`` of the image are dropped last.

Where it is faster than the reference algorithm, with the same result:
- mask logits are decoded only for points with a mask that can pass the IoU filter (``Sam.decode_where``:
  the IoU head reads only the IoU token);
- only masks that pass the IoU filter are upsampled from the low-res logits (the filter needs no pixels),
  and only in the tiles where a cut-off is in doubt (:mod:`.upsample`); the rest are counted whole;
- boxes, stability scores, edge filter and NMS are tensor ops over the batch (NMS without torchvision);
- RLE is produced by one pycocotools call per batch on the column-major stack;
- ``generate_batch`` runs the image encoder on several images / crops at once.

Differences from the reference generator, all deliberate: empty masks are always dropped (the reference keeps
them when both score filters are off), the 95 % area filter is applied (the reference has none; set
``max_mask_area_ratio=None`` to match it), and NMS breaks score ties by input order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pycocotools import mask as mask_utils

from sam_engine.data import rle as rle_utils
from sam_engine.model.transforms import ResizeLongestSide

from .crops import box_area, generate_crop_boxes, uncrop_points
from .filters import covers_too_much, near_crop_edge
from .grid import scale_grid
from .nms import batched_nms, nms
from .params import AmgParams
from .postprocess import clean_masks
from .upsample import TiledThreshold


@dataclass
class _Masks:
    """Masks of one crop or image, in the image frame: RLEs plus per-mask tensors."""

    rles: list[dict]
    boxes: torch.Tensor  # (N, 4) int64 XYXY, inclusive
    iou: torch.Tensor  # (N,) float32
    stability: torch.Tensor  # (N,) float32
    points: torch.Tensor  # (N, 2) float64
    crop_boxes: torch.Tensor  # (N, 4) int64 XYXY

    @staticmethod
    def empty() -> _Masks:
        return _Masks(
            [],
            torch.zeros(0, 4, dtype=torch.int64),
            torch.zeros(0),
            torch.zeros(0),
            torch.zeros(0, 2, dtype=torch.float64),
            torch.zeros(0, 4, dtype=torch.int64),
        )

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, idx: torch.Tensor) -> _Masks:
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx).flatten()
        ids = idx.tolist()
        return _Masks(
            [self.rles[i] for i in ids],
            self.boxes[idx],
            self.iou[idx],
            self.stability[idx],
            self.points[idx],
            self.crop_boxes[idx],
        )

    @staticmethod
    def cat(parts: list[_Masks]) -> _Masks:
        parts = [p for p in parts if len(p)]
        if not parts:
            return _Masks.empty()
        return _Masks(
            [r for p in parts for r in p.rles],
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.iou for p in parts]),
            torch.cat([p.stability for p in parts]),
            torch.cat([p.points for p in parts]),
            torch.cat([p.crop_boxes for p in parts]),
        )


class _Canvas:
    """An image-size (k, W, H) stack for one inner crop's masks, zeroed once and grown only when a batch has
    more masks: every batch of the crop writes the same region, so the rest stays zero (no zero fill of a
    whole image per batch)."""

    def __init__(self, image_size: tuple[int, int]) -> None:
        self.size = image_size
        self.stack: torch.Tensor | None = None

    def take(self, k: int) -> torch.Tensor:
        if self.stack is None or len(self.stack) < k:
            height, width = self.size
            self.stack = torch.zeros(k, width, height, dtype=torch.bool)
        return self.stack[:k]


def _as_model(model_or_predictor: object) -> torch.nn.Module:
    model = getattr(model_or_predictor, "model", model_or_predictor)
    for name in ("image_encoder", "decode", "preprocess"):
        if not hasattr(model, name):
            raise TypeError(
                f"expected a Sam model or a SamPredictor, got {type(model_or_predictor).__name__}"
            )
    return model  # type: ignore[return-value]


class AutomaticMaskGenerator:
    """Generate SA-1B-style mask records for whole images with a SAM model (or a SamPredictor's model)."""

    def __init__(self, model: object, params: AmgParams | None = None) -> None:
        self.model = _as_model(model)
        self.params = params or AmgParams()
        self.transform = ResizeLongestSide(self.model.img_size)
        self.grids = self.params.layer_grids()

    # ------------------------------------------------------------------------------------------ public
    def generate(self, image: np.ndarray) -> list[dict]:
        """Mask records for one HxWx3 uint8 RGB image."""
        return self.generate_batch([image])[0]

    def generate_batch(self, images: list[np.ndarray]) -> list[list[dict]]:
        """Mask records for several images; the encoder sees ``encoder_batch_size`` images / crops per call."""
        for i, im in enumerate(images):
            if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"image {i}: expected HxWx3 uint8, got {getattr(im, 'shape', type(im))}")
        p = self.params
        views: list[tuple[int, list[int], int]] = []
        for i, im in enumerate(images):
            boxes, layers = generate_crop_boxes(
                im.shape[0], im.shape[1], p.crop_n_layers, p.crop_overlap_ratio
            )
            views.extend((i, box, layer) for box, layer in zip(boxes, layers, strict=True))
        per_image: list[list[_Masks]] = [[] for _ in images]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(views), p.encoder_batch_size):
                    chunk = views[start : start + p.encoder_batch_size]
                    crops = [images[i][b[1] : b[3], b[0] : b[2]] for i, b, _ in chunk]
                    embeddings, input_sizes = self._embed(crops)
                    for k, (i, box, layer) in enumerate(chunk):
                        found = self._process_crop(
                            embeddings[k : k + 1],
                            input_sizes[k],
                            crops[k].shape[:2],
                            box,
                            layer,
                            images[i].shape[:2],
                        )
                        per_image[i].append(found)
                    del embeddings
                return [self._finish(per_image[i], im) for i, im in enumerate(images)]
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------------------------------ steps
    def _embed(self, crops: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Resize (longest side = img_size), normalize, pad and encode crops in one encoder call."""
        device = self.model.device
        batch, sizes = [], []
        for crop in crops:
            resized = self.transform.apply_image(np.ascontiguousarray(crop))
            sizes.append((resized.shape[0], resized.shape[1]))
            x = torch.tensor(resized, device=device).permute(2, 0, 1).to(torch.float32)
            batch.append(self.model.preprocess(x))
        return self.model.image_encoder(torch.stack(batch)), sizes

    def _process_crop(
        self,
        embedding: torch.Tensor,
        input_size: tuple[int, int],
        crop_size: tuple[int, int],
        crop_box: list[int],
        layer: int,
        image_size: tuple[int, int],
    ) -> _Masks:
        p = self.params
        points = scale_grid(self.grids[layer], crop_size[0], crop_size[1])
        model_points = torch.as_tensor(
            self.transform.apply_coords(points, crop_size), device=embedding.device
        )
        parts = []
        canvas = _Canvas(image_size)
        for start in range(0, len(points), p.points_per_batch):
            stop = start + p.points_per_batch
            parts.append(
                self._process_batch(
                    embedding,
                    model_points[start:stop],
                    points[start:stop],
                    input_size,
                    crop_size,
                    crop_box,
                    image_size,
                    canvas,
                )
            )
        found = _Masks.cat(parts)
        if len(found) == 0:
            return found
        # Box NMS within the crop, ranked by predicted IoU (integer boxes: the frame does not change IoUs).
        keep = nms(found.boxes.float(), found.iou, p.box_nms_thresh)
        found = found.select(keep)
        found.points = uncrop_points(found.points, crop_box)
        found.crop_boxes = torch.tensor([crop_box], dtype=torch.int64).expand(len(found), 4).clone()
        return found

    def _promising(self, iou: torch.Tensor) -> torch.Tensor:
        """Which points of a batch get their masks decoded: some output above ``pred_iou_thresh``, and among
        the ``top_points_fraction`` of the batch by best predicted IoU."""
        p = self.params
        best = iou.max(dim=1).values
        keep = best > p.pred_iou_thresh
        if p.top_points_fraction < 1.0 and len(best):
            k = max(1, int(round(p.top_points_fraction * len(best))))
            keep &= best >= torch.topk(best, min(k, len(best))).values[-1]
        return keep

    def _process_batch(
        self,
        embedding: torch.Tensor,
        model_points: torch.Tensor,
        points: np.ndarray,
        input_size: tuple[int, int],
        crop_size: tuple[int, int],
        crop_box: list[int],
        image_size: tuple[int, int],
        canvas: _Canvas,
    ) -> _Masks:
        p = self.params
        n = model_points.shape[0]
        labels = torch.ones(n, 1, dtype=torch.int64, device=model_points.device)
        coords = model_points[:, None, :]
        decode_where = getattr(self.model, "decode_where", None)
        if (p.pred_iou_thresh > 0.0 or p.top_points_fraction < 1.0) and decode_where is not None:
            # Masks only for points with a mask that can pass the IoU filter (the IoU head needs no mask),
            # and only for the top_points_fraction of them with the highest predicted IoU.
            decoded, low_res, iou = decode_where(embedding, coords, labels, self._promising)
        else:
            low_res, iou = self.model.decode(embedding, coords, labels, multimask_output=True)
            decoded = torch.arange(n, device=low_res.device)
        per_point = iou.shape[1]
        # idx: flat (point * per_point + output) indices of the masks that pass; low_res rows follow ``decoded``.
        idx = (decoded[:, None] * per_point + torch.arange(per_point, device=decoded.device)).flatten()
        low_res = low_res.flatten(0, 1)
        iou = iou.flatten(0, 1).float()
        if p.pred_iou_thresh > 0.0:
            passing = iou[idx] > p.pred_iou_thresh
            idx, low_res = idx[passing], low_res[passing]
        if len(idx) == 0:
            return _Masks.empty()
        # Only the survivors of the IoU filter are upsampled, and only where a cut-off is in doubt.
        t, off = p.mask_threshold, p.stability_score_offset
        geometry = TiledThreshold.cached(
            tuple(low_res.shape[-2:]), self.model.img_size, input_size, crop_size
        )
        scan = geometry.scan(low_res, (t - off, t, t + off))
        stab = scan.counts[:, 2].float() / scan.counts[:, 0].float()  # NaN when both are empty
        keep = scan.counts[:, 1] > 0  # an empty mask is no object
        if p.stability_score_thresh > 0.0:
            keep &= stab >= p.stability_score_thresh
        rows = torch.nonzero(keep).flatten()
        if len(rows) == 0:
            return _Masks.empty()
        rles, boxes = self._encode(scan.masks(rows, 1), crop_box, image_size, canvas)
        idx, stab = idx[rows], stab[rows]
        edge = near_crop_edge(boxes, crop_box, [0, 0, image_size[1], image_size[0]], p.crop_edge_tolerance)
        if bool(edge.any()):
            kept = torch.nonzero(~edge).flatten()
            idx, stab, boxes = idx[kept.to(idx.device)], stab[kept.to(stab.device)], boxes[kept]
            rles = [rles[i] for i in kept.tolist()]
        if len(idx) == 0:
            return _Masks.empty()
        point_idx = (idx // per_point).cpu()
        return _Masks(
            rles=rles,
            boxes=boxes,
            iou=iou[idx].cpu(),
            stability=stab.float().cpu(),
            points=torch.as_tensor(points[point_idx.numpy()], dtype=torch.float64),
            crop_boxes=torch.zeros(len(rles), 4, dtype=torch.int64),
        )

    def _encode(
        self, masks: torch.Tensor, crop_box: list[int], image_size: tuple[int, int], canvas: _Canvas
    ) -> tuple[list[dict], torch.Tensor]:
        """RLE-encode (k, crop W, crop H) column-major crop masks placed in the image frame.

        Returns the compressed RLEs and inclusive XYXY image-frame boxes read off the RLEs.
        """
        k = masks.shape[0]
        height, width = image_size
        x0, y0, x1, y1 = crop_box
        masks = masks.cpu()
        if [x0, y0, x1, y1] == [0, 0, width, height]:
            stack = masks.contiguous()
        else:
            stack = canvas.take(k)
            stack[:, x0:x1, y0:y1] = masks
        encoded = mask_utils.encode(stack.numpy().view(np.uint8).T)
        xywh = torch.from_numpy(mask_utils.toBbox(encoded)).to(torch.int64)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + (xywh[:, 2:] - 1).clamp(min=0)], dim=1)
        rles = [{"size": [height, width], "counts": r["counts"].decode("ascii")} for r in encoded]
        return rles, boxes

    def _finish(self, crops: list[_Masks], image: np.ndarray) -> list[dict]:
        p = self.params
        image_size = image.shape[:2]
        found = _Masks.cat(crops)
        if len(crops) > 1 and len(found):
            # Prefer masks from smaller crops.
            scores = 1.0 / box_area(found.crop_boxes).to(torch.float32)
            keep = batched_nms(found.boxes.float(), scores, torch.zeros(len(found)), p.crop_nms_thresh)
            found = found.select(keep)
        if p.min_mask_region_area > 0 and len(found):
            keep, rles, boxes = clean_masks(
                found.rles, found.boxes, p.min_mask_region_area, max(p.box_nms_thresh, p.crop_nms_thresh)
            )
            found = found.select(keep)
            found.rles, found.boxes = rles, boxes
        extra: dict[str, np.ndarray] = {}
        # without snapping or a quality model the records are SAM's (no second NMS, no extra measurements)
        if len(found) and (p.snap_scale is not None or p.quality_model is not None):
            found, extra = _refined(found, image, p)
        return _records(found, image_size, p.max_mask_area_ratio, extra)


def _refined(found: _Masks, image: np.ndarray, p: AmgParams) -> tuple[_Masks, dict[str, np.ndarray]]:
    """Snap the masks to the image's regions (``snap_scale``; :mod:`sam_engine.snap`), measure how their
    outlines stand out (:mod:`.contrast`) and their shapes (:mod:`.shape`), score them with the calibrated quality model (``quality_model``;
    :mod:`.calibration`) and drop those under ``quality_thresh``, then box NMS again, ranked by quality
    (else predicted IoU): snapping can make two masks the same. Returns the masks and per-mask
    ``edge_contrast``, the :data:`~.shape.SHAPE_KEYS`, ``region_agreement`` (IoU of a mask with its snapped
    self; when snapping) and ``quality`` (with a quality model)."""
    from .calibration import QualityModel
    from .contrast import edge_contrast
    from .shape import SHAPE_KEYS, shape_features

    extra: dict[str, np.ndarray] = {}
    masks = rle_utils.decode_batch(found.rles)
    if p.snap_scale is not None:
        from sam_engine.snap import Regions, SnapParams

        regions = Regions.of(image, SnapParams(scale=float(p.snap_scale)))
        snapped = np.stack([regions.snap_mask(m) for m in masks])
        inter = (masks & snapped).reshape(len(masks), -1).sum(1)
        union = (masks | snapped).reshape(len(masks), -1).sum(1)
        extra["region_agreement"] = inter / np.maximum(union, 1)
        encoded = mask_utils.encode(np.asfortranarray(snapped.transpose(1, 2, 0).astype(np.uint8)))
        xywh = torch.from_numpy(mask_utils.toBbox(encoded)).to(torch.int64)
        found.boxes = torch.cat([xywh[:, :2], xywh[:, :2] + (xywh[:, 2:] - 1).clamp(min=0)], dim=1)
        found.rles = [{"size": list(image.shape[:2]), "counts": r["counts"].decode("ascii")} for r in encoded]
        masks = snapped
    areas = masks.reshape(len(masks), -1).sum(1)
    extra["edge_contrast"] = edge_contrast(image, masks)
    extra.update(shape_features(masks))
    keep = np.asarray(areas) > 0
    rank = found.iou.numpy().astype(np.float64)
    if p.quality_model is not None:
        records = [
            {
                "predicted_iou": i,
                "stability_score": s,
                "region_agreement": a,
                "edge_contrast": c,
                "area": int(n),
                **{key: float(extra[key][k]) for key in SHAPE_KEYS},
            }
            for k, (i, s, a, c, n) in enumerate(
                zip(
                    found.iou.tolist(),
                    found.stability.tolist(),
                    extra.get("region_agreement", np.ones(len(found))),
                    extra["edge_contrast"],
                    areas,
                    strict=True,
                )
            )
        ]
        model = QualityModel.from_dict(p.quality_model)
        extra["quality"] = model.score_records(records, image.shape[0] * image.shape[1])
        keep &= extra["quality"] >= p.quality_thresh
        rank = extra["quality"]
    idx = np.flatnonzero(keep)
    found = found.select(torch.from_numpy(idx))
    extra = {k: v[idx] for k, v in extra.items()}
    if not len(found):
        return found, extra
    order = nms(found.boxes.float(), torch.from_numpy(rank[idx]).float(), p.box_nms_thresh)
    return found.select(order), {k: v[order.numpy()] for k, v in extra.items()}


def _records(
    found: _Masks,
    image_size: tuple[int, int],
    max_area_ratio: float | None,
    extra: dict[str, np.ndarray] | None = None,
) -> list[dict]:
    """SA-1B annotation fields (no ``id``) for every mask, plus any per-mask ``extra`` values (the shard
    writer keeps only the SA-1B ones); drops masks covering too much of the image."""
    if len(found) == 0:
        return []
    extra = extra or {}
    coco = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in found.rles]
    areas = torch.from_numpy(rle_utils.areas(coco))
    keep = ~covers_too_much(areas, image_size[0], image_size[1], max_area_ratio) & (areas > 0)
    if not bool(keep.all()):
        found = found.select(keep)
        areas = areas[keep]
        extra = {k: v[keep.numpy()] for k, v in extra.items()}
    xywh = found.boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    crop_xywh = found.crop_boxes.clone()
    crop_xywh[:, 2:] -= crop_xywh[:, :2]
    out = []
    for rle, area, box, iou, stab, pt, crop in zip(
        found.rles,
        areas.tolist(),
        xywh.tolist(),
        found.iou.tolist(),
        found.stability.tolist(),
        found.points.tolist(),
        crop_xywh.tolist(),
        strict=True,
    ):
        out.append(
            {
                "segmentation": rle,
                "area": int(area),
                "bbox": [float(v) for v in box],
                "predicted_iou": float(iou),
                "point_coords": [pt],
                "stability_score": float(stab),
                "crop_box": [float(v) for v in crop],
            }
        )
    for key, values in extra.items():
        for rec, v in zip(out, values.tolist(), strict=True):
            rec[key] = float(v)
    return out
