"""A small RTSP server (RFC 2326) on loopback for ``lco publish --source rtsp://``.

It answers OPTIONS, DESCRIBE, SETUP (RTP over the RTSP connection, interleaved),
PLAY and TEARDOWN, and streams VP8 made by aiortc's encoder (a keyframe every
second) at 15 frames a second. ``drop_after`` closes session number
``drop_on_play`` after that many frames: a camera whose network drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import itertools
import struct
import time

import av
from aiortc.codecs.vpx import Vp8Encoder

FPS = 15
SSRC = 0x1234ABCD


def pattern(index: int) -> av.VideoFrame:
    frame = av.VideoFrame(320, 240, "yuv420p")
    for number, plane in enumerate(frame.planes):
        plane.update(bytes([(index * 9 + number * 60) % 256]) * plane.buffer_size)
    frame.pts = index * 90000 // FPS
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


class RtspServer:
    """Serves one VP8 stream at ``rtsp://127.0.0.1:PORT/live``."""

    def __init__(self, drop_after: int | None = None, drop_on_play: int = 1) -> None:
        self.drop_after = drop_after
        self.drop_on_play = drop_on_play
        self.plays = 0
        self.frames_sent = 0
        self.played = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def sdp(self) -> bytes:
        return (
            b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=field trip\r\nc=IN IP4 127.0.0.1\r\n"
            b"t=0 0\r\na=control:*\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"
            b"a=control:track1\r\n"
        )

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        streaming: asyncio.Task[None] | None = None
        try:
            while True:
                first = await reader.readexactly(1)
                if first == b"$":  # the client's RTCP, interleaved: skip it
                    _, length = struct.unpack("!BH", await reader.readexactly(3))
                    await reader.readexactly(length)
                    continue
                head = first + await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method = lines[0].split(" ")[0]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                extra: dict[str, str] = {}
                body = b""
                status = "200 OK"
                if method == "OPTIONS":
                    extra["Public"] = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"
                elif method == "DESCRIBE":
                    body = self.sdp()
                    extra["Content-Type"] = "application/sdp"
                    extra["Content-Base"] = self.url + "/"
                elif method == "SETUP":
                    if "TCP" not in headers.get("transport", ""):
                        status = "461 Unsupported Transport"
                    else:
                        extra["Transport"] = "RTP/AVP/TCP;unicast;interleaved=0-1"
                        extra["Session"] = "5eed5eed"
                elif method == "PLAY":
                    extra["Session"] = "5eed5eed"
                    extra["Range"] = "npt=0.000-"
                elif method == "TEARDOWN":
                    status = "200 OK"
                reply = f"RTSP/1.0 {status}\r\nCSeq: {headers.get('cseq', '0')}\r\n"
                for name, value in extra.items():
                    reply += f"{name}: {value}\r\n"
                reply += f"Content-Length: {len(body)}\r\n\r\n"
                writer.write(reply.encode() + body)
                await writer.drain()
                if method == "PLAY" and streaming is None:
                    self.plays += 1
                    self.played.set()
                    drop = self.drop_after if self.plays == self.drop_on_play else None
                    streaming = asyncio.create_task(self._stream(writer, drop))
                if method == "TEARDOWN":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            if streaming is not None:
                streaming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await streaming
            writer.close()
            self._tasks.discard(task)

    async def _stream(self, writer: asyncio.StreamWriter, drop_after: int | None) -> None:
        encoder = Vp8Encoder()
        sequence = itertools.count(1000)
        started = time.monotonic()
        for index in itertools.count():
            if drop_after is not None and index == drop_after:
                # The camera's network drops: the connection ends mid-stream.
                writer.transport.abort()
                return
            payloads, timestamp = encoder.encode(pattern(index), force_keyframe=index % FPS == 0)
            for number, payload in enumerate(payloads):
                marker = 0x80 if number == len(payloads) - 1 else 0
                header = struct.pack(
                    "!BBHII", 0x80, marker | 96, next(sequence) & 0xFFFF, timestamp, SSRC
                )
                packet = header + payload
                writer.write(b"$\x00" + struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            self.frames_sent += 1
            # The camera's own clock: one frame every 1/15 s.
            await asyncio.sleep(max(0.0, started + (index + 1) / FPS - time.monotonic()))
