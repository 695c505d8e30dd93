"""The IoU ceiling a mask grid puts on any model: ideal low-res logits, upsampled as the predictor does.

For each object of a corpus, the ground truth is resized into the model frame (longest side ``img_size``),
area-pooled to the low-res grid (``img_size / factor`` cells a side), turned into logits (the ideal soft
prediction), upsampled back exactly as ``Sam.postprocess_masks`` does and binarised at 0. The mean IoU and
the share of objects above 0.9 are what a perfect model with that grid would reach::

    SAM_ENGINE_DATA_DIR=data .venv/bin/python tools/mask_grid_ceiling.py [--objects 150] [--img-size 256]

Factor 4 is SAM's grid (64x64 at 256 px); factor 2 the hybrid model's 8x masks (128x128).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from sam_engine.config import load_config
from sam_engine.data.corpora import load_gold, load_public
from sam_engine.evaluation.interactive import corpus_objects


def ceiling(gt: np.ndarray, img_size: int, factor: int) -> float:
    """IoU of ``gt`` with its ideal prediction on a grid ``factor`` times coarser than the model frame."""
    h, w = gt.shape
    scale = img_size / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    g = torch.from_numpy(gt.astype(np.float32))[None, None]
    g = F.pad(
        F.interpolate(g, (nh, nw), mode="bilinear", align_corners=False), (0, img_size - nw, 0, img_size - nh)
    )
    low = F.avg_pool2d(g, factor).clamp(1e-4, 1 - 1e-4)
    logits = torch.log(low / (1 - low))
    up = F.interpolate(logits, (img_size, img_size), mode="bilinear", align_corners=False)[..., :nh, :nw]
    pred = (F.interpolate(up, (h, w), mode="bilinear", align_corners=False)[0, 0] > 0).numpy()
    truth = gt.astype(bool)
    return float((pred & truth).sum() / max(1, (pred | truth).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=150)
    parser.add_argument("--img-size", type=int, default=256)
    args = parser.parse_args()
    cfg = load_config()
    for name, corpus in (("public val", load_public(cfg, "val")), ("gold", load_gold(cfg))):
        objects = corpus_objects(corpus, args.objects, seed=0, min_area=16)
        for factor in (4, 2):
            ious = np.array([ceiling(o.gt(), args.img_size, factor) for o in objects])
            grid = args.img_size // factor
            print(
                f"{name:10s} grid {grid}x{grid}: mean IoU {ious.mean():.3f}, "
                f"share > 0.9 {np.mean(ious > 0.9):.3f} ({len(ious)} objects)"
            )


if __name__ == "__main__":
    main()
