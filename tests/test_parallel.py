"""fork_map: the engine's worker processes (one torch thread each) for images and objects."""

from __future__ import annotations

import os

import pytest
import torch

from sam_engine.parallel import fork_map, pool_workers


def _where(x: int) -> tuple[int, int, int]:
    return x * x, os.getpid(), torch.get_num_threads()


def test_fork_map_keeps_the_order_and_runs_in_single_threaded_workers():
    torch.set_num_threads(2)
    seen: list[int] = []
    out = fork_map(_where, list(range(20)), workers=2, progress=seen.append)
    assert [v for v, _, _ in out] == [x * x for x in range(20)]
    pids = {pid for _, pid, _ in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert {threads for _, _, threads in out} == {1}
    assert seen == list(range(1, 21))
    assert torch.get_num_threads() == 2  # this process keeps its own


def test_fork_map_runs_here_with_one_worker_and_workers_follow_the_environment(monkeypatch):
    out = fork_map(_where, [1, 2, 3], workers=1)
    assert {pid for _, pid, _ in out} == {os.getpid()}
    monkeypatch.setenv("SAM_ENGINE_WORKERS", "1")
    assert pool_workers() == 1
    assert {pid for _, pid, _ in fork_map(_where, [1, 2, 3])} == {os.getpid()}
    monkeypatch.setenv("SAM_ENGINE_WORKERS", "3")
    assert pool_workers() == 3
    monkeypatch.delenv("SAM_ENGINE_WORKERS")
    torch.set_num_threads(2)
    assert pool_workers() == 2


def test_a_closure_reaches_the_workers_and_their_errors_come_back():
    offset = {"value": 10}  # not picklable as a lambda default would need: workers inherit it
    assert fork_map(lambda x: x + offset["value"], [1, 2, 3], workers=2) == [11, 12, 13]

    def fail(x: int) -> int:
        if x == 2:
            raise ValueError(f"bad item {x}")
        return x

    with pytest.raises(ValueError, match="bad item 2"):
        fork_map(fail, [1, 2, 3], workers=2)
    assert fork_map(lambda x: x, [], workers=2) == []


def test_workers_exit_cleanly_under_a_parent_that_turns_sigterm_into_an_exception(capfd):
    """Dagster's step process raises on SIGTERM; forked workers must not inherit that (they would print a
    traceback instead of exiting when the pool stops them)."""
    import signal

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        assert fork_map(lambda x: x * 2, list(range(6)), workers=2) == [0, 2, 4, 6, 8, 10]
        with pytest.raises(ValueError, match="first item"):  # the pool is stopped with SIGTERM
            fork_map(_fail_first, list(range(6)), workers=2)
    finally:
        signal.signal(signal.SIGTERM, old)
    err = capfd.readouterr().err
    assert "Interrupted" not in err and "Traceback" not in err


def _fail_first(x: int) -> int:
    if x == 0:
        raise ValueError("first item")
    return x


def test_annotation_tasks_split_where_a_completion_needs_an_earlier_commit():
    """Simulated annotators' tasks run in workers a batch at a time; a ``complete`` task reads the accepted masks
    of its image, so it waits for any earlier task of the batch on that image to be committed."""
    from sam_engine.engine.human_stage import _independent_runs

    tasks = [
        {"image_id": 1, "kind": "annotate"},
        {"image_id": 1, "kind": "annotate"},  # overlap: both people annotate image 1 at once
        {"image_id": 2, "kind": "complete"},
        {"image_id": 1, "kind": "complete"},  # needs image 1's commits: a new batch
        {"image_id": 3, "kind": "honeypot"},
        {"image_id": 3, "kind": "complete"},  # needs image 3's
    ]
    runs = _independent_runs([("sim", t) for t in tasks])
    assert [[t["image_id"] for _, t in run] for run in runs] == [[1, 1, 2], [1, 3], [3]]
    assert [t for run in runs for _, t in run] == tasks  # queue order kept
    assert _independent_runs([]) == []
