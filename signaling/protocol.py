"""The signalling wire protocol, version 1: message schemas, parsing and encoding.

Every message is one JSON object with a protocol version ``v`` and a ``type``.
Parsing is strict: duplicate keys, unknown types, unknown fields, wrong types
and oversized messages raise :class:`ProtocolError` whose message names the
problem. ``docs/protocol.md`` documents each message.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SDP_CHARS = 60_000
# A participant publishes at most a camera, a microphone, a screen and its sound; a
# publish offer may hold a few more sections (stopped ones, before a client reuses them).
MAX_PUBLISHED_TRACKS = 4
MAX_PUBLISH_MLINES = 16
# Chat sent with ``welcome``: the newest messages only; older ones by ``fetch_chat``.
CHAT_HISTORY_ON_JOIN = 50
MAX_CHAT_PAGE = 100

Source = Literal["camera", "microphone", "screen", "screen_audio"]
Kind = Literal["audio", "video"]
PcName = Literal["publish", "subscribe"]
ParticipantId = Annotated[str, Field(min_length=1, max_length=64)]


class ProtocolError(Exception):
    """A message was refused; ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str, request_type: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_type = request_type


# Server messages carry every field, null or not (see encode_server_message), so
# their JSON schema lists fields with defaults as required too.
_SERVER_MODEL_CONFIG = ConfigDict(
    extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
)


class _Message(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, json_schema_serialization_defaults_required=True
    )
    v: Literal[1] = 1


# --- client to server -------------------------------------------------------


class Join(_Message):
    """First message on every socket: the signed join token."""

    type: Literal["join"] = "join"
    token: str = Field(min_length=1, max_length=4096)
    # The lesson the client means to join (from its page); must match the token's.
    lesson: str | None = Field(default=None, min_length=1, max_length=64)
    # The client still holds the peer connections of an earlier socket of this link
    # and wants to keep them (a reconnect). False (a new page): the seat is resumed
    # but its media starts over.
    resume: bool = False


class PublishedTrackSpec(BaseModel):
    """What a client says about one m-line of its publish offer."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    mid: str = Field(min_length=1, max_length=16)
    source: Source


class PublishOffer(_Message):
    """SDP offer for the client's publish peer connection (client always offers it)."""

    type: Literal["publish_offer"] = "publish_offer"
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    tracks: list[PublishedTrackSpec] = Field(max_length=MAX_PUBLISH_MLINES)


class SubscribeAnswer(_Message):
    """SDP answer to the server's latest ``subscribe_offer``."""

    type: Literal["subscribe_answer"] = "subscribe_answer"
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    # The ``offer_id`` of the offer answered: an answer to an older offer is ignored.
    offer_id: int | None = Field(default=None, ge=0)


class IceCandidate(_Message):
    """A trickled ICE candidate of the client; ``candidate`` null ends the trickle."""

    type: Literal["ice_candidate"] = "ice_candidate"
    pc: PcName
    candidate: str | None = Field(default=None, max_length=1024)
    sdp_mid: str | None = Field(default=None, max_length=16)
    sdp_mline_index: int | None = Field(default=None, ge=0, le=64)


class GrantPublish(_Message):
    """Teacher: allow a participant to publish."""

    type: Literal["grant_publish"] = "grant_publish"
    participant_id: ParticipantId


class RevokePublish(_Message):
    """Teacher: take back the right to publish; their tracks stop at the server."""

    type: Literal["revoke_publish"] = "revoke_publish"
    participant_id: ParticipantId


class Ping(_Message):
    """Keep-alive; the server answers ``pong``."""

    type: Literal["ping"] = "ping"


class Leave(_Message):
    """Leave the lesson; the server closes the socket after ``bye``."""

    type: Literal["leave"] = "leave"


class ClientPong(_Message):
    """The answer to the server's keep-alive ``ping``."""

    type: Literal["pong"] = "pong"


class IceRestart(_Message):
    """Ask the server to restart ICE on the subscribe connection: it sends a
    ``subscribe_offer`` with new ICE credentials. (The client restarts ICE on its
    publish connection itself, with a ``publish_offer``.)"""

    type: Literal["ice_restart"] = "ice_restart"
    pc: Literal["subscribe"]


class FetchChat(_Message):
    """Ask for older chat: up to ``limit`` messages sent before message ``before``."""

    type: Literal["fetch_chat"] = "fetch_chat"
    before: int | None = Field(default=None, ge=0)
    limit: int = Field(default=CHAT_HISTORY_ON_JOIN, ge=1, le=MAX_CHAT_PAGE)


class _Targeted(_Message):
    participant_id: ParticipantId


class Admit(_Targeted):
    """Moderator: let a participant in from the lobby."""

    type: Literal["admit"] = "admit"


class Deny(_Targeted):
    """Moderator: turn a participant away from the lobby."""

    type: Literal["deny"] = "deny"


class LockLesson(_Message):
    """Teacher: nobody new gets in while locked (teachers excepted)."""

    type: Literal["lock_lesson"] = "lock_lesson"
    locked: bool


class Mute(_Targeted):
    """Moderator: stop forwarding a participant's microphone or camera at the server."""

    type: Literal["mute"] = "mute"
    kind: Kind


class MuteAll(_Message):
    """Teacher: mute everyone who is not teaching."""

    type: Literal["mute_all"] = "mute_all"
    kind: Kind


class AskToUnmute(_Message):
    """A muted participant asks the moderators to be heard (or seen) again."""

    type: Literal["ask_to_unmute"] = "ask_to_unmute"
    kind: Kind


class AllowUnmute(_Targeted):
    """Moderator: lift a mute; forwarding resumes and the participant is told."""

    type: Literal["allow_unmute"] = "allow_unmute"
    kind: Kind


class Remove(_Targeted):
    """Moderator: remove a participant; its link is refused afterwards."""

    type: Literal["remove"] = "remove"


class SetPresenter(_Targeted):
    """Teacher: make a participant presenter (may publish, shown large) or not."""

    type: Literal["set_presenter"] = "set_presenter"
    presenter: bool


class Spotlight(_Message):
    """Teacher: show one participant large for everyone (null clears it)."""

    type: Literal["spotlight"] = "spotlight"
    participant_id: ParticipantId | None = None


class StageItem(BaseModel):
    """One thing a stage shows: a participant's camera or screen share."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, json_schema_serialization_defaults_required=True
    )
    participant_id: ParticipantId
    source: Literal["camera", "screen"] = "camera"


class Stage(BaseModel):
    """What a big screen's stage shows: one item, or two side by side."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, json_schema_serialization_defaults_required=True
    )
    items: list[StageItem] = Field(min_length=1, max_length=2)


class DirectStage(_Message):
    """Teacher: what the stage of every classroom shows (``classroom`` null), or of one
    classroom only (its participant id); ``stage`` null gives the choice back (to the
    lesson's stage, or to each page's own layout)."""

    type: Literal["direct_stage"] = "direct_stage"
    stage: Stage | None = None
    classroom: ParticipantId | None = None


class StartRecording(_Message):
    """Teacher: record every forwarded track of the lesson (everyone is told first)."""

    type: Literal["start_recording"] = "start_recording"


class StopRecording(_Message):
    """Teacher: stop recording."""

    type: Literal["stop_recording"] = "stop_recording"


class DeclineRecording(_Message):
    """A school's delegate (or teacher): nothing of this school's participants is
    recorded (``declined`` false withdraws the refusal)."""

    type: Literal["decline_recording"] = "decline_recording"
    declined: bool = True


class EndLesson(_Message):
    """Teacher: end the lesson for everyone."""

    type: Literal["end_lesson"] = "end_lesson"


class RaiseHand(_Message):
    type: Literal["raise_hand"] = "raise_hand"


class LowerHand(_Message):
    """Lower one's own hand, or (moderator) someone else's."""

    type: Literal["lower_hand"] = "lower_hand"
    participant_id: ParticipantId | None = None


class GrantFloor(_Targeted):
    """Moderator: take the first (or a chosen) hand and let that participant publish."""

    type: Literal["grant_floor"] = "grant_floor"


MAX_CHAT_CHARS = 2000


class Chat(_Message):
    """A chat message to everyone (in one's group) or privately to the teachers."""

    type: Literal["chat"] = "chat"
    text: str = Field(min_length=1, max_length=MAX_CHAT_CHARS)
    to: Literal["everyone", "teachers"] = "everyone"


class StartBreakout(_Message):
    """Teacher: split participants into groups, by hand or automatically mixing schools."""

    type: Literal["start_breakout"] = "start_breakout"
    groups: list[list[ParticipantId]] | None = Field(default=None, max_length=50)
    count: int | None = Field(default=None, ge=2, le=50)


class VisitGroup(_Message):
    """Teacher: move oneself into a breakout group (null: back to the main room)."""

    type: Literal["visit_group"] = "visit_group"
    group: str | None = Field(default=None, max_length=16)


class Broadcast(_Message):
    """Teacher: a chat message to every group at once."""

    type: Literal["broadcast"] = "broadcast"
    text: str = Field(min_length=1, max_length=MAX_CHAT_CHARS)


class BroadcastAudio(_Message):
    """Teacher: forward one's audio to every group (or stop)."""

    type: Literal["broadcast_audio"] = "broadcast_audio"
    on: bool


class EndBreakout(_Message):
    """Teacher: bring everyone back to the main room."""

    type: Literal["end_breakout"] = "end_breakout"


class TrackView(BaseModel):
    """How large a viewer shows one track (0 x 0: not at all)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    track_id: str = Field(min_length=1, max_length=64)
    width: int = Field(ge=0, le=16384)
    height: int = Field(ge=0, le=16384)


ReceiveMode = Literal["auto", "low_data", "audio_only"]


class ReceiveSettings(_Message):
    """What the viewer wants of the videos it receives: a mode (``low_data``: the
    smallest layer of each; ``audio_only``: no video) and the size it shows each
    track at (unlisted tracks: as large as there is)."""

    type: Literal["receive_settings"] = "receive_settings"
    mode: ReceiveMode = "auto"
    tracks: list[TrackView] = Field(default_factory=list, max_length=64)


ClientMessage = Annotated[
    Join
    | PublishOffer
    | SubscribeAnswer
    | IceCandidate
    | GrantPublish
    | RevokePublish
    | Ping
    | Leave
    | ClientPong
    | IceRestart
    | FetchChat
    | Admit
    | Deny
    | LockLesson
    | Mute
    | MuteAll
    | AskToUnmute
    | AllowUnmute
    | Remove
    | SetPresenter
    | Spotlight
    | EndLesson
    | RaiseHand
    | LowerHand
    | GrantFloor
    | Chat
    | StartBreakout
    | VisitGroup
    | Broadcast
    | BroadcastAudio
    | EndBreakout
    | ReceiveSettings
    | DirectStage
    | StartRecording
    | StopRecording
    | DeclineRecording,
    Field(discriminator="type"),
]
CLIENT_MESSAGE_TYPES = frozenset(
    {
        "join",
        "publish_offer",
        "subscribe_answer",
        "ice_candidate",
        "grant_publish",
        "revoke_publish",
        "ping",
        "leave",
        "pong",
        "ice_restart",
        "fetch_chat",
        "admit",
        "deny",
        "lock_lesson",
        "mute",
        "mute_all",
        "ask_to_unmute",
        "allow_unmute",
        "remove",
        "set_presenter",
        "spotlight",
        "end_lesson",
        "raise_hand",
        "lower_hand",
        "grant_floor",
        "chat",
        "start_breakout",
        "visit_group",
        "broadcast",
        "broadcast_audio",
        "end_breakout",
        "receive_settings",
        "direct_stage",
        "start_recording",
        "stop_recording",
        "decline_recording",
    }
)
_client_adapter: TypeAdapter[Any] = TypeAdapter(ClientMessage)


# --- server to client -------------------------------------------------------


class TrackInfo(BaseModel):
    """A published track as others see it."""

    model_config = _SERVER_MODEL_CONFIG
    id: str
    kind: Kind
    source: Source


class ParticipantInfo(BaseModel):
    """A participant as others see it."""

    model_config = _SERVER_MODEL_CONFIG
    id: str
    name: str
    role: str
    school: str
    can_publish: bool
    tracks: list[TrackInfo]
    # Kinds a moderator muted: the server does not forward them.
    muted: list[Kind] = Field(default_factory=list)
    presenter: bool = False
    hand_raised: bool = False
    group: str | None = None
    # False while its seat is held for a reconnect (its socket went).
    connected: bool = True


class IceServer(BaseModel):
    """An ICE server the client should use (STUN or TURN)."""

    model_config = _SERVER_MODEL_CONFIG
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class Keepalive(BaseModel):
    """How the server keeps the socket alive: a ``ping`` every ``interval`` seconds,
    and a socket silent for ``timeout`` seconds is gone (either side closes it)."""

    model_config = _SERVER_MODEL_CONFIG
    interval: float
    timeout: float


class TargetRule(BaseModel):
    """Whom a participant may send one message about: a participant with one of
    ``roles`` and, if ``school`` is set, of that school only."""

    model_config = _SERVER_MODEL_CONFIG
    roles: list[str]
    school: str | None


class Welcome(_Message):
    """Answer to ``join``: who you are, what you may do, who is here."""

    type: Literal["welcome"] = "welcome"
    participant_id: str
    lesson: str
    you: ParticipantInfo
    permissions: list[str]
    # Per message that acts on another participant and that you may send: about whom.
    targets: dict[str, TargetRule] = Field(default_factory=dict)
    participants: list[ParticipantInfo]
    ice_servers: list[IceServer]
    state: LessonState
    # This socket took over the seat its link held: same participant id, and every
    # decision about it (mute, grants, hand, group, presenter...) still stands.
    resumed: bool = False
    keepalive: Keepalive | None = None


class IceServers(_Message):
    """Replaces the ``ice_servers`` of ``welcome``: fresh TURN credentials, sent before
    the previous ones expire."""

    type: Literal["ice_servers"] = "ice_servers"
    ice_servers: list[IceServer]


class ParticipantJoined(_Message):
    type: Literal["participant_joined"] = "participant_joined"
    participant: ParticipantInfo


class ParticipantLeft(_Message):
    type: Literal["participant_left"] = "participant_left"
    participant_id: str
    reason: str


class ParticipantDisconnected(_Message):
    """A participant's socket went; its seat is held for it until ``seat_held_until``
    (Unix time). Its tracks stay announced; nothing about it changes."""

    type: Literal["participant_disconnected"] = "participant_disconnected"
    participant_id: str
    reason: str
    seat_held_until: float


class ParticipantReconnected(_Message):
    """A participant whose seat was held is back, under the same id."""

    type: Literal["participant_reconnected"] = "participant_reconnected"
    participant_id: str


class ParticipantUpdated(_Message):
    """A participant's rights changed (for example a publish grant)."""

    type: Literal["participant_updated"] = "participant_updated"
    participant: ParticipantInfo


class PermissionsChanged(_Message):
    """Sent to one participant when what it may do changed."""

    type: Literal["permissions_changed"] = "permissions_changed"
    permissions: list[str]
    targets: dict[str, TargetRule] = Field(default_factory=dict)


class TrackPublished(_Message):
    type: Literal["track_published"] = "track_published"
    participant_id: str
    track: TrackInfo


class TrackUnpublished(_Message):
    type: Literal["track_unpublished"] = "track_unpublished"
    participant_id: str
    track_id: str
    reason: str


class PublishAnswer(_Message):
    type: Literal["publish_answer"] = "publish_answer"
    sdp: str


class SubscribedTrack(BaseModel):
    """Which remote track an m-line of the subscribe offer carries."""

    model_config = _SERVER_MODEL_CONFIG
    mid: str
    track_id: str
    participant_id: str
    kind: Kind
    source: Source


class SubscribeOffer(_Message):
    """Server-initiated offer for the subscribe peer connection."""

    type: Literal["subscribe_offer"] = "subscribe_offer"
    sdp: str
    tracks: list[SubscribedTrack]
    # Echo it in the answer: answers to older offers are ignored.
    offer_id: int = 0
    # The server started a new subscribe connection: close yours and answer this
    # offer on a new one.
    new_connection: bool = False


class ErrorMessage(_Message):
    """A request was refused; the socket and the lesson go on."""

    type: Literal["error"] = "error"
    code: str
    message: str
    request_type: str | None = None


ByeReason = Literal[
    "left",
    "replaced",
    "server_shutdown",
    "bad_token",
    "join_required",
    "join_timeout",
    "timeout",
    "flood",
    "forbidden",
    "removed",
    "denied",
    "locked",
    "lesson_ended",
    "negotiation_failed",
    "unavailable",
]


class Bye(_Message):
    """The server is closing this participant's session (its last message)."""

    type: Literal["bye"] = "bye"
    reason: ByeReason
    message: str


class Pong(_Message):
    type: Literal["pong"] = "pong"


class ServerPing(_Message):
    """The server's keep-alive: answer ``pong`` at once."""

    type: Literal["ping"] = "ping"


class LobbyWait(_Message):
    """Sent instead of ``welcome`` while a participant waits to be let in."""

    type: Literal["lobby_wait"] = "lobby_wait"
    participant_id: str
    reason: Literal["lobby", "waiting_for_teacher"]
    message: str
    keepalive: Keepalive | None = None


class LobbyUpdated(_Message):
    """To a moderator as it arrives: everyone who waits in the lobby."""

    type: Literal["lobby_updated"] = "lobby_updated"
    waiting: list[ParticipantInfo]


class LobbyChanged(_Message):
    """To moderators: who came into the lobby and who left it (admitted, denied, gone)."""

    type: Literal["lobby_changed"] = "lobby_changed"
    added: list[ParticipantInfo]
    removed: list[str]


class LessonState(BaseModel):
    """Lesson-wide state every participant sees."""

    model_config = _SERVER_MODEL_CONFIG
    locked: bool
    spotlight: str | None
    breakout: bool
    groups: dict[str, list[str]]
    broadcast_audio_from: str | None
    chat_policy: str
    # Director mode: what every classroom's stage shows, and per-classroom choices.
    stage: Stage | None = None
    classroom_stages: dict[str, Stage] = Field(default_factory=dict)
    # Recording: on or off, and the schools that declined (nothing of theirs is kept).
    recording: bool = False
    recording_declined: list[str] = Field(default_factory=list)


class LessonUpdated(_Message):
    type: Literal["lesson_updated"] = "lesson_updated"
    state: LessonState


class UnmuteRequested(_Message):
    """To moderators: a muted participant asks to be heard (or seen) again."""

    type: Literal["unmute_requested"] = "unmute_requested"
    participant_id: str
    kind: Kind


class Notice(_Message):
    """Something happened to you that the page should say (muted, unmute allowed...)."""

    type: Literal["notice"] = "notice"
    code: str
    message: str


class RecordingChanged(_Message):
    """To everyone: recording started or stopped. Pages show a notice and play a
    sound when it starts; ``reason`` says why it stopped (a teacher, a write error)."""

    type: Literal["recording_changed"] = "recording_changed"
    recording: bool
    by: str
    reason: str
    declined_schools: list[str]
    message: str


class Hand(BaseModel):
    model_config = _SERVER_MODEL_CONFIG
    participant_id: str
    name: str
    school: str
    raised_at: float


class HandsChanged(_Message):
    """The raised hands, first raised first."""

    type: Literal["hands_changed"] = "hands_changed"
    queue: list[Hand]


class ChatEntry(BaseModel):
    """One chat message as delivered and stored."""

    model_config = _SERVER_MODEL_CONFIG
    id: int
    from_id: str
    name: str
    role: str
    school: str
    text: str
    to: Literal["everyone", "teachers", "all_groups"]
    group: str | None
    sent_at: float


class ReceivedVideo(BaseModel):
    """One video as a viewer receives it now."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    track_id: str
    forwarded: bool  # false: hidden, audio only, or waiting for a keyframe
    width: int  # of the simulcast layer forwarded; 0 when not known
    height: int


class ReceiveQuality(_Message):
    """To one viewer, when what it receives changed: the quality its downlink carries
    (``high``, ``medium``, ``low``, ``audio_only``), whether its network or its own
    settings limit it, and each video."""

    type: Literal["receive_quality"] = "receive_quality"
    level: Literal["high", "medium", "low", "audio_only"]
    limited_by: Literal["network", "settings"] | None
    videos: list[ReceivedVideo]


class ChatMessage(_Message):
    type: Literal["chat_message"] = "chat_message"
    message: ChatEntry


class ChatHistory(_Message):
    """Earlier chat this participant may read, oldest first: the newest
    ``CHAT_HISTORY_ON_JOIN`` after ``welcome``, older pages on ``fetch_chat``."""

    type: Literal["chat_history"] = "chat_history"
    messages: list[ChatEntry]
    # No older message this participant may read is left to fetch.
    complete: bool = True


ServerMessage = (
    Welcome
    | IceServers
    | LobbyWait
    | LobbyUpdated
    | LobbyChanged
    | LessonUpdated
    | UnmuteRequested
    | Notice
    | HandsChanged
    | ChatMessage
    | ChatHistory
    | ReceiveQuality
    | RecordingChanged
    | ParticipantJoined
    | ParticipantLeft
    | ParticipantDisconnected
    | ParticipantReconnected
    | ParticipantUpdated
    | PermissionsChanged
    | TrackPublished
    | TrackUnpublished
    | PublishAnswer
    | SubscribeOffer
    | ErrorMessage
    | Bye
    | Pong
    | ServerPing
)


# --- parsing and encoding ----------------------------------------------------


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ProtocolError("duplicate_key", f"duplicate key {key!r} in message")
        result[key] = value
    return result


def _describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"][1:]) or "message"
    if first["type"] == "extra_forbidden":
        return f"unknown field {location!r}"
    if first["type"] == "missing":
        return f"missing field {location!r}"
    return f"field {location!r}: {first['msg']}"


def parse_client_message(data: str | bytes) -> ClientMessage:
    """Parse one client message; raise :class:`ProtocolError` naming what is wrong."""
    if isinstance(data, bytes):
        raise ProtocolError("binary_message", "binary messages are not accepted; send JSON text")
    if len(data) > MAX_MESSAGE_BYTES or len(data.encode("utf-8")) > MAX_MESSAGE_BYTES:
        raise ProtocolError("message_too_large", f"message larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        raw = json.loads(data, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ProtocolError("malformed_json", f"message is not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise ProtocolError("malformed_json", "message is nested too deeply") from None
    except ValueError:
        # Python refuses to convert integers of more than 4300 digits.
        raise ProtocolError("malformed_json", "message holds a number too long") from None
    if not isinstance(raw, dict):
        raise ProtocolError("malformed_message", "message must be a JSON object")
    version = raw.get("v")
    # ``True == 1`` in Python: insist on a real integer.
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {version!r} is not supported; this server speaks v=1",
        )
    message_type = raw.get("type")
    if not isinstance(message_type, str) or message_type not in CLIENT_MESSAGE_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {message_type!r}")
    try:
        message: ClientMessage = _client_adapter.validate_python(raw)
    except ValidationError as exc:
        raise ProtocolError(
            "invalid_message", _describe_validation_error(exc), message_type
        ) from None
    return message


def encode_server_message(message: ServerMessage) -> str:
    """Serialise a server message to the JSON text sent on the socket.

    Every field is sent, null ones included: ``docs/protocol.md`` and
    ``docs/protocol.schema.json`` promise each key, and a typed client relies on it.
    """
    return message.model_dump_json()


def encode_client_message(message: BaseModel) -> str:
    """Serialise a client message (used by the Python client and tests)."""
    return message.model_dump_json(exclude_none=True)


def parse_server_message(data: str) -> dict[str, Any]:
    """Decode a server message for clients: plain JSON, checked to be an object with a type."""
    raw = json.loads(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise ValueError("server message without a type")
    return raw
