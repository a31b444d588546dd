"""A viewer on a slow link steps down to the small layer and climbs back, by itself.

The teacher publishes simulcast (about 150 kbit/s, 500 kbit/s and 1.2 Mbit/s, with a
browser-like voice); two viewers decode it. One viewer's downlink is shaped with
``tc`` to 300 kbit/s (an HTB class on loopback for its UDP port only, in the test
namespace): the server sees its losses in its receiver reports and steps it down to
the small layer; the other keeps the large one. When the shaping is lifted the first
climbs back (the server probes with padding before each step up). How fast it
steps down and up is measured in ``benchmarks/`` (the waits here only bound a hang).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
from collections.abc import Iterator

import pytest

from benchmarks.encoded import PreEncodedTrack, encode_audio
from media.client import LessonClient, ReceivedTrack
from media.simulcast import DEFAULT_LAYERS
from media.testsource import PatternVideoTrack
from signaling.permissions import Role

from .conftest import RunningServer, start_server, stop_server

pytestmark = pytest.mark.usefixtures("decoding_clients")

LARGE, SMALL = (640, 360), (160, 90)


class Shaper:
    """An HTB class on ``lo`` that one UDP port's incoming traffic goes through."""

    def __init__(self) -> None:
        self.port: int | None = None

    def tc(self, *args: str) -> None:
        subprocess.run(["tc", *args], check=True, capture_output=True)

    def limit(self, port: int, kbit: int) -> None:
        self.port = port
        self.tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10")
        self.tc(
            "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit"
        )
        self.tc(
            "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20",
            "htb", "rate", f"{kbit}kbit", "ceil", f"{kbit}kbit", "burst", "8k",
        )  # fmt: skip
        # A short queue, as a congested home router's: what does not fit is lost.
        self.tc("qdisc", "add", "dev", "lo", "parent", "1:20", "pfifo", "limit", "20")
        self.tc(
            "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "u32",
            "match", "ip", "protocol", "17", "0xff", "match", "ip", "dport", str(port), "0xffff",
            "flowid", "1:20",
        )  # fmt: skip

    def lift(self) -> None:
        self.tc("qdisc", "del", "dev", "lo", "root")
        self.port = None


@pytest.fixture
def shaper() -> Iterator[Shaper]:
    if os.environ.get("LCO_IN_NETNS") != "1":
        pytest.skip("shaping traffic needs the test network namespace (scripts/netns-run)")
    shaping = Shaper()
    yield shaping
    if shaping.port is not None:
        shaping.lift()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("downlink"))
    yield running
    stop_server(running)
    assert "Traceback" not in running.log()


def local_port(client: LessonClient) -> int:
    """The UDP port the viewer's subscribe connection receives on (ICE host candidate)."""
    assert client.subscribe_pc is not None
    transport = client.subscribe_pc.getTransceivers()[0].receiver.transport.transport
    (candidate,) = transport.iceGatherer.getLocalCandidates()
    port: int = candidate.port
    return port


async def reaches(track: ReceivedTrack, size: tuple[int, int], timeout: float) -> float:
    """Seconds until ``track`` decodes frames of ``size``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(timeout):
        while (track.width, track.height) != size:
            track.progress.clear()
            await track.progress.wait()
    return loop.time() - started


def longest_gap(track: ReceivedTrack, since: float) -> float:
    """The longest time between two decoded frames after ``since`` (monotonic)."""
    times = [t for t in track.arrivals if t >= since]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@pytest.mark.timeout(180)
async def test_a_viewer_on_a_slow_link_steps_down_and_climbs_back(
    server: RunningServer, shaper: Shaper
) -> None:
    def join(name: str, role: Role) -> LessonClient:
        return LessonClient(server.ws, server.token(name, role, lesson="slow-link"))

    teacher, slow, fast = (
        join("T", Role.TEACHER),
        join("Home", Role.STUDENT),
        join("Room", Role.CLASSROOM),
    )
    for client in (teacher, slow, fast):
        await client.connect()
    try:
        camera = PatternVideoTrack(*LARGE, fps=15, detail=0.1)
        voice = PreEncodedTrack(encode_audio(seconds=2))
        await teacher.publish([(camera, "camera"), (voice, "microphone")], simulcast=DEFAULT_LAYERS)
        teacher_id = teacher.participant_id or ""
        slow_video = await slow.wait_track(teacher_id, "video")
        fast_video = await fast.wait_track(teacher_id, "video")
        await reaches(slow_video, LARGE, 20)
        await reaches(fast_video, LARGE, 20)

        loop = asyncio.get_running_loop()
        shaped_at = loop.time()
        shaper.limit(local_port(slow), 300)
        down = await reaches(slow_video, SMALL, 20)
        stall = longest_gap(slow_video, shaped_at)
        await LessonClient.wait_frames(slow_video, 30)  # it goes on at the small size
        # The other viewer is not held down by the slow one (it may itself step down a
        # while on a busy machine, and then climbs back on its own).
        await reaches(fast_video, LARGE, 60)

        shaper.lift()
        up = await reaches(slow_video, LARGE, 60)
        print(
            f"\n300 kbit/s: down to {SMALL[0]}x{SMALL[1]} in {down:.1f} s "
            f"(longest gap between frames {stall:.2f} s); back up in {up:.1f} s; "
            f"sizes {[(w, h) for _, w, h in slow_video.sizes]}"
        )
    finally:
        for client in (teacher, slow, fast):
            await client.close()
