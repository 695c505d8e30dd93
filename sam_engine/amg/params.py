"""Settings of the automatic mask generator (names and defaults as in SAM's generator)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .grid import build_layer_grids


class AmgParams(BaseModel):
    """AMG settings. Exactly one of ``points_per_side`` and ``point_grids`` is set.

    ``point_grids`` are explicit (x, y) grids normalized to [0, 1], one per crop layer.
    ``max_mask_area_ratio`` drops masks covering at least that share of the image (None keeps them);
    ``encoder_batch_size`` is how many images / crops share one image-encoder call.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    points_per_side: int | None = Field(32, ge=1)
    point_grids: list[list[tuple[float, float]]] | None = None
    points_per_batch: int = Field(64, ge=1)
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    crop_n_layers: int = Field(0, ge=0)
    crop_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    crop_overlap_ratio: float = Field(512 / 1500, ge=0.0, lt=1.0)
    crop_n_points_downscale_factor: int = Field(1, ge=1)
    crop_edge_tolerance: float = Field(20.0, ge=0.0)
    min_mask_region_area: int = Field(0, ge=0)
    max_mask_area_ratio: float | None = Field(0.95, gt=0.0)
    encoder_batch_size: int = Field(4, ge=1)
    # Snap every kept mask to the image's regions (sam_engine/snap.py) before the records are written; None
    # keeps the model's masks (SAM's behaviour). The value is the over-segmentation's scale.
    snap_scale: float | None = None
    # Decode masks only for this share of each batch's points, those with the highest predicted IoU (the IoU
    # head needs no mask, so the rest skip the upscaling); 1.0 decodes every point (SAM).
    top_points_fraction: float = Field(1.0, gt=0.0, le=1.0)
    # A calibrated quality filter (sam_engine/amg/calibration.QualityModel.as_dict()): masks whose modelled
    # probability of being right is below quality_thresh are dropped, and NMS ranks by it. None: SAM's filters.
    quality_model: dict[str, list[float] | list[str]] | None = None
    quality_thresh: float = 0.0

    @model_validator(mode="after")
    def _check_grids(self) -> AmgParams:
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError("AmgParams: set exactly one of points_per_side and point_grids")
        if self.point_grids is not None:
            if len(self.point_grids) != self.crop_n_layers + 1:
                raise ValueError(
                    f"AmgParams: point_grids has {len(self.point_grids)} grids, crop_n_layers + 1 = "
                    f"{self.crop_n_layers + 1} needed"
                )
            for i, grid in enumerate(self.point_grids):
                if not grid or any(not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0) for x, y in grid):
                    raise ValueError(f"AmgParams: point_grids[{i}] must be non-empty and inside [0, 1]")
        return self

    def layer_grids(self) -> list[np.ndarray]:
        """The normalized point grid of each crop layer."""
        if self.point_grids is not None:
            return [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in self.point_grids]
        assert self.points_per_side is not None
        return build_layer_grids(
            self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
        )
