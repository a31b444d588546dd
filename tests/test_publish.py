"""``lco publish`` as an operator runs it: what ends its session badly makes it exit
non-zero, and a network that drops under it does not end its session."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from media.client import LessonClient
from signaling.permissions import Role

from .conftest import RunningServer, lco_publish, start_server, stop_server
from .netns import NestedNamespace

pytestmark = pytest.mark.usefixtures("decoding_clients")

REPO = Path(__file__).resolve().parent.parent


def welcome_for(participant_id: str) -> dict[str, Any]:
    you = {
        "id": participant_id,
        "name": "Camera",
        "role": "classroom",
        "school": "north",
        "can_publish": True,
        "tracks": [],
        "muted": [],
        "presenter": False,
        "hand_raised": False,
        "group": None,
        "connected": True,
    }
    return {
        "v": 1,
        "type": "welcome",
        "participant_id": participant_id,
        "lesson": "fake",
        "you": you,
        "permissions": ["join", "publish", "subscribe"],
        "participants": [],
        "ice_servers": [],
        "state": {
            "locked": False,
            "spotlight": None,
            "breakout": False,
            "groups": {},
            "broadcast_audio_from": None,
            "chat_policy": "everyone",
        },
        "resumed": False,
        "keepalive": {"interval": 2.0, "timeout": 4.0},
    }


@pytest.fixture
async def oversized_server() -> AsyncIterator[str]:
    """A server (not ours) that welcomes, then sends a message of 2 MiB."""

    async def handler(ws: Any) -> None:
        await ws.recv()  # the join
        await ws.send(json.dumps(welcome_for("a1b2c3d4e5f6")))
        await ws.send(json.dumps({"v": 1, "type": "notice", "code": "x", "message": "x" * 2**21}))
        await ws.wait_closed()

    async with websockets.serve(handler, "127.0.0.1", 0, max_size=None) as served:
        port = served.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


async def test_a_message_larger_than_it_accepts_ends_lco_publish_with_an_error(
    oversized_server: str,
) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        lco_publish(oversized_server, "x", "--source", "none", "--duration", "20"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "larger than this client accepts" in done.stderr


def test_a_refused_publish_ends_lco_publish_with_an_error(server: RunningServer) -> None:
    token = server.token("Ana", Role.STUDENT, lesson="refused-publish")
    done = subprocess.run(
        lco_publish(server.http, token, "--source", "test-pattern", "--duration", "20"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "may not publish until the teacher allows it" in done.stderr


# --- a network that drops under lco publish --------------------------------------------


@pytest.fixture(scope="module")
def reachable_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that a program in another network namespace reaches on the test
    namespace's address (ICE too)."""
    address = os.environ.get("LCO_TEST_HOST_ADDRESS")
    if not address:
        pytest.skip("needs the test network namespace (scripts/netns-run)")
    running = start_server(
        tmp_path_factory.mktemp("reachable"), "--host", "0.0.0.0", "--ice-host", address
    )
    yield running
    stop_server(running)


async def test_lco_publish_takes_its_seat_back_after_a_network_drop(
    reachable_server: RunningServer,
) -> None:
    server = reachable_server
    address = os.environ["LCO_TEST_HOST_ADDRESS"]
    lesson = "field-trip"
    teacher = LessonClient(server.ws, server.token("Ms T", Role.TEACHER, lesson=lesson))
    await teacher.connect()
    left: list[dict[str, Any]] = []
    watching = asyncio.ensure_future(
        teacher.wait_for(lambda m: m["type"] == "participant_left" and bool(left.append(m)), 120)
    )
    with NestedNamespace() as trip:
        token = server.token("Trip laptop", Role.CLASSROOM, lesson=lesson)
        url = f"http://{address}:{server.port}"
        publisher = subprocess.Popen(  # noqa: ASYNC220 (a program that runs alongside)
            trip.command(
                *lco_publish(url, token, "--source", "test-pattern", "--duration", "15"),
                "--report",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        try:
            joined = await teacher.wait_for(lambda m: m["type"] == "participant_joined", 30)
            seat = joined["participant"]["id"]
            video = await teacher.wait_track(seat, "video", timeout=30)
            await teacher.wait_frames(video, 10)
            device = f"{trip._outer_name}i"
            down = f"link set {device} down\naddr flush dev {device}\n"
            trip.run("ip", "-batch", "-", stdin=down)
            await asyncio.sleep(2)  # the drop itself: the scenario, not a race
            frames = video.frames
            trip.run(
                "ip",
                "-batch",
                "-",
                stdin=f"addr add {trip.subnet}.3/24 dev {device}\nlink set {device} up\n"
                f"route add default via {trip.gateway}\n",
            )
            restored = time.monotonic()
            await teacher.wait_frames(video, 1, timeout=20)
            back = time.monotonic() - restored
            assert video.frames > frames
            print(f"\nlco publish: its camera back at the teacher {back:.2f} s after the network")
            out, err = await asyncio.to_thread(publisher.communicate, timeout=60)
        finally:
            if publisher.poll() is None:
                publisher.kill()
    assert publisher.returncode == 0, err
    report = json.loads(out)
    assert report["participant_id"] == seat and report["resumes"] >= 1 and not report["errors"]
    assert [m for m in left if m["participant_id"] == seat and m["reason"] != "left"] == []
    watching.cancel()
    await teacher.close()
