"""A Python participant: joins with a token, publishes, subscribes and reports.

This is what ``lco publish`` runs (a field-trip camera laptop), and what the
tests and benchmarks use as a real aiortc peer. It speaks the same protocol as
the browser client: it offers its publish connection and answers the server's
subscribe offers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import websockets
from aiortc import RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from signaling import protocol as p

from .peers import configuration

logger = logging.getLogger(__name__)

PING_INTERVAL = 15.0


@dataclass(slots=True)
class ReceivedTrack:
    """What arrived on one subscribed track."""

    track_id: str
    participant_id: str
    kind: str
    source: str
    frames: int = 0
    first_frame_at: float | None = None
    subscribed_at: float = field(default_factory=time.monotonic)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    width: int = 0
    height: int = 0
    # The newest frame's timestamp in seconds (the publisher's media clock).
    media_time: float = 0.0


def _ice_servers(entries: list[dict[str, Any]]) -> list[RTCIceServer]:
    """The ``ice_servers`` of a welcome or renewal as aiortc's objects."""
    return [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
        for s in map(p.IceServer.model_validate, entries)
    ]


class LessonClient:
    """One participant over one WebSocket and up to two peer connections."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        origin: str | None = None,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self.url = url
        self.ping_interval = ping_interval
        self.token = token
        self.origin = origin
        self.participant_id: str | None = None
        self.welcome: dict[str, Any] | None = None
        self.participants: dict[str, dict[str, Any]] = {}
        self.received: dict[str, ReceivedTrack] = {}
        self.errors: list[dict[str, Any]] = []
        self.bye: dict[str, Any] | None = None
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc: RTCPeerConnection | None = None
        # From welcome, replaced by each ice_servers message (renewed TURN credentials).
        self.ice_servers: list[RTCIceServer] = []
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._consumers: dict[str, asyncio.Task[None]] = {}  # track id -> its reader
        self._waiters: list[
            tuple[Callable[[dict[str, Any]], bool], asyncio.Future[dict[str, Any]]]
        ] = []
        self._by_mid: dict[str, p.SubscribedTrack] = {}  # what each m-line carries now
        self._publish_tracks: list[tuple[MediaStreamTrack, p.Source]] = []
        self.closed = asyncio.Event()
        self._tracks_changed = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Open the socket and join; return the welcome, or ``lobby_wait`` while held.

        Raises ``ConnectionError`` with the server's reason if the join is refused.
        """
        headers = {"Origin": self.origin} if self.origin else None
        self._ws = await websockets.connect(self.url, additional_headers=headers, max_size=2**20)
        self._reader = asyncio.create_task(self._read())
        self._keepalive = asyncio.create_task(self._keep_alive())
        waiting = self.wait_for(lambda m: m["type"] in ("welcome", "lobby_wait", "bye"))
        await self.send(p.Join(token=self.token))
        message = await waiting
        if message["type"] == "bye":
            raise ConnectionError(message.get("message", "join refused"))
        if message["type"] == "lobby_wait":
            self.participant_id = message["participant_id"]
        return message

    async def admitted(self, timeout: float = 15.0) -> dict[str, Any]:
        """Wait in the lobby until let in (the welcome) or turned away (raises)."""
        if self.welcome is not None:
            return self.welcome
        message = await self.wait_for(lambda m: m["type"] in ("welcome", "bye"), timeout)
        if message["type"] == "bye":
            raise ConnectionError(message.get("message", "turned away"))
        return message

    async def close(self) -> None:
        """Leave: close peer connections and the socket, stop every task."""
        for pc in (self.publish_pc, self.subscribe_pc):
            if pc is not None:
                await pc.close()
        if self._ws is not None:
            await self._ws.close()
        consumers = list(self._consumers.values())
        for task in [*consumers, *(t for t in (self._reader, self._keepalive) if t)]:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        await asyncio.gather(
            *(t for t in (self._reader, self._keepalive) if t), return_exceptions=True
        )

    async def send(self, message: Any) -> None:
        """Send one protocol message (a model or a raw string)."""
        text = message if isinstance(message, str) else p.encode_client_message(message)
        await self._ws.send(text)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> Awaitable[dict[str, Any]]:
        """Expect a server message matching ``predicate``; await the result.

        The expectation is registered at call time, so call this before sending
        the request whose reply you wait for.
        """
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))

        async def wait() -> dict[str, Any]:
            try:
                return await asyncio.wait_for(future, timeout)
            finally:
                self._waiters = [(pr, f) for pr, f in self._waiters if f is not future]

        return wait()

    async def _keep_alive(self) -> None:
        # The server closes sockets silent for 45 s.
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self.send(p.Ping())
            except websockets.ConnectionClosed:
                return

    # -- publishing ----------------------------------------------------------

    async def publish(
        self, tracks: list[tuple[MediaStreamTrack, p.Source]], video_codec: str | None = None
    ) -> dict[str, Any]:
        """Offer ``tracks`` on the publish connection; return the server's reply.

        ``video_codec`` ("VP8" or "H264") offers only that codec for video.
        """
        if self.publish_pc is None:
            self.publish_pc = RTCPeerConnection(configuration(self.ice_servers))
        pc = self.publish_pc
        added = []
        for track, source in tracks:
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if video_codec is not None and track.kind == "video":
                transceiver.setCodecPreferences(
                    [
                        c
                        for c in RTCRtpSender.getCapabilities("video").codecs
                        if c.mimeType.lower() in (f"video/{video_codec.lower()}", "video/rtx")
                    ]
                )
            added.append((transceiver, source))
        self._publish_tracks += tracks
        await pc.setLocalDescription(await pc.createOffer())
        specs = [
            p.PublishedTrackSpec(mid=t.mid, source=source)
            for t, source in added
            if t.mid is not None
        ]
        reply = self.wait_for(lambda m: m["type"] in ("publish_answer", "error"))
        await self.send(p.PublishOffer(sdp=pc.localDescription.sdp, tracks=specs))
        message = await reply
        if message["type"] == "publish_answer":
            await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
        return message

    # -- receiving -----------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for text in self._ws:
                message = json.loads(text)
                await self._handle(message)
                for predicate, future in list(self._waiters):
                    if not future.done() and predicate(message):
                        future.set_result(message)
        except websockets.ConnectionClosed:
            pass
        except Exception:
            logger.exception("handling a server message failed; leaving")
            raise
        finally:
            self.closed.set()
            for _, future in self._waiters:
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "welcome":
            self.welcome = message
            self.participant_id = message["participant_id"]
            self.ice_servers = _ice_servers(message["ice_servers"])
            for participant in message["participants"]:
                self.participants[participant["id"]] = participant
        elif kind == "ice_servers":
            # aiortc reads its ICE servers only when a connection starts gathering (it
            # has no setConfiguration): connections opened from now on use these.
            self.ice_servers = _ice_servers(message["ice_servers"])
        elif kind == "error":
            self.errors.append(message)
        elif kind == "bye":
            self.bye = message
        elif kind in ("participant_joined", "participant_updated"):
            participant = message["participant"]
            self.participants[participant["id"]] = participant
        elif kind == "participant_left":
            self.participants.pop(message["participant_id"], None)
        elif kind == "subscribe_offer":
            await self._answer_subscribe_offer(message)

    async def _answer_subscribe_offer(self, message: dict[str, Any]) -> None:
        """Answer a subscribe offer. The ``tracks`` list says what each m-line carries:
        an m-line that left it (inactive) or now carries another track ended its
        track; the server reuses a freed m-line for a later track of its kind, and
        aiortc fires no ``track`` event for it, so tracks are taken by m-line here."""
        if self.subscribe_pc is None:
            self.subscribe_pc = RTCPeerConnection(configuration(self.ice_servers))
        offered = {
            info.mid: info
            for info in (p.SubscribedTrack.model_validate(entry) for entry in message["tracks"])
        }
        for mid, info in list(self._by_mid.items()):
            now = offered.get(mid)
            if now is None or now.track_id != info.track_id:
                del self._by_mid[mid]
                self._end_track(info.track_id)
        pc = self.subscribe_pc
        await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.send(p.SubscribeAnswer(sdp=pc.localDescription.sdp))
        for transceiver in pc.getTransceivers():
            carried = offered.get(transceiver.mid or "")
            track = transceiver.receiver.track
            if carried is None or carried.mid in self._by_mid or track is None:
                continue
            info = self._by_mid[carried.mid] = carried
            received = ReceivedTrack(info.track_id, info.participant_id, info.kind, info.source)
            self.received[info.track_id] = received
            self._consumers[info.track_id] = asyncio.create_task(self._consume(track, received))
            self._tracks_changed.set()

    def _end_track(self, track_id: str) -> None:
        consumer = self._consumers.pop(track_id, None)
        if consumer is not None:
            consumer.cancel()  # its ``finally`` marks the track ended

    async def _consume(self, track: MediaStreamTrack, received: ReceivedTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                received.frames += 1
                if frame.pts is not None and frame.time_base is not None:
                    received.media_time = float(frame.pts * frame.time_base)
                received.progress.set()
                if received.first_frame_at is None:
                    received.first_frame_at = time.monotonic()
                    received.first_frame.set()
                if isinstance(frame, av.VideoFrame):
                    received.width, received.height = frame.width, frame.height
        except MediaStreamError:
            pass
        finally:
            received.ended.set()

    # -- queries ---------------------------------------------------------------

    def track_from(self, participant_id: str, kind: str) -> ReceivedTrack | None:
        """The latest received track of ``kind`` published by ``participant_id``."""
        matches = [
            r
            for r in self.received.values()
            if r.participant_id == participant_id and r.kind == kind
        ]
        return matches[-1] if matches else None

    @staticmethod
    async def wait_frames(track: ReceivedTrack, count: int, timeout: float = 15.0) -> None:
        """Wait until ``count`` more frames arrived on ``track``."""
        target = track.frames + count
        async with asyncio.timeout(timeout):
            while track.frames < target:
                track.progress.clear()
                await track.progress.wait()

    async def wait_track(
        self, participant_id: str, kind: str, timeout: float = 15.0
    ) -> ReceivedTrack:
        """Wait until a track of ``kind`` from ``participant_id`` delivers its first frame."""
        async with asyncio.timeout(timeout):
            while True:
                track = self.track_from(participant_id, kind)
                if track is not None:
                    await track.first_frame.wait()
                    return track
                self._tracks_changed.clear()
                await self._tracks_changed.wait()
