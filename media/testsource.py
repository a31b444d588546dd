"""Generated test media: a moving video pattern and a tone, with real-time pacing."""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import time

import av
from aiortc.mediastreams import MediaStreamTrack

VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000
AUDIO_PTIME = 0.020


class PatternVideoTrack(MediaStreamTrack):
    """Moving bars, so that an encoder produces real inter frames; ``detail`` is the
    part of each frame (0 to 1) covered by fresh noise, which no encoder can predict:
    a camera's picture, as far as bitrate goes."""

    kind = "video"

    def __init__(
        self, width: int = 320, height: int = 240, fps: int = 15, detail: float = 0.0
    ) -> None:
        super().__init__()
        self.width = width
        self.height = height
        self.fps = fps
        self._noise_rows = int(height * detail)
        self._count = 0
        self._start: float | None = None
        self._row = bytes(range(256)) * (width // 256 + 3)

    @property
    def media_seconds(self) -> float:
        """Media time made so far (what the frames' timestamps span)."""
        return self._count / self.fps

    async def recv(self) -> av.VideoFrame:
        """Next frame, paced at ``fps``."""
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._count / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        shift = (self._count * 4) % 256
        luma = b"".join(
            self._row[shift + (y // 8) % 64 : shift + (y // 8) % 64 + self.width]
            for y in range(self.height - self._noise_rows)
        ) + os.urandom(self.width * self._noise_rows)
        frame.planes[0].update(luma)
        chroma = bytes([128]) * (frame.planes[1].buffer_size)
        frame.planes[1].update(chroma)
        frame.planes[2].update(chroma)
        frame.pts = self._count * VIDEO_CLOCK // self.fps
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A 440 Hz tone in 20 ms mono frames."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0) -> None:
        super().__init__()
        self._frequency = frequency
        self._samples = int(AUDIO_RATE * AUDIO_PTIME)
        self._count = 0
        self._start: float | None = None

    @property
    def media_seconds(self) -> float:
        """Media time made so far (what the frames' timestamps span)."""
        return self._count * AUDIO_PTIME

    async def recv(self) -> av.AudioFrame:
        """Next 20 ms of tone, paced in real time."""
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._count * AUDIO_PTIME
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        first = self._count * self._samples
        step = 2 * math.pi * self._frequency / AUDIO_RATE
        samples = b"".join(
            int(8000 * math.sin(step * (first + i))).to_bytes(2, "little", signed=True)
            for i in range(self._samples)
        )
        frame = av.AudioFrame(format="s16", layout="mono", samples=self._samples)
        frame.planes[0].update(samples)
        frame.sample_rate = AUDIO_RATE
        frame.pts = first
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._count += 1
        return frame
