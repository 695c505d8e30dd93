"""Model configurations (tiny CPU default and the official vit_b / vit_l / vit_h) and the builder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from sam_engine.model.conv_encoder import ImageEncoderConv
from sam_engine.model.hybrid_encoder import ImageEncoderHybrid
from sam_engine.model.image_encoder import ImageEncoderViT
from sam_engine.model.mask_decoder import MaskDecoder
from sam_engine.model.prompt_encoder import PromptEncoder
from sam_engine.model.sam import PIXEL_MEAN, PIXEL_STD, Sam
from sam_engine.model.transformer import TwoWayTransformer


@dataclass(frozen=True)
class SamConfig:
    """Every size that shapes a SAM model. ``out_chans`` is also the prompt embedding width."""

    img_size: int = 1024
    patch_size: int = 16
    # "vit": SAM's ViT (official names); "hybrid": the ViT plus a conv detail branch whose stride-2/4/8
    # features sharpen the decoder's masks (sam_engine/model/hybrid_encoder.py); "conv": a convolutional
    # encoder made for the CPU (sam_engine/model/conv_encoder.py)
    encoder_type: str = "vit"
    stem_chans: tuple[int, int, int] = (16, 32, 64)  # hybrid only: detail branch widths at strides 2, 4, 8
    conv_widths: tuple[int, int, int, int] = (16, 32, 64, 128)  # conv only: stage widths, strides 2..16
    conv_depths: tuple[int, int, int, int] = (1, 1, 2, 2)  # conv only: residual blocks per stage
    mask_scale: int = 4  # low-res masks = mask_scale x the embedding grid; 8 needs detail features
    click_refiner: bool = False  # the decoder refines its stride-4 features with prompt maps
    iou_from_mask_tokens: bool = (
        False  # IoU head reads each output's mask token too (mask_decoder.TokenIoUHead)
    )
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_window_size: int = 14
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder_mlp_ratio: float = 4.0
    out_chans: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = field(default=PIXEL_MEAN)
    pixel_std: tuple[float, float, float] = field(default=PIXEL_STD)

    def __post_init__(self) -> None:
        if self.encoder_type not in ("vit", "hybrid", "conv"):
            raise ValueError(
                f"SamConfig: encoder_type {self.encoder_type!r} is not 'vit', 'hybrid' or 'conv'"
            )
        if self.mask_scale not in (4, 8) or (self.mask_scale == 8 and self.encoder_type == "vit"):
            raise ValueError(
                f"SamConfig: mask_scale {self.mask_scale} must be 4, or 8 with the hybrid or conv encoder"
            )
        if self.img_size % self.patch_size:
            raise ValueError(
                f"SamConfig: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError("SamConfig: encoder_num_heads must divide encoder_embed_dim")
        if self.out_chans % 8 or (self.out_chans // 2) % self.decoder_num_heads:
            raise ValueError("SamConfig: out_chans must be a multiple of 8 and of 2*decoder_num_heads")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(
                f"SamConfig: global_attn_indexes {bad} outside encoder depth {self.encoder_depth}"
            )
        # normalise lists (e.g. from JSON) to tuples so configs compare and hash
        for name in (
            "encoder_global_attn_indexes",
            "pixel_mean",
            "pixel_std",
            "stem_chans",
            "conv_widths",
            "conv_depths",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (img_size / patch_size)."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits (``mask_scale`` x embedding size; SAM: 4)."""
        return self.mask_scale * self.embedding_size

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"SamConfig: unknown fields {unknown}")
        return cls(**data)


def _official(embed_dim: int, depth: int, num_heads: int, global_idx: tuple[int, ...]) -> SamConfig:
    return SamConfig(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=num_heads,
        encoder_global_attn_indexes=global_idx,
    )


# CPU default: 256 px input, 16x16 embedding, 64x64 low-res masks; trains from scratch in minutes.
_TINY = SamConfig(
    img_size=256,
    patch_size=16,
    encoder_embed_dim=128,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_window_size=8,
    encoder_global_attn_indexes=(1, 3),
    encoder_mlp_ratio=4.0,
    out_chans=64,
    mask_in_chans=16,
    decoder_depth=2,
    decoder_mlp_dim=256,
    decoder_num_heads=4,
    iou_head_depth=3,
    iou_head_hidden_dim=64,
)

# The CPU default: a convolutional encoder (strides 2..16; one global attention block on the 16x16 grid),
# SAM's prompt encoder and two-way-transformer decoder on the 16x16 embedding, masks on a 128x128 grid from
# the stride-8/4/2 features, and the click refiner (sam_engine/model/conv_encoder.py, mask_decoder.py).
_CONV = dataclasses.replace(
    _TINY,
    encoder_type="conv",
    encoder_depth=1,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(0,),
    mask_scale=8,
    click_refiner=True,
    iou_from_mask_tokens=True,
)

MODEL_CONFIGS: dict[str, SamConfig] = {
    "tiny": _TINY,
    "tiny_conv": _CONV,
    # tiny plus the detail branch and 8x (128x128) masks (see sam_engine/model/hybrid_encoder.py)
    "tiny_hybrid": dataclasses.replace(_TINY, encoder_type="hybrid", stem_chans=(16, 32, 64), mask_scale=8),
    "vit_b": _official(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _official(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _official(1280, 32, 16, (7, 15, 23, 31)),
}


def get_config(name_or_config: str | SamConfig | dict[str, Any]) -> SamConfig:
    """Resolve a config name (``MODEL_CONFIGS`` key), a plain dict or a ``SamConfig``."""
    if isinstance(name_or_config, SamConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return SamConfig.from_dict(name_or_config)
    try:
        return MODEL_CONFIGS[name_or_config]
    except KeyError:
        raise ValueError(f"unknown model config {name_or_config!r}; known: {sorted(MODEL_CONFIGS)}") from None


def build_sam(name_or_config: str | SamConfig | dict[str, Any] = "tiny", seed: int | None = None) -> Sam:
    """Build a randomly initialised model (seeded when ``seed`` is given) in train mode on the CPU."""
    cfg = get_config(name_or_config)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _build(cfg)
    return _build(cfg)


def _build(cfg: SamConfig) -> Sam:
    grid = cfg.embedding_size
    vit_args = {
        "img_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "embed_dim": cfg.encoder_embed_dim,
        "depth": cfg.encoder_depth,
        "num_heads": cfg.encoder_num_heads,
        "mlp_ratio": cfg.encoder_mlp_ratio,
        "out_chans": cfg.out_chans,
        "qkv_bias": True,
        "norm_layer": partial(nn.LayerNorm),
        "use_rel_pos": True,
        "window_size": cfg.encoder_window_size,
        "global_attn_indexes": cfg.encoder_global_attn_indexes,
    }
    encoder: nn.Module
    if cfg.encoder_type == "conv":
        encoder = ImageEncoderConv(
            img_size=cfg.img_size,
            widths=cfg.conv_widths,
            depths=cfg.conv_depths,
            out_chans=cfg.out_chans,
            mask_scale=cfg.mask_scale,
            attn_depth=cfg.encoder_depth,
            attn_heads=cfg.encoder_num_heads,
        )
    elif cfg.encoder_type == "hybrid":
        encoder = ImageEncoderHybrid(stem_chans=cfg.stem_chans, mask_scale=cfg.mask_scale, **vit_args)
    else:
        encoder = ImageEncoderViT(**vit_args)
    prompt_encoder = PromptEncoder(
        embed_dim=cfg.out_chans,
        image_embedding_size=(grid, grid),
        input_image_size=(cfg.img_size, cfg.img_size),
        mask_in_chans=cfg.mask_in_chans,
        mask_scale=cfg.mask_scale,
    )
    decoder = MaskDecoder(
        transformer_dim=cfg.out_chans,
        transformer=TwoWayTransformer(
            depth=cfg.decoder_depth,
            embedding_dim=cfg.out_chans,
            num_heads=cfg.decoder_num_heads,
            mlp_dim=cfg.decoder_mlp_dim,
        ),
        num_multimask_outputs=3,
        iou_head_depth=cfg.iou_head_depth,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        mask_scale=cfg.mask_scale,
        click_refiner=cfg.click_refiner,
        iou_from_mask_tokens=cfg.iou_from_mask_tokens,
    )
    model = Sam(encoder, prompt_encoder, decoder, pixel_mean=cfg.pixel_mean, pixel_std=cfg.pixel_std)
    model.config = cfg  # type: ignore[assignment]
    return model
