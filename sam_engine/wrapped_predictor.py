"""A predictor that wraps another one (region snapping, the output choice) and passes the rest through."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np


class PredictorWrapper:
    """Base of predictors that wrap another one (region snapping, the output choice): every attribute a
    wrapper does not define is the wrapped predictor's, and images are set and reset on it."""

    def __init__(self, predictor: Any) -> None:
        self.base = predictor
        self.model = getattr(predictor, "model", None)

    def __getattr__(self, name: str) -> Any:  # the wrapped predictor's other attributes
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def refines(self) -> bool:
        """The wrapped predictor's: a wrapper refines when what it wraps does."""
        return bool(getattr(self.base, "refines", False))

    @property
    def mask_threshold(self) -> float:
        return float(getattr(self.base, "mask_threshold", 0.0))

    def set_image(self, image: np.ndarray, image_key: Hashable | None = None) -> None:
        self.base.set_image(image, image_key=image_key)

    def reset_image(self) -> None:
        self.base.reset_image()
