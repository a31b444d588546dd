"""A recording that cannot be written stops with its reason; the lesson goes on.

The server runs with a file-size limit (``RLIMIT_FSIZE``): the first track file
that reaches it fails to grow (EFBIG), as a full disk fails a write. The teacher
is told why, ``recording.stopped`` is announced with the reason, and media keeps
flowing. Retention deletes what stopped long enough ago.
"""

from __future__ import annotations

import asyncio
import json
import resource
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from media import hooks
from media.client import LessonClient
from media.testsource import PatternVideoTrack, ToneAudioTrack
from server.recordings import MANIFEST, RecordingService, write_private_json
from signaling import protocol as p
from signaling.permissions import Role
from signaling.registry import InMemoryLessonRegistry

from .conftest import loopback_http, start_server, stop_server

FILE_LIMIT = 400 * 1024


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def hook(self, request: Request) -> Response:
        self.events.append(json.loads(await request.body()))
        self.arrived.set()
        return Response(status_code=200)

    async def wait(self, event: str) -> dict[str, Any]:
        async with asyncio.timeout(30):
            while True:
                for item in self.events:
                    if item["event"] == event:
                        return item
                self.arrived.clear()
                await self.arrived.wait()


async def test_a_write_error_stops_recording_not_the_lesson(tmp_path: Path) -> None:
    hooks.install_counting_hooks()
    hooks.set_host_addresses(["127.0.0.1"])
    receiver = Receiver()
    async with loopback_http([Route("/hook", receiver.hook, methods=["POST"])]) as hook_url:
        try:
            await record_until_the_disk_refuses(tmp_path, receiver, hook_url)
        finally:
            hooks.uninstall_hooks()
            hooks.set_host_addresses(None)


async def record_until_the_disk_refuses(tmp_path: Path, receiver: Receiver, hook_url: str) -> None:
    server = start_server(
        tmp_path,
        "--webhook-url",
        f"{hook_url}/hook",
        "--webhook-secret",
        "s" * 40,
        preexec_fn=limit_file_size,
    )
    teacher = LessonClient(server.ws, server.token("Ms T", Role.TEACHER, lesson="full"))
    student = LessonClient(server.ws, server.token("Ana", Role.STUDENT, lesson="full"))
    try:
        await teacher.connect()
        await student.connect()
        await teacher.publish(
            [(PatternVideoTrack(640, 480), "camera"), (ToneAudioTrack(), "microphone")]
        )
        video = await student.wait_track(teacher.participant_id or "", "video")
        stopped = teacher.wait_for(
            lambda m: m["type"] == "recording_changed" and not m["recording"], timeout=60
        )
        await teacher.send(p.StartRecording())
        message = await stopped
        assert message["reason"] == "writing the recording failed: [Errno 27] File too large"
        assert message["message"] == f"recording stopped: {message['reason']}"
        started = await receiver.wait("recording.started")
        assert started["data"]["by"] == "Ms T"
        announced = await receiver.wait("recording.stopped")
        assert announced["data"] == {"lesson": "full", "reason": message["reason"]}
        # The lesson goes on: the student still receives the teacher.
        await student.wait_frames(video, 20)
        assert teacher.bye is None and student.bye is None
        [recording] = server.api("GET", "/api/lessons/full/recordings").json()
        assert recording["manifest"]["stop_reason"] == message["reason"]
        failed = [t for t in recording["manifest"]["tracks"] if t["status"] == "failed"]
        assert [t["kind"] for t in failed] == ["video"]
    finally:
        await teacher.close()
        await student.close()
        stop_server(server)


async def _nothing(effect: Any) -> None:
    """Effects are not carried out here: the service only expires files."""


def test_retention_deletes_recordings_that_stopped_long_enough_ago(tmp_path: Path) -> None:
    now = 1_900_000_000.0
    service = RecordingService(
        tmp_path,
        InMemoryLessonRegistry(),
        lambda track_id: None,
        _nothing,
        retention=30 * 86400,
        clock=lambda: now,
    )
    ages = {"20260101T000000Z-aaaaaa": 31, "20260102T000000Z-bbbbbb": 29}
    for name, days in ages.items():
        directory = tmp_path / "recordings" / "maths" / name
        directory.mkdir(parents=True)
        write_private_json(directory / MANIFEST, {"stopped_at": now - days * 86400})
        (directory / "t-1.webm").write_bytes(b"x")
    assert service.expire() == ["maths/20260101T000000Z-aaaaaa"]
    assert [r["id"] for r in service.listing("maths")] == ["20260102T000000Z-bbbbbb"]
    assert (
        tmp_path / "recordings" / "maths" / "20260102T000000Z-bbbbbb" / MANIFEST
    ).stat().st_mode & 0o777 == 0o600
