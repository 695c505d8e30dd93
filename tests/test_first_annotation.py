"""A newcomer's first mask, by the README's path: add-annotator, sign in (no tasks yet: the page says who
assigns them), `assign`, then click and save in the browser. Also the assignment rules without a browser."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from annotation_fixtures import ServerThread, build_app, make_world
from browser_support import BROWSER_MARKS, launch

from sam_engine.annotation.__main__ import main as annotation_cli
from sam_engine.data import rle as rle_utils
from sam_engine.workforce.assign import AssignError, assign_images, unassigned_pool_images

SCREENSHOT_DIR = Path(os.environ.get("SAM_ENGINE_SCREENSHOTS", "/tmp"))


def test_assign_takes_pool_images_no_annotation_task_covers(tmp_path: Path) -> None:
    world = make_world(tmp_path, n_images=4)  # alice has tasks on images 1-3, bob on 4 and 1
    store = world.store
    store.add_images(
        [
            {"image_id": i, "file_name": f"x{i}.png", "width": 8, "height": 8, "source": "pool"}
            for i in (7, 5, 6)
        ]
    )
    store.add_annotator("newbie", "annotator")
    assert unassigned_pool_images(store) == [5, 6, 7]
    ids = assign_images(store, "newbie", 2)
    tasks = [store.get_task(i) for i in ids]
    assert [(t["image_id"], t["annotator_id"], t["status"], t["kind"], t["stage"]) for t in tasks] == [
        (5, "newbie", "pending", "annotate", 1),
        (6, "newbie", "pending", "annotate", 1),
    ]
    assert unassigned_pool_images(store) == [7]
    assert len(assign_images(store, "newbie", 10)) == 1
    with pytest.raises(AssignError, match="nothing to assign"):
        assign_images(store, "newbie", 1)
    with pytest.raises(AssignError, match="add-annotator --name ghost"):
        assign_images(store, "ghost", 1)
    store.close()


@pytest.fixture
def data_dir(smoke_data_dir: Path) -> Path:
    """An engine data folder with the smoke corpora and no store yet, as after `make run` minus the stages."""
    return smoke_data_dir


def _browser_test(fn):  # noqa: ANN001, ANN202
    for mark in BROWSER_MARKS:
        fn = mark(fn)
    return fn


@pytest.mark.slow
@_browser_test
def test_a_new_annotator_is_assigned_tasks_and_saves_a_mask(data_dir: Path, capsys) -> None:  # noqa: ANN001
    sync_api = pytest.importorskip("playwright.sync_api")
    from sam_engine.quality.store import QualityStore

    dd = ["--data-dir", str(data_dir)]
    annotation_cli(["add-annotator", *dd, "--name", "newbie"])
    token = capsys.readouterr().out.strip().splitlines()[-1]
    store = QualityStore(data_dir / "quality.duckdb", idle_release_s=0.2)
    app, service = build_app(store, data_dir / "corpora" / "target_pool" / "images")
    with ServerThread(app) as server, sync_api.sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1200, "height": 720})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url)
        # the sign-in screen alone: no task panel or canvas laid out behind it
        page.wait_for_selector("#token-input")
        assert page.locator("#login").is_visible()
        assert not page.locator("#app").is_visible() and not page.locator("#task-panel").is_visible()
        page.locator("#token-input").fill(token)
        page.locator("#login-form button").click()

        page.wait_for_selector("#empty:not([hidden])")
        text = page.locator("#empty").inner_text()
        assert "No tasks are assigned to you yet" in text and "done" not in text
        command = page.locator("#assign-command").inner_text()
        assert command == "python -m sam_engine.annotation assign --annotator newbie --images 20"
        assert page.locator("#progress").inner_text() == "no tasks assigned"
        assert not page.locator("#login").is_visible() and not page.locator("#task-panel").is_visible()
        page.screenshot(path=str(SCREENSHOT_DIR / "sam_annotation_no_tasks.png"))

        # the admin runs the command the page shows (fewer images), from the data folder
        args = command.split()[4:]  # after "python -m sam_engine.annotation assign"
        annotation_cli(["assign", *dd, "--profile", "smoke", *args[:-1], "2"])
        out = capsys.readouterr().out
        assert re.search(r"assigned 2 stage-1 tasks to newbie", out), out
        task_ids = [int(t["task_id"]) for t in store.tasks_for("newbie")]
        assert len(task_ids) == 2

        page.reload()  # the token stays for the tab
        page.wait_for_selector("#canvas[data-image-loaded=true]", timeout=30000)
        assert page.locator("#progress").get_attribute("data-total") == "2"
        assert page.locator("#task-id").text_content() == f"#{task_ids[0]}"
        box = page.locator("#canvas").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_function("() => document.getElementById('canvas').dataset.maskArea !== '0'")
        area = int(page.locator("#canvas").get_attribute("data-mask-area"))
        page.keyboard.press("a")
        page.wait_for_function("() => document.body.dataset.lastAccepted !== undefined")
        saved = store.get_mask(int(page.evaluate("document.body.dataset.lastAccepted")))
        assert saved["annotator_id"] == "newbie" and saved["status"] == "accepted"
        assert saved["task_id"] == task_ids[0] and saved["stage"] == 1
        assert int(np.count_nonzero(rle_utils.decode(saved["rle"]))) == area
        page.screenshot(path=str(SCREENSHOT_DIR / "sam_annotation_first_mask.png"))
        assert errors == []
        browser.close()
    service.close()
    store.close()
