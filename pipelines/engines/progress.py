"""A terminal progress bar (partitions, rows, ETA) shared by the engines, and the line
that says where a fit is."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from operators.base import FitClock
from pipelines.runs import format_duration


class _Bar:
    def __init__(self, progress: Any, task: Any):
        self.progress, self.task = progress, task

    def advance(self, rows: int) -> None:
        self.progress.update(self.task, advance=1, rows=self.progress.tasks[0].fields["rows"]
                             + rows)


class _NoBar:
    def advance(self, rows: int) -> None:
        pass


class _ProgressContext:
    def __init__(self, label: str, total: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("partitions, {task.fields[rows]:,} rows"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), transient=True,
        )
        self.label, self.total = label, total

    def __enter__(self) -> _Bar:
        self.progress.start()
        task = self.progress.add_task(self.label, total=self.total, rows=0)
        return _Bar(self.progress, task)

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()


def progress_bar(enabled: bool, label: str, total: int) -> Any:
    """A context manager yielding a bar with ``advance(rows)``; a no-op when disabled."""
    return _ProgressContext(label, total) if enabled else nullcontext(_NoBar())


def fit_label(step: str, clock: FitClock) -> str:
    """Where a fit is, as its pass's progress bar is labelled: 'model: pass 38, tree 6 of
    60, fit ETA 1m20s' (the ETA where the estimator can say how much of the fit is done:
    ``FitClock.left``)."""
    text = f"{step}: pass {clock.passes}"
    progress = clock.progress
    if progress is None:
        return text
    text += f", {progress.where}"
    left = clock.left()
    if left is not None:
        text += f", fit ETA {format_duration(left)}"
    return text
