"""Progress bars with an ETA for long commands (``lco bench``, ``lco publish --duration``).

On a terminal they are drawn with ``rich`` on standard error, below the command's own
lines; elsewhere (a log file, CI) nothing is drawn and the lines go out as before.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO, cast

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Lines(io.TextIOBase):
    """A text stream whose lines are printed above the progress bar."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def write(self, text: str) -> int:
        self._console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        return len(text)


class StepProgress:
    """Steps done of a total, elapsed time and the time left, estimated from the pace of
    the steps so far. Use as a context manager; :meth:`update` is the callback."""

    def __init__(
        self,
        description: str,
        console: Console | None = None,
        get_time: Callable[[], float] | None = None,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = self.console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=self.console,
            get_time=get_time,
            disable=not self.enabled,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=None)
        # Where the command's own lines go: above the bar on a terminal.
        self.lines: TextIO | None = cast(TextIO, _Lines(self.console)) if self.enabled else None

    def __enter__(self) -> StepProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def update(self, done: int, total: int, label: str) -> None:
        """``done`` of ``total`` steps; ``label`` says what runs now."""
        self._progress.update(self._task, completed=done, total=total, description=label)

    def render(self) -> str:
        """The bar as text (for tests)."""
        with self.console.capture() as captured:
            self.console.print(self._progress.make_tasks_table(self._progress.tasks))
        return captured.get()


class TimedProgress(StepProgress):
    """A bar for a command that runs for a known time (``--duration``)."""

    def __init__(self, description: str, seconds: float, console: Console | None = None) -> None:
        super().__init__(description, console)
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True, name="progress")

    def __enter__(self) -> TimedProgress:
        super().__enter__()
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        super().__exit__(kind, error, trace)

    def _tick(self) -> None:
        started = time.monotonic()
        total = max(1, round(self._seconds))
        while not self._stop.wait(0.5):
            self.update(min(total, round(time.monotonic() - started)), total, "seconds")
