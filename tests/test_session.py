"""Session API: prompts and results, low-res feedback, undo / choose / reset, validation, caches, prefetch,
concurrency; with the fake predictor, and with the real tiny model when it is available."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from annotation_fixtures import FakePredictor, RefiningFakePredictor, make_scene

from sam_engine.annotation import session as session_module
from sam_engine.annotation.session import CLICK, PREFETCH, REFINE, LanePool, PromptError, SegmentationService


@pytest.fixture
def scenes() -> dict[int, tuple[np.ndarray, dict]]:
    return {i: make_scene(seed=i) for i in range(1, 6)}


@pytest.fixture
def predictor() -> FakePredictor:
    return FakePredictor()


@pytest.fixture
def service(scenes: dict, predictor: FakePredictor) -> SegmentationService:
    svc = SegmentationService(predictor, lambda i: scenes[i][0], cache_size=3)
    yield svc
    svc.close()


def _inside(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    k = len(ys) // 2
    return float(xs[k]) + 0.5, float(ys[k]) + 0.5


def test_click_returns_three_masks_at_image_size(service: SegmentationService, scenes: dict) -> None:
    img, objects = scenes[1]
    s = service.open_session(1, task_id=7, annotator_id="alice")
    assert (s.width, s.height, s.task_id, s.annotator_id) == (img.shape[1], img.shape[0], 7, "alice")
    x, y = _inside(objects["disc"])
    r = s.add_point(x, y, positive=True)
    assert r.masks.shape == (3, img.shape[0], img.shape[1]) and r.masks.dtype == bool
    assert r.scores.shape == (3,) and r.selected == int(np.argmax(r.scores)) and r.clicks == 1
    assert np.array_equal(s.current_mask(), objects["disc"])
    assert s.points == [(x, y, 1)]


def test_previous_low_res_logits_of_selected_mask_are_fed_back(
    service: SegmentationService, predictor: FakePredictor, scenes: dict
) -> None:
    _, objects = scenes[1]
    s = service.open_session(1)
    r1 = s.add_point(*_inside(objects["part"]), positive=True)
    assert predictor.mask_inputs[-1] is None
    s.choose(1)
    r2 = s.add_point(*_inside(objects["whole"] & ~objects["part"]), positive=True)
    fed = predictor.mask_inputs[-1]
    assert fed.shape == (1, *r1.low_res.shape[1:])
    assert np.array_equal(fed[0], r1.low_res[1])
    s.add_point(*_inside(objects["disc"]), positive=False)
    assert np.array_equal(predictor.mask_inputs[-1][0], r2.low_res[r2.selected])


def test_negative_click_removes_region(service: SegmentationService, scenes: dict) -> None:
    _, objects = scenes[2]
    s = service.open_session(2)
    s.add_point(*_inside(objects["whole"] & ~objects["part"]), positive=True)
    s.choose(1)  # tolerance that merges the inner part into the box
    assert s.current_mask()[objects["part"]].all()
    r = s.add_point(*_inside(objects["part"]), positive=False)
    assert not r.masks[1][objects["part"]].any()


def test_undo_restores_previous_state(
    service: SegmentationService, predictor: FakePredictor, scenes: dict
) -> None:
    _, objects = scenes[1]
    s = service.open_session(1)
    assert s.undo() is None
    r1 = s.add_point(*_inside(objects["whole"] & ~objects["part"]), positive=True)
    r2 = s.add_point(*_inside(objects["part"]), positive=True)
    assert not np.array_equal(r1.masks, r2.masks)
    back = s.undo()
    assert back is r1 and np.array_equal(s.current_mask(), r1.mask) and len(s.points) == 1
    s.add_point(*_inside(objects["disc"]), positive=True)
    assert np.array_equal(predictor.mask_inputs[-1][0], r1.low_res[r1.selected])
    s.undo()
    assert s.undo() is None and s.points == [] and not s.current_mask().any()
    assert s.clicks == 3  # effort: undone clicks still count


def test_box_prompt_and_validation(service: SegmentationService, scenes: dict) -> None:
    img, objects = scenes[3]
    s = service.open_session(3)
    ys, xs = np.nonzero(objects["square"])
    r = s.set_box(xs.max() + 1, ys.max() + 1, xs.min(), ys.min())  # corners in any order
    assert s.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.array_equal(r.mask, objects["square"])
    h, w = img.shape[:2]
    with pytest.raises(PromptError, match="outside the image"):
        s.set_box(0, 0, w + 5, h)
    with pytest.raises(PromptError, match="smaller than one pixel"):
        s.set_box(3, 3, 3.5, 10)
    with pytest.raises(PromptError, match="finite"):
        s.set_box(0, 0, float("nan"), 4)


def test_stored_prompt_starts_the_object_without_clicks(service: SegmentationService, scenes: dict) -> None:
    img, objects = scenes[3]
    s = service.open_session(3)
    x, y = _inside(objects["square"])
    clicked = s.add_point(x, y, positive=True)
    s.add_point(*_inside(objects["disc"]), positive=True)
    r = s.load_prompt({"points": [[x, y, 1]], "box": None})  # replaces the prompts in effect
    assert s.clicks == 2 and s.points == [(x, y, 1)] and s.box is None
    assert np.array_equal(r.masks, clicked.masks)  # as the click made it: no earlier mask fed back
    assert s.prompt() == {"points": [[x, y, 1]], "box": None}
    s.undo()
    assert len(s.points) == 2  # undo returns to the prompts before it
    ys, xs = np.nonzero(objects["square"])
    s.reset()
    r = s.load_prompt({"points": [], "box": [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]})
    assert s.clicks == 0 and np.array_equal(r.mask, objects["square"])


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        ({"points": [[5, 5, 2]], "box": None}, "label 0 or 1"),
        ({"points": [[5, 5]], "box": None}, r"\[x, y, label\]"),
        ({"points": [[500, 5, 1]], "box": None}, "outside the image"),
        ({"points": [], "box": None}, "neither points nor a box"),
        ({"points": [], "box": [0, 0, 4]}, r"\[x0, y0, x1, y1\]"),
        ({"points": [], "box": [0, 0, 9999, 4]}, "outside the image"),
        ("[[1, 2, 1]]", "need a dict"),
    ],
)
def test_bad_stored_prompt_is_refused(service: SegmentationService, prompt: object, match: str) -> None:
    s = service.open_session(1)
    with pytest.raises(PromptError, match=match):
        s.load_prompt(prompt)
    assert s.points == [] and s.result is None and s.clicks == 0


@pytest.mark.parametrize("xy", [(-1, 5), (5, -0.01), (128, 5), (5, 96), (float("inf"), 3), ("a", 2)])
def test_points_outside_image_are_refused(service: SegmentationService, xy: tuple) -> None:
    s = service.open_session(1)
    with pytest.raises(PromptError):
        s.add_point(*xy, positive=True)
    assert s.points == [] and s.clicks == 0


def test_choose_reset_and_timer(
    service: SegmentationService, scenes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(session_module, "_clock", lambda: now[0])
    _, objects = scenes[1]
    s = service.open_session(1)
    now[0] += 7.5
    assert s.elapsed_seconds() == 7.5
    with pytest.raises(PromptError, match="click on the image first"):
        s.choose(0)
    r = s.add_point(*_inside(objects["disc"]), positive=True)
    s.choose(2)
    assert r.selected == 2 and np.array_equal(s.current_mask(), r.masks[2])
    for bad in (3, -1, 1.5):
        with pytest.raises(PromptError):
            s.choose(bad)
    assert s.prompt()["points"][0][2] == 1
    s.reset()
    assert s.clicks == 0 and s.points == [] and s.box is None and s.result is None
    now[0] += 2.0
    assert s.elapsed_seconds() == 2.0


def test_embeddings_cached_and_prefetched(scenes: dict, predictor: FakePredictor) -> None:
    svc = SegmentationService(predictor, lambda i: scenes[i][0], cache_size=2)
    svc.open_session(1)
    svc.open_session(1)
    assert predictor.encodes == 1
    svc.prefetch([2, 1])
    assert svc.wait_prefetch(10)
    assert predictor.encodes == 2 and svc.stats["prefetched"] == 1 and svc.is_cached(2)
    s = svc.open_session(2)
    s.add_point(*_inside(scenes[2][1]["disc"]), positive=True)
    assert predictor.encodes == 2  # opened from the cache
    svc.prefetch([3])
    assert svc.wait_prefetch(10)
    assert not svc.is_cached(1) and svc.is_cached(3)  # LRU of size 2
    svc.close()


def test_sessions_on_different_images_interleave_safely(service: SegmentationService, scenes: dict) -> None:
    expected = {}
    for i in (1, 2, 3):
        s = service.open_session(i)
        expected[i] = s.add_point(*_inside(scenes[i][1]["disc"]), positive=True).mask.copy()
    errors = []

    def work(i: int) -> None:
        s = service.open_session(i)
        for _ in range(15):
            try:
                got = s.add_point(*_inside(scenes[i][1]["disc"]), positive=True).mask
                if not np.array_equal(got, expected[i]):
                    errors.append(i)
            finally:
                s.reset()

    threads = [threading.Thread(target=work, args=(i,)) for i in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_bad_loader_output_is_reported() -> None:
    svc = SegmentationService(FakePredictor(), lambda i: np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        svc.open_session(1)


def test_real_tiny_model_session(scenes: dict) -> None:
    predictor_module = pytest.importorskip("sam_engine.predictor")
    from sam_engine.model import build_sam

    model = build_sam("tiny", seed=0).eval()
    svc = SegmentationService(predictor_module.SamPredictor(model), lambda i: scenes[i][0])
    s = svc.open_session(1)
    r1 = s.add_point(30.5, 20.5, positive=True)
    assert r1.masks.shape == (3, 96, 128) and r1.masks.dtype == bool and r1.low_res.ndim == 3
    r2 = s.add_point(90.5, 60.5, positive=False)
    assert r2.masks.shape == (3, 96, 128) and r2.clicks == 2
    assert s.undo() is r1


class _BarrierPredictor(FakePredictor):
    """A fake whose ``predict`` waits until ``parties`` calls are inside it at once (or times out)."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__()
        self.barrier = barrier

    def predict(self, *args, **kwargs):
        self.barrier.wait(timeout=5)
        return super().predict(*args, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("lanes", [1, 2])
def test_lanes_answer_concurrent_calls_at_once(scenes: dict, lanes: int) -> None:
    """With two lanes two sessions' clicks are inside the predictor together; one lane serialises them."""
    barrier = threading.Barrier(2)
    svc = SegmentationService(
        [_BarrierPredictor(barrier) for _ in range(lanes)], lambda i: scenes[i][0], cache_size=4
    )
    sessions = {i: svc.open_session(i) for i in (1, 2)}
    outcome: dict[int, object] = {}

    def click(i: int) -> None:
        try:
            outcome[i] = sessions[i].add_point(*_inside(scenes[i][1]["disc"]), positive=True).mask
        except threading.BrokenBarrierError as exc:
            outcome[i] = exc

    threads = [threading.Thread(target=click, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if lanes == 2:
        assert all(isinstance(outcome[i], np.ndarray) and outcome[i].any() for i in (1, 2))
        assert all(isinstance(p._feats, np.ndarray) for p in svc.lanes)  # each lane set its own image
    else:
        assert any(isinstance(v, threading.BrokenBarrierError) for v in outcome.values())
    svc.close()


def test_lanes_need_a_predictor() -> None:
    with pytest.raises(ValueError, match="at least one predictor"):
        SegmentationService([], lambda i: np.zeros((4, 4, 3), np.uint8))


def test_lane_pool_serves_the_most_urgent_waiter_first() -> None:
    """A freed lane goes to a click before a refinement before a prefetch, whatever order they queued in."""
    pool = LanePool(1)
    order: list[int] = []
    with pool.hold(CLICK):
        threads = []
        for priority in (PREFETCH, REFINE, CLICK):
            t = threading.Thread(target=lambda p=priority: _take(pool, p, order))
            t.start()
            threads.append(t)
            _wait_until(lambda p=priority: pool._waiting[p] == 1)
    for t in threads:
        t.join(timeout=5)
    assert order == [CLICK, REFINE, PREFETCH]


def _take(pool: LanePool, priority: int, order: list[int]) -> None:
    with pool.hold(priority):
        order.append(priority)


def _wait_until(condition, timeout: float = 5.0) -> None:  # noqa: ANN001
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_progressive_click_shows_the_quick_answer_then_keeps_the_refined_one(scenes: dict) -> None:
    """``on_coarse`` gets the whole-image answer first; the session keeps (and feeds back) the refined one,
    which is what the same click gives without ``on_coarse``."""
    img, objs = scenes[1]
    pred = RefiningFakePredictor()
    svc = SegmentationService([pred, RefiningFakePredictor()], lambda i: img, cache_size=2)
    plain = SegmentationService(RefiningFakePredictor(), lambda i: img, cache_size=2)
    a, b = svc.open_session(0), plain.open_session(0)
    seen = []
    x, y = _inside(objs["part"])
    final = a.add_point(x, y, positive=True, on_coarse=seen.append)
    reference = b.add_point(x, y, positive=True)
    assert len(seen) == 1 and seen[0].clicks == 1
    assert np.array_equal(seen[0].mask, objs["whole"])  # the quick answer: the loose region
    assert np.array_equal(final.mask, objs["part"]) and a.result is final
    assert np.array_equal(final.masks, reference.masks) and np.array_equal(final.low_res, reference.low_res)
    assert sum(p.refined for p in svc.lanes) == 1 and sum(p.coarse_calls for p in svc.lanes) == 1
    # the next click feeds back the refined logits, not the quick ones
    a.add_point(*_inside(objs["disc"]), positive=False, on_coarse=seen.append)
    fed = [m for p in svc.lanes for m in p.mask_inputs if m is not None]
    assert fed and all(np.array_equal(m, final.low_res[final.selected][None]) for m in fed)
    assert a.undo() is final
    svc.close()
    plain.close()


def test_a_snapping_predictor_over_one_pass_answers_a_progressive_click_once(scenes: dict) -> None:
    """Zoom off, snapping on (``--no-zoom``): the wrapper passes ``coarse`` through to a predictor that has
    none, so the session must ask ``refines``, not ``hasattr``; it answers once, as SAM's single pass does.
    (Before, every progressive click there raised AttributeError.)"""
    from sam_engine.model import build_sam
    from sam_engine.zoom import interactive_predictor

    img, objs = scenes[1]
    predictor = interactive_predictor(build_sam("tiny", seed=0).eval(), zoom=False, snap=True)
    assert not predictor.refines
    assert interactive_predictor(build_sam("tiny", seed=0).eval(), zoom=True, snap=True).refines
    svc = SegmentationService(predictor, lambda i: img, cache_size=2)
    seen = []
    r = svc.open_session(0).add_point(*_inside(objs["disc"]), positive=True, on_coarse=seen.append)
    assert seen == [] and r.masks.shape == (3, *img.shape[:2]) and r.clicks == 1
    svc.close()


def test_on_coarse_is_not_called_without_refinement(scenes: dict) -> None:
    img, objs = scenes[1]
    svc = SegmentationService(FakePredictor(), lambda i: img, cache_size=2)
    seen = []
    r = svc.open_session(0).add_point(*_inside(objs["disc"]), positive=True, on_coarse=seen.append)
    assert seen == [] and np.array_equal(r.mask, objs["disc"])
    svc.close()
