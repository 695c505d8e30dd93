"""The Dagster webserver (started by the test) shows the engine's asset graph in a real browser."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_support import BROWSER_MARKS, dagster_webserver, launch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text((ROOT / "instance" / "dagster.yaml").read_text())
    with dagster_webserver(home, home / "data") as url:
        yield url


def test_asset_graph_page_shows_the_engine(webserver):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # each asset's lineage page draws its neighbours: the chain of the engine, link by link
        chain = {
            "model_v0": ("public_corpus", "stage1_tasks", "eval_model_v0"),
            "stage1_masks": ("stage1_tasks", "model_v0"),
            "stage2_proposals": ("model_v1", "eval_model_v1", "stage2_tasks"),
            "stage2_masks": ("stage2_tasks", "model_v1"),
            "v1_pseudo_labels": ("model_v1", "model_v2"),
            "sa1b_shards": ("stage3_plan", "model_v2"),
            "model_v3": ("model_v2", "eval_model_v3"),
        }
        for asset, neighbours in chain.items():
            page.goto(f"{webserver}/assets/{asset}?view=lineage", wait_until="domcontentloaded")
            page.get_by_text(asset, exact=True).first.wait_for(timeout=90_000)
            try:  # the community sign-up dialog of a fresh instance
                page.get_by_role("button", name="Skip").first.click(timeout=3_000)
            except sync_api.TimeoutError:
                pass
            for name in neighbours:
                page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
        page.screenshot(
            path=str(Path(os.environ.get("SAM_ENGINE_SCREENSHOTS", "/tmp")) / "dagster_assets.png")
        )
        browser.close()
