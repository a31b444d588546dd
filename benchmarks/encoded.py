"""Pre-encoded media for the load generator: made once with PyAV, replayed in real time.

Publishers in a benchmark must not spend CPU encoding, so the VP8 and Opus
streams are encoded once into a small cache file (a few MB, never committed) and
replayed as ``av.Packet`` objects: an aiortc ``RTCRtpSender`` fed packets only
calls the codec's ``pack()``.

A pre-encoded stream cannot make a new keyframe when a receiver asks (PLI/FIR).
The replayed video has a keyframe every ``keyframe_interval`` seconds and the
loop starts on one; on a keyframe request the replay jumps ahead to the next
keyframe of the loop and sends it at once (a keyframe resets the decoder's
references, so the stream stays decodable; pts keep growing). Without that jump
(``honour_keyframe_requests=False``) a new subscriber waits for the next
periodic keyframe, up to ``keyframe_interval``.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import json
import os
import random
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
from aiortc.mediastreams import MediaStreamTrack

VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000
AUDIO_FRAME_SAMPLES = 960  # 20 ms
CACHE_VERSION = 1
_MAGIC = b"LCOBENCH"
_RECORD = struct.Struct("<IBI")  # frame index, keyframe flag, payload length


@dataclass(frozen=True, slots=True)
class VideoVariant:
    """One synthetic VP8 stream: size, rate, bitrate and how much detail it moves."""

    name: str
    width: int
    height: int
    fps: int
    bitrate: int
    keyframe_interval: float = 2.0
    seconds: int = 10
    block: int = 16  # texture block size: larger blocks, fewer bits
    noise_rows: int = 3  # rows of fresh noise per frame: bits that motion cannot predict


VIDEO_VARIANTS: dict[str, VideoVariant] = {
    # A classroom's room camera in a lesson of many schools (the soak): small and slow.
    "360p15": VideoVariant("360p15", 640, 360, 15, 400_000, block=16, noise_rows=2),
    "480p20": VideoVariant("480p20", 640, 480, 20, 800_000, block=16, noise_rows=3),
    "720p30": VideoVariant("720p30", 1280, 720, 30, 1_500_000, block=32, noise_rows=2),
}


@dataclass(frozen=True, slots=True)
class EncodedStream:
    """A loop of encoded frames and what a replay needs to know about it."""

    kind: str  # "video" or "audio"
    codec: str  # "vp8" or "opus"
    frames: list[tuple[bytes, bool]]  # (payload, keyframe)
    frame_interval: float  # seconds between frames
    pts_step: int  # pts between frames, in 1/clock_rate
    clock_rate: int
    info: dict[str, Any]

    @property
    def loop_seconds(self) -> float:
        """Duration of one loop of the stream."""
        return len(self.frames) * self.frame_interval

    @property
    def bitrate(self) -> float:
        """Average payload bitrate in bits per second."""
        return sum(len(data) for data, _ in self.frames) * 8 / self.loop_seconds


def default_cache_dir() -> Path:
    """``$LCO_BENCH_CACHE``, else ``$XDG_CACHE_HOME/lco-bench``, else ``~/.cache/lco-bench``."""
    explicit = os.environ.get("LCO_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lco-bench"


def _write(path: Path, stream: EncodedStream) -> None:
    header = {
        "version": CACHE_VERSION,
        "kind": stream.kind,
        "codec": stream.codec,
        "frame_interval": stream.frame_interval,
        "pts_step": stream.pts_step,
        "clock_rate": stream.clock_rate,
        "info": stream.info,
    }
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("wb") as handle:
        handle.write(_MAGIC + json.dumps(header).encode() + b"\n")
        for index, (data, key) in enumerate(stream.frames):
            handle.write(_RECORD.pack(index, int(key), len(data)) + data)
    tmp.replace(path)  # atomic: concurrent processes never see half a file


def _read(path: Path) -> EncodedStream:
    raw = path.read_bytes()
    if not raw.startswith(_MAGIC):
        raise ValueError(f"{path} is not a benchmark media file")
    end = raw.index(b"\n")
    header = json.loads(raw[len(_MAGIC) : end])
    if header.get("version") != CACHE_VERSION:
        raise ValueError(f"{path} has an old format")
    frames: list[tuple[bytes, bool]] = []
    pos = end + 1
    while pos < len(raw):
        _, key, length = _RECORD.unpack_from(raw, pos)
        pos += _RECORD.size
        frames.append((raw[pos : pos + length], bool(key)))
        pos += length
    return EncodedStream(
        kind=header["kind"],
        codec=header["codec"],
        frames=frames,
        frame_interval=header["frame_interval"],
        pts_step=header["pts_step"],
        clock_rate=header["clock_rate"],
        info=header["info"],
    )


def _texture(width: int, height: int, block: int, rng: random.Random) -> bytes:
    """A blocky random texture, larger than the frame so that it can scroll."""
    columns = width // block + 1
    rows = []
    for _ in range(height // block + 1):
        cells = rng.randbytes(columns)
        row = bytes(value for value in cells for _ in range(block))[:width]
        rows.extend([row] * block)
    return b"".join(rows[:height])


def encode_video(variant: VideoVariant) -> EncodedStream:
    """Encode ``variant`` with libvpx as a WebRTC encoder would (no lag, no alt-ref)."""
    rng = random.Random(20261129)
    margin = 512
    tex_w, tex_h = variant.width + margin, variant.height + margin
    texture = _texture(tex_w, tex_h, variant.block, rng)
    gop = max(1, round(variant.fps * variant.keyframe_interval))
    context: Any = av.CodecContext.create("libvpx", "w")
    context.width = variant.width
    context.height = variant.height
    context.pix_fmt = "yuv420p"
    context.time_base = fractions.Fraction(1, variant.fps)
    context.framerate = variant.fps
    context.bit_rate = variant.bitrate
    context.gop_size = gop
    context.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "auto-alt-ref": "0",
        "error-resilient": "1",
        "maxrate": str(variant.bitrate),
        "bufsize": str(variant.bitrate),
        "qmin": "10",
        "qmax": "63",
        "keyint_min": str(gop),
    }
    total = variant.fps * variant.seconds
    # The loop must end just before a keyframe so that it restarts on one.
    total -= total % gop
    half_w, half_h = variant.width // 2, variant.height // 2
    encoded: list[tuple[bytes, bool]] = []

    def collect(packets: list[Any]) -> None:
        for packet in packets:
            encoded.append((bytes(packet), bool(packet.is_keyframe)))

    for index in range(total):
        frame = av.VideoFrame(variant.width, variant.height, "yuv420p")
        dx, dy = (index * 4) % margin, (index * 2) % margin
        rows = [
            texture[(y + dy) * tex_w + dx : (y + dy) * tex_w + dx + variant.width]
            for y in range(variant.height)
        ]
        if variant.noise_rows:
            top = (index * 9) % (variant.height - variant.noise_rows)
            rows[top : top + variant.noise_rows] = [
                rng.randbytes(variant.width) for _ in range(variant.noise_rows)
            ]
        frame.planes[0].update(b"".join(rows))
        chroma = [
            texture[(y + dx) * tex_w + dy : (y + dx) * tex_w + dy + half_w] for y in range(half_h)
        ]
        frame.planes[1].update(b"".join(chroma))
        frame.planes[2].update(bytes([128]) * (half_w * half_h))
        frame.pts = index
        frame.time_base = context.time_base
        collect(context.encode(frame))
    collect(context.encode(None))
    encoded = encoded[:total]
    if not encoded or not encoded[0][1]:
        raise RuntimeError("the encoded video does not start on a keyframe")
    return EncodedStream(
        kind="video",
        codec="vp8",
        frames=encoded,
        frame_interval=1 / variant.fps,
        pts_step=VIDEO_CLOCK // variant.fps,
        clock_rate=VIDEO_CLOCK,
        info={**asdict(variant), "frames": len(encoded), "keyframes": sum(k for _, k in encoded)},
    )


def encode_audio(seconds: int = 10, bitrate: int = 32_000) -> EncodedStream:
    """Opus in 20 ms frames: a slowly gliding tone with a little noise (so it is not silence)."""
    import math

    rng = random.Random(7)
    context: Any = av.CodecContext.create("libopus", "w")
    context.sample_rate = AUDIO_RATE
    context.layout = "stereo"
    context.format = "s16"
    context.bit_rate = bitrate
    context.time_base = fractions.Fraction(1, AUDIO_RATE)
    context.options = {"frame_duration": "20", "application": "voip"}
    encoded: list[tuple[bytes, bool]] = []
    total = seconds * AUDIO_RATE // AUDIO_FRAME_SAMPLES
    phase = 0.0
    for index in range(total):
        samples = bytearray()
        frequency = 300 + 200 * math.sin(index / 25)
        for _ in range(AUDIO_FRAME_SAMPLES):
            phase += 2 * math.pi * frequency / AUDIO_RATE
            value = int(6000 * math.sin(phase) + rng.randint(-300, 300))
            samples += value.to_bytes(2, "little", signed=True) * 2
        frame = av.AudioFrame(format="s16", layout="stereo", samples=AUDIO_FRAME_SAMPLES)
        frame.planes[0].update(bytes(samples))
        frame.sample_rate = AUDIO_RATE
        frame.pts = index * AUDIO_FRAME_SAMPLES
        frame.time_base = context.time_base
        for packet in context.encode(frame):
            encoded.append((bytes(packet), True))
    for packet in context.encode(None):
        encoded.append((bytes(packet), True))
    encoded = encoded[:total]
    return EncodedStream(
        kind="audio",
        codec="opus",
        frames=encoded,
        frame_interval=AUDIO_FRAME_SAMPLES / AUDIO_RATE,
        pts_step=AUDIO_FRAME_SAMPLES,
        clock_rate=AUDIO_RATE,
        info={"seconds": seconds, "bitrate": bitrate, "frames": len(encoded)},
    )


def load_video(name: str, cache_dir: Path | None = None) -> EncodedStream:
    """The VP8 stream ``name`` (see :data:`VIDEO_VARIANTS`), encoded on first use."""
    variant = VIDEO_VARIANTS[name]
    directory = cache_dir or default_cache_dir()
    key = "-".join(str(v) for v in asdict(variant).values())
    path = directory / f"video-v{CACHE_VERSION}-{key}.bin"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        _write(path, encode_video(variant))
    return _read(path)


def load_audio(cache_dir: Path | None = None) -> EncodedStream:
    """The Opus stream, encoded on first use."""
    directory = cache_dir or default_cache_dir()
    path = directory / f"audio-v{CACHE_VERSION}-opus-32k.bin"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        _write(path, encode_audio())
    return _read(path)


class PreEncodedTrack(MediaStreamTrack):
    """Replays an :class:`EncodedStream` as ``av.Packet`` in real time, looping.

    The pts grows monotonically across loops. If the event loop falls more than
    ``max_lag`` behind, the schedule restarts instead of sending a burst.
    """

    def __init__(
        self, stream: EncodedStream, max_lag: float = 0.5, honour_keyframe_requests: bool = True
    ) -> None:
        super().__init__()
        self.kind = stream.kind
        self._stream = stream
        self._keyframes = [i for i, (_, key) in enumerate(stream.frames) if key]
        self._honour = honour_keyframe_requests and stream.kind == "video"
        self._keyframe_wanted = False
        self._position = 0  # next frame of the loop
        self._time_base = fractions.Fraction(1, stream.clock_rate)
        self._max_lag = max_lag
        self._index = 0  # frames sent since the start, across loops
        self._start: float | None = None
        self._scheduled_from = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.schedule_resets = 0
        self.first_send_wall: float | None = None
        self._epoch_wall: float | None = None
        self.keyframe_requests = 0
        self.keyframe_jumps = 0
        self.frames_skipped = 0
        # (wall time when handed to the sender, loop position): the latency probe's
        # send times. Bounded: about 11 minutes at 30 fps.
        self.sent_log: collections.deque[tuple[float, int]] = collections.deque(maxlen=20_000)

    def request_keyframe(self) -> None:
        """A receiver asked for a keyframe (PLI/FIR): jump to the next one of the loop."""
        self.keyframe_requests += 1
        if self._honour:
            self._keyframe_wanted = True

    @property
    def schedule_epoch_wall(self) -> float | None:
        """Wall time at which frame 0 was due under the current schedule.

        Frame ``n`` (counted across loops, ``n`` from 0) is due at
        ``schedule_epoch_wall + n * frame_interval`` and carries loop frame
        ``(n + frames_skipped) % loop length``, as long as neither
        ``schedule_resets`` nor ``frames_skipped`` change.
        """
        return self._epoch_wall

    async def recv(self) -> av.Packet[Any]:
        """The next encoded frame, at its time."""
        stream = self._stream
        now = time.monotonic()
        if self._start is None:
            self._start = now
            self.first_send_wall = self._epoch_wall = time.time()
        target = self._start + (self._index - self._scheduled_from) * stream.frame_interval
        delay = target - now
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay > self._max_lag:
            self._start = now
            self._scheduled_from = self._index
            self._epoch_wall = time.time() - self._index * stream.frame_interval
            self.schedule_resets += 1
        count = len(stream.frames)
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            if not stream.frames[self._position][1]:
                following = [k for k in self._keyframes if k > self._position]
                target_position = following[0] if following else count
                self.frames_skipped += target_position - self._position
                self._position = target_position % count
                self.keyframe_jumps += 1
        data, keyframe = stream.frames[self._position]
        self.sent_log.append((time.time(), self._position))
        self._position = (self._position + 1) % count
        packet = av.Packet(data)
        packet.pts = self._index * stream.pts_step
        packet.time_base = self._time_base
        packet.is_keyframe = keyframe
        self._index += 1
        self.frames_sent += 1
        self.bytes_sent += len(data)
        return packet
