"""Consensus: IoU matching, weighted pixel vote, agreement, flags; and the store-backed run."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sam_engine.data import rle as rle_utils
from sam_engine.workforce.consensus import (
    AnnotatorMask,
    ConsensusConfig,
    consensus_image,
    resolved_masks,
    run_consensus,
)
from sam_engine.workforce.simulated import seeded_rng

H, W = 80, 100


def objects() -> list[np.ndarray]:
    yy, xx = np.mgrid[:H, :W]
    a = ((xx - 30) / 20.0) ** 2 + ((yy - 35) / 16.0) ** 2 <= 1
    b = np.zeros((H, W), bool)
    b[45:75, 60:95] = True
    return [a, b]


def noisy(gt: np.ndarray, width: int, seed: int) -> np.ndarray:
    """GT with seeded errors in a boundary band ``width`` px wide (about a quarter of the band wrong)."""
    ring = ndimage.binary_dilation(gt, iterations=width) & ~ndimage.binary_erosion(gt, iterations=width)
    field = ndimage.gaussian_filter(seeded_rng(seed).normal(size=gt.shape), 2.0)
    return gt ^ (ring & (field > 0.7 * field.std()))


def iou(a, b):
    return rle_utils.mask_iou(a, b, empty=0.0)


def test_three_noisy_annotators_beat_the_worst():
    gt = objects()[0]
    for seed in range(5):
        masks = [noisy(gt, w, 10 * seed + i) for i, w in enumerate((2, 3, 5))]
        items = [AnnotatorMask(i, f"a{i}", m) for i, m in enumerate(masks)]
        (obj,) = consensus_image(items, {"a0": 0.9, "a1": 0.8, "a2": 0.5})
        worst = min(iou(m, gt) for m in masks)
        assert iou(obj.mask, gt) > worst + 0.02
        assert iou(obj.mask, gt) >= np.median([iou(m, gt) for m in masks]) - 0.02
        assert obj.support == 3 and sorted(obj.annotator_ids) == ["a0", "a1", "a2"]


def test_objects_are_matched_not_mixed():
    a, b = objects()
    items = []
    for k, ann in enumerate(("x", "y", "z")):
        order = [b, a] if k % 2 else [a, b]  # submission order differs per annotator
        items += [AnnotatorMask(f"{ann}{j}", ann, noisy(m, 2, 7 * k + j)) for j, m in enumerate(order)]
    out = consensus_image(items)
    assert len(out) == 2
    assert all(o.support == 3 and not o.flagged for o in out)
    assert [o.mask.sum() for o in out] == sorted((o.mask.sum() for o in out), reverse=True)
    for gt in (a, b):
        best = max(out, key=lambda o: iou(o.mask, gt))
        assert iou(best.mask, gt) > 0.9
        assert sorted(best.member_mask_ids) == sorted(i.mask_id for i in items if iou(i.mask, gt) > 0.5)


def test_low_agreement_object_is_flagged():
    a, b = objects()
    shifted = [np.roll(b, s, axis=1) for s in (0, 6, 12)]  # the same box drawn at three offsets
    items = [AnnotatorMask(f"{n}a", n, noisy(a, 1, i)) for i, n in enumerate("xyz")]
    items += [AnnotatorMask(f"{n}b", n, m) for n, m in zip("xyz", shifted, strict=True)]
    out = {
        o.member_mask_ids[0][1]: o for o in consensus_image(items, config=ConsensusConfig(min_agreement=0.8))
    }
    assert not out["a"].flagged and out["a"].agreement > 0.8
    assert out["b"].flagged and "low_agreement" in out["b"].reason
    assert out["b"].agreement < 0.8 and out["b"].support == 3


def test_singletons_are_kept_and_flagged_only_when_others_worked_the_image():
    a, b = objects()
    items = [
        AnnotatorMask("x0", "x", a),
        AnnotatorMask("x1", "x", b),
        AnnotatorMask("y0", "y", noisy(a, 1, 0)),
    ]
    out = consensus_image(items)
    single = [o for o in out if o.support == 1]
    assert len(single) == 1 and single[0].flagged and single[0].reason == "singleton"
    assert np.array_equal(single[0].mask, b) and single[0].agreement is None
    # One annotator alone: nothing to disagree with, nothing flagged.
    alone = consensus_image([AnnotatorMask("x0", "x", a), AnnotatorMask("x1", "x", b)])
    assert len(alone) == 2 and not any(o.flagged for o in alone)


def test_weights_decide_a_split_vote():
    a = objects()[0]
    grown = ndimage.binary_dilation(a, iterations=3)
    items = [AnnotatorMask(0, "good", a), AnnotatorMask(1, "bad", grown)]
    (obj,) = consensus_image(items, {"good": 0.95, "bad": 0.2}, ConsensusConfig(vote_threshold=0.6))
    assert np.array_equal(obj.mask, a)
    (obj,) = consensus_image(items, {"good": 0.2, "bad": 0.95}, ConsensusConfig(vote_threshold=0.6))
    assert np.array_equal(obj.mask, grown)


def test_config_validation():
    with pytest.raises(ValueError, match="match_iou"):
        ConsensusConfig(match_iou=0.0)
    with pytest.raises(ValueError, match="min_support"):
        ConsensusConfig(min_support=0)


# ------------------------------------------------------------------------------------------ with the store


@pytest.fixture
def store(tmp_path):
    from sam_engine.quality.store import QualityStore

    s = QualityStore(tmp_path / "q.duckdb")
    s.add_images(
        [{"image_id": i, "file_name": f"{i}.png", "width": W, "height": H, "region": "r"} for i in (1, 2)]
    )
    for name in ("x", "y", "z"):
        s.add_annotator(name)
    s.add_annotator("rev", role="reviewer")
    yield s
    s.close()


def _commit(store, image_id, annotator, mask):
    return store.commit_mask(
        task_id=None,
        image_id=image_id,
        annotator_id=annotator,
        stage=1,
        source="human",
        rle=rle_utils.encode(mask),
        predicted_iou=0.9,
        clicks=2,
        seconds=10.0,
    )


def test_run_consensus_commits_flags_and_creates_reviews(store):
    a, b = objects()
    for i, n in enumerate("xyz"):
        _commit(store, 1, n, noisy(a, 2, i))
        _commit(store, 1, n, np.roll(b, 8 * i, axis=1))  # poor agreement on b
    _commit(store, 2, "x", a)  # a single annotator: no consensus for image 2
    report = run_consensus(store, 1, config=ConsensusConfig(min_agreement=0.8))
    assert report.images == 1 and report.objects == 2 and report.flagged == 1
    cons = store.masks(stage=1, status=None)
    cons = cons[cons["source"] == "consensus"]
    assert sorted(cons["status"]) == ["accepted", "pending_review"]
    (review,) = [store.get_task(t) for t in report.review_task_ids]
    assert review["kind"] == "review" and review["annotator_id"] == "rev"
    assert review["mask_id"] == int(cons.loc[cons["status"] == "pending_review", "mask_id"].iloc[0])
    # Idempotent: a second run finds the consensus and does nothing.
    assert run_consensus(store, 1).images == 0
    # Training view: the consensus mask for image 1, the single annotator's mask for image 2.
    resolved = resolved_masks(store, 1)
    assert sorted(resolved.loc[resolved["image_id"] == 1, "source"]) == ["consensus"]
    assert list(resolved.loc[resolved["image_id"] == 2, "source"]) == ["human"]
