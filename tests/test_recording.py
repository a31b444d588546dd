"""media/recording.py: RTP payloads to files without transcoding, off the hot path.

Packets come from aiortc's own encoders and packetisers (the bytes a publisher
sends); the files are decoded with PyAV. The slow-disk and disk-full cases use a
file object that blocks or fails, behind a real forwarder and real subscribers.
"""

from __future__ import annotations

import asyncio
import errno
import fractions
import io
import threading
from pathlib import Path
from typing import Any, BinaryIO

import av
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder

from media.recording import Depacketizer, TrackRecorder, vp8_size

from .rtp_lab import Bench, Publisher, frames_of


def video_frame(index: int, width: int = 320, height: int = 240) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane in frame.planes:
        plane.update(bytes([(index * 7) % 256]) * plane.buffer_size)
    frame.pts = index * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def audio_frame(index: int) -> av.AudioFrame:
    frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate = 48000
    frame.pts = index * 960
    frame.time_base = fractions.Fraction(1, 48000)
    return frame


class Feeder:
    """Packetises like a publisher: payloads of each frame, sequence numbers, marker."""

    def __init__(self, recorder: TrackRecorder, clock: list[float]) -> None:
        self.recorder = recorder
        self.clock = clock
        self.index = 1000

    def frame(self, payloads: list[bytes], timestamp: int) -> None:
        for number, payload in enumerate(payloads):
            marker = number == len(payloads) - 1
            self.recorder.on_packet(self.index, timestamp & 0xFFFFFFFF, marker, payload)
            self.index += 1


def make_recorder(
    tmp_path: Path, codec: str, clock: list[float], **kw: Any
) -> tuple[TrackRecorder, list[str], list[int]]:
    failures: list[str] = []
    requests: list[int] = []
    failed = asyncio.Event()

    def on_failed(reason: str) -> None:
        failures.append(reason)
        failed.set()

    recorder = TrackRecorder(
        tmp_path / f"track-{codec}",
        codec,
        48000 if codec == "opus" else 90000,
        request_keyframe=lambda: requests.append(1),
        on_failed=on_failed,
        loop=asyncio.get_running_loop(),
        clock=lambda: clock[0],
        **kw,
    )
    recorder.failed = failed  # type: ignore[attr-defined]
    return recorder, failures, requests


def decode(path: Path) -> tuple[int, float, list[float]]:
    """Frames (or audio samples / 960), duration in seconds, presentation times."""
    with av.open(str(path)) as container:
        stream = container.streams[0]
        times: list[float] = []
        count = 0
        for frame in container.decode(stream):
            count += 1 if stream.type == "video" else frame.samples // 960
            assert frame.pts is not None and frame.time_base is not None
            times.append(float(frame.pts * frame.time_base))
        return count, times[-1] - times[0], times


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_video_is_written_from_a_keyframe_with_mute_gap_and_source_change(
    tmp_path: Path, codec: str
) -> None:
    clock = [100.0]
    recorder, failures, requests = make_recorder(tmp_path, codec, clock)
    recorder.start()

    def new_encoder() -> Any:
        return Vp8Encoder() if codec == "VP8" else H264Encoder()

    feeder = Feeder(recorder, clock)
    # Frame 1 is a delta frame (its keyframe was never sent): not written; the file
    # starts at the keyframe that follows.
    warm_up = new_encoder()
    warm_up.encode(video_frame(0))
    encoder = new_encoder()
    ts = 5_000
    for index in range(1, 40):
        if index == 1:
            payloads, _ = warm_up.encode(video_frame(1))
        else:
            # The keyframe at 20 is the one the recorder asks for after the mute.
            payloads, _ = encoder.encode(video_frame(index), force_keyframe=index in (20, 30))
        if 15 <= index < 20:
            # A mute: 5 frames are not forwarded; the publisher's numbering and RTP
            # clock run on.
            feeder.index += len(payloads)
            ts += 3000
            clock[0] += 1 / 30
            continue
        if index == 30:
            # A new source: its clock starts anywhere.
            ts = 4_000_000_000
        feeder.frame(payloads, ts)
        ts += 3000
        clock[0] += 1 / 30
    await recorder.stop()
    assert failures == []
    frames, duration, times = decode(recorder.path)
    assert frames == recorder.stats.frames_written == 40 - 2 - 5
    assert times == sorted(times) and len(set(times)) == len(times)
    # From frame 2 to frame 39 at 1/30 s, the mute's 5 frames included.
    assert duration == pytest.approx(37 / 30, abs=0.02)
    assert recorder.stats.discontinuities == 1
    assert recorder.stats.frames_discarded == 2  # frame 1, and the gap of the mute
    assert len(requests) >= 2  # at the start and after the mute
    assert recorder.path.stat().st_mode & 0o777 == 0o600


async def test_opus_packets_are_frames(tmp_path: Path) -> None:
    clock = [0.0]
    recorder, failures, _ = make_recorder(tmp_path, "opus", clock)
    recorder.start()
    encoder = OpusEncoder()
    feeder = Feeder(recorder, clock)
    for index in range(100):
        payloads, _ = encoder.encode(audio_frame(index))
        feeder.frame(payloads, 960 * index)
        clock[0] += 0.02
    await recorder.stop()
    frames, duration, _ = decode(recorder.path)
    assert failures == [] and recorder.path.suffix == ".webm"
    assert frames == 100
    assert duration == pytest.approx(99 * 0.02, abs=0.001)


KEY = b"\x10" + b"\x00\x00\x00\x9d\x01\x2a" + b"\x40\x01\xf0\x00"  # 320x240


def test_a_late_packet_is_put_back_in_its_frame() -> None:
    depacketizer = Depacketizer("VP8")
    assert depacketizer.push(1, 10, False, KEY, 0.0) == []
    assert depacketizer.push(3, 10, True, b"\x00tail", 0.01) == []  # 2 is late
    [frame] = depacketizer.push(2, 10, False, b"\x00middle", 0.2)  # a repair
    assert frame is not None and frame.keyframe
    assert frame.data.endswith(b"middletail")


def test_a_lost_packet_spoils_its_frame_and_video_waits_for_a_keyframe() -> None:
    depacketizer = Depacketizer("VP8")
    assert depacketizer.push(1, 10, False, KEY, 0.0) == []
    assert depacketizer.push(3, 10, True, b"\x00tail", 0.1) == []  # waits for 2
    # 2 did not come within 0.5 s: its frame is lost (None), the next one is whole.
    lost, frame = depacketizer.push(4, 20, True, KEY, 0.7)
    assert lost is None
    assert frame is not None and frame.keyframe and vp8_size(frame.data) == (320, 240)
    assert depacketizer.push(2, 10, False, b"\x00too late", 0.8) == []


class GatedFile(io.RawIOBase):
    """A file whose writes wait until the gate opens: a disk that stalls."""

    def __init__(self, path: Path, gate: threading.Event) -> None:
        self._file = path.open("wb")
        self._gate = gate

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._gate.wait()
        return self._file.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()


class FullDisk(GatedFile):
    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_stalled_disk_drops_recording_packets_never_forwarding(tmp_path: Path) -> None:
    gate = threading.Event()
    results = {}
    for recording in (False, True):
        bench = Bench()
        try:
            viewers = [bench.subscribe() for _ in range(2)]
            recorder = None
            if recording:
                recorder, failures, _ = make_recorder(
                    tmp_path,
                    "VP8",
                    [0.0],
                    open_file=lambda path: GatedFile(path, gate),  # type: ignore[arg-type,return-value]
                    queue_size=64,
                )
                bench.forwarder.add_listener(recorder.on_packet)
                recorder.start()
            publisher = Publisher(ssrc=1234, first_seq=100, first_ts=0, gop=30)
            for packets in frames_of(publisher, 300):
                for packet in packets:
                    bench.forwarder._safe_forward(packet)
                bench.clock.advance(1 / 30)
                for viewer in bench.viewers.values():
                    viewer.drain()
            results[recording] = [_received(bench, v) for v in viewers]
            if recorder is not None:
                # The writer is stuck writing the file's header once the first
                # keyframe (3 packets) was complete, if it took them before the
                # queue was full: 64 more queued, the rest dropped.
                assert recorder.stats.packets == 900
                assert 900 - 64 - 3 <= recorder.stats.packets_dropped <= 900 - 64
                gate.set()
                await recorder.stop()
                assert failures == []
        finally:
            bench.close()
    assert results[True] == results[False] == [900, 900]


def _received(bench: Bench, subscriber: Any) -> int:
    viewer = bench.viewers[subscriber]
    return sum(len(stream.by_index) for stream in viewer.streams.values())


async def test_a_write_error_stops_the_recorder_with_the_reason(tmp_path: Path) -> None:
    clock = [0.0]

    def full(path: Path) -> BinaryIO:
        return FullDisk(path, threading.Event())  # type: ignore[return-value]

    recorder, failures, _ = make_recorder(tmp_path, "VP8", clock, open_file=full)
    recorder.start()
    encoder = Vp8Encoder()
    feeder = Feeder(recorder, clock)
    for index in range(10):
        payloads, _ = encoder.encode(video_frame(index), force_keyframe=index == 0)
        feeder.frame(payloads, 3000 * index)
    async with asyncio.timeout(10):
        await recorder.failed.wait()  # type: ignore[attr-defined]
    assert failures == ["the disk is full"]
    assert recorder.error == "the disk is full"
    await recorder.stop()


async def test_the_forwarders_listener_hears_each_packet_once_in_a_rising_numbering() -> None:
    bench = Bench()
    heard: list[int] = []
    try:
        bench.forwarder.add_listener(lambda index, ts, marker, payload: heard.append(index))
        publisher = Publisher(ssrc=1, first_seq=65530, first_ts=0)
        first, second, third = (publisher.frame() for _ in range(3))
        # In order across the 16-bit wrap, then a duplicate, then a late packet.
        for packet in [*first, first[-1], second[0], second[2], second[1], *third]:
            bench.forwarder._safe_forward(packet)
        assert len(heard) == len(set(heard)) == 9
        assert sorted(heard) == list(range(heard[0], heard[0] + 9))
        # Muted: nothing is heard. A new source whose numbering starts lower: heard
        # above everything before, after a gap (a loss for the recorder).
        bench.forwarder.set_paused(True)
        for packet in publisher.frame():
            bench.forwarder._safe_forward(packet)
        bench.forwarder.set_paused(False)
        assert len(heard) == 9
        other = Publisher(ssrc=2, first_seq=10, first_ts=0)
        for packet in other.frame():
            bench.forwarder._safe_forward(packet)
        assert heard[9] > max(heard[:9]) + 1 and heard[9:] == [heard[9], heard[9] + 1, heard[9] + 2]
    finally:
        bench.close()


async def test_with_simulcast_the_listener_hears_the_largest_layer_kept_while_sent() -> None:
    """A recorder hears one layer: the first it gets until a larger one's keyframe
    comes, then that one, then (when the publisher stops sending it) another."""
    bench = Bench(rids=("l", "h"))
    heard: list[tuple[int, bytes]] = []
    try:
        bench.forwarder.add_listener(
            lambda index, ts, marker, payload: heard.append((index, payload))
        )
        small = Publisher(ssrc=10, first_seq=100, first_ts=0, rid="l", size=(320, 180))
        large = Publisher(ssrc=20, first_seq=5000, first_ts=0, rid="h", size=(1280, 720))

        for packet in small.frame():  # only the small layer so far: heard
            bench.forwarder._safe_forward(packet)
        assert len(heard) == 3
        for _ in range(2):  # the large one's keyframe: heard from then on, the small not
            for packet in [*small.frame(), *large.frame()]:
                bench.forwarder._safe_forward(packet)
        tags = [payload for _, payload in heard[3:]]
        assert len(tags) == 9
        assert all(b"10:" in tag for tag in tags[:3]) and all(b"20:" in tag for tag in tags[3:])
        indices = [index for index, _ in heard]
        assert indices == sorted(indices) and len(set(indices)) == len(indices)
        # The large layer stops (a congested publisher drops it): the small one is heard
        # again once the large one counts as no longer sent, above everything before.
        bench.clock.advance(5.0)
        before = len(heard)
        for packet in small.frame():
            bench.forwarder._safe_forward(packet)
        assert len(heard) == before + 3 and all(b"10:" in p for _, p in heard[before:])
        assert heard[before][0] > indices[-1]
        # A keyframe is asked for the layer heard, with no subscriber at all.
        bench.forwarder.request_keyframe()
        await asyncio.sleep(0)
        assert bench.keyframe_requested_ssrcs[-1:] == [10]
    finally:
        bench.close()


async def test_recording_a_running_simulcast_track_starts_on_its_largest_layer() -> None:
    bench = Bench(rids=("l", "h"))
    heard: list[bytes] = []
    try:
        small = Publisher(ssrc=10, first_seq=100, first_ts=0, rid="l", size=(320, 180))
        large = Publisher(ssrc=20, first_seq=5000, first_ts=0, rid="h", size=(1280, 720))
        for packet in [*large.frame(), *small.frame()]:  # both layers flow, sizes known
            bench.forwarder._safe_forward(packet)
        bench.forwarder.add_listener(lambda index, ts, marker, payload: heard.append(payload))
        for packet in [*small.frame(), *large.frame()]:
            bench.forwarder._safe_forward(packet)
        assert len(heard) == 3 and all(b"20:" in payload for payload in heard)
    finally:
        bench.close()
