"""``lco publish --source``: a file and an RTSP camera, pulled with PyAV, published
without transcoding (VP8, H264, Opus) or encoded once (AAC), reconnecting when the
RTSP source drops. ``lco publish`` runs as an operator runs it, in its own process."""

from __future__ import annotations

import asyncio
import fractions
import json
from pathlib import Path
from typing import Any

import av
import pytest

from signaling.permissions import Role

from .conftest import RunningServer, lco_publish
from .rtsp_server import RtspServer

pytestmark = pytest.mark.usefixtures("decoding_clients")


def make_file(path: Path, video: str, audio: str, seconds: int = 4) -> Path:
    """A short clip: moving grey levels at 15 fps (a keyframe a second), and a tone."""
    with av.open(str(path), "w") as container:
        vstream = container.add_stream(video, rate=15)
        vstream.width, vstream.height, vstream.pix_fmt = 320, 240, "yuv420p"
        vstream.codec_context.gop_size = 15
        astream = container.add_stream(audio, rate=48000)
        astream.layout = "stereo"
        for index in range(seconds * 15):
            frame = av.VideoFrame(320, 240, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([(index * 8) % 256]) * plane.buffer_size)
            frame.pts = index
            frame.time_base = fractions.Fraction(1, 15)
            container.mux(vstream.encode(frame))
        samples = astream.codec_context.frame_size or 960
        for index in range(seconds * 48000 // samples):
            frame = av.AudioFrame(
                format=astream.codec_context.format.name, layout="stereo", samples=samples
            )
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.sample_rate = 48000
            frame.pts = index * samples
            frame.time_base = fractions.Fraction(1, 48000)
            container.mux(astream.encode(frame))
        container.mux(vstream.encode(None))
        container.mux(astream.encode(None))
    return path


async def start_publish(server: RunningServer, token: str, source: str, seconds: int) -> Any:
    return await asyncio.create_subprocess_exec(
        *lco_publish(
            server.http,
            token,
            *("--source", source, "--duration", str(seconds), "--ice-host", "127.0.0.1"),
            "--report",
        ),
        stdout=asyncio.subprocess.PIPE,
    )


async def report(process: Any) -> dict[str, Any]:
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, out
    result: dict[str, Any] = json.loads(out)
    return result


async def camera_of(student: Any, name: str) -> str:
    message = await student.wait_for(
        lambda m: m["type"] == "participant_joined" and m["participant"]["name"] == name, 30
    )
    participant_id: str = message["participant"]["id"]
    return participant_id


@pytest.mark.parametrize(
    ("suffix", "video", "audio", "passthrough"),
    [("webm", "libvpx", "libopus", ["video", "audio"]), ("mp4", "libx264", "aac", ["video"])],
)
async def test_a_file_is_published_as_it_is_encoded(
    server: RunningServer,
    clients: Any,
    tmp_path: Path,
    suffix: str,
    video: str,
    audio: str,
    passthrough: list[str],
) -> None:
    lesson = f"file-{suffix}"
    clip = make_file(tmp_path / f"clip.{suffix}", video, audio)
    student = await clients("Ana", Role.STUDENT, lesson, "west")
    token = server.token("Clip", Role.FIELD_TRIP, lesson=lesson)
    joined = camera_of(student, "Clip")
    process = await start_publish(server, token, str(clip), 7)
    camera = await joined
    track = await student.wait_track(camera, "video", timeout=30)
    await student.wait_frames(track, 20)
    sound = await student.wait_track(camera, "audio", timeout=30)
    await student.wait_frames(sound, 50)
    assert (track.width, track.height) == (320, 240)
    result = await report(process)
    assert result["source"]["passthrough"] == passthrough
    assert result["source"]["video"] == ("vp8" if suffix == "webm" else "h264")
    # Every frame of the 4 s clip was handed to the sender, once.
    assert result["source"]["sent"]["video"] == 60


async def test_an_rtsp_camera_is_pulled_and_reconnected_after_a_drop(
    server: RunningServer, clients: Any
) -> None:
    # The first session is lco publish's probe; the second drops after 2 s.
    camera = RtspServer(drop_after=30, drop_on_play=2)
    await camera.start()
    try:
        lesson = "rtsp"
        student = await clients("Ana", Role.STUDENT, lesson, "west")
        token = server.token("Harbour camera", Role.FIELD_TRIP, lesson=lesson)
        joined = camera_of(student, "Harbour camera")
        process = await start_publish(server, token, camera.url, 10)
        publisher = await joined
        track = await student.wait_track(publisher, "video", timeout=30)
        await student.wait_frames(track, 10)
        async with asyncio.timeout(30):
            while camera.plays < 3:
                camera.played.clear()
                await camera.played.wait()
        # After the reconnection the same track goes on.
        await student.wait_frames(track, 20, timeout=30)
        result = await report(process)
        assert result["source"]["passthrough"] == ["video"]
        assert result["source"]["connections"] >= 2
        assert student.track_from(publisher, "video") is track
    finally:
        await camera.close()
