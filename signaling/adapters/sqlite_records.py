"""The default durable record store: one SQLite file under the data directory.

Each record is committed before :meth:`SqliteRecordStore.append` returns, in WAL
mode with ``synchronous=FULL``, so a record the server acknowledged survives the
process being killed (and a power cut). One connection, used from the event loop's
thread only; a write is a fraction of a millisecond on a local disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import protocol as p
from ..records import (
    AttendanceEvent,
    AttendanceKind,
    BanRecord,
    ChatRecord,
    LessonHistory,
    ModerationRecord,
    PublishDecision,
    Record,
)
from .private_files import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS attendance (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    lesson TEXT NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL,
    identity TEXT NOT NULL, participant_id TEXT NOT NULL, name TEXT NOT NULL,
    role TEXT NOT NULL, school TEXT NOT NULL, headcount INTEGER,
    reason TEXT NOT NULL, by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attendance_lesson ON attendance (lesson, seq);
CREATE TABLE IF NOT EXISTS chat (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    lesson TEXT NOT NULL, entry TEXT NOT NULL, from_identity TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chat_lesson ON chat (lesson, seq);
CREATE TABLE IF NOT EXISTS bans (lesson TEXT NOT NULL, identity TEXT NOT NULL,
    PRIMARY KEY (lesson, identity));
CREATE TABLE IF NOT EXISTS moderation (lesson TEXT NOT NULL, identity TEXT NOT NULL,
    muted TEXT NOT NULL, publish TEXT, PRIMARY KEY (lesson, identity));
CREATE TABLE IF NOT EXISTS ended (lesson TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
"""


# The last event of a participant that is still in (or waiting, or holding a seat).
_OPEN = (
    AttendanceKind.JOINED,
    AttendanceKind.ADMITTED,
    AttendanceKind.WAITING,
    AttendanceKind.RECONNECTED,
    AttendanceKind.DISCONNECTED,
)


def _decision(value: str | None) -> PublishDecision | None:
    if value == "granted":
        return "granted"
    if value == "revoked":
        return "revoked"
    return None


class SqliteRecordStore:
    """Records in ``path`` (created if absent)."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def ping(self) -> None:
        """Raise if the database cannot answer (for readiness checks)."""
        self._db.execute("SELECT 1").fetchone()

    def append(self, record: Record) -> None:
        """Commit one record (autocommit: each statement is its own transaction)."""
        if isinstance(record, AttendanceEvent):
            self._db.execute(
                "INSERT INTO attendance (lesson, kind, at, identity, participant_id, name, role,"
                " school, headcount, reason, by) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.lesson,
                    record.kind.value,
                    record.at,
                    record.identity,
                    record.participant_id,
                    record.name,
                    record.role,
                    record.school,
                    record.headcount,
                    record.reason,
                    record.by,
                ),
            )
        elif isinstance(record, ChatRecord):
            self._db.execute(
                "INSERT INTO chat (lesson, entry, from_identity) VALUES (?,?,?)",
                (record.lesson, record.entry.model_dump_json(), record.from_identity),
            )
        elif isinstance(record, BanRecord):
            self._db.execute(
                "INSERT OR IGNORE INTO bans (lesson, identity) VALUES (?,?)",
                (record.lesson, record.identity),
            )
        elif isinstance(record, ModerationRecord):
            self._db.execute(
                "INSERT INTO moderation (lesson, identity, muted, publish) VALUES (?,?,?,?)"
                " ON CONFLICT (lesson, identity) DO UPDATE SET muted = excluded.muted,"
                " publish = excluded.publish",
                (record.lesson, record.identity, ",".join(record.muted), record.publish),
            )
        else:
            self._db.execute(
                "INSERT OR IGNORE INTO ended (lesson, at) VALUES (?,?)", (record.lesson, record.at)
            )

    def history(self, lesson: str) -> LessonHistory:
        """Chat, bans and end state of ``lesson``."""
        chat = [
            ChatRecord(lesson, p.ChatEntry.model_validate(json.loads(entry)), identity)
            for entry, identity in self._db.execute(
                "SELECT entry, from_identity FROM chat WHERE lesson = ? ORDER BY seq", (lesson,)
            )
        ]
        banned = {
            identity
            for (identity,) in self._db.execute(
                "SELECT identity FROM bans WHERE lesson = ?", (lesson,)
            )
        }
        moderation = {
            identity: ModerationRecord(
                lesson, identity, tuple(x for x in muted.split(",") if x), _decision(publish)
            )
            for identity, muted, publish in self._db.execute(
                "SELECT identity, muted, publish FROM moderation WHERE lesson = ?", (lesson,)
            )
        }
        ended = (
            self._db.execute("SELECT 1 FROM ended WHERE lesson = ?", (lesson,)).fetchone()
            is not None
        )
        return LessonHistory(chat=chat, banned=banned, moderation=moderation, ended=ended)

    def is_banned(self, lesson: str, identity: str) -> bool:
        """Whether link ``identity`` was removed from ``lesson``."""
        row = self._db.execute(
            "SELECT 1 FROM bans WHERE lesson = ? AND identity = ?", (lesson, identity)
        ).fetchone()
        return row is not None

    def attendance(self, lesson: str) -> list[AttendanceEvent]:
        """Every attendance event of ``lesson`` in the order it was written."""
        rows = self._db.execute(
            "SELECT lesson, kind, at, identity, participant_id, name, role, school, headcount,"
            " reason, by FROM attendance WHERE lesson = ? ORDER BY seq",
            (lesson,),
        )
        return [
            AttendanceEvent(
                lesson=row[0],
                kind=AttendanceKind(row[1]),
                at=row[2],
                identity=row[3],
                participant_id=row[4],
                name=row[5],
                role=row[6],
                school=row[7],
                headcount=row[8],
                reason=row[9],
                by=row[10],
            )
            for row in rows
        ]

    def beat(self, now: float | None = None) -> None:
        """Note that the server is alive (bounds the time lost in a crash)."""
        self._db.execute(
            "INSERT INTO heartbeat (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = ?",
            (now or time.time(), now or time.time()),
        )

    def close_open_sessions(self, reason: str = "server stopped") -> int:
        """After a restart: everyone still "in" was cut off when the server last lived.

        Appends a LEFT event for every participant whose last event left it present,
        waiting or with its seat held: at the last heartbeat, or for a held seat at the
        time its socket went. Returns how many were closed.
        """
        row = self._db.execute("SELECT at FROM heartbeat WHERE id = 1").fetchone()
        open_rows = self._db.execute(
            "SELECT a.lesson, a.participant_id, MAX(a.seq) FROM attendance a"
            " GROUP BY a.lesson, a.participant_id"
        ).fetchall()
        closed = 0
        for lesson, participant_id, seq in open_rows:
            last = self._db.execute(
                "SELECT lesson, kind, at, identity, participant_id, name, role, school, headcount"
                " FROM attendance WHERE seq = ?",
                (seq,),
            ).fetchone()
            kind = AttendanceKind(last[1])
            if kind not in _OPEN:
                continue
            if kind is AttendanceKind.DISCONNECTED or row is None:
                at = last[2]
            else:
                at = max(last[2], row[0])
            self.append(
                AttendanceEvent(
                    lesson=lesson,
                    kind=AttendanceKind.LEFT,
                    at=at,
                    identity=last[3],
                    participant_id=participant_id,
                    name=last[5],
                    role=last[6],
                    school=last[7],
                    headcount=last[8],
                    reason=reason,
                )
            )
            closed += 1
        return closed
