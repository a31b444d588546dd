"""A lesson whose node is killed moves to the other node, and its media comes back.

One round of ``lco bench run --workload failover`` (``benchmarks/failover.py``): two
nodes on a real redis-server, a lesson on one of them with a publisher and a viewer
that joined through the other, then SIGKILL of the lesson's node. How fast, over five
rounds on a quiet machine, is in ``docs/benchmarks.md``; the waits here only bound a
hang.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from benchmarks.failover import Redis, run_failover, summary_lines
from benchmarks.runner import RunOptions


@pytest.mark.timeout(180)
async def test_a_killed_nodes_lesson_is_owned_seated_and_seen_again(tmp_path: Path) -> None:
    why = Redis.available()
    if why:
        pytest.skip(why)
    progress = io.StringIO()
    body = await run_failover(RunOptions(log_dir=tmp_path, progress=progress), 1)
    assert not body["errors"], body["errors"]
    (figures,) = body["rounds"]
    print(f"\nfailover: {progress.getvalue().strip()}")
    # Each step happened, in the order it must: the lesson has an owner again before
    # the publisher can take a seat in it, and the viewer sees it only after that.
    assert figures["owner_s"] is not None and figures["seat_s"] is not None
    assert figures["media_s"] is not None, "the viewer never saw the publisher again"
    assert figures["seat_s"] <= figures["media_s"]
    assert all(n >= 1 for n in figures["reconnects"])  # each classroom tried again
    lines = summary_lines({"failover": body})
    assert lines[0] == "a lesson's node is killed: 1 rounds"
    assert any(line.startswith("  media_s <= 10 s (worst round): ") for line in lines)
