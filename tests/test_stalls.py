"""A process that stalls is not a peer that went silent (media/loop_watch.py).

On a busy machine a server (or a client) can stop running for seconds; what the other
side sent meanwhile waits in the socket buffer. Counting that as the other side's
silence dropped every socket of a soak's lesson at once when the stall ended.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from media.client import LessonClient
from media.loop_watch import SLACK, TICK, LoopWatch
from signaling import protocol as p
from signaling.permissions import Role

from .conftest import RunningServer, start_server, stop_server

IDLE_TIMEOUT = 2.0  # the servers' own keep-alive timeout in this module
STALL = 3 * IDLE_TIMEOUT


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_stall_is_not_counted_as_awake_time() -> None:
    clock = ManualClock()
    watch = LoopWatch(clock)
    lags: list[float] = []
    watch.on_lag(lags.append)
    for _ in range(10):  # one second of punctual ticks
        clock.now += TICK
        watch.tick()
    assert watch.awake_since(100.0) == pytest.approx(1.0)
    start = clock.now
    clock.now += 5.0  # the loop does not run for 5 s
    # Asked before the watch has ticked again: the stall so far does not count.
    assert watch.awake_since(start) == pytest.approx(TICK)
    watch.tick()
    assert lags[-1] == pytest.approx(5.0 - TICK) and lags[0] == pytest.approx(0.0)
    for _ in range(5):  # half a second of punctual ticks again
        clock.now += TICK
        watch.tick()
    assert watch.awake_since(start) == pytest.approx(TICK + 0.5)
    assert watch.awake_since(100.0) == pytest.approx(1.0 + TICK + 0.5)
    # Jitter within the slack is not a stall.
    clock.now += TICK + SLACK / 2
    watch.tick()
    assert watch.awake_since(clock.now - TICK - SLACK / 2) == pytest.approx(TICK + SLACK / 2)


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("stalls"),
        "--idle-timeout",
        str(IDLE_TIMEOUT),
        "--ping-interval",
        "0.5",
    )
    yield running
    stop_server(running)


async def still_answers(client: LessonClient) -> bool:
    pong = client.wait_for(lambda m: m["type"] == "pong", timeout=10)
    await client.send(p.Ping())
    return (await pong)["type"] == "pong"


async def test_a_server_that_stalls_keeps_its_sockets(quick_server: RunningServer) -> None:
    """The server process is stopped (SIGSTOP) for three keep-alive timeouts while its
    client keeps answering: once it runs again, nobody is dropped."""
    client = LessonClient(quick_server.ws, quick_server.token("Ana", Role.STUDENT, lesson="stall"))
    await client.connect()
    client.keepalive_timeout = 60  # this test is about the server's side only
    byes = asyncio.ensure_future(client.wait_for(lambda m: m["type"] == "bye", timeout=60))
    try:
        os.kill(quick_server.process.pid, signal.SIGSTOP)
        await asyncio.sleep(STALL)  # the stall itself, not a wait for an event
        os.kill(quick_server.process.pid, signal.SIGCONT)
        # Two timeouts of a running server: long enough to drop a silent client.
        for _ in range(4):
            assert await still_answers(client)
            await asyncio.sleep(IDLE_TIMEOUT / 2)
        assert not byes.done() and client.silences == 0 and client.reconnects == 0
    finally:
        os.kill(quick_server.process.pid, signal.SIGCONT)
        byes.cancel()
        await client.close()
