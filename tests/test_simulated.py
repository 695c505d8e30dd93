"""Simulated annotators: click protocol through the real session API, habits, manual fixes, store commits.

The model behind the session is a fake predictor that knows the GT: it returns the GT object under the first
positive click with a seeded error band along its boundary (``band`` px wide); every click repairs the errors
within ``fix_radius`` px of it. A "good" predictor has a thin band and large repairs, a "bad" one the reverse.
"""

from __future__ import annotations

import numpy as np
import pytest
from annotation_fixtures import pending_proposal
from scipy import ndimage

from sam_engine.annotation.session import SegmentationService
from sam_engine.data import rle as rle_utils
from sam_engine.evaluation.clicks import padded_distance
from sam_engine.workforce.simulated import (
    AnnotatorProfile,
    ClickWorker,
    ReviewPolicy,
    SimulatedAnnotator,
    SimulatedReviewer,
    covered_by,
    polygon_fix,
    seeded_rng,
)
from sam_engine.workforce.timing import DEFAULT_TIME_MODEL, TimeModel

H, W = 96, 128


def scene() -> list[np.ndarray]:
    """Five objects: a large ellipse, two touching rectangles, a medium disc, a tiny square."""
    yy, xx = np.mgrid[:H, :W]
    ellipse = ((xx - 35) / 28.0) ** 2 + ((yy - 40) / 24.0) ** 2 <= 1.0
    rect_a = np.zeros((H, W), bool)
    rect_a[10:40, 75:95] = True
    rect_b = np.zeros((H, W), bool)
    rect_b[10:40, 95:120] = True  # touches rect_a along x = 94/95
    disc = (xx - 95) ** 2 + (yy - 70) ** 2 <= 13**2
    tiny = np.zeros((H, W), bool)
    tiny[80:84, 20:24] = True
    return [ellipse, rect_a, rect_b, disc, tiny]


class FakePredictor:
    """GT-aware stand-in for SamPredictor (same set_image / predict interface)."""

    refines = False

    def __init__(self, gt_by_image: dict[int, list[np.ndarray]], band: int, fix_radius: float, seed: int = 0):
        self.gt_by_image = gt_by_image
        self.band = band
        self.fix_radius = fix_radius
        self.seed = seed
        self.key: int | None = None
        self.calls = 0

    def set_image(self, image: np.ndarray, image_key: int | None = None) -> None:
        self.key = image_key

    def _error(self, obj: np.ndarray, j: int) -> np.ndarray:
        if self.band <= 0:
            return np.zeros_like(obj)
        ring = ndimage.binary_dilation(obj, iterations=self.band) & ~ndimage.binary_erosion(
            obj, iterations=self.band
        )
        field = ndimage.gaussian_filter(seeded_rng(self.seed, self.key, j).normal(size=obj.shape), 3.0)
        return ring & (field > 0)

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        self.calls += 1
        gt = self.gt_by_image[self.key]
        empty = np.zeros((H, W), bool)
        pos = [(int(x), int(y)) for (x, y), lab in zip(point_coords, point_labels, strict=True) if lab == 1]
        owners = [j for j, g in enumerate(gt) if pos and g[pos[0][1], pos[0][0]]]
        owners.sort(key=lambda j: gt[j].sum())
        masks = []
        for j in (owners + owners[-1:] * 3)[:3] if owners else []:
            err = self._error(gt[j], j)
            yy, xx = np.mgrid[:H, :W]
            for x, y in point_coords:
                err &= (xx - x) ** 2 + (yy - y) ** 2 > self.fix_radius**2
            masks.append(gt[j] ^ err)
        while len(masks) < 3:
            masks.append(empty)
        masks = np.stack(masks)
        scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
        return masks, scores, np.zeros((3, 64, 64), np.float32)


class EmptyPredictor(FakePredictor):
    """A model that never finds anything (every object needs a manual fix)."""

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        return (
            np.zeros((3, H, W), bool),
            np.array([0.1, 0.1, 0.1], np.float32),
            np.zeros((3, 64, 64), np.float32),
        )


def service(predictor) -> SegmentationService:
    return SegmentationService(predictor, lambda image_id: np.zeros((H, W, 3), np.uint8))


GOOD = {"band": 1, "fix_radius": 10.0}
BAD = {"band": 4, "fix_radius": 3.0}
CLEAN = AnnotatorProfile(name="clean", click_noise_px=0.0, time_jitter=0.0, iou_target=0.9, click_cap=10)


def run(profile: AnnotatorProfile, predictor_kwargs: dict, seed: int = 0, **kwargs):
    gt = scene()
    svc = service(FakePredictor({1: gt}, **predictor_kwargs))
    session = svc.open_session(1)
    work = ClickWorker(profile).annotate_image(session, gt, seeded_rng(seed, "a", 1), **kwargs)
    return gt, work


def test_good_predictor_reaches_target_with_model_masks():
    gt, work = run(CLEAN, GOOD)
    assert len(work.masks) == len(gt)
    big = [m for m in work.masks if gt[m.gt_indices[0]].sum() >= 200]
    assert big and all(m.iou >= 0.9 and not m.manual_fix for m in big)
    # The submitted mask is the model's, not a copy of the GT.
    assert any(not np.array_equal(m.mask, gt[m.gt_indices[0]]) for m in big)
    for m in big:
        assert rle_utils.mask_iou(m.mask, gt[m.gt_indices[0]], empty=0.0) >= 0.9


def test_clicks_fall_when_the_predictor_improves():
    _, good = run(CLEAN, GOOD)
    _, bad = run(CLEAN, BAD)
    good_cpm = good.clicks / len(good.masks)
    bad_cpm = bad.clicks / len(bad.masks)
    assert bad_cpm > good_cpm + 1.0
    assert sum(m.manual_fix for m in bad.masks) > sum(m.manual_fix for m in good.masks)
    assert bad.seconds > good.seconds


def test_first_click_follows_the_protocol():
    gt = scene()
    pred = FakePredictor({1: gt}, **GOOD)
    session = service(pred).open_session(1)
    seen = []
    original = session.add_point

    def spy(x, y, positive):
        seen.append((x, y, positive))
        return original(x, y, positive)

    session.add_point = spy
    ClickWorker(CLEAN).segment_object(session, gt[0], seeded_rng(0))
    x, y, positive = seen[0]
    dt = padded_distance(gt[0])
    assert positive and dt[int(y), int(x)] == dt.max()


def test_manual_fix_when_the_model_cannot_reach_the_target():
    gt = scene()
    session = service(EmptyPredictor({1: gt}, 0, 0)).open_session(1)
    profile = AnnotatorProfile(click_noise_px=0.0, click_cap=6, patience=2, fix_tolerance_px=1.0)
    sub = ClickWorker(profile).segment_object(session, gt[0], seeded_rng(0))
    assert sub.manual_fix
    assert sub.clicks == 3  # first click, then `patience` clicks without improvement
    assert 0.85 <= sub.iou < 1.0  # polygon-simplified GT, not the GT itself
    secs = DEFAULT_TIME_MODEL.mask_seconds(sub.clicks, True, profile.speed)
    assert sub.seconds == pytest.approx(secs, rel=0.5)  # jitter around the documented model


def test_habits_skip_small_miss_and_merge():
    gt, skipper = run(AnnotatorProfile(click_noise_px=0.0, skip_area_below=100), GOOD)
    assert 4 in skipper.skipped and all(4 not in m.gt_indices for m in skipper.masks)

    _, misser = run(AnnotatorProfile(click_noise_px=0.0, miss_prob=1.0), GOOD)
    assert misser.masks == [] and misser.skipped == list(range(len(gt)))

    _, merger = run(AnnotatorProfile(click_noise_px=0.0, merge_touching_prob=1.0), GOOD)
    merged = [m for m in merger.masks if len(m.gt_indices) == 2]
    assert [sorted(m.gt_indices) for m in merged] == [[1, 2]]
    assert len(merger.masks) == len(gt) - 1


def test_largest_first_and_time_budget():
    gt, work = run(CLEAN, GOOD)
    areas = [gt[m.gt_indices[0]].sum() for m in work.masks]
    assert areas == sorted(areas, reverse=True)
    first_mask_s = work.masks[0].seconds
    _, short = run(CLEAN, GOOD, budget_s=DEFAULT_TIME_MODEL.image_overhead_s + first_mask_s + 0.01)
    assert 1 <= len(short.masks) < len(gt)
    assert short.masks[0].gt_indices == work.masks[0].gt_indices
    assert set(short.skipped) | {i for m in short.masks for i in m.gt_indices} == set(range(len(gt)))


def test_complete_annotates_only_uncovered_objects():
    gt = scene()
    covered = covered_by(
        gt, [gt[0], gt[3] & (np.arange(W)[None, :] >= 100)]
    )  # object 3 barely covered: IoU < 0.5
    assert covered == [0]
    _, work = run(CLEAN, GOOD, covered=covered)
    assert sorted(i for m in work.masks for i in m.gt_indices) == [1, 2, 3, 4]


def test_same_seed_same_work_and_noise_matters():
    noisy = AnnotatorProfile(click_noise_px=2.5)
    _, a = run(noisy, BAD, seed=3)
    _, b = run(noisy, BAD, seed=3)
    _, c = run(noisy, BAD, seed=4)
    assert [m.clicks for m in a.masks] == [m.clicks for m in b.masks]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.masks, b.masks, strict=True))
    assert [m.seconds for m in a.masks] == [m.seconds for m in b.masks]
    assert [m.seconds for m in a.masks] != [m.seconds for m in c.masks]


def test_polygon_fix_keeps_holes_and_shape():
    yy, xx = np.mgrid[:H, :W]
    ring = ((xx - 60) ** 2 + (yy - 48) ** 2 <= 30**2) & ((xx - 60) ** 2 + (yy - 48) ** 2 > 12**2)
    fixed = polygon_fix(ring, 1.5)
    assert not fixed[48, 60]  # the hole survives
    assert 0.85 < rle_utils.mask_iou(fixed, ring, empty=0.0) < 1.0
    assert np.array_equal(polygon_fix(ring, 0.0), ring)


def test_time_model_is_monotone_and_validated():
    tm = TimeModel()
    assert tm.mask_seconds(5) > tm.mask_seconds(2)
    assert tm.mask_seconds(2, manual_fix=True) - tm.mask_seconds(2) == pytest.approx(tm.manual_fix_s)
    assert tm.mask_seconds(3, speed=2.0) == pytest.approx(2 * tm.mask_seconds(3))
    with pytest.raises(ValueError, match="per_click_s"):
        TimeModel(per_click_s=-1)
    with pytest.raises(ValueError, match="iou_target"):
        AnnotatorProfile(iou_target=1.5)


# ------------------------------------------------------------------------------------------ with the store


@pytest.fixture
def store(tmp_path):
    from sam_engine.quality.store import QualityStore

    s = QualityStore(tmp_path / "q.duckdb")
    s.add_images(
        [{"image_id": i, "file_name": f"{i}.png", "width": W, "height": H, "region": "r0"} for i in (1, 2)]
    )
    s.add_annotator("ann", expertise=["r0"])
    s.add_annotator("rev", role="reviewer")
    yield s
    s.close()


def _gt_rles() -> list[dict]:
    return [{"id": 100 + j, "segmentation": rle_utils.encode(g)} for j, g in enumerate(scene())]


def test_annotator_commits_through_the_store_and_honeypots_are_scored(store):
    from sam_engine.workforce.gold import GoldStandard

    gt = {1: _gt_rles(), 2: _gt_rles()}
    gold = GoldStandard({2: gt[2]})
    svc = service(FakePredictor({1: scene(), 2: scene()}, **GOOD))
    annotator = SimulatedAnnotator("ann", CLEAN, svc, store, gt, seed=1, gold=gold)
    t_work, t_honey = store.create_tasks(
        [
            {"image_id": 1, "stage": 1, "kind": "annotate", "annotator_id": "ann", "priority": 2},
            {"image_id": 2, "stage": 1, "kind": "honeypot", "annotator_id": "ann", "priority": 1},
        ]
    )
    results = annotator.work_queue()
    assert [r.image_id for r in results] == [1, 2]
    masks = store.masks(stage=1)
    assert set(masks["source"]) == {"human"} and set(masks["annotator_id"]) == {"ann"}
    assert len(masks[masks["task_id"] == t_work]) == len(results[0].masks)
    assert (masks["clicks"] >= 1).all() and (masks["seconds"] > 0).all()
    assert store.get_task(t_work)["status"] == "done" and store.get_task(t_honey)["status"] == "done"
    # Honeypot: every mask scored at once, feedback says how good it was.
    scores = store.gold_scores()
    assert len(scores) == len(results[1].masks) == len(results[1].feedback)
    assert all(f.iou >= 0.9 and f.passed for f in results[1].feedback if f.gold_ann_id in (100, 101, 102))
    assert not results[0].feedback


def test_complete_task_skips_what_accepted_masks_cover(store):
    gt = {1: _gt_rles()}
    store.commit_mask(
        task_id=None,
        image_id=1,
        annotator_id=None,
        stage=2,
        source="model",
        rle=rle_utils.encode(scene()[0]),
        predicted_iou=0.95,
        clicks=0,
        seconds=0.0,
    )
    (task,) = store.create_tasks([{"image_id": 1, "stage": 2, "kind": "complete", "annotator_id": "ann"}])
    svc = service(FakePredictor({1: scene()}, **GOOD))
    work = SimulatedAnnotator("ann", CLEAN, svc, store, gt).work(store.get_task(task))
    assert work.covered == [0]
    assert 0 not in {i for m in work.masks for i in m.gt_indices}
    assert len(store.masks(stage=2, image_id=1)) == 1 + len(work.masks)


def test_reviewer_accepts_fixes_and_rejects(store):
    gt = scene()
    good, medium, bad = gt[0], gt[3] & (np.arange(W)[None, :] < 100), np.roll(gt[4], 40, axis=1)
    ids = [pending_proposal(store, 1, m) for m in (good, medium, bad)]
    tasks = store.create_tasks(
        [{"image_id": 1, "stage": 2, "kind": "review", "annotator_id": "rev", "mask_id": i} for i in ids]
    )
    reviewer = SimulatedReviewer("rev", store, {1: _gt_rles()}, ReviewPolicy(accept_iou=0.85, fix_iou=0.5))
    out = reviewer.work_queue()
    assert [r["status"] for r in out] == ["accepted", "superseded", "rejected"]
    fixed = store.get_mask(out[1]["fixed_mask_id"])
    assert rle_utils.mask_iou(rle_utils.decode(fixed["rle"]), gt[3], empty=0.0) > 0.85
    assert all(store.get_task(t)["status"] == "done" for t in tasks)


def _review_one(store, mask: np.ndarray, prompt: dict | None, predictor, policy: ReviewPolicy) -> dict:
    """Commit one stage-2 proposal for review, let a reviewer with a click session work it; the fixed mask."""
    mask_id = pending_proposal(store, 1, mask, prompt)
    store.create_tasks(
        [{"image_id": 1, "stage": 2, "kind": "review", "annotator_id": "rev", "mask_id": mask_id}]
    )
    reviewer = SimulatedReviewer("rev", store, {1: _gt_rles()}, policy, service=service(predictor))
    (out,) = reviewer.work_queue()
    assert out["status"] == "superseded"
    return store.get_mask(out["fixed_mask_id"])


class SecondClickRepairs(FakePredictor):
    """The object under the first point with its boundary errors; exact once a second point is given."""

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        self.fix_radius = 0.0 if len(point_coords) == 1 else float(H + W)
        return super().predict(point_coords, point_labels, box, mask_input, multimask_output)


DISC_PROMPT = {"points": [[95.0, 70.0, 1]], "box": None}  # the point that made a proposal on the disc


def test_reviewer_fixes_from_the_stored_prompt_without_clicks_when_an_output_fits(store):
    gt = scene()
    medium = gt[3] & (np.arange(W)[None, :] < 100)  # the disc, cut off: IoU about 0.7
    exact = FakePredictor({1: gt}, band=0, fix_radius=0.0)  # returns the object under the point
    fixed = _review_one(store, medium, DISC_PROMPT, exact, ReviewPolicy())
    assert not fixed["manual_fix"] and fixed["clicks"] == 0
    assert (
        rle_utils.mask_iou(rle_utils.decode(fixed["rle"]), gt[3], empty=0.0) == 1.0
    )  # the model's mask, not a polygon
    assert fixed["prompt"]["points"] == DISC_PROMPT["points"]
    t = DEFAULT_TIME_MODEL
    assert fixed["seconds"] == pytest.approx(t.review_seconds(1.0))  # no click and no tracing by hand


def test_reviewer_fix_adds_corrective_clicks_then_traces_by_hand(store):
    gt = scene()
    medium = gt[3] & (np.arange(W)[None, :] < 100)
    # a model whose boundary errors one click repairs: the stored prompt falls short, one click reaches 0.9
    rough = SecondClickRepairs({1: gt}, band=3, fix_radius=0.0)
    rough.set_image(np.zeros((H, W, 3), np.uint8), image_key=1)
    first = rough.predict(np.array([[95.0, 70.0]]), np.array([1]))[0][0]
    assert (
        rle_utils.mask_iou(first, gt[3], empty=0.0) < 0.9
    )  # the premise: the stored prompt alone does not fit
    fixed = _review_one(store, medium, DISC_PROMPT, rough, ReviewPolicy(fix_clicks=1))
    assert not fixed["manual_fix"] and fixed["clicks"] == 1
    assert rle_utils.mask_iou(rle_utils.decode(fixed["rle"]), gt[3], empty=0.0) >= 0.9
    assert len(fixed["prompt"]["points"]) == 2  # the stored point and the reviewer's click
    # with no click of its own allowed, the same fix is traced by hand: manual, the GT outline as a polygon
    fixed = _review_one(store, medium, DISC_PROMPT, rough, ReviewPolicy(fix_clicks=0))
    assert fixed["manual_fix"] and fixed["clicks"] == 0 and fixed["prompt"] is None
    polygon = polygon_fix(gt[3], ReviewPolicy().fix_tolerance_px)
    assert np.array_equal(rle_utils.decode(fixed["rle"]), polygon)


def test_reviewer_fix_that_the_model_cannot_make_counts_its_clicks_and_the_tracing(store):
    gt = scene()
    medium = gt[3] & (np.arange(W)[None, :] < 100)
    fixed = _review_one(
        store, medium, DISC_PROMPT, EmptyPredictor({1: gt}, 0, 0.0), ReviewPolicy(fix_clicks=2)
    )
    assert fixed["manual_fix"] and fixed["clicks"] == 2
    t = DEFAULT_TIME_MODEL
    assert fixed["seconds"] == pytest.approx(t.review_seconds(1.0) + 2 * t.per_click_s + t.manual_fix_s)
    # without a stored prompt the corrective clicks start from scratch: the first click is the reviewer's
    exact = FakePredictor({1: gt}, band=0, fix_radius=0.0)
    fixed = _review_one(store, medium, None, exact, ReviewPolicy(fix_clicks=1))
    assert not fixed["manual_fix"] and fixed["clicks"] == 1


def test_stage2_reviews_before_completion_so_people_do_not_redraw_a_fixed_object(store, monkeypatch):
    from sam_engine.engine import human_stage

    gt = scene()
    medium = gt[3] & (np.arange(W)[None, :] < 100)
    exact = FakePredictor({1: gt}, band=0, fix_radius=0.0)
    _review_one(store, medium, DISC_PROMPT, exact, ReviewPolicy())  # the disc's proposal, fixed
    (task,) = store.create_tasks([{"image_id": 1, "stage": 2, "kind": "complete", "annotator_id": "ann"}])
    work = SimulatedAnnotator("ann", CLEAN, service(exact), store, {1: _gt_rles()}).work(store.get_task(task))
    assert 3 in work.covered and 3 not in {i for m in work.masks for i in m.gt_indices}
    # the engine's stage 2 runs the reviews first
    calls: list[str] = []
    monkeypatch.setattr(human_stage, "review_stage", lambda *a, **k: calls.append("review") or 7)
    monkeypatch.setattr(
        human_stage, "simulate_stage", lambda *a, **k: calls.append("complete") or {"tasks_worked": 2}
    )
    assert human_stage.work_stage2(None, store, None) == {"tasks_worked": 2, "review_verdicts": 7}
    assert calls == ["review", "complete"]


def test_review_policy_rejects_bad_fix_settings():
    with pytest.raises(ValueError, match="fix_clicks"):
        ReviewPolicy(fix_clicks=-1)
    with pytest.raises(ValueError, match="fix_target_iou"):
        ReviewPolicy(fix_target_iou=0.0)


@pytest.mark.slow
def test_workflow_end_to_end(tmp_path):
    """Queue with overlap and honeypots -> simulated annotators -> gold -> consensus -> review -> stats."""
    from sam_engine.quality.store import QualityStore
    from sam_engine.workforce.consensus import ConsensusConfig, run_consensus
    from sam_engine.workforce.gold import GoldStandard, annotator_weights
    from sam_engine.workforce.queue import QueueConfig, create_stage_tasks
    from sam_engine.workforce.stats import annotator_stats

    pool, gold_ids = list(range(1, 9)), [101, 102, 103]
    gt_masks = {i: scene() for i in pool + gold_ids}
    gt = {i: _gt_rles() for i in pool + gold_ids}
    with QualityStore(tmp_path / "q.duckdb") as store:
        store.add_images(
            [
                {"image_id": i, "file_name": f"{i}.png", "width": W, "height": H, "region": f"r{i % 2}"}
                for i in pool
            ]
            + [
                {"image_id": i, "file_name": f"{i}.png", "width": W, "height": H, "source": "gold"}
                for i in gold_ids
            ]
        )
        profiles = {
            "ann_a": CLEAN,
            "ann_b": AnnotatorProfile(name="b", click_noise_px=1.0),
            "ann_c": AnnotatorProfile(
                name="c",
                click_noise_px=3.0,
                iou_target=0.8,
                click_cap=3,
                fix_tolerance_px=3.0,
                merge_touching_prob=1.0,
            ),
        }
        for name in profiles:
            store.add_annotator(name, expertise=["r0"] if name == "ann_a" else ["r1"])
        store.add_annotator("rev", role="reviewer")
        cfg = QueueConfig(overlap_fraction=0.5, overlap_k=3, honeypot_rate=0.15, seed=0)
        create_stage_tasks(store, 1, pool, gold_images=gold_ids, config=cfg, batch="b1")
        svc = service(FakePredictor(gt_masks, **GOOD))
        gold = GoldStandard({i: gt[i] for i in gold_ids})
        for name, profile in profiles.items():
            SimulatedAnnotator(name, profile, svc, store, gt, seed=0, gold=gold).work_queue()
        assert set(store.tasks()["status"]) == {"done"}
        weights = annotator_weights(store.gold_scores())
        assert set(weights) <= set(profiles) and weights
        report = run_consensus(store, 1, config=ConsensusConfig(min_agreement=0.9))
        assert report.images == 4  # half of the pool went to all three annotators (honeypots are not merged)
        assert report.flagged > 0  # ann_c merges the touching boxes: a singleton the others do not share
        assert len(store.masks(stage=1, status="pending_review")) == report.flagged
        SimulatedReviewer("rev", store, gt).work_queue()
        assert len(store.masks(stage=1, status="pending_review")) == 0
        stats = annotator_stats(store).set_index("annotator_id")
    assert set(profiles) <= set(stats.index)
    assert stats.loc["ann_c", "clicks_per_mask"] <= 3.0 < stats.loc["ann_a", "clicks_per_mask"] + 3.0
    assert (stats.loc[list(profiles), "agreement_n"] > 0).all()
    assert stats.loc["ann_a", "agreement"] > stats.loc["ann_c", "agreement"]
