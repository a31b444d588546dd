"""One participant's signalling session as a sans-I/O state machine.

Text frames go in through :meth:`SignalingSession.receive_text`; effects come
out: messages for participants, SDP work for the SFU, replies and a close for
this socket. The session checks the join token, the message schema, the rate
limit and the permission each message type needs, in that order.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from . import protocol as p
from .effects import Effect
from .lesson import Forbidden, Lesson, Participant
from .permissions import Permission
from .registry import LessonRegistry
from .tokens import TokenError, verify_token

JOIN_TIMEOUT_SECONDS = 10.0

# The permission each client message needs once joined; a type missing here is
# denied. Actions on another participant also check the permission's scope (own
# school only, for delegates) in the lesson.
MESSAGE_PERMISSIONS: dict[str, Permission] = {
    "publish_offer": Permission.PUBLISH,
    "subscribe_answer": Permission.SUBSCRIBE,
    "ice_candidate": Permission.JOIN,
    "ping": Permission.JOIN,
    "pong": Permission.JOIN,
    "leave": Permission.JOIN,
    "ice_restart": Permission.SUBSCRIBE,
    "fetch_chat": Permission.JOIN,
    "grant_publish": Permission.GRANT_PUBLISH,
    "revoke_publish": Permission.GRANT_PUBLISH,
    "grant_floor": Permission.GRANT_PUBLISH,
    "admit": Permission.ADMIT,
    "deny": Permission.ADMIT,
    "mute": Permission.MODERATE,
    "allow_unmute": Permission.MODERATE,
    "remove": Permission.MODERATE,
    "ask_to_unmute": Permission.ASK_TO_UNMUTE,
    "raise_hand": Permission.RAISE_HAND,
    # Lowering one's own hand needs nothing more; someone else's needs MODERATE.
    "lower_hand": Permission.JOIN,
    "chat": Permission.CHAT,
    "lock_lesson": Permission.RUN_LESSON,
    "mute_all": Permission.RUN_LESSON,
    "set_presenter": Permission.RUN_LESSON,
    "spotlight": Permission.RUN_LESSON,
    "end_lesson": Permission.RUN_LESSON,
    "start_breakout": Permission.RUN_LESSON,
    "visit_group": Permission.RUN_LESSON,
    "broadcast": Permission.RUN_LESSON,
    "broadcast_audio": Permission.RUN_LESSON,
    "end_breakout": Permission.RUN_LESSON,
    "receive_settings": Permission.SUBSCRIBE,
    "direct_stage": Permission.RUN_LESSON,
    "start_recording": Permission.RECORD,
    "stop_recording": Permission.RECORD,
    "decline_recording": Permission.DECLINE_RECORDING,
}
# What a participant waiting in the lobby may send.
LOBBY_MESSAGES = frozenset({"ping", "pong", "leave", "ice_candidate"})


class SessionState(enum.Enum):
    AWAITING_JOIN = "awaiting_join"
    JOINED = "joined"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``message`` on this socket only."""

    message: p.ServerMessage


@dataclass(frozen=True, slots=True)
class Close:
    """Send ``bye`` and close this socket."""

    reason: p.ByeReason
    message: str


@dataclass(frozen=True, slots=True)
class NegotiatePublish:
    """Apply the client's publish offer and answer it."""

    participant_id: str
    offer: p.PublishOffer


@dataclass(frozen=True, slots=True)
class AcceptSubscribeAnswer:
    """Apply the client's answer to the server's subscribe offer (``offer_id``: the
    offer it answers, if the client said)."""

    participant_id: str
    sdp: str
    offer_id: int | None = None


@dataclass(frozen=True, slots=True)
class RestartIce:
    """Restart ICE on the participant's subscribe connection (a new offer follows)."""

    participant_id: str


@dataclass(frozen=True, slots=True)
class AddRemoteCandidate:
    """Add a trickled ICE candidate of the client to one of its peer connections."""

    participant_id: str
    candidate: p.IceCandidate


@dataclass(frozen=True, slots=True)
class ApplyReceiveSettings:
    """What a viewer wants of the videos it receives (media only: no lesson rule)."""

    participant_id: str
    settings: p.ReceiveSettings


@dataclass(frozen=True, slots=True)
class Joined:
    """The session took a seat; the server routes the participant's messages and media
    to this socket. ``resumed``: the seat existed (its media may too); another socket
    that held it, if any, is no longer the participant's."""

    participant: Participant
    resumed: bool = False


SessionEffect = (
    Effect
    | Reply
    | Close
    | NegotiatePublish
    | AcceptSubscribeAnswer
    | AddRemoteCandidate
    | ApplyReceiveSettings
    | RestartIce
    | Joined
)


class TokenBucket:
    """Message rate limit: ``rate`` per second with bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last: float | None = None

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _error(exc: p.ProtocolError) -> Reply:
    return Reply(p.ErrorMessage(code=exc.code, message=exc.message, request_type=exc.request_type))


class SignalingSession:
    """The protocol for one socket: join first, then permission-checked requests."""

    # Consecutive refused messages (rate limit) after which the socket is closed.
    MAX_CONSECUTIVE_DROPS = 100
    # Replies the server asked for (subscribe offers awaiting an answer) that may pass
    # an empty rate-limit bucket: the server, not the client, set their pace.
    MAX_SOLICITED = 2

    def __init__(
        self,
        *,
        secret: bytes,
        registry: LessonRegistry,
        rate_per_second: float = 20.0,
        burst: int = 60,
    ) -> None:
        self.state = SessionState.AWAITING_JOIN
        self.participant_id: str | None = None
        self.lesson: Lesson | None = None
        # Which taking of the seat this socket is (see Lesson.disconnect).
        self.epoch = 0
        self._secret = secret
        self._registry = registry
        self._bucket = TokenBucket(rate_per_second, burst)
        self._drops = 0
        self._solicited = 0

    def receive_text(self, data: str | bytes, now: float) -> list[SessionEffect]:
        """Handle one frame from the client."""
        if self.state is SessionState.CLOSED:
            return []
        if not self._bucket.take(now):
            if self._solicited:
                self._solicited -= 1
                return self._receive(data)
            self._drops += 1
            if self._drops >= self.MAX_CONSECUTIVE_DROPS:
                return self._close("flood", "too many messages; the connection was closed")
            if self._drops == 1:
                return [
                    Reply(
                        p.ErrorMessage(
                            code="rate_limited",
                            message="too many messages; some were dropped, slow down",
                        )
                    )
                ]
            return []
        return self._receive(data)

    def answer_expected(self) -> None:
        """The server sent this client an offer: its answer must not be rate limited
        away (the server would wait for it forever)."""
        self._solicited = min(self._solicited + 1, self.MAX_SOLICITED)

    def _receive(self, data: str | bytes) -> list[SessionEffect]:
        self._drops = 0
        try:
            message = p.parse_client_message(data)
        except p.ProtocolError as exc:
            if self.state is SessionState.AWAITING_JOIN:
                return [
                    _error(exc),
                    *self._close("join_required", "the first message must be join"),
                ]
            return [_error(exc)]
        if self.state is SessionState.AWAITING_JOIN:
            if not isinstance(message, p.Join):
                return self._close("join_required", "the first message must be join")
            return self._join(message)
        try:
            return self._dispatch(message)
        except p.ProtocolError as exc:
            return [_error(exc)]

    def join_timed_out(self, seconds: float = JOIN_TIMEOUT_SECONDS) -> list[SessionEffect]:
        """The join did not arrive within ``seconds``."""
        if self.state is not SessionState.AWAITING_JOIN:
            return []
        return self._close("join_timeout", f"no join within {seconds:g} s")

    def disconnected(self, reason: str, now: float) -> list[SessionEffect]:
        """The socket is gone (closed, dropped, kicked or replaced) at ``now`` (the
        lesson's clock): its seat is held for a reconnect, or freed (see
        :meth:`Lesson.disconnect`)."""
        effects: list[SessionEffect] = []
        if self.lesson is not None and self.participant_id is not None:
            effects += self.lesson.disconnect(self.participant_id, self.epoch, reason, now)
            self._registry.discard_if_empty(self.lesson.id)
        self.state = SessionState.CLOSED
        return effects

    @property
    def holds_seat(self) -> bool:
        """Whether this socket still holds its participant's seat (no other took it)."""
        if self.lesson is None or self.participant_id is None:
            return False
        return self.lesson.epoch_of(self.participant_id) == self.epoch

    # -- internals ---------------------------------------------------------

    def _close(self, reason: p.ByeReason, message: str) -> list[SessionEffect]:
        self.state = SessionState.CLOSED
        return [Close(reason, message)]

    def _join(self, message: p.Join) -> list[SessionEffect]:
        try:
            grant = verify_token(self._secret, message.token)
        except TokenError as exc:
            return [
                Reply(p.ErrorMessage(code="bad_token", message=exc.reason, request_type="join")),
                *self._close("bad_token", exc.reason),
            ]
        if message.lesson is not None and message.lesson != grant.lesson:
            reason = "this join link is for another lesson"
            return [
                Reply(p.ErrorMessage(code="bad_token", message=reason, request_type="join")),
                *self._close("bad_token", reason),
            ]
        lesson = self._registry.lesson(grant.lesson)
        # The same link joining again (a reconnect, a reload, another tab) takes the
        # seat its link holds: the newer socket wins.
        try:
            entry = lesson.enter(grant, resume_media=message.resume)
        except Forbidden as exc:
            self._registry.discard_if_empty(lesson.id)
            return [_error(exc), *self._close(exc.bye_reason, exc.message)]
        self.state = SessionState.JOINED
        self.participant_id = entry.participant.id
        self.epoch = entry.participant.epoch
        self.lesson = lesson
        return [Joined(entry.participant, entry.resumed), *entry.effects]

    def _dispatch(self, message: p.ClientMessage) -> list[SessionEffect]:
        assert self.lesson is not None and self.participant_id is not None
        lesson, pid = self.lesson, self.participant_id
        if isinstance(message, p.Join):
            raise p.ProtocolError("already_joined", "this socket has already joined", "join")
        if isinstance(message, p.Ping):
            return [Reply(p.Pong())]
        if isinstance(message, p.ClientPong):
            return []  # a sign of life: the socket's owner counts it
        if isinstance(message, p.Leave):
            return self._close("left", "you left the lesson")
        if lesson.is_waiting(pid) and message.type not in LOBBY_MESSAGES:
            raise p.ProtocolError(
                "in_lobby",
                "you are waiting in the lobby; the teacher will let you in",
                message.type,
            )
        permission = MESSAGE_PERMISSIONS.get(message.type)
        if permission is None:
            raise Forbidden(f"{message.type} is not allowed", message.type)
        lesson.require(pid, permission, message.type)
        return list(self._route(lesson, pid, message))

    @staticmethod
    def _route(lesson: Lesson, pid: str, message: p.ClientMessage) -> Sequence[SessionEffect]:
        match message:
            case p.PublishOffer():
                return [NegotiatePublish(pid, message)]
            case p.SubscribeAnswer():
                return [AcceptSubscribeAnswer(pid, message.sdp, message.offer_id)]
            case p.IceRestart():
                return [RestartIce(pid)]
            case p.FetchChat():
                return lesson.fetch_chat(pid, message.before, message.limit)
            case p.IceCandidate():
                return [AddRemoteCandidate(pid, message)]
            case p.ReceiveSettings():
                return [ApplyReceiveSettings(pid, message)]
            case p.GrantPublish():
                return lesson.grant_publish(pid, message.participant_id)
            case p.RevokePublish():
                return lesson.revoke_publish(pid, message.participant_id)
            case p.GrantFloor():
                return lesson.grant_floor(pid, message.participant_id)
            case p.Admit():
                return lesson.admit(pid, message.participant_id)
            case p.Deny():
                return lesson.deny(pid, message.participant_id)
            case p.Mute():
                return lesson.mute(pid, message.participant_id, message.kind)
            case p.AllowUnmute():
                return lesson.allow_unmute(pid, message.participant_id, message.kind)
            case p.Remove():
                return lesson.remove(pid, message.participant_id)
            case p.AskToUnmute():
                return lesson.ask_to_unmute(pid, message.kind)
            case p.RaiseHand():
                return lesson.raise_hand(pid)
            case p.LowerHand():
                return lesson.lower_hand(pid, message.participant_id)
            case p.Chat():
                return lesson.chat(pid, message.text, message.to)
            case p.LockLesson():
                return lesson.lock(pid, message.locked)
            case p.MuteAll():
                return lesson.mute_all(pid, message.kind)
            case p.SetPresenter():
                return lesson.set_presenter(pid, message.participant_id, message.presenter)
            case p.Spotlight():
                return lesson.set_spotlight(pid, message.participant_id)
            case p.EndLesson():
                return lesson.end(pid)
            case p.StartBreakout():
                return lesson.start_breakout(pid, message.groups, message.count)
            case p.VisitGroup():
                return lesson.visit_group(pid, message.group)
            case p.Broadcast():
                return lesson.broadcast(pid, message.text)
            case p.BroadcastAudio():
                return lesson.broadcast_audio(pid, message.on)
            case p.EndBreakout():
                return lesson.end_breakout(pid)
            case p.DirectStage():
                return lesson.direct_stage(pid, message.stage, message.classroom)
            case p.StartRecording():
                return lesson.start_recording(pid)
            case p.StopRecording():
                return lesson.stop_recording(pid)
            case p.DeclineRecording():
                return lesson.decline_recording(pid, message.declined)
        raise Forbidden(f"{message.type} is not allowed", message.type)
