"""A convolutional image encoder made for the CPU: stride-2/4/8 features for the masks, stride 16 for prompts.

SAM's ViT learns slowly from scratch on a few thousand images, and its 16 px patches give the mask decoder
nothing finer than the embedding grid. EdgeSAM and EfficientViT-SAM replace it with convolutional or hybrid
encoders at a fraction of the cost; SAM 2 feeds stride-4/8 features of its hierarchical encoder into the mask
decoder's upscaling. This encoder does both: four strided residual stages (strides 2, 4, 8, 16), one global
self-attention block on the stride-16 grid for context, SAM's neck to ``out_chans``, and 1x1 projections of
the stride-8/4/2 stages to the widths of the decoder's upscaling layers. The detail features travel inside
the embedding exactly as :mod:`~sam_engine.model.hybrid_encoder` packs them, so the predictor's cache, the
automatic mask generator and training handle one tensor per image, and the prompt encoder / mask decoder
contract is SAM's: embed once, decode each prompt cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sam_engine.model.common import LayerNorm2d
from sam_engine.model.hybrid_encoder import detail_widths, pack_high_res
from sam_engine.model.image_encoder import Block


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a skip connection (ResNet's basic block)."""

    def __init__(self, chans: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(chans, chans, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(chans)
        self.conv2 = nn.Conv2d(chans, chans, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(chans)
        self.act = nn.ReLU(inplace=True)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity: deep stacks train at once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class DownStage(nn.Module):
    """A strided 3x3 convolution (half the resolution) followed by ``depth`` residual blocks."""

    def __init__(self, cin: int, cout: int, depth: int) -> None:
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(*(ResidualBlock(cout) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class ImageEncoderConv(nn.Module):
    """Image BxCxSxS to the packed embedding: ``out_chans`` at stride 16, then the detail features."""

    def __init__(
        self,
        *,
        img_size: int = 256,
        in_chans: int = 3,
        widths: Sequence[int] = (16, 32, 64, 128),
        depths: Sequence[int] = (1, 1, 2, 2),
        out_chans: int = 64,
        mask_scale: int = 8,
        attn_depth: int = 1,
        attn_heads: int = 4,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError("ImageEncoderConv: widths and depths need four stages (strides 2, 4, 8, 16)")
        if img_size % 16:
            raise ValueError(f"ImageEncoderConv: img_size {img_size} is not a multiple of 16")
        if mask_scale not in (4, 8):
            raise ValueError(f"ImageEncoderConv: mask_scale must be 4 or 8, got {mask_scale}")
        self.img_size = img_size
        self.out_chans = out_chans
        self.mask_scale = mask_scale
        chans = [in_chans, *widths]
        self.stages = nn.ModuleList(DownStage(chans[i], chans[i + 1], depths[i]) for i in range(4))
        grid = img_size // 16
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, widths[3]))
        self.blocks = nn.ModuleList(
            Block(widths[3], attn_heads, mlp_ratio=2.0, window_size=0, input_size=(grid, grid))
            for _ in range(attn_depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(widths[3], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        targets = [c for c, _ in detail_widths(out_chans, mask_scale)]
        sources = [widths[2], widths[1], widths[0]][: len(targets)]
        self.detail_proj = nn.ModuleList(
            nn.Conv2d(src, dst, kernel_size=1) for src, dst in zip(sources, targets, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        s2, s4, s8, s16 = feats
        tokens = s16.permute(0, 2, 3, 1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        emb = self.neck(tokens.permute(0, 3, 1, 2))
        details = [proj(f) for proj, f in zip(self.detail_proj, [s8, s4, s2], strict=False)]
        return pack_high_res(emb, details, self.mask_scale)
