"""Students on another node than their lesson's, with and without ``--cascade``: both
deliver, both are priced per delivered packet, and cascading sends one copy per track.

One quick round of ``lco bench run --workload cascade`` (``benchmarks/cascade.py``):
two nodes on a real redis-server for each variant, a teacher on the lesson's node,
students on the other. What cascading costs, over five rounds on a quiet machine, is
in ``docs/benchmarks.md``; here only that every figure is there and the copies went
where each variant sends them.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from benchmarks import docgen
from benchmarks.cascade import (
    QUICK_WINDOW,
    TRACKS,
    VARIANT_FIGURES,
    VARIANTS,
    run_cascade,
    summary_lines,
)
from benchmarks.failover import Redis
from benchmarks.runner import RunOptions

STUDENTS = 4


@pytest.mark.timeout(240)
async def test_cascading_and_relaying_both_deliver_and_cascading_sends_one_copy_a_track(
    tmp_path: Path,
) -> None:
    why = Redis.available()
    if why:
        pytest.skip(why)
    progress = io.StringIO()
    options = RunOptions(log_dir=tmp_path, progress=progress)
    body = await run_cascade(options, 1, students=STUDENTS, window=QUICK_WINDOW)
    assert not body["errors"], body["errors"]
    (record,) = body["rounds"]
    print(f"\ncascade: {progress.getvalue().strip()}")
    assert record["order"] == list(VARIANTS)  # the first round starts with cascade
    for variant in VARIANTS:
        figures = record[variant]
        for key in VARIANT_FIGURES:
            assert figures[key] is not None and figures[key] > 0, (variant, key, figures)
        assert figures["topology_ok"], figures["topology_problem"]

    # With cascade the lesson's node sends one copy of each track to the students'
    # node, which forwards one per student and track; the lesson's node forwards
    # about a student's worth of packets, the students' node what they receive.
    cascade = record["cascade"]
    students_node = cascade["nodes"]["students_node"]
    assert cascade["crossing"] == {students_node: TRACKS}
    assert cascade["subscriptions"] == {"lesson_node": TRACKS, "students_node": TRACKS * STUDENTS}
    forwarded = cascade["forwarded_packets_per_s"]
    assert forwarded["students_node"] > (STUDENTS - 1) * forwarded["lesson_node"]
    # Without, the students' node carries no media at all.
    relay = record["relay"]
    assert relay["crossing"] is None
    assert relay["subscriptions"] == {"lesson_node": TRACKS * STUDENTS, "students_node": 0}
    assert relay["forwarded_packets_per_s"]["students_node"] == 0

    assert record["cpu_per_packet_ratio"] > 0
    assert body["summary"]["topology_ok_rounds"] == 1
    lines = summary_lines({"cascade": body})
    assert lines[0].endswith(": 1 rounds (medians)")
    assert any(line.startswith("  CPU per delivered packet, cascade/relay: ") for line in lines)
    region = docgen.Region("cascade", {"need": "pinned"}, 0, 0, 0)
    page = docgen.render_cascade({"cascade": body}, region)
    assert "| CPU per delivered packet, both nodes, µs | " in page
    assert "| 1 | cascade, relay | " in page and "In 1 of 1 rounds the copies went" in page
