"""The system Chromium the browser tests drive through Playwright (installed by `make test` when missing)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dagster_webserver(home: Path, data_dir: Path, timeout_s: float = 240) -> Iterator[str]:
    """`dagster-webserver` on this repository's workspace over the instance in ``home`` (smoke profile, data in
    ``data_dir``); yields its URL and stops it afterwards."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    port = free_port()
    env = dict(
        os.environ, DAGSTER_HOME=str(home), SAM_ENGINE_DATA_DIR=str(data_dir), SAM_ENGINE_PROFILE="smoke"
    )
    exe = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen(
        [str(exe), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/server_info", proc, timeout_s, "dagster-webserver")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for_http(url: str, proc, timeout_s: float, what: str) -> None:
    """Poll ``url`` until it answers 200; fail the test with ``proc``'s output if it exits or ``timeout_s``
    passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out = proc.stdout.read() if proc.stdout else ""
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            pytest.fail(f"{what} did not start:\n{out[-3000:]}")
        time.sleep(0.5)


def skip_dagster_welcome(page, sync_api) -> None:
    """Dismiss the community sign-up dialog a fresh Dagster instance shows, if it is there."""
    try:
        page.get_by_role("button", name="Skip").first.click(timeout=3_000)
    except sync_api.TimeoutError:
        pass
