"""A deterministic stand-in for a trained SAM, usable by the official generator and by sam_engine's.

It lets the two automatic mask generators be compared on meaningful, overlapping masks without trained
weights. The "encoder" average-pools the normalized image to the low-res mask grid; for a point, mask k is
the set of low-res cells whose colour is within ``TOLERANCES[k]`` of the colour under the point (logit
``SCALE * (tol - distance)``), and its predicted IoU is a fixed hash of that colour and k. On flat-colour
scenes (``scene``) this gives object-like masks with soft, bilinearly upsampled edges. Only torch is needed,
so the official (torchvision) environment and the main venv import the same file.

Both APIs are served: the official predictor's (``prompt_encoder`` / ``mask_decoder`` / ``postprocess_masks``)
and sam_engine's (``decode``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TOLERANCES = (0.35, 0.9, 1.8)
SCALE = 20.0


class _Encoder(nn.Module):
    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 4)  # (B, 3, S/4, S/4): one colour per low-res mask cell


class _PromptEncoder(nn.Module):
    def forward(self, points=None, boxes=None, masks=None):
        coords, _ = points
        return coords.to(torch.float32), torch.zeros(coords.shape[0], 1)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1)


class _MaskDecoder(nn.Module):
    def forward(
        self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output
    ):
        emb = image_embeddings[0]  # (3, h, w)
        pts = sparse_prompt_embeddings[:, 0, :]  # (B, 2) in the input frame
        h, w = emb.shape[-2:]
        ix = (pts[:, 0] / 4).floor().long().clamp(0, w - 1)
        iy = (pts[:, 1] / 4).floor().long().clamp(0, h - 1)
        colour = emb[:, iy, ix].t()  # (B, 3)
        dist = (emb[None] - colour[:, :, None, None]).pow(2).sum(1).sqrt()  # (B, h, w)
        tol = torch.tensor(TOLERANCES)
        logits = SCALE * (tol[None, :, None, None] - dist[:, None])
        k = torch.arange(3, dtype=torch.float32)
        seed = colour @ torch.tensor([12.9898, 78.233, 37.719]) + 0.7
        frac = torch.frac(torch.sin(seed[:, None] * (k[None] + 1.0)) * 43758.5453).abs()
        iou = 0.80 + 0.19 * frac
        if not multimask_output:
            return logits[:, :1], iou[:, :1]
        return logits, iou


class FakeSam(nn.Module):
    """The stand-in model (see the module docstring)."""

    mask_threshold = 0.0
    image_format = "RGB"

    def __init__(self, img_size: int = 256) -> None:
        super().__init__()
        self.image_encoder = _Encoder(img_size)
        self.prompt_encoder = _PromptEncoder()
        self.mask_decoder = _MaskDecoder()
        self.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(self, masks, input_size, original_size):
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def decode(
        self, image_embeddings, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True
    ):
        sparse, dense = self.prompt_encoder(points=(point_coords, point_labels))
        return self.mask_decoder(image_embeddings, None, sparse, dense, multimask_output)


def scene(height: int, width: int, seed: int, n_objects: int = 14) -> np.ndarray:
    """A flat-colour scene of overlapping rectangles and discs (some with a differently coloured part)."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = rng.integers(0, 256, size=3)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(n_objects):
        colour = rng.integers(0, 256, size=3)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        size = rng.uniform(0.04, 0.25) * min(height, width)
        if rng.random() < 0.5:
            inside = (np.abs(xx - cx) < size) & (np.abs(yy - cy) < size * rng.uniform(0.4, 1.6))
        else:
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 < size**2
        img[inside] = colour
        if rng.random() < 0.4:  # a part of the object in a nearby colour
            part = inside & (yy < cy)
            img[part] = np.clip(colour.astype(int) + rng.integers(-40, 40, size=3), 0, 255)
    return img
