"""Torch thread counts for the engine's processes, so concurrent processes do not oversubscribe the cores.

A torch process takes every core by default. Two such processes on two cores made training 10x slower here
(each thread pool spins against the other), so every process the engine starts (Dagster steps, the
annotation server, evaluations, ``make pretrain``) calls :func:`configure_torch_threads` with the number of
torch processes it expects beside it. ``SAM_ENGINE_TORCH_THREADS`` overrides the count.
"""

from __future__ import annotations

import os

ENV = "SAM_ENGINE_TORCH_THREADS"


def torch_threads(concurrent: int = 1) -> int:
    """Threads for one of ``concurrent`` torch processes sharing this machine's cores (at least 1)."""
    if os.environ.get(ENV):
        return max(1, int(os.environ[ENV]))
    return max(1, (os.cpu_count() or 1) // max(1, concurrent))


def configure_torch_threads(concurrent: int = 1, threads: int | None = None) -> int:
    """Set this process's intra-op threads (``threads``, else :func:`torch_threads`); returns the count."""
    import torch

    n = threads if threads is not None else torch_threads(concurrent)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started in this process
        pass
    return n
