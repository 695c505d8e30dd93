"""Stage 2: routing by predicted IoU, coverage, and the diversity sampler's ordering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sam_engine.data import rle as rle_utils
from sam_engine.stage2 import (
    RoutingConfig,
    SamplerWeights,
    commit_proposals,
    coverage,
    mean_predicted_iou,
    region_deficit,
    route,
    route_proposals,
    sample_images,
    store_coverage,
)

H, W = 40, 60


def box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_route_thresholds_are_inclusive_at_the_top():
    cfg = RoutingConfig(accept_iou=0.9, review_iou=0.7)
    assert [route(v, cfg) for v in (0.95, 0.9, 0.89, 0.7, 0.69, None, float("nan"))] == [
        "accept",
        "accept",
        "review",
        "review",
        "discard",
        "discard",
        "discard",
    ]
    strict = RoutingConfig(accept_iou=0.97, review_iou=0.9)
    assert route(0.95, strict) == "review" and route(0.85, strict) == "discard"
    with pytest.raises(ValueError, match="review_iou"):
        RoutingConfig(accept_iou=0.6, review_iou=0.8)


def test_route_proposals_splits_and_validates():
    props = [{"predicted_iou": v, "k": i} for i, v in enumerate((0.99, 0.8, 0.1, 0.91))]
    routed = route_proposals(props)
    assert [p["k"] for p in routed.accept] == [0, 3]
    assert [p["k"] for p in routed.review] == [1] and [p["k"] for p in routed.discard] == [2]
    assert routed.counts() == {"accept": 2, "review": 1, "discard": 1}
    with pytest.raises(ValueError, match="proposal 1: missing field 'predicted_iou'"):
        route_proposals([{"predicted_iou": 0.9}, {"score": 0.9}])


def test_coverage_and_confidence():
    a, b = box(0, 20, 0, 30), box(10, 30, 0, 30)  # overlapping: union is 30 rows x 30 cols
    assert coverage([rle_utils.encode(a), rle_utils.encode(b)], H, W) == pytest.approx(900 / 2400)
    assert coverage([], H, W) == 0.0
    with pytest.raises(ValueError, match="differs"):
        coverage([rle_utils.encode(a)], H + 1, W)
    assert mean_predicted_iou([{"predicted_iou": 0.5}, {"predicted_iou": 0.7}]) == pytest.approx(0.6)
    assert mean_predicted_iou([]) == 0.0


def test_commit_proposals_in_the_store(tmp_path):
    from sam_engine.quality.store import QualityStore

    with QualityStore(tmp_path / "q.duckdb") as store:
        store.add_images([{"image_id": 3, "file_name": "3.png", "width": W, "height": H, "region": "x"}])
        store.add_annotator("rev", role="reviewer")
        props = [
            {
                "segmentation": rle_utils.encode(box(0, 20, 0, 30)),
                "predicted_iou": 0.95,
                "stability_score": 0.97,
            },
            {
                "segmentation": rle_utils.encode(box(20, 40, 30, 60)),
                "predicted_iou": 0.8,
                "point_coords": [[45.5, 30.25]],  # the grid point that made it (SA-1B's field)
            },
            {"segmentation": rle_utils.encode(box(0, 5, 50, 60)), "predicted_iou": 0.3},
            {"segmentation": rle_utils.encode(np.zeros((H, W), bool)), "predicted_iou": 0.99},  # empty
        ]
        report = commit_proposals(store, 3, props, height=H, width=W)
        assert report.counts == {"accept": 1, "review": 1, "discard": 2}
        assert report.coverage == pytest.approx(600 / 2400)
        masks = store.masks(stage=2, status=None).set_index("mask_id")
        assert sorted(masks["status"]) == ["accepted", "pending_review"] and set(masks["source"]) == {"model"}
        assert masks.loc[report.mask_ids["accept"][0], "stability_score"] == pytest.approx(0.97)
        # the prompt that made a proposal is kept, so a reviewer can start a fix from it
        reviewed = store.get_mask(report.mask_ids["review"][0])
        assert reviewed["prompt"] == {"points": [[45.5, 30.25, 1]], "box": None}
        assert store.get_mask(report.mask_ids["accept"][0])["prompt"] is None
        (task,) = [store.get_task(t) for t in report.review_task_ids]
        assert task["mask_id"] == report.mask_ids["review"][0] and task["annotator_id"] == "rev"
        assert store_coverage(store, {3: (H, W)}, stage=2)[3] == pytest.approx(600 / 2400)
        kept = commit_proposals(
            store, 3, props[2:3], height=H, width=W, keep_discarded=True, create_reviews=False
        )
        assert store.masks(status="rejected")["mask_id"].tolist() == kept.mask_ids["discard"]


def candidates() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [1, 2, 3, 4, 5, 6],
            "region": ["a", "a", "a", "b", "b", "c"],
            "mean_predicted_iou": [0.2, 0.9, 0.5, 0.6, 0.95, 0.8],
            "coverage": [0.9, 0.1, 0.5, 0.2, 0.3, 0.6],
        }
    )


def test_sampler_low_confidence_first_without_region_term():
    order = sample_images(candidates(), weights=SamplerWeights(confidence=1.0, region=0.0))
    assert order == [1, 3, 4, 6, 2, 5]
    cov = sample_images(candidates(), weights=SamplerWeights(confidence=0.0, region=0.0, coverage=1.0))
    assert cov == [2, 4, 5, 3, 6, 1]


def test_sampler_fills_under_covered_regions_first():
    # Region "a" already has plenty of human work; "c" has none.
    order = sample_images(
        candidates(),
        weights=SamplerWeights(confidence=0.0, region=1.0),
        region_counts={"a": 50, "b": 10, "c": 0},
    )
    assert order[0] == 6
    assert order.index(4) < order.index(1) and order.index(5) < order.index(1)


def test_sampler_interleaves_regions_for_diversity():
    df = pd.DataFrame(
        {"image_id": range(9), "region": ["a"] * 6 + ["b"] * 3, "mean_predicted_iou": [0.1] * 6 + [0.6] * 3}
    )
    order = sample_images(df, n=4, weights=SamplerWeights(confidence=1.0, region=1.0))
    regions = ["a" if i < 6 else "b" for i in order]
    assert len(order) == 4 and regions.count("b") >= 1 and regions.count("a") >= 2
    # Without the region term every low-confidence "a" image comes first.
    only_conf = sample_images(df, n=4, weights=SamplerWeights(confidence=1.0, region=0.0))
    assert all(i < 6 for i in only_conf)


def test_sampler_is_seeded_and_validated():
    df = pd.DataFrame({"image_id": range(20), "region": ["a", "b"] * 10, "mean_predicted_iou": [0.5] * 20})
    assert sample_images(df, seed=1) == sample_images(df, seed=1)
    assert sample_images(df, seed=1) != sample_images(df, seed=2)
    assert sorted(sample_images(df, seed=1)) == list(range(20))
    with pytest.raises(ValueError, match="mean_predicted_iou"):
        sample_images(df.drop(columns="mean_predicted_iou"))
    with pytest.raises(ValueError, match="duplicate"):
        sample_images(pd.concat([df, df.iloc[:1]]))


def test_region_deficit():
    d = region_deficit({"a": 3, "b": 1}, {"a": 0.5, "b": 0.5})
    assert d["a"] == 0.0 and d["b"] == pytest.approx(0.5)
    assert region_deficit({}, {"a": 0.5, "b": 0.5}) == {"a": 1.0, "b": 1.0}


def test_stage_masks_people_only_leaves_out_model_proposals(tmp_path):
    """v2's training masks (``people_only``): the stage's accepted masks without the model's proposals; gold
    images are left out either way."""
    from sam_engine.engine.training_data import stage_masks_frame
    from sam_engine.quality.store import QualityStore

    with QualityStore(tmp_path / "q.duckdb") as store:
        store.add_images(
            [{"image_id": i, "file_name": f"{i}.png", "width": W, "height": H, "region": "x"} for i in (3, 4)]
        )
        store.add_annotator("ann", role="annotator")
        commit_proposals(
            store,
            3,
            [{"segmentation": rle_utils.encode(box(0, 20, 0, 30)), "predicted_iou": 0.99}],
            height=H,
            width=W,
        )
        for image_id in (3, 4):
            store.commit_mask(
                task_id=None,
                image_id=image_id,
                annotator_id="ann",
                stage=2,
                source="human",
                rle=rle_utils.encode(box(20, 40, 30, 60)),
                predicted_iou=None,
                clicks=2,
                seconds=5.0,
            )
        every = stage_masks_frame(store, 2, gold_ids={4})
        people = stage_masks_frame(store, 2, gold_ids={4}, people_only=True)
    assert sorted(every["source"]) == ["human", "model"] and set(every["image_id"]) == {3}
    assert people["source"].tolist() == ["human"] and people["image_id"].tolist() == [3]
