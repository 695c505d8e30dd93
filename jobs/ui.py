"""`make ui`: Dagster's recommended `dg dev` on this project, with SIGINT and SIGTERM restored so they stop it.

A shell that starts a command in the background without job control (a script's ``make ui &``, a CI step)
starts it with SIGINT ignored, and Dagster's processes treat SIGTERM as they treat SIGINT, so such an
instance ignored SIGTERM too: it kept running after ``kill``. This launcher gives both signals their default
disposition back, then becomes ``dg dev`` (same process, so a supervisor's signal reaches it); `dg dev`
then shuts its webserver, daemon and code servers down on either.

    python -m jobs.ui [dg dev options]     # e.g. -h 127.0.0.1 -p 3000
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def dg_command(argv: list[str]) -> list[str]:
    """The ``dg dev`` command line of this environment's ``dg`` with ``argv`` appended."""
    return [str(Path(sys.executable).with_name("dg")), "dev", *argv]


def main(argv: list[str] | None = None) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # dg compares the active virtual environment with the project's and warns when they differ
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix)
    cmd = dg_command(sys.argv[1:] if argv is None else argv)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
