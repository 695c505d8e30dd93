"""A store with one mask of each kind the training corpora choose between: people's masks in stages 1 and 2 and
an auto-accepted model proposal in stage 2 (used by the v2 and v3 corpus tests)."""

from __future__ import annotations

import numpy as np


def box(rec, y0: int, y1: int, x0: int, x1: int) -> dict:
    """The RLE of a rectangle on image ``rec``."""
    from sam_engine.data import rle as rle_utils

    m = np.zeros((rec.height, rec.width), bool)
    m[y0:y1, x0:x1] = True
    return rle_utils.encode(m)


def people_and_proposal(ws, a, b) -> None:
    """A people's mask on ``a`` (stage 1) and on ``b`` (stage 2), and v1's accepted proposal on ``b``."""
    from sam_engine.stage2 import commit_proposals

    with ws.open_store() as store:
        store.add_images(
            [
                {"image_id": r.image_id, "file_name": r.file_name, "width": r.width, "height": r.height}
                for r in (a, b)
            ]
        )
        store.add_annotator("ann", role="annotator")
        for stage, rec in ((1, a), (2, b)):
            store.commit_mask(
                task_id=None,
                image_id=rec.image_id,
                annotator_id="ann",
                stage=stage,
                source="human",
                rle=box(rec, 0, 10, 0, 10),
                predicted_iou=None,
                clicks=2,
                seconds=5.0,
            )
        proposal = {"segmentation": box(b, 20, 30, 20, 30), "predicted_iou": 0.99}
        commit_proposals(store, b.image_id, [proposal], height=b.height, width=b.width)
