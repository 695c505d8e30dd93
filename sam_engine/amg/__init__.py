"""Automatic mask generation (SAM's grid-prompt AMG), batched and vectorized."""

from .generator import AutomaticMaskGenerator
from .params import AmgParams

__all__ = ["AmgParams", "AutomaticMaskGenerator", "generate", "generate_batch"]


def generate(model: object, image, params: AmgParams | None = None) -> list[dict]:
    """Mask records for one HxWx3 uint8 image (see :class:`AutomaticMaskGenerator`)."""
    return AutomaticMaskGenerator(model, params).generate(image)


def generate_batch(model: object, images: list, params: AmgParams | None = None) -> list[list[dict]]:
    """Mask records for several images, encoding them in shared encoder calls."""
    return AutomaticMaskGenerator(model, params).generate_batch(images)
