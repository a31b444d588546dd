"""A pulled source for ``lco publish --source``: a file, or an RTSP or HTTP URL.

PyAV demuxes it in a thread. A VP8 or H264 video stream and an Opus audio stream
are published as they are (encoded packets, which aiortc's senders only
packetise); any other codec is decoded once and aiortc encodes it (VP8, Opus).
Files and HTTP are paced at their own timestamps; a live source (RTSP) is sent
as it comes. A network source that drops (or ends) is opened again after a
back-off, and timestamps continue where they were, so subscribers see a pause,
not a new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

logger = logging.getLogger(__name__)

PASSTHROUGH = {"video": frozenset({"vp8", "h264"}), "audio": frozenset({"opus"})}
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "srt://")
RECONNECT_MAX = 5.0  # seconds between attempts, at most
QUEUE = 120  # frames or packets waiting for the sender, per track
OPEN_OPTIONS = {
    # RTSP over the RTSP connection itself: no UDP ports to open in a firewall.
    "rtsp_transport": "tcp",
    # Give up on a silent source after 5 s (microseconds), then reconnect.
    "timeout": "5000000",
    "rw_timeout": "5000000",
}


@dataclass(frozen=True, slots=True)
class Probe:
    """What the source carries: codec per kind, and whether it is sent as it is."""

    video: str | None
    audio: str | None

    def passthrough(self, kind: str) -> bool:
        codec = self.video if kind == "video" else self.audio
        return codec is not None and codec in PASSTHROUGH[kind]


def is_network(source: str) -> bool:
    return source.lower().startswith(NETWORK_SCHEMES)


def open_source(source: str) -> Any:
    """Open ``source`` with PyAV (network options for URLs)."""
    options = dict(OPEN_OPTIONS) if is_network(source) else {}
    if not source.lower().startswith(("rtsp://", "rtsps://")):
        options.pop("rtsp_transport", None)
    return av.open(source, options=options, timeout=10.0)


def probe(source: str) -> Probe:
    """Open the source once to learn its codecs."""
    with open_source(source) as container:
        video = next((s.codec_context.name for s in container.streams.video), None)
        audio = next((s.codec_context.name for s in container.streams.audio), None)
        return Probe(video, audio)


class SourceTrack(MediaStreamTrack):
    """One kind of the source: encoded packets (passthrough) or decoded frames."""

    def __init__(self, kind: str, passthrough: bool) -> None:
        super().__init__()
        self.kind = kind
        self.passthrough = passthrough
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE)
        self.sent = 0

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        item = await self.queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        self.sent += 1
        return item


class PulledSource:
    """Reads a source in a thread and feeds a video and an audio :class:`SourceTrack`."""

    def __init__(self, source: str, found: Probe, *, reconnect: bool | None = None) -> None:
        self.source = source
        self.probe = found
        self.reconnect = is_network(source) if reconnect is None else reconnect
        self.video = SourceTrack("video", found.passthrough("video")) if found.video else None
        self.audio = SourceTrack("audio", found.passthrough("audio")) if found.audio else None
        self.connections = 0  # how many times the source was opened
        self._loop = asyncio.get_running_loop()
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._run, name="source", daemon=True)
        # Per kind: the timestamp offset that keeps time going across reconnections,
        # and the last timestamp sent (seconds).
        self._offset: dict[str, float] = {"video": 0.0, "audio": 0.0}
        self._last: dict[str, float] = {"video": 0.0, "audio": 0.0}

    def tracks(self) -> list[SourceTrack]:
        return [t for t in (self.video, self.audio) if t is not None]

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        self._quit.set()
        await asyncio.to_thread(self._thread.join, 15)

    # -- the reading thread ----------------------------------------------------

    def _run(self) -> None:
        delay = 0.5
        try:
            while not self._quit.is_set():
                try:
                    container = open_source(self.source)
                except Exception as exc:
                    logger.warning("cannot open %s: %s", self.source, exc)
                    if not self.reconnect:
                        return
                else:
                    self.connections += 1
                    delay = 0.5
                    with container:
                        self._read(container)
                    if not self.reconnect:
                        return
                    logger.warning("the source dropped; reconnecting")
                    # Time goes on across the gap: the next timestamps start after it.
                    for kind in self._offset:
                        self._offset[kind] = self._last[kind] + delay
                if self._quit.wait(delay):
                    return
                delay = min(RECONNECT_MAX, delay * 2)
        finally:
            for track in self.tracks():
                self._put(track, None)

    def _read(self, container: Any) -> None:
        streams = []
        video = next(iter(container.streams.video), None)
        audio = next(iter(container.streams.audio), None)
        for stream in (video, audio):
            if stream is not None:
                streams.append(stream)
        if not streams:
            return
        annexb = None
        if video is not None and self.video is not None and self.video.passthrough:
            if video.codec_context.name == "h264" and _is_avcc(video.codec_context.extradata):
                annexb = av.BitStreamFilterContext("h264_mp4toannexb", video)
        live = is_network(self.source) and self.source.lower().startswith(("rtsp", "rtmp", "srt"))
        started = time.monotonic()
        first: dict[str, float] = {}
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000)
        try:
            for packet in container.demux(*streams):
                if self._quit.is_set():
                    return
                if packet.pts is None or packet.size == 0:
                    continue
                kind = packet.stream.type
                track = self.video if kind == "video" else self.audio
                if track is None:
                    continue
                at = float(packet.pts * packet.time_base)
                first.setdefault(kind, at)
                position = at - first[kind]
                if not live:
                    # Pace files and HTTP at their own timestamps.
                    ahead = position - (time.monotonic() - started)
                    if ahead > 0 and self._quit.wait(ahead):
                        return
                if track.passthrough:
                    packets = annexb.filter(packet) if annexb is not None else [packet]
                    for out in packets:
                        self._send_packet(track, out, position)
                else:
                    for frame in packet.decode():
                        if kind == "audio":
                            # aiortc's Opus encoder takes 16-bit stereo at 48 kHz.
                            for out in resampler.resample(frame):
                                self._send_frame(track, out, position)
                                position += out.samples / 48000
                        else:
                            self._send_frame(track, frame, position)
        except av.FFmpegError as exc:
            logger.warning("reading %s failed: %s", self.source, exc)

    def _send_packet(self, track: SourceTrack, packet: Any, position: float) -> None:
        clock = 90000 if track.kind == "video" else 48000
        seconds = self._offset[track.kind] + position
        out = av.Packet(bytes(packet))
        out.pts = out.dts = round(seconds * clock)
        out.time_base = fractions.Fraction(1, clock)
        out.is_keyframe = packet.is_keyframe
        self._last[track.kind] = seconds
        self._put(track, out)

    def _send_frame(self, track: SourceTrack, frame: Any, position: float) -> None:
        clock = 90000 if track.kind == "video" else frame.sample_rate
        seconds = self._offset[track.kind] + position
        frame.pts = round(seconds * clock)
        frame.time_base = fractions.Fraction(1, clock)
        self._last[track.kind] = seconds
        self._put(track, frame)

    def _put(self, track: SourceTrack, item: Any) -> None:
        def put() -> None:
            with contextlib.suppress(asyncio.QueueFull):
                track.queue.put_nowait(item)

        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(put)


def _is_avcc(extradata: bytes | None) -> bool:
    """H264 extradata as MP4 keeps it (avcC, version 1), not Annex B start codes."""
    return bool(extradata) and extradata[0] == 1  # type: ignore[index]
