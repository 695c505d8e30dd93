"""The Dagster UI over the session's smoke engine run (conftest `engine_run`), in a real browser: the runs page
names the engine's jobs, and a model's asset page shows its picture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_support import BROWSER_MARKS, dagster_webserver, launch, skip_dagster_welcome

pytestmark = [*BROWSER_MARKS, pytest.mark.slow]

SCREENSHOTS = Path(os.environ.get("SAM_ENGINE_SCREENSHOTS", "/tmp"))


@pytest.fixture(scope="module")
def engine_ui(engine_run):
    data, _ = engine_run
    with dagster_webserver(data / "dagster_home", data) as url:
        yield url


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1600, "height": 1100})
        page.sync_api = sync_api
        yield page
        browser.close()


def test_runs_page_names_the_engine_jobs(engine_ui, page):
    page.goto(f"{engine_ui}/runs", wait_until="domcontentloaded")
    page.get_by_text("engine_upstream", exact=True).first.wait_for(timeout=90_000)
    skip_dagster_welcome(page, page.sync_api)
    for job in ("stage3_shards", "engine_downstream"):
        page.get_by_text(job, exact=True).first.wait_for(timeout=30_000)
    # each run carries its phase tag
    page.get_by_text("sam_engine/phase", exact=False).first.wait_for(timeout=30_000)
    assert page.get_by_text("__ephemeral_asset_job__").count() == 0
    page.screenshot(path=str(SCREENSHOTS / "dagster_runs.png"))


def test_model_asset_page_shows_its_masks_on_gold_images(engine_ui, page):
    page.goto(f"{engine_ui}/assets/model_v1", wait_until="domcontentloaded")
    row = page.locator("tr", has_text="gold_overlays").first
    row.wait_for(timeout=90_000)
    skip_dagster_welcome(page, page.sync_api)
    row.get_by_text("[Show Markdown]").click(timeout=30_000)
    image = page.locator('img[src^="data:image/png;base64,"]').first
    image.wait_for(timeout=30_000)
    page.wait_for_function(
        "() => [...document.images].some(i => i.src.startsWith('data:image/png') && i.naturalWidth > 100)",
        timeout=30_000,
    )
    assert image.evaluate("i => i.naturalWidth") > 100
    assert "model_v1 on gold images" in (image.get_attribute("alt") or "")
    page.screenshot(path=str(SCREENSHOTS / "dagster_model_v1.png"))
