"""A thousand students come and go with media, and the server ends as it began.

Each cycle is a real aiortc participant that joins, receives the teacher's video
(first decoded frame) and leaves. Ten cycles run at once, a hundred rounds. Then the
server's tasks, threads, open files, sockets and bus topics are back to what they
were after a warm-up of 200 cycles, and its resident memory within 5 %.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from media.client import LessonClient
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling.permissions import Role

from .conftest import RunningServer, start_server, stop_server

pytestmark = pytest.mark.usefixtures("decoding_clients")

AT_ONCE = 10
ROUNDS = 100
WARM_UP = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("leaks"))
    yield running
    stop_server(running)
    assert "Traceback" not in running.log()


async def cycle(server: RunningServer, teacher: LessonClient, number: int) -> None:
    student = LessonClient(server.ws, server.token(f"S{number}", Role.STUDENT, lesson="leaks"))
    await student.connect()
    try:
        await student.wait_track(teacher.participant_id or "", "video", timeout=30)
    finally:
        await student.close()


async def quiet(server: RunningServer) -> dict[str, Any]:
    """The server's metrics once only the teacher is left (every leave processed)."""
    metrics: dict[str, Any] = {}
    try:
        async with asyncio.timeout(30):
            while True:
                metrics = server.metrics()
                if metrics["connections"] == 1 and metrics["sfu"]["participants"] == 1:
                    return metrics
                # Polling /metrics: the server offers no event for "cleanup finished".
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(
            f"30 s after the last leave: {metrics['connections']} connections, "
            f"{metrics['sfu']['participants']} SFU participants (1 and 1 expected); "
            f"metrics {metrics}"
        )


@pytest.mark.timeout(600)
async def test_a_thousand_join_and_leave_cycles_with_media_leave_nothing_behind(
    server: RunningServer,
) -> None:
    teacher = LessonClient(server.ws, server.token("T", Role.TEACHER, lesson="leaks"))
    await teacher.connect()
    await teacher.publish([(PatternVideoTrack(), "camera"), (ToneAudioTrack(), "microphone")])
    try:
        # Warm up: pools, caches and the allocator's arenas reach their working size
        # (measured: the server's memory grows over the first ~200 cycles, then stays
        # within 1 % for 2,400 more).
        for start in range(0, WARM_UP, AT_ONCE):
            await asyncio.gather(*(cycle(server, teacher, start + n) for n in range(AT_ONCE)))
        before = await quiet(server)
        for round_number in range(ROUNDS):
            base = 1000 + round_number * AT_ONCE
            await asyncio.gather(*(cycle(server, teacher, base + n) for n in range(AT_ONCE)))
        after = await quiet(server)
        for resource in ("asyncio_tasks", "threads", "open_fds", "connections", "bus_topics"):
            assert after[resource] == before[resource], resource
        for counter in ("subscriptions", "peer_connections", "participants"):
            assert after["sfu"][counter] == before["sfu"][counter], counter
        grown = after["rss_bytes"] / before["rss_bytes"] - 1
        assert grown < 0.05, f"resident memory grew {grown:.1%} over {ROUNDS * AT_ONCE} cycles"
        print(  # the figure for docs/security.md
            f"\n{ROUNDS * AT_ONCE} cycles: RSS {before['rss_bytes'] / 2**20:.1f} -> "
            f"{after['rss_bytes'] / 2**20:.1f} MiB ({grown:+.2%}), "
            f"fds {before['open_fds']} -> {after['open_fds']}"
        )
    finally:
        await teacher.close()
