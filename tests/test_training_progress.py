"""Training progress lines for logs (sam_engine.training.progress): printed at least once per interval."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from sam_engine.training.progress import ProgressLines, duration, progress_interval


class _Clock:
    def __init__(self, step_s: float) -> None:
        self.t, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.t


def _train(cb: ProgressLines, clock: _Clock, steps: int) -> list[tuple[float, str]]:
    """Drive the callback through ``steps`` training steps of ``clock.step_s`` seconds each; the lines it
    printed, with the clock time at which each was printed."""
    out = io.StringIO()
    cb.stream = out
    trainer = SimpleNamespace(global_step=0, max_steps=steps, callback_metrics={}, callbacks=[])
    cb.on_train_start(trainer, None)
    printed = []
    for i in range(steps):
        clock.t += clock.step_s
        trainer.global_step = i + 1
        trainer.callback_metrics = {"train/loss": 1.0 / (i + 1)}
        before = out.getvalue().count("\n")
        cb.on_train_batch_end(trainer, None, None, None, i)
        if out.getvalue().count("\n") > before:
            printed.append((clock.t, out.getvalue().splitlines()[-1]))
    return printed


@pytest.mark.parametrize("every_s,step_s", [(10.0, 3.0), (5.0, 7.0), (0.0, 1.0)])
def test_a_line_at_least_once_per_interval(every_s, step_s):
    clock = _Clock(step_s)
    printed = _train(ProgressLines("model_v1", every_s=every_s, clock=clock), clock, steps=40)
    times = [0.0] + [t for t, _ in printed]
    # no gap between lines (or from the start) longer than the interval plus the one step that crosses it
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= every_s + step_s
    assert printed[-1][0] == 40 * step_s  # the last step is always reported
    if every_s == 0:
        assert len(printed) == 40


def test_a_line_says_step_loss_elapsed_and_eta():
    clock = _Clock(6.0)
    printed = _train(ProgressLines("model_v2", every_s=30.0, clock=clock), clock, steps=20)
    line = printed[1][1]
    assert line.startswith("  model_v2: step ")
    assert "/20" in line and "loss " in line and "elapsed " in line and "eta " in line
    assert all(len(text) < 120 for _, text in printed)


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("SAM_ENGINE_PROGRESS_SECONDS", "2.5")
    assert progress_interval() == 2.5
    assert ProgressLines().every_s == 2.5
    monkeypatch.setenv("SAM_ENGINE_PROGRESS_SECONDS", "soon")
    assert progress_interval() == 30.0
    monkeypatch.delenv("SAM_ENGINE_PROGRESS_SECONDS")
    assert progress_interval() == 30.0


def test_duration():
    assert duration(4.2) == "4s"
    assert duration(75) == "1m15s"
    assert duration(3700) == "1h01m"
