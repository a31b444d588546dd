"""A stream that lives past every 16-bit counter, end to end through ``lco serve``.

A browser camera sends about 70 video packets a second: a lesson crosses 65,536
packets per track in about 16 minutes. Here a synthetic publisher (real aiortc,
pre-encoded VP8 at a high frame rate) sends a few thousand packets a second, so that
its track crosses 65,536 packets in about half a minute; two subscribers decode every
frame and must keep decoding in every two-second window, to the end.
"""

from __future__ import annotations

import asyncio
import fractions
import os
from collections.abc import Iterator

import av
import pytest

from benchmarks.encoded import EncodedStream, PreEncodedTrack
from media import hooks
from media.client import LessonClient, ReceivedTrack
from media.testsource import ToneAudioTrack
from signaling.permissions import Role

from .conftest import RunningServer, start_server, stop_server

pytestmark = pytest.mark.usefixtures("decoding_clients")

WIDTH, HEIGHT = 176, 128
FPS = 300
TARGET_PACKETS = 70_000  # past 65,536, with a margin
WINDOW = 2.0
STALLED_WINDOWS = 3  # windows in a row without a decoded frame: a stall
# Windows after which the stream is too slow to get there (it takes about 15 here):
# fail saying how far it got, rather than at pytest's timeout with nothing to go on.
MAX_WINDOWS = 150


def noisy_vp8(frames: int = 60) -> EncodedStream:
    """VP8 frames of fresh noise (so each is several packets), a keyframe every 30."""
    context = av.CodecContext.create("libvpx", "w")
    context.width, context.height = WIDTH, HEIGHT
    context.pix_fmt = "yuv420p"
    context.time_base = fractions.Fraction(1, FPS)
    context.bit_rate = 40_000_000
    context.gop_size = 30
    context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    encoded: list[tuple[bytes, bool]] = []
    for index in range(frames):
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        for plane in frame.planes:
            plane.update(os.urandom(plane.buffer_size))
        frame.pts = index
        encoded += [(bytes(p), bool(p.is_keyframe)) for p in context.encode(frame)]
    return EncodedStream(
        kind="video",
        codec="vp8",
        frames=encoded,
        frame_interval=1 / FPS,
        pts_step=90_000 // FPS,
        clock_rate=90_000,
        info={"width": WIDTH, "height": HEIGHT, "fps": FPS},
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("long"))  # the default path: RTP
    yield running
    stop_server(running)


def packets_received(client: LessonClient, kind: str) -> int:
    """Media packets the subscriber's receiver counted, retransmissions left out.

    Not ``getStats()``: aiortc files every SSRC of a receiver under one id, so after
    the first retransmission its RTX stream's small count hides the media stream's."""
    assert client.subscribe_pc is not None
    return sum(
        received
        for transceiver in client.subscribe_pc.getTransceivers()
        if transceiver.kind == kind
        for _, received, _ in hooks.received_streams(transceiver.receiver)
    )


@pytest.mark.timeout(400)
async def test_every_subscriber_keeps_decoding_past_65536_packets_per_track(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    stream = noisy_vp8()
    frame_packets = sum(len(data) // 1200 + 1 for data, _ in stream.frames) / len(stream.frames)
    assert frame_packets * FPS > 2_000  # packets a second: the wrap comes within a minute
    teacher = LessonClient(server.ws, server.token("T", Role.TEACHER, lesson="long"))
    viewers = [
        LessonClient(server.ws, server.token(f"V{n}", Role.CLASSROOM, lesson="long"))
        for n in range(2)
    ]
    for client in (teacher, *viewers):
        await client.connect()
    camera = PreEncodedTrack(stream)
    try:
        await teacher.publish([(camera, "camera"), (ToneAudioTrack(), "microphone")])
        assert teacher.publish_pc is not None
        for transceiver in teacher.publish_pc.getTransceivers():
            if transceiver.kind == "video":
                hooks.on_keyframe_request(transceiver.sender, camera.request_keyframe)
        tracks: dict[tuple[int, str], ReceivedTrack] = {}
        for n, viewer in enumerate(viewers):
            for kind in ("video", "audio"):
                tracks[(n, kind)] = await viewer.wait_track(teacher.participant_id or "", kind)
        windows = 0
        # A stream that stopped for good stays stopped; a busy machine's hiccup does
        # not last STALLED_WINDOWS windows in a row.
        still: dict[tuple[int, str], int] = dict.fromkeys(tracks, 0)
        while (reached := min(packets_received(v, "video") for v in viewers)) < TARGET_PACKETS:
            before = {key: track.frames for key, track in tracks.items()}
            await asyncio.sleep(WINDOW)  # a measurement window, not a wait for an event
            for key, track in tracks.items():
                still[key] = still[key] + 1 if track.frames == before[key] else 0
            stalled = [key for key, count in still.items() if count >= STALLED_WINDOWS]
            assert not stalled, (
                f"no frame decoded for {STALLED_WINDOWS} windows up to window {windows} "
                f"at {reached} packets: {stalled}"
            )
            windows += 1
            assert windows < MAX_WINDOWS, (
                f"only {reached} of {TARGET_PACKETS} packets after {windows} windows; "
                f"frames decoded: { {key: t.frames for key, t in tracks.items()} }"
            )
        assert not [r for r in caplog.records if "failed to decode" in r.getMessage()]
        assert all(t.frames > 0 for t in tracks.values())
        metrics = server.metrics()["sfu"]
        assert isinstance(metrics, dict)
        assert metrics["errors"] == 0
        assert metrics["frames_decoded"] == 0 and metrics["frames_encoded"] == 0
    finally:
        for client in (teacher, *viewers):
            await client.close()
