"""Progress bars with an ETA (server/progress.py), on a terminal and off it."""

from __future__ import annotations

import io

from rich.console import Console

from server.progress import StepProgress, TimedProgress


def test_the_time_left_follows_the_pace_of_the_steps_done() -> None:
    now = [100.0]
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    with StepProgress("lco bench", console=terminal, get_time=lambda: now[0]) as bar:
        assert bar.enabled and bar.lines is not None
        bar.update(0, 4, "core: ours x8")
        now[0] = 130.0
        bar.update(1, 4, "core: pack x8")
        now[0] = 160.0
        bar.update(2, 4, "core: relay x8")
        shown = bar.render()
        assert "core: relay x8" in shown and "2/4" in shown
        assert "0:01:00" in shown  # two more steps at 30 s each
        bar.lines.write("a line of the command's own\n")
    assert "a line of the command's own" in terminal.file.getvalue()  # type: ignore[attr-defined]


def test_off_a_terminal_nothing_is_drawn() -> None:
    log = Console(file=io.StringIO(), force_terminal=False)
    with TimedProgress("publishing", 30, console=log) as bar:
        assert not bar.enabled and bar.lines is None
        bar.update(1, 2, "x")
    assert log.file.getvalue() == ""  # type: ignore[attr-defined]
