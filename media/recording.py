"""Record forwarded tracks to files as they arrive, without transcoding.

A :class:`TrackRecorder` listens to one forwarder (``add_listener``): on the RTP
path it is given every in-order, unmuted packet, on the frame path every frame.
The listener only appends what it is given to a bounded queue (it runs on the
event loop, inside the forwarding path: no lock, no wake-up); a writer thread
takes everything queued every 20 ms,
rebuilds encoded frames from the RTP payloads (:class:`Depacketizer`: VP8 by the
payload descriptor rules of RFC 7741, H264 by RFC 6184, with aiortc's
depayloaders; an Opus packet is a frame) and muxes them with PyAV, never
decoding: VP8 and Opus into WebM, H264 into Matroska.

What the file promises
    * It starts on a keyframe (a keyframe is asked for when recording starts, and
      again, at most once a second, while the writer waits for one).
    * Its timestamps are those of the publisher's RTP clock, from 0 at the first
      frame: a mute leaves a gap of the mute's length (the RTP clock ran on), and a
      change of source (a new SSRC, a restarted clock) is bridged by the time that
      passed on the server's clock, so timestamps stay continuous and monotonic.
    * Packets that come late (repairs) are put back in order; a frame that lost a
      packet (a queue overflow, a packet the network lost for good, a gap not filled
      within 0.5 s) is not written; video then waits for the next keyframe, asked
      for at once.

What it never does
    Block or slow the forwarding path: a full queue (a slow disk) drops the packet
    and counts it (:attr:`RecorderStats.packets_dropped`). A write error (disk full)
    ends this recorder, closes what was written so far and reports the reason
    through ``on_failed`` on the event loop; the lesson goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fractions
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import av
from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.codecs.vpx import VpxPayloadDescriptor

from .counters import Counters
from .rtp_rewrite import keyframe_detector

logger = logging.getLogger(__name__)

QUEUE_PACKETS = 4096  # per track: about 10 s of 720p video, a minute of audio
BATCH = 0.02  # seconds between the writer's turns: it takes all that is queued
# How long a gap waits for a late packet (a repair) before it counts as a loss.
REORDER_SECONDS = 0.5
REORDER_PACKETS = 512
KEYFRAME_RETRY = 1.0  # seconds between keyframe requests while waiting for one
# A jump of the RTP clock that differs from the time that passed by more than this
# (or goes back) is a new source (a restarted clock starts at a random point),
# bridged by the server's clock. A publisher that stalls for a second and catches
# up is not one: its own clock stays right.
DISCONTINUITY = 10.0

# (container format, file suffix, codec name in FFmpeg) per RTP codec name.
CONTAINERS: dict[str, tuple[str, str, str]] = {
    "VP8": ("webm", ".webm", "vp8"),
    "OPUS": ("webm", ".webm", "opus"),
    "H264": ("matroska", ".mkv", "h264"),
}

OpenFile = Callable[[Path], BinaryIO]


class RecorderStats(Counters):
    """What one track's recorder did (written into the lesson's manifest)."""

    __slots__ = (
        "bytes_written",
        "discontinuities",
        "frames_discarded",
        "frames_written",
        "keyframe_requests",
        "packets",
        "packets_dropped",
    )
    bytes_written: int
    discontinuities: int  # changes of source bridged by the server's clock
    frames_discarded: int  # incomplete, or before the first keyframe
    frames_written: int
    keyframe_requests: int
    packets: int  # packets (or frames) the listener was given
    packets_dropped: int  # not queued: the writer was too far behind (slow disk)


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded frame rebuilt from RTP payloads."""

    timestamp: int  # RTP timestamp
    keyframe: bool
    data: bytes
    arrival: float  # server clock when its last packet arrived


class Depacketizer:
    """Rebuilds encoded frames from the RTP packets of one track, in sequence order.

    Packets may come late (a repair after a loss): they wait in a small reorder
    buffer until the gap before them is filled, or for at most
    :data:`REORDER_SECONDS` (or :data:`REORDER_PACKETS` packets), after which the
    gap counts as a loss. Video packets with one timestamp are one frame, complete
    at the marker bit; a missing packet spoils the frame it falls in. Audio (Opus)
    packets are frames.
    """

    def __init__(
        self,
        codec_name: str,
        reorder_seconds: float = REORDER_SECONDS,
        reorder_packets: int = REORDER_PACKETS,
    ) -> None:
        self.codec_name = codec_name.upper()
        self.video = self.codec_name in ("VP8", "H264")
        self._is_key: Any = keyframe_detector(self.codec_name)
        self._reorder_seconds = reorder_seconds
        self._reorder_packets = reorder_packets
        self._pending: dict[int, tuple[int, bool, bytes, float]] = {}
        self._next: int | None = None  # the index the frame being built needs next
        self._highest = -1
        self._parts: list[bytes] = []
        self._timestamp: int | None = None
        self._first_payload = b""
        self._broken = False

    def push(
        self, index: int, timestamp: int, marker: bool, payload: bytes, arrival: float
    ) -> list[Frame | None]:
        """Take one packet; return, in order, the frames it completed and ``None``
        where a frame was lost (video then needs a keyframe)."""
        out: list[Frame | None] = []
        if self._next is None:
            self._next = index
        if index < self._next or index in self._pending:
            return out  # too late (its gap was given up), or a duplicate
        self._pending[index] = (timestamp, marker, payload, arrival)
        self._highest = max(self._highest, index)
        self._drain(out, gap=False)
        # A gap that waited too long (or too many packets behind it) is a loss.
        while self._pending and (
            self._highest - self._next >= self._reorder_packets
            or arrival - self._oldest_arrival() >= self._reorder_seconds
        ):
            self._next = min(self._pending)
            self._drain(out, gap=True)
        return out

    def flush(self) -> list[Frame | None]:
        """The end: whatever still waits is taken, gaps and all."""
        out: list[Frame | None] = []
        while self._pending:
            self._next = min(self._pending)
            self._drain(out, gap=True)
        return out

    def _oldest_arrival(self) -> float:
        return min(item[3] for item in self._pending.values())

    def _drain(self, out: list[Frame | None], gap: bool) -> None:
        """Take the packets that follow without a hole; the first after ``gap``."""
        assert self._next is not None
        while self._next in self._pending:
            timestamp, marker, payload, arrival = self._pending.pop(self._next)
            self._next += 1
            frame, spoiled = self._take(timestamp, marker, payload, arrival, gap)
            gap = False
            if spoiled:
                out.append(None)
            if frame is not None:
                out.append(frame)

    def _take(
        self, timestamp: int, marker: bool, payload: bytes, arrival: float, gap: bool
    ) -> tuple[Frame | None, bool]:
        lost = gap
        if gap and self._timestamp is not None:
            self._broken = True  # the open frame lacks a packet
        if not self.video:
            return Frame(timestamp, True, payload, arrival), lost
        if self._timestamp is not None and timestamp != self._timestamp:
            # The previous frame's last packet (its marker) never came.
            self._reset()
            lost = True
        if self._timestamp is None:
            self._timestamp = timestamp
            self._first_payload = payload
            # After a gap only a frame whose first packet starts a keyframe is whole
            # for sure (and video waits for a keyframe then anyway).
            if lost and not (self._is_key and self._is_key(payload)):
                self._broken = True
        try:
            self._parts.append(self._depayload(payload))
        except ValueError:
            self._broken = True
        if not marker:
            return None, lost
        frame: Frame | None = None
        if not self._broken and self._parts:
            key = bool(self._is_key(self._first_payload)) if self._is_key else True
            frame = Frame(timestamp, key, b"".join(self._parts), arrival)
        elif self._broken:
            lost = True
        self._reset()
        return frame, lost

    def _depayload(self, payload: bytes) -> bytes:
        if self.codec_name == "VP8":
            return VpxPayloadDescriptor.parse(payload)[1]
        return H264PayloadDescriptor.parse(payload)[1]

    def _reset(self) -> None:
        self._parts = []
        self._timestamp = None
        self._first_payload = b""
        self._broken = False


def vp8_size(frame: bytes) -> tuple[int, int]:
    """Width and height from a VP8 key frame's header (RFC 6386 9.1)."""
    if len(frame) < 10 or frame[3:6] != b"\x9d\x01\x2a":
        raise ValueError("not a VP8 key frame")
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


def h264_size(frame: bytes) -> tuple[int, int]:
    """Width and height of an H264 key frame (decoded once, when a file starts)."""
    codec: Any = av.CodecContext.create("h264", "r")
    for picture in codec.decode(av.Packet(frame)):
        return picture.width, picture.height
    for picture in codec.decode(None):
        return picture.width, picture.height
    raise ValueError("the H264 key frame did not decode")


def open_private_file(path: Path) -> BinaryIO:
    """Create ``path`` exclusively, 0600, for writing (the data directory's rule)."""
    from signaling.adapters.private_files import create_private_file

    return os.fdopen(create_private_file(path), "wb")


class TrackRecorder:
    """Writes one forwarded track into one file, in a thread of its own."""

    def __init__(
        self,
        path: Path,
        codec_name: str,
        clock_rate: int,
        *,
        request_keyframe: Callable[[], None],
        on_failed: Callable[[str], None],
        loop: asyncio.AbstractEventLoop,
        open_file: OpenFile = open_private_file,
        queue_size: int = QUEUE_PACKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        name = codec_name.upper()
        if name not in CONTAINERS:
            raise ValueError(f"recording {codec_name} is not supported")
        self.format, suffix, self.ffmpeg_codec = CONTAINERS[name]
        self.path = path.with_suffix(suffix)
        self.codec_name = name
        self.clock_rate = clock_rate
        self.stats = RecorderStats()
        self.error: str | None = None
        self.first_frame_at: float | None = None  # server clock of the first frame written
        self.duration = 0.0  # seconds from the first frame to the last written
        self._request_keyframe = request_keyframe
        self._on_failed = on_failed
        self._loop = loop
        self._open_file = open_file
        self._clock = clock
        # Appends and pops of a deque are atomic: the listener appends without a lock
        # and without waking the writer, which takes everything every BATCH seconds.
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._queue_size = queue_size
        self._wake = threading.Event()
        self._depacketizer = Depacketizer(name)
        self._thread = threading.Thread(target=self._run, name=f"rec-{path.name}", daemon=True)
        self._closed = False
        # Writer-thread state.
        self._file: BinaryIO | None = None
        self._container: Any = None
        self._stream: Any = None
        self._waiting = self._depacketizer.video  # for a keyframe
        self._last_request = -KEYFRAME_RETRY
        self._last_ts = 0
        self._last_pts = 0
        self._last_arrival = 0.0
        self._time_base = fractions.Fraction(1, clock_rate)
        self._frame_ticks = clock_rate // 30 if self._depacketizer.video else 960

    # -- the listener side (event loop; never blocks, never raises) ------------

    def on_packet(self, index: int, timestamp: int, marker: bool, payload: bytes) -> None:
        """A forwarded RTP packet (the RTP path's listener)."""
        if self._closed:
            return
        self.stats.packets += 1
        if len(self._queue) >= self._queue_size:
            self.stats.packets_dropped += 1
        else:
            self._queue.append((index, timestamp, marker, payload, self._clock()))

    def on_frame(self, timestamp: int, keyframe: bool, data: bytes) -> None:
        """A forwarded encoded frame (the frame path's listener)."""
        if self._closed:
            return
        self.stats.packets += 1
        if len(self._queue) >= self._queue_size:
            self.stats.packets_dropped += 1
        else:
            self._queue.append((Frame(timestamp, keyframe, data, self._clock()),))

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the writer and ask for the keyframe the file starts on."""
        self._thread.start()
        self._ask_keyframe(force=True)

    async def stop(self) -> None:
        """Stop listening, write what is queued and close the file."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join)

    @property
    def written(self) -> bool:
        """Whether the file exists (a first keyframe arrived)."""
        return self._container is not None or self.stats.frames_written > 0

    # -- the writer thread -----------------------------------------------------

    def _run(self) -> None:
        pending = self._queue
        try:
            while True:
                while pending:
                    item = pending.popleft()
                    if self.error is not None:
                        continue
                    if len(item) == 1:
                        self._written([item[0]])
                    else:
                        self._written(self._depacketizer.push(*item))
                if self._closed:
                    # What was queued before the stop is written, and what waited
                    # for a late packet.
                    if self.error is None:
                        self._written(self._depacketizer.flush())
                    break
                self._wake.wait(BATCH)
                self._wake.clear()
        except Exception as exc:  # a bug must not leave the file open
            self._fail(f"recording failed: {exc}")
        finally:
            self._close()

    def _written(self, frames: list[Frame | None]) -> None:
        """Write frames in order; at a loss (``None``) video waits for a keyframe."""
        for frame in frames:
            if frame is not None:
                self._write(frame)
                continue
            self.stats.frames_discarded += 1
            if self._depacketizer.video:
                self._waiting = True
                self._ask_keyframe(force=True)

    def _write(self, frame: Frame) -> None:
        if self._waiting:
            if not frame.keyframe:
                self.stats.frames_discarded += 1
                self._ask_keyframe()
                return
            self._waiting = False
        try:
            if self._container is None:
                self._open(frame)
            pts = self._pts(frame)
            packet = av.Packet(frame.data)
            packet.stream = self._stream
            packet.pts = packet.dts = pts
            packet.time_base = self._time_base
            packet.is_keyframe = frame.keyframe
            self._container.mux(packet)
        except Exception as exc:
            self._fail(_describe(exc))
            return
        self.stats.frames_written += 1
        self.stats.bytes_written += len(frame.data)
        self.duration = pts / self.clock_rate

    def _open(self, frame: Frame) -> None:
        self._file = self._open_file(self.path)
        self._container = av.open(self._file, "w", format=self.format)
        if self.codec_name == "OPUS":
            stream = self._container.add_mux_stream("opus", rate=self.clock_rate)
        else:
            size = vp8_size if self.codec_name == "VP8" else h264_size
            width, height = size(frame.data)
            stream = self._container.add_mux_stream(self.ffmpeg_codec, width=width, height=height)
        stream.time_base = self._time_base
        self._stream = stream
        self._last_ts = frame.timestamp
        self._last_arrival = frame.arrival
        self._last_pts = 0
        self.first_frame_at = frame.arrival

    def _pts(self, frame: Frame) -> int:
        """The frame's timestamp in the file: the RTP clock's advance, unless it jumped
        by what the server's clock did not see (a new source)."""
        if self.stats.frames_written == 0:
            return 0
        delta = ((frame.timestamp - self._last_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        elapsed = (frame.arrival - self._last_arrival) * self.clock_rate
        if delta <= 0 or abs(delta - elapsed) > DISCONTINUITY * self.clock_rate:
            self.stats.discontinuities += 1
            delta = max(self._frame_ticks, round(elapsed))
        self._last_ts = frame.timestamp
        self._last_arrival = frame.arrival
        self._last_pts += delta
        return self._last_pts

    def _ask_keyframe(self, force: bool = False) -> None:
        now = self._clock()
        if not self._depacketizer.video or (
            not force and now - self._last_request < KEYFRAME_RETRY
        ):
            return
        self._last_request = now
        self.stats.keyframe_requests += 1
        with contextlib.suppress(RuntimeError):  # the loop closed
            self._loop.call_soon_threadsafe(self._request_keyframe)

    def _fail(self, reason: str) -> None:
        if self.error is not None:
            return
        self.error = reason
        self._closed = True
        logger.warning("recording %s stopped: %s", self.path.name, reason)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_failed, reason)

    def _close(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception as exc:
                self._fail(_describe(exc))
        if self._file is not None:
            try:
                self._file.close()
            except Exception as exc:
                self._fail(_describe(exc))
            self._file = None


def _describe(exc: BaseException) -> str:
    """A write error as the teacher and the operator read it."""
    number = getattr(exc, "errno", None)
    if number == errno.ENOSPC:
        return "the disk is full"
    if isinstance(exc, (OSError, io.UnsupportedOperation)):
        return f"writing the recording failed: {exc}"
    return f"writing the recording failed: {exc!r}"
