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
MAX_TRACKS_PER_OFFER = 8

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


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    v: Literal[1] = 1


# --- client to server -------------------------------------------------------


class Join(_Message):
    """First message on every socket: the signed join token."""

    type: Literal["join"] = "join"
    token: str = Field(min_length=1, max_length=4096)
    # The lesson the client means to join (from its page); must match the token's.
    lesson: str | None = Field(default=None, min_length=1, max_length=64)


class PublishedTrackSpec(BaseModel):
    """What a client says about one m-line of its publish offer."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    mid: str = Field(min_length=1, max_length=16)
    source: Source


class PublishOffer(_Message):
    """SDP offer for the client's publish peer connection (client always offers it)."""

    type: Literal["publish_offer"] = "publish_offer"
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    tracks: list[PublishedTrackSpec] = Field(max_length=MAX_TRACKS_PER_OFFER)


class SubscribeAnswer(_Message):
    """SDP answer to the server's latest ``subscribe_offer``."""

    type: Literal["subscribe_answer"] = "subscribe_answer"
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)


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


ClientMessage = Annotated[
    Join
    | PublishOffer
    | SubscribeAnswer
    | IceCandidate
    | GrantPublish
    | RevokePublish
    | Ping
    | Leave,
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
    }
)
_client_adapter: TypeAdapter[Any] = TypeAdapter(ClientMessage)


# --- server to client -------------------------------------------------------


class TrackInfo(BaseModel):
    """A published track as others see it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    kind: Kind
    source: Source


class ParticipantInfo(BaseModel):
    """A participant as others see it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    name: str
    role: str
    school: str
    can_publish: bool
    tracks: list[TrackInfo]


class IceServer(BaseModel):
    """An ICE server the client should use (STUN or TURN)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class Welcome(_Message):
    """Answer to ``join``: who you are, what you may do, who is here."""

    type: Literal["welcome"] = "welcome"
    participant_id: str
    lesson: str
    you: ParticipantInfo
    permissions: list[str]
    participants: list[ParticipantInfo]
    ice_servers: list[IceServer]


class ParticipantJoined(_Message):
    type: Literal["participant_joined"] = "participant_joined"
    participant: ParticipantInfo


class ParticipantLeft(_Message):
    type: Literal["participant_left"] = "participant_left"
    participant_id: str
    reason: str


class ParticipantUpdated(_Message):
    """A participant's rights changed (for example a publish grant)."""

    type: Literal["participant_updated"] = "participant_updated"
    participant: ParticipantInfo


class PermissionsChanged(_Message):
    """Sent to one participant when what it may do changed."""

    type: Literal["permissions_changed"] = "permissions_changed"
    permissions: list[str]


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

    model_config = ConfigDict(extra="forbid", frozen=True)
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


class ErrorMessage(_Message):
    """A request was refused; the socket and the lesson go on."""

    type: Literal["error"] = "error"
    code: str
    message: str
    request_type: str | None = None


class Bye(_Message):
    """The server is closing this participant's session."""

    type: Literal["bye"] = "bye"
    reason: str
    message: str


class Pong(_Message):
    type: Literal["pong"] = "pong"


ServerMessage = (
    Welcome
    | ParticipantJoined
    | ParticipantLeft
    | ParticipantUpdated
    | PermissionsChanged
    | TrackPublished
    | TrackUnpublished
    | PublishAnswer
    | SubscribeOffer
    | ErrorMessage
    | Bye
    | Pong
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
    """Serialise a server message to the JSON text sent on the socket."""
    return message.model_dump_json(exclude_none=True)


def encode_client_message(message: BaseModel) -> str:
    """Serialise a client message (used by the Python client and tests)."""
    return message.model_dump_json(exclude_none=True)


def parse_server_message(data: str) -> dict[str, Any]:
    """Decode a server message for clients: plain JSON, checked to be an object with a type."""
    raw = json.loads(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise ValueError("server message without a type")
    return raw
