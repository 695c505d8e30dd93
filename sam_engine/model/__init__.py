"""SAM architecture with the official module and parameter names, builders and checkpoint I/O."""

from sam_engine.model.build import MODEL_CONFIGS, SamConfig, build_sam, get_config
from sam_engine.model.image_encoder import ImageEncoderViT
from sam_engine.model.mask_decoder import MaskDecoder
from sam_engine.model.prompt_encoder import PromptEncoder
from sam_engine.model.sam import Sam
from sam_engine.model.transformer import TwoWayTransformer
from sam_engine.model.transforms import ResizeLongestSide

__all__ = [
    "MODEL_CONFIGS",
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "ResizeLongestSide",
    "Sam",
    "SamConfig",
    "TwoWayTransformer",
    "build_sam",
    "get_config",
]
