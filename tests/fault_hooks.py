"""Faults that tests inject into a child process (the library carries no test hooks).

A test starts the child with ``python -c`` code that imports this module (the repository root on ``sys.path``)
and calls one of these before the work it wants to interrupt.
"""

from __future__ import annotations

import os
import signal
import tarfile
import time


def pause_tar_writes(seconds: float, after_members: int = 1) -> None:
    """Make every tar writer flush and sleep ``seconds`` once it has written ``after_members`` members, so a
    test can SIGKILL the process while a shard's temp file is half written."""
    addfile = tarfile.TarFile.addfile
    written: dict[int, int] = {}

    def addfile_then_pause(self, *args, **kwargs):
        out = addfile(self, *args, **kwargs)
        written[id(self)] = written.get(id(self), 0) + 1
        if written[id(self)] == after_members:
            self.fileobj.flush()
            time.sleep(seconds)
        return out

    tarfile.TarFile.addfile = addfile_then_pause


def kill_after_finished_tasks(count: int) -> None:
    """SIGKILL this process right after the ``count``-th task a simulated annotator finishes (stored)."""
    from sam_engine.workforce.simulated import SimulatedAnnotator

    finish = SimulatedAnnotator.finish
    finished = [0]

    def finish_then_maybe_die(self, *args, **kwargs):
        out = finish(self, *args, **kwargs)
        finished[0] += 1
        if finished[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    SimulatedAnnotator.finish = finish_then_maybe_die
