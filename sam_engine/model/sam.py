"""The promptable segmentation model: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sam_engine.model.image_encoder import ImageEncoderViT
from sam_engine.model.mask_decoder import MaskDecoder
from sam_engine.model.prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """SAM. Unlike the reference package, ``forward`` keeps gradients so the model trains."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.config = None  # the SamConfig, set by build_sam
        # not persistent: official checkpoints carry no normalisation buffers
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a (...)x3xHxW image in 0..255 and zero-pad it to img_size x img_size (bottom/right)."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = self.img_size
        if h > size or w > size:
            raise ValueError(f"Sam.preprocess: image {h}x{w} is larger than img_size {size}; resize it first")
        return F.pad(x, (0, size - w, 0, size - h))

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """Low-res logits BxCx4hx4w to BxCxHxW at the original image size (drop padding, upsample)."""
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts to low-res mask logits and IoU predictions, for B prompts at once.

        ``image_embeddings`` is 1xCxhxw or BxCxhxw (one row per prompt); coordinates are in the
        resized input frame (img_size pixels). Returns (Bx{1|3}x4hx4w logits, Bx{1|3} IoU).
        """
        masks, iou = self.decode_all(image_embeddings, point_coords, point_labels, boxes, mask_input)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou[:, sel]

    def decode_all(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`decode`, returning every mask token's output (Bx4x4hx4w logits, Bx4 IoU): token 0 is
        the single-mask output, 1..3 the multimask outputs. Training uses it, with an
        :class:`~sam_engine.model.hybrid_encoder.UnpackedEmbedding` per prompt as ``image_embeddings``."""
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("Sam.decode: point_labels are required with point_coords")
            points = (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        maps = self._prompt_maps(points, boxes, mask_input)
        return self.mask_decoder.predict_masks(
            image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, maps
        )

    def _prompt_maps(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
    ) -> torch.Tensor | None:
        if self.mask_decoder.refiner is None:
            return None
        return self.prompt_encoder.prompt_maps(points, boxes, mask_input)

    def decode_where(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        keep: Callable[[torch.Tensor], torch.Tensor],
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`decode` for point prompts, computing mask logits only for the prompts ``keep`` selects.

        ``keep`` maps the Bx{1|3} IoU predictions to a (B,) bool. Returns (rows (K,), Kx{1|3}x4hx4w logits of
        those prompts, Bx{1|3} IoU of all). The automatic mask generator uses it to skip the upscaling for
        prompts none of whose masks can pass its IoU filter.
        """
        points = (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=None)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        rows, masks, iou = self.mask_decoder.predict_masks_where(
            image_embeddings,
            self.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            lambda all_iou: keep(all_iou[:, sel]),
            self._prompt_maps(points, None, None),
        )
        return rows, masks[:, sel], iou[:, sel]

    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """Batched end-to-end prediction.

        Each record: ``image`` 3xHxW (already resized so the longest side is img_size), ``original_size``
        (H, W), optional ``point_coords`` BxNx2, ``point_labels`` BxN, ``boxes`` Bx4, ``mask_inputs``
        Bx1x4hx4w, all in the resized frame. Returns per record ``masks`` (bool, original size),
        ``iou_predictions`` and ``low_res_logits``.
        """
        images = torch.stack([self.preprocess(rec["image"]) for rec in batched_input], dim=0)
        embeddings = self.image_encoder(images)
        outputs = []
        for rec, emb in zip(batched_input, embeddings, strict=True):
            low_res, iou = self.decode(
                emb.unsqueeze(0),
                point_coords=rec.get("point_coords"),
                point_labels=rec.get("point_labels"),
                boxes=rec.get("boxes"),
                mask_input=rec.get("mask_inputs"),
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res, tuple(rec["image"].shape[-2:]), tuple(rec["original_size"])
            )
            outputs.append(
                {"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res}
            )
        return outputs
