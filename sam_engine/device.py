"""Device selection (torch only, cheap to import: the annotation server and the engine use it)."""

from __future__ import annotations

import torch


def resolve_device(name: str | None = "cpu") -> torch.device:
    """``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"`` (CUDA when torch sees a GPU, else CPU).

    ``"auto"`` never picks MPS (ask for ``"mps"`` by name). A device that is not there is a ``ValueError``
    naming it, never a silent fall-back to the CPU.
    """
    name = (name or "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r} (expected auto, cpu, cuda, cuda:N or mps)") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} requested but torch sees {torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError(f"device {name!r} requested but MPS is not available")
    return device
