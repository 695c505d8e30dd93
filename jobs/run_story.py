"""What `make run` prints while Dagster runs: one line per step (duration, key figure, checks), and the full
event log of every run into one file.

``RunStory.listen(instance, run_id)`` subscribes to a run's events on the instance before the run starts (the
run executes in this process, so events arrive as they happen).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from dagster import DagsterEventType, DagsterInstance, EventLogEntry

from sam_engine.training.progress import duration

# (metadata key, format): a step shows the first two its asset has
FIGURES: tuple[tuple[str, str], ...] = (
    ("gold/miou@1", "gold mIoU@1 {:.3f}"),
    ("gold/noc@90", "NoC@90 {:.2f}"),
    ("train/steps", "{:.0f} steps"),
    ("val/miou@1", "val mIoU@1 {:.3f}"),
    ("proposals", "{} proposals"),
    ("masks", "{} masks"),
    ("tasks", "{} tasks"),
    ("chosen_images", "{} images chosen"),
    ("images", "{} images"),
    ("shards", "shards: {}"),
    ("annotators", "{} annotators"),
    ("failed_checks", "{} failed checks"),
    ("drifted", "drifted: {}"),
)
MAX_LINE = 240  # a printed line is cut here (the log file keeps everything)


def _value(v: Any) -> Any:
    return getattr(v, "value", v)


def key_figure(metadata: Mapping[str, Any]) -> str:
    """The one or two figures that say what an asset produced (``34 masks``, ``gold mIoU@1 0.712``)."""
    out = []
    for key, fmt in FIGURES:
        if key in metadata and len(out) < 2:
            try:
                out.append(fmt.format(_value(metadata[key])))
            except (TypeError, ValueError):
                continue
    if _value(metadata.get("released", False)) is True:
        out.append("released checkpoint")
    elif _value(metadata.get("trained_now", True)) is False:
        out.append(
            f"carried from {_value(metadata['carried_from'])}"
            if _value(metadata.get("carried_from"))
            else "reused"
        )
    return ", ".join(out)


def _clip(line: str) -> str:
    line = line.replace("\r", " ").replace("\n", " ")
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


class RunStory:
    """Prints a line per finished step and appends every event of the runs it listens to ``log_path``."""

    def __init__(self, log_path: str | Path, out: IO[str] | None = None) -> None:
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        self._file = self.log_path.open("a", encoding="utf-8")
        self._started: dict[str, float] = {}
        self._figures: dict[str, list[str]] = {}
        self._checks: dict[str, list[str]] = {}

    def say(self, line: str) -> None:
        """Print a line (clipped) and copy it into the log file."""
        print(_clip(line), file=self.out or sys.stdout, flush=True)
        self._write(f"{datetime.now().isoformat(timespec='seconds')} STORY {line}")

    def listen(self, instance: DagsterInstance, run_id: str) -> None:
        """Subscribe to ``run_id``'s events on ``instance`` (call before the run starts)."""
        instance.add_event_listener(run_id, self._on_event)

    def close(self) -> None:
        self._file.close()

    def _write(self, text: str) -> None:
        if not self._file.closed:
            self._file.write(text.rstrip("\n") + "\n")
            self._file.flush()

    def _on_event(self, entry: EventLogEntry, *_: Any) -> None:
        try:
            self._log(entry)
            self._narrate(entry)
        except Exception as exc:  # the story must never break the run it describes
            self._write(f"(run story could not handle an event: {exc!r})")

    def _log(self, entry: EventLogEntry) -> None:
        event = entry.dagster_event
        kind = event.event_type_value if event else "LOG"
        stamp = datetime.fromtimestamp(entry.timestamp).isoformat(timespec="seconds")
        level = logging.getLevelName(entry.level)
        self._write(
            f"{stamp} {level} {entry.job_name or '-'} {entry.step_key or '-'} {kind}: {entry.user_message}"
        )

    def _narrate(self, entry: EventLogEntry) -> None:
        event = entry.dagster_event
        step = entry.step_key
        if event is None or step is None:
            return
        kind = event.event_type
        if kind == DagsterEventType.STEP_START:
            self._started[step] = entry.timestamp
        elif kind == DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.step_materialization_data.materialization
            self._figures.setdefault(step, []).append(
                (mat.asset_key.to_user_string(), key_figure(mat.metadata))
            )
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            ev = event.asset_check_evaluation_data
            self._checks.setdefault(step, []).append(f"{ev.check_name} {'passed' if ev.passed else 'FAILED'}")
        elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            ok = kind == DagsterEventType.STEP_SUCCESS
            seconds = (
                event.event_specific_data.duration_ms / 1000.0
                if ok and getattr(event.event_specific_data, "duration_ms", None) is not None
                else entry.timestamp - self._started.get(step, entry.timestamp)
            )
            figures = self._figures.pop(step, [])
            named = len(figures) > 1 or any(asset != step for asset, _ in figures)
            parts = [f"{asset} {fig}" if named else fig for asset, fig in figures if fig]
            checks = self._checks.pop(step, [])
            if checks:
                parts.append("checks: " + ", ".join(checks))
            if not ok:
                error = getattr(event.event_specific_data, "error", None)
                while error is not None and getattr(error, "cause", None) is not None:
                    error = error.cause  # the user's exception, not Dagster's wrapper of it
                message = (error.message if error else entry.user_message).strip().splitlines()
                parts.insert(0, "FAILED: " + (message[0] if message else "see the event log"))
            self.say(f"  {step:<36} {duration(seconds):>7}  {'; '.join(parts)}".rstrip())
        elif kind == DagsterEventType.STEP_SKIPPED:
            self.say(f"  {step:<36} skipped (an upstream step or blocking check failed)")


def log_file_name(now: float | None = None) -> str:
    """``run-YYYYmmdd-HHMMSS.log`` for this moment."""
    return f"run-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}.log"
