"""One participant's WebSocket connection and the task that owns it.

The owner task reads frames and posted events from one inbox, feeds them to the
sans-I/O :class:`SignalingSession` and carries out the effects. One writer task
sends everything; a pump task moves the participant's bus messages to it.
Cleanup runs in ``finally`` whatever ends the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from signaling import protocol as p
from signaling.bus import InMemoryEventBus, Subscription, participant_topic
from signaling.lesson import (
    Announce,
    Deliver,
    Effect,
    PauseTrack,
    Record,
    StopTrack,
    Subscribe,
    Unsubscribe,
)
from signaling.recording import RecordingConsent, StartRecording, StopRecording
from signaling.session import (
    AcceptSubscribeAnswer,
    AddRemoteCandidate,
    Close,
    Joined,
    NegotiatePublish,
    Reply,
    SessionEffect,
    SessionState,
    SignalingSession,
)

if TYPE_CHECKING:
    from .state import ServerState

logger = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 section 7.4.1 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009


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


_InboxItem = _Frame | _Disconnected | _TrackEnded | _NegotiationFailed | _OfferSent


class ParticipantConnection:
    """Owns one socket, its session and (once joined) its participant."""

    def __init__(self, state: ServerState, websocket: WebSocket) -> None:
        self._state = state
        self._ws = websocket
        self._session = SignalingSession(secret=state.settings.secret, registry=state.registry)
        self._inbox: asyncio.Queue[_InboxItem] = asyncio.Queue(256)
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._close_code = CLOSE_NORMAL

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
        while True:
            joined = self._session.state is SessionState.JOINED
            timeout = settings.idle_timeout if joined else settings.join_timeout
            try:
                item = await asyncio.wait_for(self._inbox.get(), timeout)
            except TimeoutError:
                if not joined:
                    await self._apply(self._session.join_timed_out(settings.join_timeout))
                    return "join timeout"
                await self._apply([Close("timeout", "no message for too long; reconnect")])
                return "timed out"
            if isinstance(item, _Disconnected):
                return item.reason
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
            effects = self._session.receive_text(item.data, time.monotonic())
            await self._apply(effects)
            if self._session.state is SessionState.CLOSED:
                return (
                    "left"
                    if any(isinstance(e, Close) and e.reason == "left" for e in effects)
                    else "closed"
                )

    async def _apply(self, effects: list[SessionEffect]) -> None:
        for effect in effects:
            try:
                await self._apply_one(effect)
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
            self._outbox.put_nowait(None)
        elif isinstance(effect, Joined):
            pid = effect.participant.id
            state.add_connection(pid, self)
            self._subscription = state.bus.subscribe(participant_topic(pid))
            self._tasks.append(asyncio.create_task(self._pump(self._subscription), name="ws-pump"))
            if state.turn is not None:
                self._tasks.append(
                    asyncio.create_task(
                        self._renew_ice_servers(pid, state.turn.renewal_interval),
                        name="ice-renewal",
                    )
                )
            client = self._ws.client
            state.sfu.open(pid, self._deliver_to_self, client.host if client else None)
        elif isinstance(effect, NegotiatePublish):
            await self._negotiate_publish(effect)
        elif isinstance(effect, AcceptSubscribeAnswer):
            await state.sfu.accept_subscribe_answer(effect.participant_id, effect.sdp)
        elif isinstance(effect, AddRemoteCandidate):
            await state.sfu.add_candidate(effect.participant_id, effect.candidate)
        else:
            await execute_lesson_effect(state, effect)

    async def _negotiate_publish(self, effect: NegotiatePublish) -> None:
        state = self._state
        lesson = self._session.lesson
        assert lesson is not None
        result = await state.sfu.accept_publish_offer(effect.participant_id, effect.offer)
        self._send(p.PublishAnswer(sdp=result.answer_sdp))
        for track_id in result.stopped_track_ids:
            await self._apply(
                list(lesson.remove_track(effect.participant_id, track_id, "unpublished"))
            )
        for incoming in result.started:
            info, effects = lesson.add_track(effect.participant_id, incoming.kind, incoming.source)
            state.sfu.start_forwarding(effect.participant_id, info.id, incoming)
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

    async def _deliver_to_self(self, message: p.ServerMessage) -> None:
        if isinstance(message, p.SubscribeOffer):
            # Ahead of the answer in the inbox, whatever the client's pace.
            with contextlib.suppress(asyncio.QueueFull):
                self._inbox.put_nowait(_OfferSent())
        self._send(message)

    def _send(self, message: p.ServerMessage) -> None:
        self._outbox.put_nowait(p.encode_server_message(message))

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
        except Exception:  # the peer went away; the reader reports it
            logger.debug("socket write failed", exc_info=True)
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(_Disconnected("closed"))

    async def _pump(self, subscription: Subscription) -> None:
        while True:
            text = await subscription.get()
            if text == InMemoryEventBus.OVERFLOW:
                self._outbox.put_nowait(None)
                return
            self._outbox.put_nowait(text)
            if '"bye"' in text and p.parse_server_message(text)["type"] == "bye":
                # Kicked or replaced: the bye is the last message this socket gets.
                self._close_code = CLOSE_POLICY
                self._outbox.put_nowait(None)
                with contextlib.suppress(asyncio.QueueFull):
                    self._inbox.put_nowait(_Disconnected("replaced"))
                return

    async def _cleanup(self, reason: str) -> None:
        state = self._state
        pid = self.participant_id
        effects = self._session.disconnected(reason)
        if pid is not None:
            await state.sfu.close(pid)
        for effect in effects:
            if isinstance(
                effect,
                (
                    Deliver,
                    Subscribe,
                    Unsubscribe,
                    StopTrack,
                    PauseTrack,
                    Record,
                    Announce,
                    StartRecording,
                    StopRecording,
                    RecordingConsent,
                ),
            ):
                await execute_lesson_effect(state, effect)
        if self._subscription is not None:
            self._subscription.close()
        # Let the writer flush a final bye, then stop every task of this socket.
        self._outbox.put_nowait(None)
        writer = self._tasks[1]
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(writer), 2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._ws.close(self._close_code)
        if pid is not None:
            state.remove_connection(pid)


async def execute_lesson_effect(state: ServerState, effect: Effect) -> None:
    """Carry out one effect of the lesson state machine, in order."""
    if isinstance(effect, Record):
        # Durable before anything that follows is delivered (acknowledged).
        state.record(effect.data)
    elif isinstance(effect, Deliver):
        await state.bus.publish(
            participant_topic(effect.to), p.encode_server_message(effect.message)
        )
    elif isinstance(effect, Subscribe):
        await state.sfu.subscribe(effect.subscriber, effect.publisher, effect.track)
    elif isinstance(effect, Unsubscribe):
        await state.sfu.unsubscribe(effect.subscriber, effect.track_id)
    elif isinstance(effect, StopTrack):
        await state.sfu.stop_track(effect.track_id)
    elif isinstance(effect, PauseTrack):
        state.sfu.set_paused(effect.track_id, effect.paused)
    elif isinstance(effect, Announce):
        state.webhooks.notify(effect.event, effect.data)
    elif isinstance(effect, (StartRecording, StopRecording, RecordingConsent)):
        await state.recordings.carry_out(effect)
    # The timeline of a recording in progress (server/recordings.py).
    state.recordings.observe(effect)
