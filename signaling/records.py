"""What a lesson records durably: attendance, chat, removals, its end.

The lesson state machine emits records as effects; the server writes each one to
a :class:`RecordStore` before it carries out the effects that follow, so nothing
that was acknowledged is lost if the process is killed. ``InMemoryRecordStore``
serves tests; ``signaling.sqlite_records.SqliteRecordStore`` is the default.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from . import protocol as p


class AttendanceKind(enum.StrEnum):
    """One line of a lesson's attendance log."""

    WAITING = "waiting"  # entered the lobby
    JOINED = "joined"  # entered the lesson (directly or admitted)
    ADMITTED = "admitted"  # let in from the lobby by a moderator
    DENIED = "denied"
    LEFT = "left"
    REMOVED = "removed"


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


@dataclass(frozen=True, slots=True)
class LessonEndedRecord:
    lesson: str
    at: float


Record = AttendanceEvent | ChatRecord | BanRecord | LessonEndedRecord


@dataclass(slots=True)
class LessonHistory:
    """What a lesson starts from when it is (re)opened on this node."""

    chat: list[ChatRecord] = field(default_factory=list)
    banned: set[str] = field(default_factory=set)
    ended: bool = False


class RecordStore(Protocol):
    """Durable records of lessons."""

    def append(self, record: Record) -> None:
        """Write one record durably before returning."""
        ...

    def history(self, lesson: str) -> LessonHistory:
        """Chat, bans and end state of ``lesson``."""
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
            elif isinstance(record, LessonEndedRecord):
                result.ended = True
        return result

    def attendance(self, lesson: str) -> list[AttendanceEvent]:
        return [r for r in self.records if isinstance(r, AttendanceEvent) and r.lesson == lesson]
