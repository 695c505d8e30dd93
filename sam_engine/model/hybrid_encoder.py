"""CPU-size image encoder with a high-resolution detail branch, and the fine mask grid it feeds.

With SAM's 4x low-res masks, a 256 px model predicts masks on a 64x64 grid. That grid caps what any model
can reach on small, cluttered objects: ground truth area-pooled to it and upsampled back (the ideal logits)
gives a mean IoU of 0.80 on the default gold set and 0.95 on public-corpus validation; at 128x128 the cap
is 0.94 / 0.99 (measured in docs/architecture.md). This encoder keeps the ViT path exactly (same patch
embedding, blocks and neck, so the prompt-localising part learns as fast as the plain ViT) and adds a small
strided convolutional branch on the image whose stride-2, 4 and 8 features, projected to the widths of the
mask decoder's upscaling layers, are added to those layers, as SAM 2 adds its backbone's high-resolution
features. With ``mask_scale`` 8 the decoder has a third upscaling layer and predicts 8x masks (128x128).

The features travel inside the image embedding: pixel-unshuffled onto the embedding grid and concatenated
after the ``out_chans`` embedding channels, so the embedding stays one ``BxKxhxw`` tensor and everything that
caches, batches or indexes embeddings (predictor cache, AMG, training) works unchanged;
:func:`split_high_res` is the inverse the mask decoder uses. The projections start at zero, so a new model
starts as the plain ViT and brings the detail in as it learns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sam_engine.model.common import LayerNorm2d
from sam_engine.model.image_encoder import ImageEncoderViT


def detail_widths(out_chans: int, mask_scale: int) -> list[tuple[int, int]]:
    """(channels, stride relative to the embedding grid's upsampling) of each detail feature, coarse first:
    stride-8 features at the first upscaling layer's width (C/4), stride 4 and (for 8x masks) stride 2 at
    the last upscaling layer's width (C/8)."""
    widths = [(out_chans // 4, 2), (out_chans // 8, 4)]
    if mask_scale == 8:
        widths.append((out_chans // 8, 8))
    return widths


def packed_channels(out_chans: int, mask_scale: int = 4) -> int:
    """Channels of an embedding that carries the detail features."""
    return out_chans + sum(c * f * f for c, f in detail_widths(out_chans, mask_scale))


class UnpackedEmbedding(NamedTuple):
    """An image embedding already split by :func:`split_high_res` (and gathered per prompt), which the mask
    decoder takes in place of the packed tensor: training unpacks once per step instead of once per round.

    ``keys`` is the click refiner's key map per prompt, when the caller computed it once per image (training
    does, with :meth:`of`'s ``key_fn``): the decoder then reads it instead of computing it again from each
    prompt's copy of the features, in every round.
    """

    embedding: torch.Tensor
    high_res: list[torch.Tensor]
    keys: torch.Tensor | None = None

    @classmethod
    def of(
        cls,
        packed: torch.Tensor,
        out_chans: int,
        index: torch.Tensor | None = None,
        key_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> UnpackedEmbedding:
        """Split ``packed`` (B images) and, with ``index`` (M,), gather one row per prompt. ``key_fn`` maps the
        stride-4 detail features (B images) to the refiner's key map, computed before the gather."""
        emb, high_res = split_high_res(packed, out_chans)
        keys = key_fn(high_res[1]) if key_fn is not None and len(high_res) >= 2 else None
        if index is not None:
            emb = emb.index_select(0, index)
            high_res = [d.index_select(0, index) for d in high_res]
            keys = None if keys is None else keys.index_select(0, index)
        return cls(emb, high_res, keys)


def split_high_res(embedding: torch.Tensor, out_chans: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(embedding Bxout_chansxhxw, detail features coarse first: [Bx(C/4)x2hx2w, Bx(C/8)x4hx4w(, ...8h)])."""
    total = embedding.shape[1]
    if total == out_chans:
        return embedding, []
    for scale in (4, 8):
        if total == packed_channels(out_chans, scale):
            break
    else:
        raise ValueError(
            f"image embedding has {total} channels; expected {out_chans} or, with high-resolution features, "
            f"{packed_channels(out_chans, 4)} / {packed_channels(out_chans, 8)}"
        )
    feats, start = [], out_chans
    for c, f in detail_widths(out_chans, scale):
        feats.append(F.pixel_shuffle(embedding[:, start : start + c * f * f], f))
        start += c * f * f
    return embedding[:, :out_chans], feats


def pack_high_res(embedding: torch.Tensor, details: list[torch.Tensor], mask_scale: int) -> torch.Tensor:
    """The inverse of :func:`split_high_res`: detail features (coarse first, at the widths of
    :func:`detail_widths`) pixel-unshuffled onto the embedding grid and concatenated after its channels."""
    factors = [f for _, f in detail_widths(embedding.shape[1], mask_scale)]
    if len(details) != len(factors):
        raise ValueError(
            f"pack_high_res: {mask_scale}x masks need {len(factors)} detail maps, got {len(details)}"
        )
    return torch.cat(
        [embedding, *(F.pixel_unshuffle(d, f) for d, f in zip(details, factors, strict=True))], 1
    )


class ConvStage(nn.Module):
    """A strided 3x3 conv then a residual 3x3 conv, each followed by LayerNorm2d and GELU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), LayerNorm2d(cout), nn.GELU()
        )
        self.refine = nn.Sequential(
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), LayerNorm2d(cout), nn.GELU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return x + self.refine(x)


class ImageEncoderHybrid(ImageEncoderViT):
    """The ViT encoder plus a conv detail branch (strides 2, 4, 8); returns the packed embedding."""

    def __init__(
        self,
        *,
        stem_chans: Sequence[int] = (16, 32, 64),
        mask_scale: int = 8,
        **vit_kwargs,
    ) -> None:
        super().__init__(**vit_kwargs)
        out_chans = self.neck[0].out_channels
        if out_chans % 8:
            raise ValueError("ImageEncoderHybrid: out_chans must be a multiple of 8")
        if mask_scale not in (4, 8):
            raise ValueError(f"ImageEncoderHybrid: mask_scale must be 4 or 8, got {mask_scale}")
        if self.patch_embed.proj.stride[0] != 16:
            raise ValueError("ImageEncoderHybrid: the detail branch needs patch_size 16")
        self.out_chans = out_chans
        self.mask_scale = mask_scale
        c2, c4, c8 = stem_chans
        in_chans = self.patch_embed.proj.in_channels
        self.detail = nn.ModuleList([ConvStage(in_chans, c2), ConvStage(c2, c4), ConvStage(c4, c8)])
        widths = [c for c, _ in detail_widths(out_chans, mask_scale)]
        sources = [c8, c4, c2][: len(widths)]
        self.detail_proj = nn.ModuleList(
            nn.Conv2d(src, width, kernel_size=1) for src, width in zip(sources, widths, strict=True)
        )
        for proj in self.detail_proj:  # zero at start: the model begins as the plain ViT
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = super().forward(x)
        s2 = self.detail[0](x)
        s4 = self.detail[1](s2)
        s8 = self.detail[2](s4)
        details = [proj(feat) for proj, feat in zip(self.detail_proj, [s8, s4, s2], strict=False)]
        return pack_high_res(emb, details, self.mask_scale)
