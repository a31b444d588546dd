"""A Python participant: joins with a token, publishes, subscribes and reports.

This is what ``lco publish`` runs (a field-trip camera laptop), and what the
tests and benchmarks use as a real aiortc peer. It speaks the same protocol as
the browser client: it offers its publish connection and answers the server's
subscribe offers, answers the server's keep-alive pings, and (with ``reconnect``)
takes its seat back after a dropped connection, keeping its peer connections and
restarting their ICE.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import av
import websockets
from aiortc import (
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from signaling import protocol as p

from . import hooks, ice_restart
from .loop_watch import loop_watch
from .peers import configuration
from .rtp_subscriber import IdleTrack
from .simulcast import LayerSpec, SimulcastCamera

logger = logging.getLogger(__name__)

# Until a welcome says otherwise: a server silent this long is gone.
KEEPALIVE_TIMEOUT = 4.0
# Waits before each attempt to take the seat back after a drop (then every 5 s).
RECONNECT_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0)
# Socket close codes after which there is nothing to take back: the server ended the
# session (1000, 1008) or a message broke a limit (1009: too big; 1002, 1003, 1007).
FINAL_CLOSE_CODES = frozenset({1000, 1002, 1003, 1007, 1008, 1009})
# Byes after which the seat is gone (anything else: reconnect).
FINAL_BYES = frozenset(
    {"left", "removed", "denied", "locked", "lesson_ended", "bad_token", "forbidden", "replaced"}
)


class JoinRefused(ConnectionError):
    """The server refused the join (or the lobby turned us away); says why."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


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
    # When each of the latest frames arrived (monotonic), and each change of size.
    arrivals: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=20_000)
    )
    sizes: list[tuple[float, int, int]] = field(default_factory=list)
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
        ping_interval: float | None = None,
        reconnect: bool = False,
        answer_pings: bool = True,
    ) -> None:
        self.url = url
        # Our own pings (the server pings us; these are only for tests and old servers).
        self.ping_interval = ping_interval
        self.token = token
        self.origin = origin
        self.reconnect = reconnect
        self.answer_pings = answer_pings
        self.participant_id: str | None = None
        self.welcome: dict[str, Any] | None = None
        self.participants: dict[str, dict[str, Any]] = {}
        self.lobby: set[str] = set()  # who waits (for those who admit)
        self.received: dict[str, ReceivedTrack] = {}
        self.errors: list[dict[str, Any]] = []
        # Why the session ended, if it ended badly (a refused or oversized message, a
        # socket lost for good): what ``lco publish`` reports.
        self.failure: str | None = None
        self.bye: dict[str, Any] | None = None
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc: RTCPeerConnection | None = None
        self._stale_pcs: list[RTCPeerConnection] = []  # a released seat's, to close
        # From welcome, replaced by each ice_servers message (renewed TURN credentials).
        self.ice_servers: list[RTCIceServer] = []
        self.keepalive_timeout = KEEPALIVE_TIMEOUT
        # Sockets opened after the first, and how many of them took the seat back.
        self.reconnects = 0
        self.resumes = 0
        self.silences = 0  # sockets dropped because the server went silent
        self.resumed = asyncio.Event()
        self._ws: Any = None
        self._last_heard = time.monotonic()
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False
        self._opening: asyncio.Future[dict[str, Any]] | None = None
        self._publish_specs: list[p.PublishedTrackSpec] = []
        self._consumers: dict[str, asyncio.Task[None]] = {}  # track id -> its reader
        self._waiters: list[
            tuple[Callable[[dict[str, Any]], bool], asyncio.Future[dict[str, Any]]]
        ] = []
        self._by_mid: dict[str, p.SubscribedTrack] = {}  # what each m-line carries now
        self._publish_tracks: list[tuple[MediaStreamTrack, p.Source]] = []
        # The simulcast camera on the publish connection, and its layers (to start over).
        self._camera: tuple[SimulcastCamera, RTCRtpTransceiver] | None = None
        self._simulcast: Sequence[LayerSpec] | None = None
        self.cameras: list[SimulcastCamera] = []  # cameras published as simulcast layers
        self.closed = asyncio.Event()
        self._tracks_changed = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Open the socket and join; return the welcome, or ``lobby_wait`` while held.

        Raises ``ConnectionError`` with the server's reason if the join is refused.
        """
        message = await self._open(resume=False)
        if self.reconnect and self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch())
        return message

    async def _open(self, resume: bool) -> dict[str, Any]:
        headers = {"Origin": self.origin} if self.origin else None
        self._ws = await websockets.connect(
            self.url, additional_headers=headers, max_size=2**20, ping_interval=None
        )
        self._last_heard = time.monotonic()
        self.bye = None
        self._reader = asyncio.create_task(self._read(self._ws))
        if self.ping_interval is not None:
            self._keepalive = asyncio.create_task(self._keep_alive())
        opening: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._opening = opening
        self._waiters.append((lambda m: m["type"] in ("welcome", "lobby_wait", "bye"), opening))
        try:
            await self.send(p.Join(token=self.token, resume=resume))
            message: dict[str, Any] = await asyncio.wait_for(opening, 15)
        finally:
            self._opening = None
            self._waiters = [(pr, f) for pr, f in self._waiters if f is not opening]
        if message["type"] == "bye":
            raise JoinRefused(message.get("message", "join refused"), message.get("reason"))
        if message["type"] == "lobby_wait":
            self.participant_id = message["participant_id"]
        return message

    async def admitted(self, timeout: float = 15.0) -> dict[str, Any]:
        """Wait in the lobby until let in (the welcome) or turned away (raises)."""
        if self.welcome is not None:
            return self.welcome
        message = await self.wait_for(lambda m: m["type"] in ("welcome", "bye"), timeout)
        if message["type"] == "bye":
            raise JoinRefused(message.get("message", "turned away"))
        return message

    async def close(self) -> None:
        """Leave: say so, close peer connections and the socket, stop every task."""
        self._closing = True
        if self._ws is not None and not self.closed.is_set():
            with contextlib.suppress(Exception):
                await self.send(p.Leave())
        await self._release()

    async def drop(self) -> None:
        """Close the socket as a broken network would (no ``leave``): the server holds
        the seat; with ``reconnect`` this client takes it back."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def _release(self) -> None:
        for camera in self.cameras:
            await camera.stop()
        for pc in (self.publish_pc, self.subscribe_pc, *self._stale_pcs):
            if pc is not None:
                await pc.close()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
            self._ws.transport.abort()
        consumers = list(self._consumers.values())
        own = [
            t
            for t in (self._reader, self._keepalive, self._watchdog, self._reconnecting)
            if t is not None and t is not asyncio.current_task()
        ]
        for task in [*consumers, *own]:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        await asyncio.gather(*own, return_exceptions=True)

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
        assert self.ping_interval is not None
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self.send(p.Ping())
            except websockets.ConnectionClosed:
                return

    async def _watch(self) -> None:
        """A server silent for the keep-alive timeout is gone, even if the socket looks
        open (a network that went silent): drop it; the reader then reconnects. Only
        time this process's loop was awake counts (``media.loop_watch``)."""
        watch = loop_watch()
        while not self.closed.is_set():
            silent_for = watch.awake_since(self._last_heard)
            if silent_for < self.keepalive_timeout:
                await asyncio.sleep(max(0.05, self.keepalive_timeout - silent_for))
                continue
            logger.info("the server went silent; reconnecting")
            self.silences += 1
            self._last_heard = time.monotonic()  # one drop per silence
            await self.drop()

    # -- taking the seat back --------------------------------------------------

    def _socket_ended(self, ws: Any) -> None:
        """The socket ``ws`` ended: take the seat back, or say why the session is over."""
        if ws is not self._ws:
            return  # an older socket, already replaced
        if self._closing:
            self._fail_waiters()
            self.closed.set()
            return
        sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
        if self.bye is not None:
            final = self.bye.get("reason") in FINAL_BYES or not self.reconnect
        elif sent is not None and sent.code == 1009:
            # We refused a message over our frame limit: reconnecting would not help.
            self.failure = "the server sent a message larger than this client accepts (1 MiB)"
            final = True
        elif received is not None and received.code in FINAL_CLOSE_CODES:
            self.failure = f"the server closed the connection ({received.code}: {received.reason})"
            final = True
        else:
            final = not self.reconnect
            if final and self.failure is None:
                self.failure = "the connection to the server was lost"
        if final:
            self._fail_waiters()
            self.closed.set()
            return
        if self._opening is not None:
            # The socket of a join in progress: that join fails (the reconnect loop
            # tries again); other expectations wait for the next socket.
            if not self._opening.done():
                self._opening.set_exception(ConnectionError("connection closed"))
            return
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.create_task(self._take_seat_back())

    def _fail_waiters(self) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(ConnectionError("connection closed"))

    async def _take_seat_back(self) -> None:
        delays = [*RECONNECT_DELAYS, *([5.0] * 12)]
        for delay in delays:
            await asyncio.sleep(delay)
            self.reconnects += 1
            try:
                message = await asyncio.wait_for(
                    self._open(resume=self.publish_pc is not None or self.subscribe_pc is not None),
                    10,
                )
            except JoinRefused as exc:  # removed, the lesson ended...
                if exc.reason == "unavailable":
                    continue  # the servers cannot place the lesson yet: try again
                self.failure = f"could not rejoin: {exc}"
                self.closed.set()
                return
            except (OSError, TimeoutError, websockets.WebSocketException):
                continue  # ConnectionError is an OSError: the new socket went too
            if message["type"] == "welcome" and message.get("resumed"):
                self.resumes += 1
                await self._restart_ice()
                self.resumed.set()
            elif message["type"] == "welcome":
                # Our seat was released meanwhile: this is a new participant.
                await self._start_over()
            return
        self.failure = "the server could not be reached again"
        self.closed.set()

    async def _restart_ice(self) -> None:
        """After taking the seat back: the network may have changed under the peer
        connections; restart their ICE (media goes on meanwhile where it can)."""
        if self.subscribe_pc is not None:
            await self.send(p.IceRestart(pc="subscribe"))
        if self.publish_pc is not None and self._publish_specs:
            await self._offer_publish(restart=True)

    def _drop_media(self) -> None:
        """A welcome to a new seat (ours was released): forget the old seat's peer
        connections at once, in the reader, so that the new seat's first subscribe
        offer, which may follow the welcome at once, gets a connection of its own.
        They are closed by :meth:`_start_over`."""
        self._stale_pcs += [pc for pc in (self.publish_pc, self.subscribe_pc) if pc is not None]
        self.publish_pc = self.subscribe_pc = None
        for mid in list(self._by_mid):
            self._end_track(self._by_mid.pop(mid).track_id)

    async def _start_over(self) -> None:
        """The server gave us a new seat (ours was released): our media starts over
        (the welcome already dropped the old seat's connections)."""
        old, self._stale_pcs = self._stale_pcs, []
        for pc in old:
            await pc.close()
        tracks, self._publish_tracks = self._publish_tracks, []
        self._publish_specs = []
        if tracks:
            await self.publish(tracks)

    # -- publishing ----------------------------------------------------------

    async def publish(
        self,
        tracks: list[tuple[MediaStreamTrack, p.Source]],
        video_codec: str | None = None,
        simulcast: Sequence[LayerSpec] | None = None,
    ) -> dict[str, Any]:
        """Offer ``tracks`` on the publish connection; return the server's reply.

        ``video_codec`` ("VP8" or "H264") offers only that codec for video.
        ``simulcast``: the camera goes as these layers (``media.simulcast``; VP8).
        """
        if self.publish_pc is None:
            self.publish_pc = RTCPeerConnection(configuration(self.ice_servers))
        pc = self.publish_pc
        added = []
        camera: tuple[SimulcastCamera, RTCRtpTransceiver] | None = None
        for track, source in tracks:
            if simulcast and source == "camera" and camera is None and self._camera is None:
                layered = SimulcastCamera(track, simulcast)
                transceiver = pc.addTransceiver(IdleTrack("video"), direction="sendonly")
                camera = self._camera = (layered, transceiver)
                self._simulcast = simulcast
                self.cameras.append(layered)
                video_codec = video_codec or "VP8"
            else:
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
        self._publish_specs += [
            p.PublishedTrackSpec(mid=t.mid, source=source)
            for t, source in added
            if t.mid is not None
        ]
        return await self._send_publish_offer(pc, started=camera)

    async def receive_settings(
        self, mode: p.ReceiveMode = "auto", sizes: dict[str, tuple[int, int]] | None = None
    ) -> None:
        """Tell the server what this viewer wants: a mode, and the size it shows each
        track at ((0, 0): not at all)."""
        views = [
            p.TrackView(track_id=track_id, width=width, height=height)
            for track_id, (width, height) in (sizes or {}).items()
        ]
        await self.send(p.ReceiveSettings(mode=mode, tracks=views))

    async def _offer_publish(self, restart: bool = False) -> dict[str, Any]:
        """Offer the publish connection again (``restart``: with new ICE credentials)."""
        pc = self.publish_pc
        assert pc is not None
        if restart:
            await ice_restart.prepare_offer(pc)
        await pc.setLocalDescription(await pc.createOffer())
        return await self._send_publish_offer(pc)

    async def _send_publish_offer(
        self,
        pc: RTCPeerConnection,
        started: tuple[SimulcastCamera, RTCRtpTransceiver] | None = None,
    ) -> dict[str, Any]:
        """Send the publish connection's offer (a simulcast camera's layers described in
        it, every time) and apply the answer; ``started``: a camera to start sending."""
        sdp = pc.localDescription.sdp
        if self._camera is not None:
            sdp = self._camera[0].describe(sdp, self._camera[1].mid or "")
        reply = self.wait_for(
            lambda m: (
                m["type"] == "publish_answer"
                or (m["type"] == "error" and m.get("request_type") == "publish_offer")
            )
        )
        await self.send(p.PublishOffer(sdp=sdp, tracks=self._publish_specs))
        message = await reply
        if message["type"] == "publish_answer":
            await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
            ice_restart.complete(pc, message["sdp"])
            if started is not None:
                started[0].start(started[1], message["sdp"])
        elif message.get("code") == "connection_gone":
            # The server no longer has this connection: publish on a new one.
            await self._start_over_publishing()
        return message

    async def _start_over_publishing(self) -> None:
        pc, self.publish_pc = self.publish_pc, None
        if pc is not None:
            await pc.close()
        if self._camera is not None:
            await self._camera[0].stop()
            self.cameras.remove(self._camera[0])
            self._camera = None
        tracks, self._publish_tracks = self._publish_tracks, []
        self._publish_specs = []
        if tracks:
            await self.publish(tracks, simulcast=self._simulcast)

    # -- receiving -----------------------------------------------------------

    async def _read(self, ws: Any) -> None:
        try:
            async for text in ws:
                if self._closing:
                    break  # leaving: peer connections are closed or closing
                self._last_heard = time.monotonic()
                message = json.loads(text)
                await self._handle(message)
                for predicate, future in list(self._waiters):
                    if not future.done() and predicate(message):
                        future.set_result(message)
        except websockets.ConnectionClosed:
            pass
        except InvalidStateError:
            if not self._closing:  # leaving closed the peer connection under a message
                logger.exception("handling a server message failed; leaving")
                self.failure = "handling a server message failed"
                raise
        except Exception:
            logger.exception("handling a server message failed; leaving")
            self.failure = "handling a server message failed"
            raise
        finally:
            self._socket_ended(ws)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ping":
            if self.answer_pings:
                await self.send(p.ClientPong())
        elif kind == "welcome":
            if not message.get("resumed"):
                self._drop_media()
            self.welcome = message
            self.participant_id = message["participant_id"]
            self.ice_servers = _ice_servers(message["ice_servers"])
            if message.get("keepalive"):
                self.keepalive_timeout = float(message["keepalive"]["timeout"])
            self.participants = {x["id"]: x for x in message["participants"]}
        elif kind == "lobby_wait":
            if message.get("keepalive"):
                self.keepalive_timeout = float(message["keepalive"]["timeout"])
        elif kind == "lobby_updated":
            self.lobby = {x["id"] for x in message["waiting"]}
        elif kind == "lobby_changed":
            self.lobby = (self.lobby | {x["id"] for x in message["added"]}) - set(
                message["removed"]
            )
        elif kind in ("participant_disconnected", "participant_reconnected"):
            participant = self.participants.get(message["participant_id"])
            if participant is not None:
                participant["connected"] = kind == "participant_reconnected"
        elif kind == "ice_servers":
            # aiortc reads its ICE servers only when a connection starts gathering (it
            # has no setConfiguration): connections opened from now on use these.
            self.ice_servers = _ice_servers(message["ice_servers"])
        elif kind == "error":
            if message.get("code") != "stale_answer":  # an answer overtaken by a new offer
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
        if message.get("new_connection") and self.subscribe_pc is not None:
            old, self.subscribe_pc = self.subscribe_pc, None
            for mid in list(self._by_mid):
                self._end_track(self._by_mid.pop(mid).track_id)
            await old.close()
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
        # An offer with new ICE credentials restarts ICE on this connection.
        restarting = await ice_restart.prepare_answer(pc, message["sdp"])
        await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.send(
            p.SubscribeAnswer(sdp=pc.localDescription.sdp, offer_id=message.get("offer_id"))
        )
        if restarting:
            ice_restart.complete(pc, message["sdp"])
        for transceiver in pc.getTransceivers():
            carried = offered.get(transceiver.mid or "")
            track = transceiver.receiver.track
            if carried is None or carried.mid in self._by_mid or track is None:
                continue
            info = self._by_mid[carried.mid] = carried
            if info.kind == "video":
                hooks.skip_to_keyframes(transceiver.receiver)
            received = ReceivedTrack(info.track_id, info.participant_id, info.kind, info.source)
            self.received[info.track_id] = received
            self._consumers[info.track_id] = asyncio.create_task(self._consume(track, received))
            self._tracks_changed.set()

    def _end_track(self, track_id: str) -> None:
        consumer = self._consumers.pop(track_id, None)
        if consumer is not None:
            consumer.cancel()
        received = self.received.get(track_id)
        if received is not None:
            # Here, not only in the consumer's ``finally``: a consumer cancelled before
            # it ever ran (an offer replaced at once) runs no ``finally``.
            received.ended.set()

    async def _consume(self, track: MediaStreamTrack, received: ReceivedTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                received.frames += 1
                received.arrivals.append(now)
                if frame.pts is not None and frame.time_base is not None:
                    received.media_time = float(frame.pts * frame.time_base)
                received.progress.set()
                if received.first_frame_at is None:
                    received.first_frame_at = now
                    received.first_frame.set()
                if isinstance(frame, av.VideoFrame) and (frame.width, frame.height) != (
                    received.width,
                    received.height,
                ):
                    received.width, received.height = frame.width, frame.height
                    received.sizes.append((now, frame.width, frame.height))
        except MediaStreamError:
            pass
        finally:
            received.ended.set()

    # -- queries ---------------------------------------------------------------

    def packets_received(self, track_id: str) -> int:
        """RTP packets the subscribe connection received for ``track_id`` so far
        (retransmissions left out)."""
        if self.subscribe_pc is None:
            return 0
        total = 0
        for transceiver in self.subscribe_pc.getTransceivers():
            carried = self._by_mid.get(transceiver.mid or "")
            if carried is None or carried.track_id != track_id:
                continue
            # Not getStats(): aiortc reports every SSRC under one id, so once a
            # retransmission arrives its RTX stream hides the media stream's count.
            streams = hooks.received_streams(transceiver.receiver)
            total += sum(received for _, received, _ in streams)
        return total

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
        self,
        participant_id: str,
        kind: str,
        timeout: float = 15.0,
        replacing: ReceivedTrack | None = None,
    ) -> ReceivedTrack:
        """Wait until a track of ``kind`` from ``participant_id`` delivers its first frame
        (another than ``replacing``: received anew, on a new connection). A track that
        ends before its first frame (its connection was replaced at once) is passed
        over for the one that replaces it."""
        async with asyncio.timeout(timeout):
            while True:
                track = self.track_from(participant_id, kind)
                if (
                    track is not None
                    and track is not replacing
                    and (track.first_frame.is_set() or not track.ended.is_set())
                ):
                    waits = [
                        asyncio.ensure_future(track.first_frame.wait()),
                        asyncio.ensure_future(track.ended.wait()),
                    ]
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    for wait in waits:
                        wait.cancel()
                    if track.first_frame.is_set():
                        return track
                    continue
                self._tracks_changed.clear()
                await self._tracks_changed.wait()
