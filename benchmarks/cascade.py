"""What cascading costs per packet it delivers (the scale-out issue): ``--workload cascade``.

A lesson lives on node A, where its teacher's socket is; its students' sockets are
on node B. Each round runs it twice, in alternating order, each time on two new
nodes (``lco serve --redis``) of one redis-server:

- **cascade**: both nodes with ``--cascade``. B serves the students' subscriptions:
  A sends one copy of each track to B (a pseudo-participant ``~node:B`` in A's SFU)
  and B forwards it to every student.
- **relay**: the same nodes without ``--cascade``. B only relays the students'
  signalling; their media comes straight from A, which forwards every copy.

The teacher publishes a 640x360 15 fps test camera and a tone (aiortc, encoded in
this process); the students (8 unless told) receive both without decoding (aiortc
receivers that hand on encoded frames: a student costs the server what a browser
does, and this process little). Once every student has frames of both tracks and a
warm-up has passed, a window measures:

- **CPU** of each node's process (schedstat, :mod:`benchmarks.procstat`), in % of
  one core, and of both together;
- **delivered packets**: the RTP media packets the students' receivers counted (RFC
  3550 counts per media SSRC, as in their receiver reports; retransmissions left
  out), whichever node sent them. The copies that cross from A to B are not
  delivered packets: they are part of what delivering costs;
- **CPU per delivered packet** of both nodes together (µs), and per round the ratio
  cascade / relay and the difference cascade minus relay: cascading's extra cost
  per delivered packet.

Each variant also records the nodes' SFU counters (packets forwarded, subscriptions)
and checks where the copies went: with cascade, A's ``crossing`` is exactly one copy
per track to B and B forwards one per student and track; with relay, A forwards
them all and B none. Runs on loopback; needs ``redis-server``.
``tests/test_bench_cascade.py`` runs one quick round of the same code.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from media import hooks
from media.client import LessonClient
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling.permissions import Role
from signaling.tokens import mint_token

from . import procstat
from .failover import Node, Redis, placed_by_a_join, redis_on_loopback, start_node
from .processes import receiving_on_loopback
from .runner import RunOptions
from .stats import rounds_summary

VARIANTS = ("cascade", "relay")
STUDENTS = 8
CAMERA = (640, 360, 15)  # width, height, frames per second: the mix workload's camera
TRACKS = 2  # the teacher's camera and microphone
WARM_UP = 5.0  # seconds after every student has frames: the encoder's rate settles
WINDOW = 20.0
QUICK_WINDOW = 5.0
READY_TIMEOUT = 30.0
# What each variant measures, and what a round's pair of them gives.
VARIANT_FIGURES = (
    "lesson_node_cpu_pct",
    "students_node_cpu_pct",
    "server_cpu_pct",
    "delivered_packets_per_s",
    "cpu_us_per_packet",
)
PAIR_FIGURES = ("cpu_per_packet_ratio", "extra_us_per_packet")
FIGURES = (*(f"{v}_{k}" for v in VARIANTS for k in VARIANT_FIGURES), *PAIR_FIGURES)


def _delivered(student: LessonClient) -> int:
    """Media packets the student's receivers counted so far (RFC 3550 counts per media
    SSRC, as in their receiver reports; retransmissions left out)."""
    pc = student.subscribe_pc
    if pc is None:
        return 0
    return sum(
        received
        for transceiver in pc.getTransceivers()
        for _, received, _ in hooks.received_streams(transceiver.receiver)
    )


def _forwarded(metrics: dict[str, Any]) -> int:
    """Packets a node's SFU forwarded so far (its ``/metrics.json``; the counter is
    absent while the SFU has no track, as on the students' node without cascade)."""
    return int(metrics["sfu"].get("packets_forwarded", 0))


def topology_problem(
    variant: str, students: int, lesson_node: dict[str, Any], students_node: dict[str, Any]
) -> str | None:
    """Why the copies did not go where ``variant`` sends them (None: they did), from
    the two nodes' ``/metrics.json``: with cascade, one copy per track crosses to the
    students' node, which forwards one per student and track; with relay, the lesson's
    node forwards them all."""
    subscriptions = (lesson_node["sfu"]["subscriptions"], students_node["sfu"]["subscriptions"])
    if variant == "cascade":
        there, here = students_node["cluster"]["node"], lesson_node["cluster"]["node"]
        crossing = lesson_node["cascade"]["crossing"]
        upstream = students_node["cascade"]["upstream"]
        if crossing != {there: TRACKS} or upstream != {here: TRACKS}:
            return f"crossing {crossing}, upstream {upstream}: not one copy per track"
        expected = (TRACKS, TRACKS * students)
    else:
        expected = (TRACKS * students, 0)
    if subscriptions != expected:
        return f"subscriptions (lesson's node, students' node) {subscriptions}, not {expected}"
    return None


async def measure_variant(
    number: int,
    variant: str,
    redis_server: Redis,
    options: RunOptions,
    directory: Path,
    students: int,
    window: float,
) -> dict[str, Any]:
    """One variant of one round (see the module's docstring) on two new nodes: its
    figures, and where the copies went."""
    secret = os.urandom(32).hex()
    lesson = f"cascade-{number}-{variant}"

    def token(name: str, role: Role) -> str:
        return mint_token(secret.encode(), lesson=lesson, name=name, role=role, ttl_seconds=3600)

    extra = ["--cascade"] if variant == "cascade" else []
    data_dir = directory / f"data-{number}-{variant}"
    nodes: list[Node] = []
    clients: list[LessonClient] = []
    await redis_server.forget_everything()
    try:
        for side in "ab":
            name = f"r{number}{variant[0]}{side}"
            nodes.append(await start_node(name, redis_server, data_dir, options, secret, extra))
        # A first join places the lesson wherever the nodes' load says; the teacher's
        # socket then goes to that node and the students' to the other.
        probe = LessonClient(nodes[0].ws, token("Probe", Role.OBSERVER))
        clients.append(probe)
        owner = await placed_by_a_join(nodes, lesson, probe)
        lesson_node, students_node = nodes[owner], nodes[1 - owner]
        teacher = LessonClient(lesson_node.ws, token("Teacher", Role.TEACHER))
        clients.append(teacher)
        await teacher.connect()
        await probe.close()  # it would be one more subscriber, on either node
        viewers = [
            LessonClient(students_node.ws, token(f"Student {n}", Role.STUDENT))
            for n in range(1, students + 1)
        ]
        clients += viewers
        for viewer in viewers:
            await viewer.connect()
        width, height, fps = CAMERA
        camera = PatternVideoTrack(width, height, fps=fps, detail=0.1)
        await teacher.publish([(camera, "camera"), (ToneAudioTrack(), "microphone")])
        teacher_id = teacher.participant_id or ""
        for viewer in viewers:
            for kind in ("video", "audio"):
                track = await viewer.wait_track(teacher_id, kind, READY_TIMEOUT)
                await LessonClient.wait_frames(track, 5, READY_TIMEOUT)
        await asyncio.sleep(WARM_UP)  # a measurement's warm-up, not a wait for an event

        both = (lesson_node, students_node)
        pids = [node.child.process.pid for node in both]
        cpu_before = [procstat.sample(pid) for pid in pids]
        forwarded_before = [_forwarded(await node.metrics()) for node in both]
        delivered_before = sum(_delivered(v) for v in viewers)
        start = time.monotonic()
        await asyncio.sleep(window)  # the measurement window itself
        end = time.monotonic()
        delivered = sum(_delivered(v) for v in viewers) - delivered_before
        metrics = [await node.metrics() for node in both]
        cpu_after = [procstat.sample(pid) for pid in pids]

        seconds = end - start
        cpu = [
            procstat.cpu_seconds(asdict(before), asdict(after))
            for before, after in zip(cpu_before, cpu_after, strict=True)
        ]
        total = sum(c for c, _ in cpu)
        forwarded = [
            (_forwarded(m) - b) / seconds for m, b in zip(metrics, forwarded_before, strict=True)
        ]
        problem = topology_problem(variant, students, *metrics)
        return {
            "variant": variant,
            "window_s": seconds,
            "lesson_node_cpu_pct": 100 * cpu[0][0] / seconds,
            "students_node_cpu_pct": 100 * cpu[1][0] / seconds,
            "server_cpu_pct": 100 * total / seconds,
            "cpu_source": [source for _, source in cpu],
            "delivered_packets_per_s": delivered / seconds,
            "cpu_us_per_packet": 1e6 * total / delivered if delivered else None,
            # The SFUs' own counts: with cascade, the lesson's node forwards the copies
            # that cross and the students' node what is delivered.
            "forwarded_packets_per_s": {"lesson_node": forwarded[0], "students_node": forwarded[1]},
            "nodes": {
                "lesson_node": metrics[0]["cluster"]["node"],
                "students_node": metrics[1]["cluster"]["node"],
            },
            "subscriptions": {
                "lesson_node": metrics[0]["sfu"]["subscriptions"],
                "students_node": metrics[1]["sfu"]["subscriptions"],
            },
            # None without --cascade (the nodes say so in their metrics).
            "crossing": (metrics[0].get("cascade") or {}).get("crossing"),
            "upstream": (metrics[1].get("cascade") or {}).get("upstream"),
            "topology_ok": problem is None,
            "topology_problem": problem,
            "errors": [str(m) for c in clients for m in c.errors][:5],
        }
    finally:
        for client in clients:
            await client.close()
        for node in nodes:
            await node.child.stop()


def pair_figures(cascade: dict[str, Any], relay: dict[str, Any]) -> dict[str, float | None]:
    """A round's comparison of its two variants: CPU per delivered packet, cascade /
    relay and cascade minus relay (µs)."""
    c, r = cascade["cpu_us_per_packet"], relay["cpu_us_per_packet"]
    present = c is not None and r is not None
    return {
        "cpu_per_packet_ratio": c / r if present and r > 0 else None,
        "extra_us_per_packet": c - r if present else None,
    }


async def run_cascade(
    options: RunOptions, rounds: int, students: int = STUDENTS, window: float = WINDOW
) -> dict[str, Any]:
    """``rounds`` rounds of both variants, in alternating order, each variant on two
    new nodes of one redis-server; returns the results document's body. A round
    counts only when both its variants were measured (its figures are a pair)."""
    # Clients and nodes on loopback, as in one machine's test.
    options = replace(options, host="127.0.0.1")
    measured: list[dict[str, Any]] = []
    errors: list[str] = []
    with receiving_on_loopback():
        async with redis_on_loopback("lco-cascade-") as (directory, redis_server):
            for number in range(1, rounds + 1):
                order = VARIANTS if number % 2 == 1 else VARIANTS[::-1]
                other_work = procstat.ForeignWork()
                record: dict[str, Any] = {"round": number, "order": list(order)}
                for variant in order:
                    try:
                        record[variant] = await measure_variant(
                            number, variant, redis_server, options, directory, students, window
                        )
                    except Exception as exc:
                        errors.append(f"round {number} {variant}: {type(exc).__name__}: {exc}")
                        break
                    if record[variant]["topology_problem"]:
                        errors.append(
                            f"round {number} {variant}: {record[variant]['topology_problem']}"
                        )
                if not all(variant in record for variant in VARIANTS):
                    continue
                record.update(pair_figures(record["cascade"], record["relay"]))
                record["foreign_cpu_pct"] = other_work.pct()
                measured.append(record)
                print(f"  round {number}: {round_line(record)}", file=options.progress)
    return {
        "system": "ours",
        "nodes": 2,
        "students": students,
        "tracks": TRACKS,
        "camera": list(CAMERA),
        "warm_up_s": WARM_UP,
        "window_s": window,
        "rounds": measured,
        "summary": summarise(measured),
        "errors": errors,
    }


def summarise(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median and range over rounds of each variant's figures and of the pair's (no
    targets: the issue asks what cascading costs, not for a limit), and how many
    rounds sent the copies where their variant sends them."""
    flat = [
        {
            **{f"{v}_{k}": r[v][k] for v in VARIANTS for k in VARIANT_FIGURES},
            **{k: r[k] for k in PAIR_FIGURES},
        }
        for r in rounds
    ]
    summary = rounds_summary(flat, FIGURES, {})
    summary["topology_ok_rounds"] = sum(
        1 for r in rounds if all(r[v]["topology_ok"] for v in VARIANTS)
    )
    return summary


def _cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def round_line(record: dict[str, Any]) -> str:
    """One round, as the progress shows it."""
    parts = [
        f"{v} {_cell(record[v]['cpu_us_per_packet'])} us/packet "
        f"({_cell(record[v]['server_cpu_pct'])} % CPU, "
        f"{_cell(record[v]['delivered_packets_per_s'], 0)} packets/s)"
        for v in VARIANTS
    ]
    ratio = record["cpu_per_packet_ratio"]
    return ", ".join(parts) + f"; cascade/relay {'-' if ratio is None else f'{ratio:.2f}'}"


def summary_lines(document: dict[str, Any]) -> list[str]:
    """What ``lco bench run --workload cascade`` prints at the end."""
    body = document["cascade"]
    summary = body["summary"]
    figures = summary["figures"]

    def median(key: str, digits: int = 1) -> str:
        found = figures.get(key)
        return _cell(found and found["median"], digits)

    lines = [
        f"cascading against relaying, {body['students']} students on the other node: "
        f"{summary['rounds']} rounds (medians)"
    ]
    for v in VARIANTS:
        lines.append(
            f"  {v}: CPU {median(f'{v}_lesson_node_cpu_pct')} % (lesson's node) + "
            f"{median(f'{v}_students_node_cpu_pct')} % (students' node) of a core, "
            f"{median(f'{v}_delivered_packets_per_s', 0)} packets/s delivered, "
            f"{median(f'{v}_cpu_us_per_packet')} us per delivered packet"
        )
    ratio = figures.get("cpu_per_packet_ratio")
    if ratio:
        lines.append(
            f"  CPU per delivered packet, cascade/relay: {ratio['median']:.2f} "
            f"[{ratio['low']:.2f}-{ratio['high']:.2f}]; cascade minus relay "
            f"{median('extra_us_per_packet')} us"
        )
    lines.append(
        f"  copies where their variant sends them (cascade: one per track crosses): "
        f"{summary['topology_ok_rounds']} of {summary['rounds']} rounds"
    )
    return lines + [f"  error: {e}" for e in body["errors"]]
