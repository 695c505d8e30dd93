"""Fan independent work (images, objects) out over forked worker processes, one torch thread each.

On this 2-core CPU a small model's inference gains about 1.4x from a second torch thread (small kernels, and
the Python between them: snapping, RLE, the click protocol's bookkeeping), while two single-threaded
processes gain about 2x. So the engine's embarrassingly parallel loops — the gold click protocol, the
automatic mask generator over images — run in as many worker processes as this process has torch threads,
each with one thread: the cores stay exactly as subscribed as before (sam_engine/threads.py).

Workers are forked, as PyTorch's DataLoader forks its workers: they inherit the loaded model, caches and the
work itself, so nothing is pickled on the way in; only results come back. Results keep the input order, so
the outcome does not depend on how the items were spread. ``SAM_ENGINE_WORKERS`` overrides the count (1 runs
everything in this process).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

ENV = "SAM_ENGINE_WORKERS"

# The work of the fork_map call in progress: set before the pool forks, read by the workers.
_JOB: tuple[Callable[[Any], Any], Sequence[Any]] | None = None


def pool_workers() -> int:
    """Worker processes for :func:`fork_map`: ``SAM_ENGINE_WORKERS``, else this process's torch threads."""
    if os.environ.get(ENV):
        return max(1, int(os.environ[ENV]))
    import torch

    return max(1, torch.get_num_threads())


def _cuda_started() -> bool:
    """A process that has initialised CUDA cannot fork workers that use it."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    # The parent's handlers (Dagster turns SIGINT / SIGTERM into exceptions) are not the worker's: the pool
    # stops its workers with SIGTERM, and an interrupt is the parent's to handle.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(index: int) -> Any:
    assert _JOB is not None, "fork_map worker without a job"
    fn, items = _JOB
    return fn(items[index])


def fork_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]``, spread over ``workers`` forked processes (default :func:`pool_workers`).

    ``fn`` may be any callable (a closure over a model, a predictor, ...): workers inherit it. It runs in a
    child, so its side effects stay there; return what the caller needs. With one worker, one item, no
    ``fork`` start method or CUDA in use (a GPU batches the work instead), it runs here. ``progress(done)`` is called here as results arrive.
    """
    global _JOB
    n = len(items)
    w = min(workers if workers is not None else pool_workers(), n)
    if w <= 1 or "fork" not in mp.get_all_start_methods() or _cuda_started():
        out = []
        for i, x in enumerate(items):
            out.append(fn(x))
            if progress is not None:
                progress(i + 1)
        return out
    if _JOB is not None:
        raise RuntimeError("fork_map: nested or concurrent calls are not supported")
    _JOB = (fn, items)
    pool = mp.get_context("fork").Pool(w, initializer=_init_worker)
    try:
        out = []
        for r in pool.imap(_run, range(n)):
            out.append(r)
            if progress is not None:
                progress(len(out))
        pool.close()  # the workers finish their loop and exit
        return out
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        _JOB = None
