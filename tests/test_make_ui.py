"""`make ui` starts the engine's instance with `dg dev` and stops it, whole process tree, on SIGTERM, also when
it was started the way a script starts a background job (SIGINT ignored)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from browser_support import free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[1]


def _group(pgid: int) -> list[psutil.Process]:
    """Live processes of one process group (zombies count as gone)."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


@pytest.mark.slow
def test_make_ui_serves_with_dg_dev_and_stops_on_sigterm(tmp_path):
    venv = Path(sys.executable).parents[1]
    port = free_port()
    env = dict(os.environ, SAM_ENGINE_PROFILE="smoke")
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.Popen(
        ["make", "-s", "ui", f"VENV={venv}", f"DATA_DIR={tmp_path / 'data'}", f"UI_PORT={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group, so the test can see every process it started
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/server_info", proc, 240, "make ui")
        tree = [p.name() for p in _group(proc.pid)]
        assert any("dg" in n for n in tree), tree
        assert (tmp_path / "data" / "dagster_home" / "dagster.yaml").exists()
        # started as a script starts it in the background (SIGINT ignored, which Dagster's processes also apply
        # to SIGTERM), then `kill <pid of dg>`: SIGTERM to dg alone stops every process, make included
        (dg,) = [p for p in _group(proc.pid) if p.name() == "dg" or "dg dev" in " ".join(p.cmdline())]
        dg.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p.pid, p.name()) for p in _group(proc.pid)]
        assert not left, f"still running 60 s after SIGTERM: {left}"
        out = proc.stdout.read().decode(errors="replace")
        # what confused a newcomer under `dagster dev`: a deprecation notice and a dagster.yaml that "will not be used"
        assert "will not be used" not in out, out[-2000:]
        assert "superseded" not in out, out[-2000:]
        assert "Serving dagster-webserver" in out, out[-2000:]
    finally:
        if proc.poll() is None or _group(proc.pid):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
