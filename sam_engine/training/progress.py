"""Training progress for logs: a short line every few seconds when stdout is not a terminal.

Lightning's progress bar redraws one terminal line; in a log file (``make run > run.log``, CI) it becomes one
huge line or nothing until the end. ``ProgressLines`` prints ``step, loss, elapsed, eta`` instead, at most
every ``every_s`` seconds (``SAM_ENGINE_PROGRESS_SECONDS``, default 30; 0 prints every step).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from lightning.pytorch.callbacks import Callback

ENV_INTERVAL = "SAM_ENGINE_PROGRESS_SECONDS"
DEFAULT_INTERVAL_S = 30.0


def progress_interval() -> float:
    """Seconds between progress lines: ``$SAM_ENGINE_PROGRESS_SECONDS`` or 30."""
    raw = os.environ.get(ENV_INTERVAL, "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default stdout) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``; ``4.2`` -> ``4s``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class ProgressLines(Callback):
    """Print ``<label> step S/N  loss L  elapsed E  eta T`` after a training step when ``every_s`` seconds
    have passed since the last line (and always after the first and the last step)."""

    def __init__(
        self,
        label: str = "training",
        every_s: float | None = None,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.every_s = progress_interval() if every_s is None else every_s
        self.stream = stream
        self.clock = clock
        self._t0 = 0.0
        self._last = 0.0
        self._step0 = 0
        self.lines = 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._t0 = self._last = self.clock()
        self._step0 = trainer.global_step
        self.lines = 0

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = self.clock()
        step, total = trainer.global_step, trainer.max_steps
        due = self.lines == 0 or now - self._last >= self.every_s or (total > 0 and step >= total)
        if due:
            self._emit(trainer, now)

    def _emit(self, trainer: Any, now: float) -> None:
        step, total = trainer.global_step, trainer.max_steps
        elapsed = now - self._t0
        parts = [f"{self.label}: step {step}" + (f"/{total}" if total and total > 0 else "")]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.3f}")
        parts.append(f"elapsed {duration(elapsed)}")
        eta = self._eta(trainer, step, total, elapsed)
        if eta is not None:
            parts.append(f"eta {duration(eta)}")
        print("  " + "  ".join(parts), file=self.stream or sys.stdout, flush=True)
        self._last = now
        self.lines += 1

    def _eta(self, trainer: Any, step: int, total: int, elapsed: float) -> float | None:
        done = step - self._step0
        eta = None
        if total and total > 0 and done > 0:
            eta = max(0.0, (total - step) * elapsed / done)
        for cb in getattr(trainer, "callbacks", []):
            if type(cb).__name__ == "Timer":  # max_time caps the run: the time it has left caps the eta
                remaining = cb.time_remaining("train")
                if remaining is not None:
                    eta = remaining if eta is None else min(eta, remaining)
        return eta
