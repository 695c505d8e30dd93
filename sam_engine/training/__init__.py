"""Training: prompt simulation, losses, the data module, the LightningModule and ``train_model``."""

from .datamodule import MaskDataModule, MaskDataset, split_by_image
from .losses import LossWeights, sam_loss
from .module import SamModule
from .prompts import PromptSchedule, error_points, first_prompts
from .train import TrainResult, train_model

__all__ = [
    "LossWeights",
    "MaskDataModule",
    "MaskDataset",
    "PromptSchedule",
    "SamModule",
    "TrainResult",
    "error_points",
    "first_prompts",
    "sam_loss",
    "split_by_image",
    "train_model",
]
