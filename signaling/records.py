"""What a lesson records durably: attendance, chat, removals, moderation, its end.

The lesson state machine emits records as effects; the server writes each one to
a :class:`RecordStore` before it carries out the effects that follow, so nothing
that was acknowledged is lost if the process is killed. ``InMemoryRecordStore``
serves tests; ``signaling.adapters.sqlite_records.SqliteRecordStore`` is the default.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, Protocol

from . import protocol as p


class AttendanceKind(enum.StrEnum):
    """One line of a lesson's attendance log."""

    WAITING = "waiting"  # entered the lobby
    JOINED = "joined"  # entered the lesson (directly or admitted)
    ADMITTED = "admitted"  # let in from the lobby by a moderator
    DENIED = "denied"
    LEFT = "left"
    REMOVED = "removed"
    # The socket went; the seat is held for a reconnect (not a leave). Released
    # seats get LEFT at this event's time; a reconnect continues the same session.
    DISCONNECTED = "disconnected"
    RECONNECTED = "reconnected"


@dataclass(frozen=True, slots=True)
class AttendanceEvent:
    """Who did what when. ``identity`` is the join link's id, stable across reconnects."""

    lesson: str
    kind: AttendanceKind
    at: float
    identity: str
    participant_id: str
    name: str
    role: str
    school: str
    headcount: int | None = None
    reason: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class ChatRecord:
    """A chat message, with the link id of its sender (for private messages)."""

    lesson: str
    entry: p.ChatEntry
    from_identity: str


@dataclass(frozen=True, slots=True)
class BanRecord:
    """A removed participant's link, refused from now on."""

    lesson: str
    identity: str


PublishDecision = Literal["granted", "revoked"]


@dataclass(frozen=True, slots=True)
class ModerationRecord:
    """What moderators decided about one link, whatever socket or seat it uses: the
    kinds it is muted in, and whether a moderator granted or revoked its publishing
    (``None``: its role's default). The latest record of a link replaces earlier ones."""

    lesson: str
    identity: str
    muted: tuple[str, ...] = ()
    publish: PublishDecision | None = None


@dataclass(frozen=True, slots=True)
class LessonEndedRecord:
    lesson: str
    at: float


Record = AttendanceEvent | ChatRecord | BanRecord | ModerationRecord | LessonEndedRecord


@dataclass(slots=True)
class LessonHistory:
    """What a lesson starts from when it is (re)opened on this node."""

    chat: list[ChatRecord] = field(default_factory=list)
    banned: set[str] = field(default_factory=set)
    moderation: dict[str, ModerationRecord] = field(default_factory=dict)
    ended: bool = False


class RecordStore(Protocol):
    """Durable records of lessons."""

    def append(self, record: Record) -> None:
        """Write one record durably before returning."""
        ...

    def history(self, lesson: str) -> LessonHistory:
        """Chat, bans, moderation and end state of ``lesson``."""
        ...

    def is_banned(self, lesson: str, identity: str) -> bool:
        """Whether link ``identity`` was removed from ``lesson``."""
        ...

    def attendance(self, lesson: str) -> list[AttendanceEvent]:
        """Every attendance event of ``lesson`` in order."""
        ...


class InMemoryRecordStore:
    """Records kept in this process only (tests and throwaway servers)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def append(self, record: Record) -> None:
        self.records.append(record)

    def history(self, lesson: str) -> LessonHistory:
        result = LessonHistory()
        for record in self.records:
            if record.lesson != lesson:
                continue
            if isinstance(record, ChatRecord):
                result.chat.append(record)
            elif isinstance(record, BanRecord):
                result.banned.add(record.identity)
            elif isinstance(record, ModerationRecord):
                result.moderation[record.identity] = record
            elif isinstance(record, LessonEndedRecord):
                result.ended = True
        return result

    def is_banned(self, lesson: str, identity: str) -> bool:
        return any(
            isinstance(r, BanRecord) and r.lesson == lesson and r.identity == identity
            for r in self.records
        )

    def attendance(self, lesson: str) -> list[AttendanceEvent]:
        return [r for r in self.records if isinstance(r, AttendanceEvent) and r.lesson == lesson]
