"""The annotation page in a real browser (system Chromium via Playwright): click → overlay, box drag, mask
cycling, undo, accept → store, history + revert, next task; and review mode for a reviewer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from annotation_fixtures import (
    RefiningFakePredictor,
    ServerThread,
    World,
    build_app,
    pending_proposal,
)
from browser_support import BROWSER_MARKS, launch

from sam_engine.data import rle as rle_utils

SCREENSHOT_DIR = Path(os.environ.get("SAM_ENGINE_SCREENSHOTS", "/tmp"))

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()


@pytest.fixture
def server(world: World):
    app, service = build_app(world.store, world.images_dir)
    with ServerThread(app) as srv:
        yield srv
    service.close()


def _page(browser, server: ServerThread, token: str, ready: str = "#canvas[data-image-loaded=true]"):  # noqa: ANN001, ANN202
    page = browser.new_page(viewport={"width": 1200, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/#token={token}")
    page.wait_for_selector(ready, state="attached", timeout=15000)
    return page, errors


def _screen(page, x: float, y: float) -> tuple[float, float]:  # noqa: ANN001
    """Screen position of image pixel (x, y) on the scaled canvas."""
    box = page.locator("#canvas").bounding_box()
    w, h = page.evaluate(
        "[document.getElementById('canvas').width, document.getElementById('canvas').height]"
    )
    return box["x"] + x * box["width"] / w, box["y"] + y * box["height"] / h


def _pixels(page) -> int:  # noqa: ANN001
    return page.evaluate(
        """() => { const c = document.getElementById('canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] * 3 + d[i + 1] * 5 + d[i + 2] * 7;
                   return s; }"""
    )


def _area(page) -> int:  # noqa: ANN001
    return int(page.locator("#canvas").get_attribute("data-mask-area"))


def _inside(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs[len(xs) // 2]) + 0.5, float(ys[len(ys) // 2]) + 0.5


def test_annotator_flow_in_the_browser(browser, server: ServerThread, world: World) -> None:  # noqa: ANN001
    page, errors = _page(browser, server, world.tokens["alice"])
    objects = world.objects[1]
    assert page.locator("#task-id").text_content() == f"#{world.tasks['alice'][0]}"
    assert page.locator("#progress").get_attribute("data-total") == "2"
    before = _pixels(page)

    page.mouse.click(*_screen(page, *_inside(objects["disc"])))
    page.wait_for_function("() => document.getElementById('canvas').dataset.maskArea !== '0'")
    assert _area(page) == objects["disc"].sum()
    assert _pixels(page) != before  # the overlay was drawn
    assert page.locator("#candidates button").count() == 3

    page.keyboard.press("m")  # cycle to candidate 2
    assert page.locator("#candidates button.selected").get_attribute("data-index") == "1"
    page.keyboard.press("z")  # undo the only click
    page.wait_for_function("() => document.getElementById('canvas').dataset.maskArea === '0'")

    ys, xs = np.nonzero(objects["square"])  # drag a box around the square
    page.mouse.move(*_screen(page, xs.min() - 0.5, ys.min() - 0.5))
    page.mouse.down()
    page.mouse.move(*_screen(page, xs.mean(), ys.mean()), steps=3)
    page.mouse.move(*_screen(page, xs.max() + 1.5, ys.max() + 1.5), steps=3)
    page.mouse.up()
    page.wait_for_function(
        f"() => document.getElementById('canvas').dataset.maskArea === '{objects['square'].sum()}'"
    )
    page.screenshot(path=str(SCREENSHOT_DIR / "sam_annotation_browser.png"))

    page.keyboard.press("a")
    page.wait_for_function("() => document.body.dataset.lastAccepted !== undefined")
    mask_id = int(page.evaluate("document.body.dataset.lastAccepted"))
    stored = world.store.get_mask(mask_id)
    assert stored["annotator_id"] == "alice" and stored["status"] == "accepted"
    assert np.array_equal(rle_utils.decode(stored["rle"]), objects["square"])
    assert stored["prompt"]["box"] is not None

    page.locator(f"#mask-list button[data-mask-id='{mask_id}']").click()
    page.wait_for_selector("#history-panel:not([hidden]) #history-list li")
    assert "commit" in page.locator("#history-list").text_content()
    page.locator("#btn-revert").click()
    page.wait_for_function("() => document.getElementById('history-list').children.length === 2")
    assert world.store.get_mask(mask_id)["status"] == "reverted"

    page.keyboard.press("n")  # finish the image, the next task opens
    page.wait_for_function(
        f"() => document.getElementById('task-id').textContent === '#{world.tasks['alice'][1]}'"
    )
    assert world.store.get_task(world.tasks["alice"][0])["status"] == "done"
    assert errors == []
    page.close()


def test_reviewer_accepts_and_rejects_in_review_mode(browser, server: ServerThread, world: World) -> None:  # noqa: ANN001
    disc = world.objects[1]["disc"]
    ids = [
        world.store.commit_mask(
            task_id=None,
            image_id=1,
            annotator_id=None,
            stage=2,
            source="model",
            rle=rle_utils.encode(disc),
            predicted_iou=0.7,
            clicks=0,
            seconds=0.0,
            status="pending_review",
        )
        for _ in range(2)
    ]
    page, errors = _page(browser, server, world.tokens["rita"], ready="body[data-ws=open]")
    assert page.locator("#mode-review").is_visible()
    page.locator("#mode-review").click()
    page.wait_for_selector(f"#review-list button[data-mask-id='{ids[0]}']")
    page.locator(f"#review-list button[data-mask-id='{ids[0]}']").click()
    page.wait_for_function(
        "() => document.getElementById('review-current').textContent.includes('Reviewing')"
    )
    page.locator("#btn-review-accept").click()
    page.wait_for_function(f"() => !document.querySelector(\"#review-list button[data-mask-id='{ids[0]}']\")")
    assert world.store.get_mask(ids[0])["status"] == "accepted"

    page.locator(f"#review-list button[data-mask-id='{ids[1]}']").click()
    page.wait_for_function(
        f"() => document.getElementById('review-current').textContent.includes('#{ids[1]}')"
    )
    page.locator("#review-comment").fill("not one object")
    page.screenshot(path=str(SCREENSHOT_DIR / "sam_annotation_review.png"))
    page.locator("#btn-review-reject").click()
    page.wait_for_function(f"() => !document.querySelector(\"#review-list button[data-mask-id='{ids[1]}']\")")
    assert world.store.get_mask(ids[1])["status"] == "rejected"
    reviews = world.store.reviews()
    assert (
        reviews["verdict"].tolist() == ["accept", "reject"] and reviews["comment"].iloc[1] == "not one object"
    )

    # a proposal that keeps the point that made it opens with the model's masks there: fix without a click
    sq = world.objects[1]["square"]
    ys, xs = np.nonzero(sq)
    short = sq & (np.arange(sq.shape[0])[:, None] > ys.min() + 2)
    point = [float(xs.mean()), float(ys.mean()), 1]
    pid = pending_proposal(world.store, 1, short, {"points": [point], "box": None}, predicted_iou=0.7)
    page.locator("#mode-annotate").click()
    page.locator("#mode-review").click()  # the queue reloads with the new proposal
    page.wait_for_selector(f"#review-list button[data-mask-id='{pid}']")
    page.locator(f"#review-list button[data-mask-id='{pid}']").click()
    page.wait_for_function(
        "() => document.getElementById('review-current').textContent.includes(\"The model's masks\")"
    )
    page.locator("#btn-review-fix").click()
    page.wait_for_function(f"() => !document.querySelector(\"#review-list button[data-mask-id='{pid}']\")")
    fixed = world.store.get_mask(int(world.store.reviews()["fixed_mask_id"].dropna().iloc[-1]))
    assert fixed["clicks"] == 0 and not fixed["manual_fix"] and fixed["prompt"]["points"] == [point]
    assert np.array_equal(rle_utils.decode(fixed["rle"]), sq)
    assert errors == []
    page.close()


def test_click_shows_the_quick_mask_then_the_refined_one(browser, world: World) -> None:  # noqa: ANN001
    """The page opens images with progressive answers: a click's whole-image mask is drawn at once, and the
    refined (zoomed-in) mask replaces it when it comes; accept stores the refined one."""
    app, service = build_app(
        world.store, world.images_dir, predictor=RefiningFakePredictor(refine_delay_s=0.8)
    )
    with ServerThread(app) as server:
        page, errors = _page(browser, server, world.tokens["alice"])
        objects = world.objects[1]
        page.mouse.click(*_screen(page, *_inside(objects["part"])))
        page.wait_for_function("() => document.getElementById('canvas').dataset.maskFinal === 'false'")
        assert _area(page) == objects["whole"].sum()  # the quick answer: the loose region
        assert page.locator("#status").text_content().startswith("Refining")
        page.wait_for_function("() => document.getElementById('canvas').dataset.maskFinal === 'true'")
        assert _area(page) == objects["part"].sum()
        page.keyboard.press("a")
        page.wait_for_function("() => document.body.dataset.lastAccepted !== undefined")
        stored = world.store.get_mask(int(page.evaluate("document.body.dataset.lastAccepted")))
        assert np.array_equal(rle_utils.decode(stored["rle"]), objects["part"])
        assert errors == []
        page.close()
    service.close()
