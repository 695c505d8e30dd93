"""Crop boxes for multi-layer AMG and the moves between a crop's frame and the image frame.

Boxes are XYXY integers; ``x1``/``y1`` are exclusive for crop boxes. Layer 0 is the whole image; layer ``i``
tiles the image with ``2**i`` x ``2**i`` crops that overlap by ``overlap_ratio * short_side * 2 / 2**i`` pixels.
"""

from __future__ import annotations

import math

import torch


def generate_crop_boxes(
    height: int, width: int, n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY) and their layer index, whole image first; within a layer x varies slowest."""
    boxes: list[list[int]] = [[0, 0, width, height]]
    layers: list[int] = [0]
    short_side = min(height, width)
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + width) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + height) / n))
        xs = [int((crop_w - overlap) * i) for i in range(n)]
        ys = [int((crop_h - overlap) * i) for i in range(n)]
        for x0 in xs:
            for y0 in ys:
                boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
                layers.append(layer)
    return boxes, layers


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """(x, y) points in a crop's frame to the image frame."""
    return points + torch.tensor([crop_box[0], crop_box[1]], dtype=points.dtype, device=points.device)


def uncrop_masks(masks: torch.Tensor, crop_box: list[int], height: int, width: int) -> torch.Tensor:
    """Pad (N, h, w) crop masks with zeros into the (N, height, width) image frame."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == width and y1 == height:
        return masks
    pad = (x0, width - x1, y0, height - y1)
    return torch.nn.functional.pad(masks, pad, value=0)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of XYXY boxes as (x1 - x0) * (y1 - y0)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
