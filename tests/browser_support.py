"""The system Chromium the browser tests drive through Playwright (installed by `make test` when missing)."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# no sandbox as root; no background networking (this machine's closed network refuses it, noisily)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# module-level marks for a browser test file
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install -y chromium)"
    ),
]


def launch(playwright):
    """The system Chromium, headless, with the flags above."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
