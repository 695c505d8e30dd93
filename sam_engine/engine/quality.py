"""Quality tables over the store and the shards: by stage, region coverage, drift of shard score distributions."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ..quality.store import QualityStore


STAGE_COLUMNS = [
    "stage",
    "images",
    "masks",
    "masks_per_image",
    "human_masks",
    "clicks_per_mask",
    "seconds_per_mask",
    "manual_fix_share",
    "auto_accept_share",
    "auto_accept_precision",
    "review_accept_share",
]


def quality_by_stage(
    store: QualityStore,
    shards: list[dict] | None = None,
    gold_ids: set[int] | frozenset = frozenset(),
    ground_truth: dict[int, list[dict]] | None = None,
) -> pd.DataFrame:
    """Per stage: images, accepted masks, masks per image, human clicks and modelled seconds per human mask,
    share of masks accepted automatically (stage-2 model masks no reviewer saw; stage 3 is all automatic) and
    share of model masks a reviewer accepted. With the pool's hidden ``ground_truth`` (a simulated pool), the
    ``auto_accept_precision`` of stages 1-2: the share of the automatically accepted masks at IoU > 0.9 with
    some ground-truth mask of their image (whole, part or subpart); stage 3's is :func:`stage3_audit`'s."""
    masks = store.masks(status="accepted")
    reviews = store.reviews()
    reviewed = set(reviews["mask_id"].astype(int)) if len(reviews) else set()
    rows = []
    for stage in (1, 2):
        m = masks[(masks["stage"] == stage) & ~masks["image_id"].isin(gold_ids)] if len(masks) else masks
        if len(m):
            # resolved view: consensus masks replace the per-annotator masks on overlap images
            cons_images = set(m.loc[m["source"] == "consensus", "image_id"])
            final = m[~(m["image_id"].isin(cons_images) & (m["source"] == "human"))]
        else:
            final = m
        human = m[m["source"] == "human"] if len(m) else m
        model = final[final["source"] == "model"] if len(final) else final
        # accepted with no person in the loop: a model mask a reviewer accepted is reviewed, not automatic
        auto = model[~model["mask_id"].astype(int).isin(reviewed)] if len(model) else model
        rows.append(
            {
                "stage": stage,
                "images": int(final["image_id"].nunique()) if len(final) else 0,
                "masks": int(len(final)),
                "masks_per_image": float(len(final) / max(1, final["image_id"].nunique()))
                if len(final)
                else 0.0,
                "human_masks": int(len(human)),
                "clicks_per_mask": float(human["clicks"].mean()) if len(human) else float("nan"),
                "seconds_per_mask": float(human["seconds"].mean()) if len(human) else float("nan"),
                "manual_fix_share": float(human["manual_fix"].mean()) if len(human) else float("nan"),
                "auto_accept_share": float(len(auto) / len(final)) if len(final) else 0.0,
                "auto_accept_precision": _share_matched(auto, ground_truth),
                "review_accept_share": float((len(model) - len(auto)) / len(final)) if len(final) else 0.0,
            }
        )
    if shards:
        n_img = sum(s["images"] for s in shards)
        n_masks = sum(s["masks"] for s in shards)
        rows.append(
            {
                "stage": 3,
                "images": n_img,
                "masks": n_masks,
                "masks_per_image": n_masks / max(1, n_img),
                "human_masks": 0,
                # no people in stage 3: no clicks, seconds or fixes to report, and a share of nothing is none
                "clicks_per_mask": float("nan"),
                "seconds_per_mask": float("nan"),
                "manual_fix_share": float("nan"),
                "auto_accept_share": 1.0 if n_masks else float("nan"),
                "auto_accept_precision": float("nan"),  # every mask of every image: stage3_audit
                "review_accept_share": 0.0 if n_masks else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=STAGE_COLUMNS)


def _share_matched(masks: pd.DataFrame, ground_truth: dict[int, list[dict]] | None) -> float:
    """Share of ``masks`` (store rows) at IoU > 0.9 with some ground-truth mask of their image; NaN without
    ground truth or masks."""
    if ground_truth is None or not len(masks):
        return float("nan")
    good = sum(
        _matched(list(rows["rle"]), [g["segmentation"] for g in ground_truth.get(int(image_id), [])])
        for image_id, rows in masks.groupby("image_id")
    )
    return good / len(masks)


def _matched(rles: list[dict], gt_rles: list[dict], iou: float = 0.9) -> int:
    """How many of one image's masks have IoU above ``iou`` with some of its ground-truth masks."""
    from ..data import rle as rle_utils

    if not rles or not gt_rles:
        return 0
    return int((np.asarray(rle_utils.iou_matrix(rles, gt_rles)).max(axis=1) > iou).sum())


def region_coverage(
    pool_regions: dict[int, str | None],
    store: QualityStore,
    shards: list[dict] | None = None,
    shard_image_ids: list[int] | None = None,
) -> pd.DataFrame:
    """Per region: pool images, images with at least one accepted mask (any stage; ``shard_image_ids`` are
    the stage-3 images that carry a kept mask), and the covered share."""
    masks = store.masks(status="accepted")
    covered = set(masks["image_id"].astype(int)) if len(masks) else set()
    covered |= set(shard_image_ids or [])
    counts: dict[str, list[int]] = {}
    for image_id, region in pool_regions.items():
        c = counts.setdefault(region or "none", [0, 0])
        c[0] += 1
        c[1] += int(image_id in covered)
    rows = [
        {"region": r, "pool_images": n, "covered_images": k, "coverage": k / n if n else 0.0}
        for r, (n, k) in sorted(counts.items())
    ]
    return pd.DataFrame(rows, columns=["region", "pool_images", "covered_images", "coverage"])


def shard_score_distribution(shard_path: str | Path) -> pd.DataFrame:
    """predicted_iou and stability_score of every mask in a shard."""
    rows = []
    with tarfile.open(shard_path) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".json"):
                doc = json.load(tar.extractfile(member))
                for a in doc["annotations"]:
                    rows.append(
                        {
                            "predicted_iou": a["predicted_iou"],
                            "stability_score": a["stability_score"],
                            "area_fraction": a["area"] / (doc["image"]["width"] * doc["image"]["height"]),
                        }
                    )
    return pd.DataFrame(rows, columns=["predicted_iou", "stability_score", "area_fraction"])


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (0 = same distribution, 1 = disjoint)."""
    if len(a) == 0 or len(b) == 0:
        return 1.0 if len(a) != len(b) else 0.0
    from scipy.stats import ks_2samp

    return float(ks_2samp(a, b).statistic)


def drift(
    baseline: pd.DataFrame,
    current: pd.DataFrame,
    qa_baseline: float | None = None,
    qa_current: float | None = None,
    max_ks: float = 0.25,
    max_qa_drop: float = 0.1,
) -> dict:
    """Compare a shard's score distributions (and QA share) with the baseline; ``drifted`` when over limits."""
    out = {
        f"ks_{c}": ks_distance(baseline[c].to_numpy(), current[c].to_numpy())
        for c in ("predicted_iou", "stability_score", "area_fraction")
    }
    reasons = [k for k, v in out.items() if v > max_ks]
    if qa_baseline is not None and qa_current is not None:
        out["qa_drop"] = qa_baseline - qa_current
        if out["qa_drop"] > max_qa_drop:
            reasons.append("qa_drop")
    out["drifted"] = bool(reasons)
    out["reasons"] = reasons
    return out


STAGE3_AUDIT_COLUMNS = [
    "shard",
    "images",
    "masks",
    "masks_per_image",
    "share_iou>0.9",
    "qa_reviewed",
    "qa_share_good",
    "qa_ci_low",
    "qa_ci_high",
]


def stage3_audit(
    shards: list[dict], masks_by_image: dict[int, list[dict]], ground_truth: dict[int, list[dict]]
) -> pd.DataFrame:
    """Every stage-3 mask against the pool's hidden ground truth, per shard and overall (last row ``all``):
    masks per image and the share of masks at IoU > 0.9 with some ground-truth mask (whole, part or
    subpart), beside the shard's QA sample estimate and its interval (the overall row pools the samples)."""
    rows = []
    total = {"images": 0, "masks": 0, "good": 0, "qa_reviewed": 0, "qa_good": 0}
    for shard in shards:
        ids = [int(i) for i in shard.get("image_ids", [])]
        good = n = 0
        for image_id in ids:
            masks = masks_by_image.get(image_id, [])
            n += len(masks)
            good += _matched(
                [m["segmentation"] for m in masks],
                [g["segmentation"] for g in ground_truth.get(image_id, [])],
            )
        qa = shard.get("qa", {})
        reviewed, qa_good = int(qa.get("reviewed", 0)), int(qa.get("good", 0))
        rows.append(_audit_row(Path(shard.get("path", "")).name, len(ids), n, good, reviewed, qa_good))
        for k, v in zip(total, (len(ids), n, good, reviewed, qa_good), strict=True):
            total[k] += v
    rows.append(
        _audit_row(
            "all", total["images"], total["masks"], total["good"], total["qa_reviewed"], total["qa_good"]
        )
    )
    return pd.DataFrame(rows, columns=STAGE3_AUDIT_COLUMNS)


def _audit_row(name: str, images: int, masks: int, good: int, reviewed: int, qa_good: int) -> dict:
    from ..qa import wilson_interval

    low, high = wilson_interval(qa_good, reviewed) if reviewed else (float("nan"), float("nan"))
    return {
        "shard": name,
        "images": images,
        "masks": masks,
        "masks_per_image": masks / max(1, images),
        "share_iou>0.9": good / masks if masks else float("nan"),
        "qa_reviewed": reviewed,
        "qa_share_good": qa_good / reviewed if reviewed else float("nan"),
        "qa_ci_low": low,
        "qa_ci_high": high,
    }
