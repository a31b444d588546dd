"""The workloads of issue 5 and the systems measured on them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from signaling.permissions import Role

SYSTEMS: dict[str, str] = {
    "ours": "LCO Classroom: RTP packets forwarded (lco serve, the default)",
    "pack": "aiortc pre-encoded pack() path: lco serve --forwarding frames",
    "mediarelay": "aiortc MediaRelay: decode once, encode per subscriber",
    "janus": "Janus VideoRoom 1.1.2 (Debian), event_loops = 2, HTTP API",
    "udprelay": "zero-hop baseline: a trivial UDP relay copying each datagram to every "
    "subscriber (no signalling, no SRTP work; raw load mode only)",
}
# Systems that need the load generator to speak their signalling (all but the relay).
SIGNALLED = ("ours", "pack", "mediarelay", "janus")
# Rounds per size by default: the headline workloads are measured five times,
# interleaved, so that a ratio comes with its spread (benchmarks/stats.py).
HEADLINE_ROUNDS = 5
# Server CPU above this (% of one core) ends a ramp: 85 % of the machine's cores.
RAMP_CPU_LIMIT = 85.0 * (os.cpu_count() or 1)
RAMP_LOSS_LIMIT = 1.0  # % lost (after repair) at subscribers
RAMP_FPS_FRACTION = 0.9  # ... or fewer video frames delivered than this part of the source


@dataclass(frozen=True, slots=True)
class Workload:
    """Who publishes what to how many subscribers."""

    name: str
    description: str
    publishers: int
    video: str | None
    audio: bool
    sizes: tuple[int, ...]  # subscriber counts, one run per size and system
    duration: float  # measurement window, seconds
    publisher_role: Role = Role.TEACHER
    subscriber_role: Role = Role.STUDENT
    ramp: bool = False  # sizes are steps, stopped per system at the ramp limits
    inject_loss: float = 0.0  # fraction of datagrams dropped in subscriber processes
    inject_delay: float = 0.0  # seconds added to every datagram there
    churn: int = 0  # extra subscribers that join and leave, one event per second
    publishers_hear_each_other: bool = False
    headline: bool = False  # measured in HEADLINE_ROUNDS rounds unless told otherwise


def workloads(quick: bool) -> dict[str, Workload]:
    """The workloads of issue 5 implemented so far, full or ``--quick`` size."""
    return {
        "core": Workload(
            "core",
            "one teacher, 640x480 20 fps VP8 (~0.8 Mbit/s) + Opus, to N students",
            publishers=1,
            video="480p20",
            audio=True,
            sizes=(8,) if quick else (1, 4, 8),
            duration=4.0 if quick else 20.0,
            headline=True,
        ),
        "w1": Workload(
            "w1",
            "one teacher, 1280x720 30 fps VP8 (~1.5 Mbit/s) + Opus, to N classrooms",
            publishers=1,
            video="720p30",
            audio=True,
            sizes=(10,) if quick else (30,),
            duration=4.0 if quick else 20.0,
            subscriber_role=Role.CLASSROOM,
        ),
        "w2": Workload(
            "w2",
            "teacher + expert, each 1280x720 30 fps VP8 (~1.5 Mbit/s) + Opus, to N students, "
            "ramped until loss > 1 %, server CPU > 85 % of the cores or < 90 % of frames",
            publishers=2,
            video="720p30",
            audio=True,
            sizes=(2, 8) if quick else (1, 2, 4, 8, 12, 16, 24, 32),
            duration=3.0 if quick else 10.0,
            ramp=True,
            headline=True,
        ),
        "w3": Workload(
            "w3",
            "six schools, each publishing 640x480 20 fps VP8 + Opus and receiving the other five",
            publishers=6,
            video="480p20",
            audio=True,
            sizes=(0,),
            duration=5.0 if quick else 20.0,
            publisher_role=Role.CLASSROOM,
            publishers_hear_each_other=True,
        ),
        "w4": Workload(
            "w4",
            "audio only: 10 speakers (Opus 20 ms) to N listeners (speakers hear each other)",
            publishers=10,
            video=None,
            audio=True,
            sizes=(4,) if quick else (4, 10),
            duration=4.0 if quick else 20.0,
            publisher_role=Role.EXPERT,
            publishers_hear_each_other=True,
        ),
        "w5": Workload(
            "w5",
            "W1 with churn: one classroom joins or leaves every second during the window",
            publishers=1,
            video="720p30",
            audio=True,
            sizes=(6,) if quick else (30,),
            duration=6.0 if quick else 20.0,
            subscriber_role=Role.CLASSROOM,
            churn=8 if quick else 20,
        ),
        "w6": Workload(
            "w6",
            "W2 with 2 % loss and 50 ms delay on every subscriber's ingress (NACK, RTX, PLI)",
            publishers=2,
            video="720p30",
            audio=True,
            sizes=(4,) if quick else (4, 8),
            duration=4.0 if quick else 15.0,
            inject_loss=0.02,
            inject_delay=0.05,
        ),
    }
