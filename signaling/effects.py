"""What the lesson state machine returns: effects, carried out in order by the server.

A :class:`Record` is written durably before the effects after it; ``Deliver`` goes
through the event bus; the media effects drive the SFU; ``HoldSeat`` arms a timer.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import protocol as p
from .recording import RecordingEffect
from .records import Record as RecordData


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send ``message`` to one participant (a ``bye`` also closes its socket)."""

    to: str
    message: p.ServerMessage


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Start forwarding ``track`` of ``publisher`` to ``subscriber``."""

    subscriber: str
    publisher: str
    track: p.TrackInfo


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Stop forwarding one track to one subscriber (the track goes on for others)."""

    subscriber: str
    track_id: str


@dataclass(frozen=True, slots=True)
class StopTrack:
    """Stop forwarding a published track at the server; it ends for every subscriber."""

    publisher: str
    track_id: str


@dataclass(frozen=True, slots=True)
class PauseTrack:
    """Stop (or resume) forwarding a track to everyone, at once (moderator mute)."""

    track_id: str
    paused: bool


@dataclass(frozen=True, slots=True)
class Record:
    """Write ``data`` durably before carrying out the effects that follow."""

    data: RecordData


@dataclass(frozen=True, slots=True)
class Announce:
    """Something outside the lesson may want to hear of (webhooks); never blocks it."""

    event: str
    data: dict[str, object]


@dataclass(frozen=True, slots=True)
class HoldSeat:
    """A participant's socket went and its seat is held: call :meth:`Lesson.release`
    for it at ``until`` (the lesson's clock), which frees it unless it was taken again."""

    lesson: str
    participant_id: str
    until: float


@dataclass(frozen=True, slots=True)
class ResetMedia:
    """The participant's media starts over (a new page took its seat): close its peer
    connections; its subscriptions stay and are offered on a new subscribe connection."""

    participant_id: str


@dataclass(frozen=True, slots=True)
class EndMedia:
    """The participant is gone: release its peer connections and everything on them."""

    participant_id: str


Effect = (
    Deliver
    | Subscribe
    | Unsubscribe
    | StopTrack
    | PauseTrack
    | Record
    | Announce
    | HoldSeat
    | ResetMedia
    | EndMedia
    | RecordingEffect
)
