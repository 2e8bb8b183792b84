"""A terminal progress bar (partitions, rows, ETA) shared by the engines, and the line
that says where a fit is."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from operators.base import FitClock
from pipelines.runs import format_duration

ELLIPSIS = "…"
BAR_WIDTHS = (10, 40)
"""The bar's narrowest and widest: a line with less room for it has none."""
SHORTEST_STEP = 10
"""A step id cut to make room for the counters keeps at least this many characters."""


class _Bar:
    def __init__(self, progress: Any, task: Any):
        self.progress, self.task = progress, task

    def advance(self, rows: int) -> None:
        self.progress.update(self.task, advance=1, rows=self.progress.tasks[0].fields["rows"]
                             + rows)


class _NoBar:
    def advance(self, rows: int) -> None:
        pass


def middle_cut(text: str, room: int) -> str:
    """``text`` in at most ``room`` characters: its two ends around an ellipsis."""
    if len(text) <= room:
        return text
    if room < 2:
        return ELLIPSIS[:room]
    head = room // 2
    tail = room - 1 - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


def _fewer_parts(parts: list[str]) -> list[str]:
    """The label's parts after the step id ('pass 38', 'tree 6 of 60', 'level 2 of at
    most 6', 'fit ETA 1m20s'), each text with fewer of them: all; without the pass
    number; then those between the first counter and the last part go from the back;
    then the last part alone."""
    out = [", ".join(parts)]
    inner = parts[1:-1]
    for n in range(len(inner), 0, -1):
        out.append(f"{ELLIPSIS}{', '.join(inner[:n])}, "
                   f"{'' if n == len(inner) else ELLIPSIS}{parts[-1]}")
    if len(parts) > 1:
        out.append(ELLIPSIS + parts[-1])
    return out


def shortened(label: str, room: int) -> str:
    """A pass's label (``fit_label``) in at most ``room`` characters. The step id and the
    counters after it stay, the middle goes: a long step id is cut in its middle (to no
    fewer than ``SHORTEST_STEP`` characters), then parts of the label go
    (``_fewer_parts``: 'model: …tree 6 of 60, fit ETA 1m20s'); where even the last part
    does not fit, the label is cut in its middle."""
    if len(label) <= room:
        return label
    step, sep, rest = label.partition(": ")
    for after in _fewer_parts(rest.split(", ")) if sep else []:
        if room - len(sep) - len(after) >= min(len(step), SHORTEST_STEP):
            return middle_cut(step, room - len(sep) - len(after)) + sep + after
    return middle_cut(label, room)


def pass_line(label: str, counts: str, rows: int, times: str, width: int
              ) -> tuple[str, int, str]:
    """How a pass's line fits ``width`` columns, as (the label, the bar's width (0: no
    bar), what follows the bar), each apart by a space: the line in full where it fits,
    else without the bar, then without the rows, the times, the word 'partitions';
    then with its label ``shortened``. Never wider than ``width``: a line that wraps
    would leave a copy of itself on the terminal at each redraw."""
    full = f"{counts} partitions, {rows:,} rows {times}"
    room = width - len(label) - len(full) - 2
    if room >= BAR_WIDTHS[0]:
        return label, min(room, BAR_WIDTHS[1]), full
    for after in (full, f"{counts} partitions {times}", f"{counts} partitions", counts):
        if len(label) + 1 + len(after) <= width:
            return label, 0, after
    room = width - 1 - len(counts)
    if room < 1:
        return "", 0, counts[:width]
    return shortened(label, room), 0, counts


class _PassLine:
    """A pass's line, laid out (``pass_line``) for the width it is drawn in, each time
    it is drawn: a terminal resized during the pass included."""

    def __init__(self, task: Any, elapsed: Any, remaining: Any):
        self.task, self.elapsed, self.remaining = task, elapsed, remaining

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        task = self.task
        times = f"{self.elapsed.render(task).plain} ETA {self.remaining.render(task).plain}"
        label, bar, after = pass_line(task.description,
                                      f"{int(task.completed)}/{int(task.total or 0)}",
                                      task.fields["rows"], times, options.max_width)
        cells: list[Any] = [Text(label)] if label else []
        if bar:
            cells.append(ProgressBar(total=task.total, completed=task.completed, width=bar))
        cells.append(Text(after, style="progress.download"))
        grid = Table.grid(padding=(0, 1))
        for _ in cells:
            grid.add_column(no_wrap=True, overflow="crop")
        grid.add_row(*cells)
        yield grid


class _ProgressContext:
    def __init__(self, label: str, total: int):
        from rich.console import Console
        from rich.progress import Progress, TimeElapsedColumn, TimeRemainingColumn

        elapsed, remaining = TimeElapsedColumn(), TimeRemainingColumn()

        class PassProgress(Progress):
            def get_renderables(self) -> Any:
                for task in self.tasks:
                    yield _PassLine(task, elapsed, remaining)

        # on stderr, which ``--progress`` asks whether it is a terminal: the results on
        # stdout may go to a file or a pipe; the width is the terminal's, read at each
        # redraw (COLUMNS, where set, wins)
        self.progress = PassProgress(console=Console(stderr=True), transient=True)
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
