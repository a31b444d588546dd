"""Simulcast end to end through ``lco serve``, with real aiortc peers.

The teacher publishes its camera as three layers (160x90, 320x180, 640x360: the
Python client sends simulcast as a browser does, ``media/simulcast.py``); each
viewer decodes the layer its view calls for, and an audio-only viewer gets no video.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from benchmarks.encoded import PreEncodedTrack, encode_audio
from media.client import LessonClient, ReceivedTrack
from media.simulcast import DEFAULT_LAYERS
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling.permissions import Role

from .conftest import RunningServer, start_server, stop_server

pytestmark = pytest.mark.usefixtures("decoding_clients")

LARGE, MIDDLE, SMALL = (640, 360), (320, 180), (160, 90)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("simulcast"))
    yield running
    stop_server(running)
    assert "Traceback" not in running.log()


async def shows(track: ReceivedTrack, size: tuple[int, int], timeout: float = 15) -> None:
    """Wait until ``track`` decodes frames of ``size`` (a few, to be sure)."""
    async with asyncio.timeout(timeout):
        while True:
            if (track.width, track.height) == size:
                await LessonClient.wait_frames(track, 3)
                if (track.width, track.height) == size:
                    return
            track.progress.clear()
            await track.progress.wait()


async def bytes_received(client: LessonClient) -> int:
    """What the viewer's subscribe connection received, in bytes (its transport's stats)."""
    assert client.subscribe_pc is not None
    report = await client.subscribe_pc.getStats()
    return sum(s.bytesReceived for s in report.values() if s.type == "transport")


async def join(server: RunningServer, name: str, role: Role, lesson: str) -> LessonClient:
    client = LessonClient(server.ws, server.token(name, role, lesson=lesson))
    await client.connect()
    return client


async def test_each_viewer_decodes_the_layer_it_shows(server: RunningServer) -> None:
    teacher = await join(server, "T", Role.TEACHER, "layers")
    stage = await join(server, "Room", Role.CLASSROOM, "layers")
    thumbnail = await join(server, "Ana", Role.STUDENT, "layers")
    clients = [teacher, stage, thumbnail]
    try:
        camera = PatternVideoTrack(*LARGE, fps=15)
        reply = await teacher.publish(
            [(camera, "camera"), (ToneAudioTrack(), "microphone")], simulcast=DEFAULT_LAYERS
        )
        assert reply["type"] == "publish_answer"
        assert "a=simulcast:recv l;m;h" in reply["sdp"]
        teacher_id = teacher.participant_id or ""
        on_stage = await stage.wait_track(teacher_id, "video")
        small = await thumbnail.wait_track(teacher_id, "video")
        await thumbnail.receive_settings(sizes={small.track_id: SMALL})
        await shows(on_stage, LARGE)
        await shows(small, SMALL)
        # The thumbnail goes to the stage, the stage becomes a middle tile.
        notice = stage.wait_for(
            lambda m: (
                m["type"] == "receive_quality" and any(v["width"] == MIDDLE[0] for v in m["videos"])
            )
        )
        await thumbnail.receive_settings(sizes={small.track_id: LARGE})
        await stage.receive_settings(sizes={on_stage.track_id: (300, 170)})
        await shows(small, LARGE)
        await shows(on_stage, MIDDLE)
        told = await notice  # the server says what it forwards now
        assert told["level"] == "high" and told["limited_by"] is None
        sfu = server.metrics()["sfu"]
        assert isinstance(sfu, dict)
        assert sfu["errors"] == 0 and sfu["frames_decoded"] == 0
    finally:
        for client in clients:
            await client.close()


async def test_an_audio_only_viewer_gets_no_video_and_little_data(server: RunningServer) -> None:
    teacher = await join(server, "T", Role.TEACHER, "audio-only")
    phone = await join(server, "Ben", Role.STUDENT, "audio-only")
    room = await join(server, "Room", Role.CLASSROOM, "audio-only")
    clients = [teacher, phone, room]
    try:
        voice = PreEncodedTrack(encode_audio(seconds=2))  # Opus at 32 kbit/s, as a browser's
        await teacher.publish(
            [(PatternVideoTrack(*LARGE, fps=15), "camera"), (voice, "microphone")],
            simulcast=DEFAULT_LAYERS,
        )
        teacher_id = teacher.participant_id or ""
        video = await phone.wait_track(teacher_id, "video")
        audio = await phone.wait_track(teacher_id, "audio")
        room_video = await room.wait_track(teacher_id, "video")
        told = phone.wait_for(
            lambda m: m["type"] == "receive_quality" and m["level"] == "audio_only"
        )
        await phone.receive_settings(mode="audio_only")
        notice = await told
        assert notice["limited_by"] == "settings"
        assert not any(v["forwarded"] for v in notice["videos"])
        frames = video.frames
        before = await bytes_received(phone)
        started = asyncio.get_running_loop().time()
        await LessonClient.wait_frames(audio, 150)  # three seconds of 20 ms audio
        await LessonClient.wait_frames(room_video, 20)  # the others still get video
        seconds = asyncio.get_running_loop().time() - started
        kbps = (await bytes_received(phone) - before) * 8 / seconds / 1000
        assert video.frames <= frames + 1  # a frame in flight at most
        assert kbps < 64, f"{kbps:.1f} kbit/s down while audio only"
        print(f"\naudio only: {kbps:.1f} kbit/s down over {seconds:.1f} s")
        # And back: video again, as large as there is.
        await phone.receive_settings(mode="auto")
        await shows(video, LARGE)
    finally:
        for client in clients:
            await client.close()
