"""The MLflow UI on the engine's tracking store, with links that open the model-training view.

``python -m sam_engine.mlflow_ui [--host 127.0.0.1] [--port 5000]`` (``make mlflow-ui``) prints the engine
experiment's page (runs, metrics, artifacts) and the registered model's page (versions, aliases ``model_v0``..
``model_v3``, ``champion``), then serves MLflow on the data folder's ``mlflow.db``. MLflow 3's UI opens in
its GenAI view (traces) unless a link asks for the model-training one, or the sidebar's switch is set to
"Model training" once in that browser.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .tracking import TrackingSettings, experiment_url, registered_model_url


def server_command(settings: TrackingSettings, host: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line for the settings' store (the CLI beside this Python)."""
    exe = Path(sys.executable).with_name("mlflow")
    return [
        str(exe),
        "server",
        "--backend-store-uri",
        settings.tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def links(settings: TrackingSettings, host: str, port: int) -> list[str]:
    """What to open: the experiment in the model-training view and the registered model's versions."""
    base = f"http://{host}:{port}"
    return [
        f"experiment (runs): {experiment_url(settings, base)}",
        f"registered model (versions, aliases): {registered_model_url(settings, base)}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    from .config import load_config

    parser = argparse.ArgumentParser(
        prog="python -m sam_engine.mlflow_ui", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--profile", default=None, help="engine profile (default $SAM_ENGINE_PROFILE)")
    args = parser.parse_args(argv)
    settings = TrackingSettings.from_config(load_config(args.profile))
    for line in links(settings, args.host, args.port):
        print(line, flush=True)
    return serve(server_command(settings, args.host, args.port))


def serve(command: list[str]) -> int:
    """Run the server in its own process group until it exits; SIGTERM or SIGINT to this process stops the
    whole group (the server's web and job workers too), so nothing outlives ``make mlflow-ui``."""
    proc = subprocess.Popen(command, start_new_session=True)

    def stop(signum: int, frame: object) -> None:
        _signal_group(proc.pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    code = proc.wait()
    _signal_group(proc.pid, signal.SIGTERM)  # workers the server left behind
    return code


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
