"""One participant's WebSocket connection and the task that owns it.

The owner task reads frames and posted events from one inbox, feeds them to the
sans-I/O :class:`SignalingSession` and carries out the effects. One writer task
sends everything; a pump task moves the participant's bus messages to it; a
keep-alive task pings the client. Cleanup runs in ``finally`` whatever ends the
connection: the participant's seat is then held for a reconnect (or freed), and its
media stays with the seat, not with the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.datastructures import Address
from starlette.websockets import WebSocketDisconnect

from media.loop_watch import loop_watch
from media.sfu import MediaError, MediaNotice, SubscribeOffer
from signaling import protocol as p
from signaling.bus import OVERFLOW, Subscription, participant_topic
from signaling.session import (
    AcceptSubscribeAnswer,
    AddRemoteCandidate,
    ApplyReceiveSettings,
    Close,
    Joined,
    NegotiatePublish,
    Reply,
    RestartIce,
    SessionEffect,
    SessionState,
    SignalingSession,
)

from .host import ConnectionHost
from .lesson_effects import execute_lesson_effect
from .logs import bind_participant
from .media_messages import media_message, protocol_error, track_source

logger = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 section 7.4.1 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009

# What may wait to be written to one socket. A client that does not read (a frozen
# tab, or an attacker asking for chat pages and never reading them) is cut off
# when its unread messages pass either bound, so each socket costs at most this.
MAX_OUTBOX_MESSAGES = 1024
MAX_OUTBOX_BYTES = 2 * 1024 * 1024
# How long a failed write waits for the reader to hand over what the client sent
# before it went; a socket whose reads never end (a relay whose Redis is gone) is
# reported closed after this.
READER_DRAIN_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class _Frame:
    data: str | bytes


@dataclass(frozen=True, slots=True)
class _Disconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class _TrackEnded:
    track_id: str


@dataclass(frozen=True, slots=True)
class _NegotiationFailed:
    pass


@dataclass(frozen=True, slots=True)
class _OfferSent:
    pass


@dataclass(frozen=True, slots=True)
class _Replaced:
    pass


@dataclass(frozen=True, slots=True)
class _Moved:
    pass


_InboxItem = (
    _Frame | _Disconnected | _TrackEnded | _NegotiationFailed | _OfferSent | _Replaced | _Moved
)


class Socket(Protocol):
    """What a connection needs of its socket: Starlette's ``WebSocket``, or a socket
    relayed from another node (``server/redis_relay.py``)."""

    @property
    def client(self) -> Address | None: ...

    async def receive(self) -> MutableMapping[str, Any]: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Outbox:
    """What waits to be written to the socket, bounded in messages and bytes.

    ``None`` asks the writer to close the socket. Past a bound, :meth:`put` returns
    False and keeps nothing more: the owner then drops the connection."""

    def __init__(
        self, max_messages: int = MAX_OUTBOX_MESSAGES, max_bytes: int = MAX_OUTBOX_BYTES
    ) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self.bytes = 0
        self.overflowed = False

    def put(self, text: str) -> bool:
        """Queue one message; False (and nothing queued) once a bound is passed."""
        if self.overflowed:
            return False
        size = len(text)
        if self._queue.qsize() >= self._max_messages or self.bytes + size > self._max_bytes:
            self.overflowed = True
            return False
        self.bytes += size
        self._queue.put_nowait(text)
        return True

    def close(self) -> None:
        """Ask the writer to close the socket after what is queued."""
        self._queue.put_nowait(None)

    async def get(self) -> str | None:
        text = await self._queue.get()
        if text is not None:
            self.bytes -= len(text)
        return text


class ParticipantConnection:
    """Owns one socket, its session and (once joined) its participant."""

    def __init__(
        self,
        state: ConnectionHost,
        websocket: Socket,
        first_frame: str | bytes | None = None,
        opened_at: float | None = None,
        entry_node: str | None = None,
    ) -> None:
        """``first_frame``: the socket's first message, already read by whoever chose
        this node for it (``opened_at``, monotonic, is when the socket opened);
        ``entry_node``: the node a relayed socket came through."""
        self._state = state
        self._ws = websocket
        self._entry_node = entry_node
        self._session = SignalingSession(secret=state.settings.secret, registry=state.registry)
        self._inbox: asyncio.Queue[_InboxItem] = asyncio.Queue(256)
        self._outbox = Outbox()
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._close_code = CLOSE_NORMAL
        self._opened = time.monotonic() if opened_at is None else opened_at
        self._last_heard = time.monotonic()
        if first_frame is not None:
            self._inbox.put_nowait(_Frame(first_frame))

    @property
    def participant_id(self) -> str | None:
        """The participant this socket joined as, if it has."""
        return self._session.participant_id

    def post_track_ended(self, track_id: str) -> None:
        """Called from the SFU when one of this participant's tracks ended by itself."""
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(_TrackEnded(track_id))

    def post_negotiation_failed(self) -> None:
        """Called from the SFU when a subscribe offer went unanswered for too long."""
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(_NegotiationFailed())

    def post_replaced(self) -> None:
        """Another socket took this participant's seat: from now on the participant's
        messages are the other socket's (the subscription ends at once), and this one
        says bye and closes."""
        if self._subscription is not None:
            self._subscription.close()
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(_Replaced())

    def post_moved(self) -> None:
        """Another node serves this participant's lesson now: the client is told to
        reconnect (its next socket reaches that node)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(_Moved())

    async def run(self) -> None:
        """Serve the socket until it closes; always releases everything."""
        self._tasks = [
            asyncio.create_task(self._read(), name="ws-read"),
            asyncio.create_task(self._write(), name="ws-write"),
        ]
        reason = "disconnected"
        try:
            reason = await self._own()
        finally:
            await self._cleanup(reason)

    # -- the owner loop ------------------------------------------------------

    async def _own(self) -> str:
        settings = self._state.settings
        started = self._opened
        watch = loop_watch()
        while True:
            joined = self._session.state is SessionState.JOINED
            # Only the client's own messages count as signs of life.
            # Silence counts only while this server could hear it (media/loop_watch.py).
            remaining = (
                settings.idle_timeout - watch.awake_since(self._last_heard)
                if joined
                else started + settings.join_timeout - time.monotonic()
            )
            try:
                item = await asyncio.wait_for(self._inbox.get(), max(0.0, remaining))
            except TimeoutError:
                if not joined:
                    await self._apply(self._session.join_timed_out(settings.join_timeout))
                    return "join timeout"
                if watch.awake_since(self._last_heard) < settings.idle_timeout:
                    continue  # this server stalled meanwhile: what the client sent waits
                await self._apply([Close("timeout", "no message for too long; reconnect")])
                return "timed out"
            if isinstance(item, _Disconnected):
                return item.reason
            if isinstance(item, _Replaced):
                # The bye goes to this socket only: the participant's topic is the new
                # socket's now.
                self._send(p.Bye(reason="replaced", message="you joined from elsewhere"))
                self._close_code = CLOSE_POLICY
                self._outbox.close()
                return "replaced"
            if isinstance(item, _Moved):
                self._send(
                    p.Bye(
                        reason="server_shutdown",
                        message="the lesson moved to another server; reconnecting",
                    )
                )
                self._close_code = CLOSE_GOING_AWAY
                self._outbox.close()
                return "moved"
            if isinstance(item, _OfferSent):
                self._session.answer_expected()
                continue
            if isinstance(item, _NegotiationFailed):
                await self._apply(
                    [
                        Close(
                            "negotiation_failed",
                            "your browser did not answer the media offer in time; reconnect",
                        )
                    ]
                )
                return "negotiation failed"
            if isinstance(item, _TrackEnded):
                lesson = self._session.lesson
                if lesson is not None and self.participant_id is not None:
                    await self._apply(
                        list(lesson.remove_track(self.participant_id, item.track_id, "ended"))
                    )
                continue
            self._last_heard = time.monotonic()
            effects = self._session.receive_text(item.data, self._last_heard)
            await self._apply(effects)
            if self._session.state is SessionState.CLOSED:
                # Leaving and flooding free the seat at once; other closes hold it.
                reasons = [e.reason for e in effects if isinstance(e, Close)]
                return next((r for r in reasons if r in ("left", "flood")), "closed")

    async def _apply(self, effects: list[SessionEffect]) -> None:
        for effect in effects:
            try:
                try:
                    await self._apply_one(effect)
                except MediaError as exc:
                    # "Not joined" names no request, as before the SFU had its own errors.
                    request = None if exc.code == "not_joined" else _request_type(effect)
                    raise protocol_error(exc, request) from None
            except p.ProtocolError as exc:
                self._send(
                    p.ErrorMessage(
                        code=exc.code, message=exc.message, request_type=exc.request_type
                    )
                )

    async def _apply_one(self, effect: SessionEffect) -> None:
        state = self._state
        if isinstance(effect, Reply):
            self._send(effect.message)
        elif isinstance(effect, Close):
            self._send(p.Bye(reason=effect.reason, message=effect.message))
            self._close_code = CLOSE_NORMAL if effect.reason == "left" else CLOSE_POLICY
            self._outbox.close()
        elif isinstance(effect, Joined):
            pid = effect.participant.id
            # Every later log line of this socket names it.
            lesson_id = self._session.lesson.id if self._session.lesson else "?"
            bind_participant(pid, lesson_id, effect.participant.role.value)
            state.prometheus.join_latency.observe(time.monotonic() - self._opened)
            # The participant's topic carries its messages to this socket from now on.
            self._subscription = state.bus.subscribe(participant_topic(pid))
            state.add_connection(pid, self)
            self._tasks.append(asyncio.create_task(self._pump(self._subscription), name="ws-pump"))
            self._tasks.append(asyncio.create_task(self._keep_alive(), name="ws-ping"))
            if state.turn is not None:
                self._tasks.append(
                    asyncio.create_task(
                        self._renew_ice_servers(pid, state.turn.renewal_interval),
                        name="ice-renewal",
                    )
                )
            client = self._ws.client
            address = client.host if client else None
            # The seat's media outlives its sockets: a resumed seat gets it back.
            # With --cascade its subscriptions are served where its socket came in.
            media, deliver = state.media, self._deliver_to_self
            if not effect.resumed or not await media.attach(
                pid, deliver, address, lesson_id, self._entry_node
            ):
                await media.open(
                    pid, deliver, address, lesson_id, self._entry_node, effect.participant.school
                )
        elif isinstance(effect, NegotiatePublish):
            await self._negotiate_publish(effect)
        elif isinstance(effect, AcceptSubscribeAnswer):
            await state.media.accept_subscribe_answer(
                effect.participant_id, effect.sdp, effect.offer_id
            )
        elif isinstance(effect, AddRemoteCandidate):
            candidate = effect.candidate
            await state.media.add_candidate(
                effect.participant_id,
                candidate.pc,
                candidate.candidate,
                candidate.sdp_mid,
                candidate.sdp_mline_index,
            )
        elif isinstance(effect, ApplyReceiveSettings):
            settings = effect.settings
            await state.media.receive_settings(
                effect.participant_id,
                settings.mode,
                {view.track_id: view.width for view in settings.tracks},
            )
        elif isinstance(effect, RestartIce):
            await state.media.restart_ice(effect.participant_id)
        else:
            await execute_lesson_effect(state, effect)

    async def _negotiate_publish(self, effect: NegotiatePublish) -> None:
        state = self._state
        lesson = self._session.lesson
        assert lesson is not None
        offer = effect.offer
        result = await state.media.accept_publish_offer(effect.participant_id, offer.sdp)
        self._send(p.PublishAnswer(sdp=result.answer_sdp))
        for track_id in result.stopped_track_ids:
            await self._apply(
                list(lesson.remove_track(effect.participant_id, track_id, "unpublished"))
            )
        for incoming in result.started:
            source = track_source(offer.tracks, incoming)
            info, effects = lesson.add_track(effect.participant_id, incoming.kind, source)
            state.media.start_forwarding(effect.participant_id, info.id, incoming)
            await self._apply(list(effects))

    async def _renew_ice_servers(self, participant_id: str, interval: float) -> None:
        """Send fresh TURN credentials every ``interval`` (half their lifetime).

        Whenever the welcome came (at join, or later from the lobby), the newest
        credentials the client holds were issued at most ``interval`` ago, so they
        stay valid for at least ``interval`` more. The message goes straight to the
        writer, like the bus pump's: through the inbox it would count as a sign of
        life and keep a silent socket open.
        """
        while True:
            await asyncio.sleep(interval)
            self._send(p.IceServers(ice_servers=self._state.ice_servers_for(participant_id)))

    async def _keep_alive(self) -> None:
        """Ping the client every ``--ping-interval``; its pong is a sign of life, and
        ours to it: a client that hears nothing for the keep-alive timeout reconnects."""
        ping = p.encode_server_message(p.ServerPing())
        interval = self._state.settings.ping_interval
        while True:
            await asyncio.sleep(interval)
            self._put(ping)

    async def _deliver_to_self(self, notice: MediaNotice) -> None:
        if isinstance(notice, SubscribeOffer):
            # Ahead of the answer in the inbox, whatever the client's pace.
            with contextlib.suppress(asyncio.QueueFull):
                self._inbox.put_nowait(_OfferSent())
        self._send(media_message(notice))

    def _send(self, message: p.ServerMessage) -> None:
        self._put(p.encode_server_message(message))

    def _put(self, text: str) -> None:
        if not self._outbox.put(text) and self._outbox.overflowed:
            # It does not read what we send: drop it rather than hold its backlog.
            with contextlib.suppress(asyncio.QueueFull):
                self._inbox.put_nowait(_Disconnected("too slow"))

    # -- socket tasks --------------------------------------------------------

    async def _read(self) -> None:
        reason = "disconnected"
        try:
            while True:
                message = await self._ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                # A frame over the message limit can only be refused: keep no more of
                # it than shows that, so the inbox holds 256 x 64 KiB, not 256 MiB.
                data = data[: p.MAX_MESSAGE_BYTES + 1]
                try:
                    self._inbox.put_nowait(_Frame(data))
                except asyncio.QueueFull:
                    # The owner is far behind: this client floods us. Drop it.
                    reason = "flood"
                    break
        except WebSocketDisconnect:
            pass
        except Exception:  # a broken socket ends this participant only
            logger.debug("socket read failed", exc_info=True)
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(_Disconnected(reason))

    async def _write(self) -> None:
        try:
            while True:
                text = await self._outbox.get()
                if text is None:
                    await self._ws.close(self._close_code)
                    break
                await self._ws.send_text(text)
        except Exception:  # the peer went away
            logger.debug("socket write failed", exc_info=True)
            # A client that sends "leave" and closes makes our next write fail while
            # its leave is still on the way through the reader: let the reader hand
            # over everything first, or the leave reads as a broken network (and
            # the seat is held for the grace period).
            await asyncio.wait([self._tasks[0]], timeout=READER_DRAIN_SECONDS)
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(_Disconnected("closed"))

    async def _pump(self, subscription: Subscription) -> None:
        while True:
            text = await subscription.get()
            if text == OVERFLOW:
                with contextlib.suppress(asyncio.QueueFull):
                    self._inbox.put_nowait(_Disconnected("too slow"))
                return
            self._put(text)
            if '"bye"' in text:
                message = p.parse_server_message(text)
                if message["type"] == "bye":
                    # Sent away (removed, denied, the lesson ended, the server stops):
                    # the bye is the last message this socket gets.
                    self._close_code = CLOSE_POLICY
                    self._outbox.close()
                    with contextlib.suppress(asyncio.QueueFull):
                        self._inbox.put_nowait(_Disconnected(str(message["reason"])))
                    return

    async def _cleanup(self, reason: str) -> None:
        state = self._state
        pid = self.participant_id
        if self._subscription is not None:
            self._subscription.close()
        holds_seat = self._session.holds_seat
        if pid is not None and holds_seat:
            # No socket to send its media's messages to until the seat is taken again.
            state.media.detach(pid)
        effects = self._session.disconnected(reason, time.time())
        for effect in effects:
            if not isinstance(effect, (Reply, Close, Joined)):
                with contextlib.suppress(p.ProtocolError, MediaError):
                    await self._apply_one(effect)
        # Let the writer flush a final bye, then stop every task of this socket.
        self._outbox.close()
        writer = self._tasks[1]
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(writer), 2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(self._close_code), 2.0)
        if pid is not None:
            state.remove_connection(pid, self)


def _request_type(effect: SessionEffect) -> str | None:
    """The client message that asked for a media effect, named in its errors."""
    if isinstance(effect, NegotiatePublish):
        return effect.offer.type
    if isinstance(effect, AddRemoteCandidate):
        return effect.candidate.type
    if isinstance(effect, ApplyReceiveSettings):
        return effect.settings.type
    if isinstance(effect, AcceptSubscribeAnswer):
        return "subscribe_answer"
    if isinstance(effect, RestartIce):
        return "ice_restart"
    return None
