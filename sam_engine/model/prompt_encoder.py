"""Prompt encoder: points and boxes to sparse tokens, a low-res mask to a dense embedding."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam_engine.model.common import LayerNorm2d

# Point labels understood by the prompt encoder.
LABEL_PAD = -1
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


@dataclass
class PromptMaps:
    """The prompts as the decoder's click refiner sees them: ``maps`` (B, 4, 4h, 4w) from
    :meth:`PromptEncoder.prompt_maps`, and the clicks themselves (``coords`` B x N x 2 in the input frame,
    ``labels`` B x N), or None without points."""

    maps: torch.Tensor
    coords: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> PromptMaps:
        """The maps of the prompts ``index`` selects."""
        pick = lambda t: t if t is None or t.shape[0] == 1 else t[index]  # noqa: E731
        return PromptMaps(pick(self.maps), pick(self.coords), pick(self.labels))


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (Fourier features, Tancik et al. 2020)."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode coordinates normalised to [0, 1] (shape ..., 2) to (..., 2*num_pos_feats)."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an (h, w) grid: (C, h, w)."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=matrix.device, dtype=matrix.dtype) + 0.5) / h
        xs = (torch.arange(w, device=matrix.device, dtype=matrix.dtype) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode xy pixel coordinates of an (H, W) input image: (..., 2) to (..., C)."""
        coords = coords_input.to(torch.float32)
        coords = torch.stack([coords[..., 0] / image_size[1], coords[..., 1] / image_size[0]], dim=-1)
        return self._pe_encoding(coords)


class PromptEncoder(nn.Module):
    """Embeds points (labels 1 fg, 0 bg, 2/3 box corners, -1 padding), boxes and low-res masks."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
        mask_scale: int = 4,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # background, foreground, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        # mask inputs have the decoder's low-res size (mask_scale x the embedding); 8x ones are pooled to 4x
        self.mask_input_size = (mask_scale * image_embedding_size[0], mask_scale * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: (1, C, h, w)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points.to(torch.float32) + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros((points.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), LABEL_PAD)], dim=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        # padding points carry no position, only the not-a-point embedding
        out = torch.where(labels == LABEL_PAD, self.not_a_point_embed.weight, pe)
        for value, table in enumerate(self.point_embeddings):
            out = out + (labels == value).to(out.dtype) * table.weight
        return out

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes.to(torch.float32) + 0.5).reshape(-1, 2, 2)
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return pe + corner_embed

    def prompt_maps(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        sigma: float = 5.0,
    ) -> PromptMaps:
        """The prompts as maps on the 4x grid, for the decoder's click refiner: (B, 4, 4h, 4w), with the
        clicks themselves (:class:`PromptMaps`).

        Channels: positive clicks and negative clicks (a Gaussian of ``sigma`` input pixels around each,
        the maximum over clicks), the box (1 inside; boxes given as corner points, labels 2 and 3, count
        too) and the fed-back mask logits (pooled to the grid, clamped to +-8 and scaled to +-1).
        """
        bs = self._batch_size(points, boxes, masks)
        device = self.point_embeddings[0].weight.device
        gh, gw = 4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1]
        sy, sx = self.input_image_size[0] / gh, self.input_image_size[1] / gw
        ys = (torch.arange(gh, device=device, dtype=torch.float32) + 0.5) * sy
        xs = (torch.arange(gw, device=device, dtype=torch.float32) + 0.5) * sx
        out = torch.zeros((bs, 4, gh, gw), device=device)
        corners = []
        if points is not None:
            coords, labels = points
            coords = coords.to(torch.float32) + 0.5
            # a 2-D Gaussian is the outer product of two 1-D ones: no exp over the whole grid
            gy = torch.exp(-((ys[None, None, :] - coords[..., 1:2]) ** 2) / (2 * sigma * sigma))  # B, N, gh
            gx = torch.exp(-((xs[None, None, :] - coords[..., 0:1]) ** 2) / (2 * sigma * sigma))  # B, N, gw
            g = gy[..., :, None] * gx[..., None, :]
            for channel, label in ((0, LABEL_FOREGROUND), (1, LABEL_BACKGROUND)):
                hit = (labels == label)[..., None, None]
                if bool(hit.any()):
                    out[:, channel] = torch.where(hit, g, torch.zeros_like(g)).amax(dim=1)
            tl, br = labels == LABEL_BOX_TOP_LEFT, labels == LABEL_BOX_BOTTOM_RIGHT
            if bool(tl.any()):
                has = tl.any(dim=1) & br.any(dim=1)
                first_tl = coords[torch.arange(bs, device=device), tl.to(torch.int8).argmax(dim=1)]
                first_br = coords[torch.arange(bs, device=device), br.to(torch.int8).argmax(dim=1)]
                corners.append((torch.cat([first_tl, first_br], dim=1), has))
        if boxes is not None:
            corners.append((boxes.to(torch.float32).reshape(-1, 4) + 0.5, None))
        for box, has in corners:
            inside = (
                (xs[None, None, :] >= box[:, 0, None, None])
                & (xs[None, None, :] <= box[:, 2, None, None])
                & (ys[None, :, None] >= box[:, 1, None, None])
                & (ys[None, :, None] <= box[:, 3, None, None])
            )
            if has is not None:
                inside = inside & has[:, None, None]
            out[:, 2] = torch.maximum(out[:, 2], inside.to(out.dtype))
        if masks is not None:
            factor = masks.shape[-1] // gw
            m = F.avg_pool2d(masks, factor) if factor > 1 else masks
            out[:, 3] = m[:, 0].clamp(-8.0, 8.0) / 8.0
        if points is None:
            return PromptMaps(out)
        return PromptMaps(out, points[0].to(torch.float32), points[1])

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        factor = masks.shape[-1] // (4 * self.image_embedding_size[1])
        if factor > 1:
            masks = F.avg_pool2d(masks, factor)
        return self.mask_downscaling(masks)

    @staticmethod
    def _batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return sparse (B, N, C) and dense (B, C, h, w) embeddings.

        ``points`` = (coords BxNx2 xy in input-image pixels, labels BxN); ``boxes`` Bx4 xyxy;
        ``masks`` Bx1x(4h)x(4w) logits. A padding point is appended when points come without a box.
        """
        bs = self._batch_size(points, boxes, masks)
        device = self.point_embeddings[0].weight.device
        parts = []
        if points is not None:
            coords, labels = points
            parts.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        if parts:
            sparse = torch.cat(parts, dim=1)
        else:
            sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
