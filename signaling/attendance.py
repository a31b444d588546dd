"""Attendance reports from the attendance log: per participant, per school, as CSV or JSON."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field

from .records import AttendanceEvent, AttendanceKind

_PRESENT = (AttendanceKind.JOINED,)
_GONE = (AttendanceKind.LEFT, AttendanceKind.REMOVED)


@dataclass(slots=True)
class AttendanceRow:
    """One participant (one join link) in one lesson."""

    identity: str
    name: str
    role: str
    school: str
    headcount: int | None
    first_joined: float | None
    last_left: float | None
    seconds_present: float
    sessions: int
    removed: bool = False
    denied: bool = False
    still_present: bool = False
    events: list[dict[str, object]] = field(default_factory=list)


def attendance_rows(events: list[AttendanceEvent], now: float) -> list[AttendanceRow]:
    """Fold the log into one row per link; a session still open counts up to ``now``."""
    rows: dict[str, AttendanceRow] = {}
    present_since: dict[str, float] = {}
    for event in events:
        row = rows.get(event.identity)
        if row is None:
            row = rows[event.identity] = AttendanceRow(
                identity=event.identity,
                name=event.name,
                role=event.role,
                school=event.school,
                headcount=event.headcount,
                first_joined=None,
                last_left=None,
                seconds_present=0.0,
                sessions=0,
            )
        row.events.append(
            {"kind": event.kind.value, "at": event.at, "reason": event.reason, "by": event.by}
        )
        # A reconnect under the same link can overlap the old socket's end: one
        # participant id is one session.
        key = f"{event.identity}/{event.participant_id}"
        if event.kind in _PRESENT:
            present_since[key] = event.at
            row.sessions += 1
            if row.first_joined is None:
                row.first_joined = event.at
        elif event.kind in _GONE and key in present_since:
            row.seconds_present += event.at - present_since.pop(key)
            row.last_left = event.at
        if event.kind is AttendanceKind.REMOVED:
            row.removed = True
        if event.kind is AttendanceKind.DENIED:
            row.denied = True
    for key, since in present_since.items():
        row = rows[key.split("/", 1)[0]]
        row.seconds_present += max(0.0, now - since)
        row.still_present = True
    return sorted(rows.values(), key=lambda r: (r.school, r.role, r.name))


def school_totals(rows: list[AttendanceRow]) -> dict[str, dict[str, float]]:
    """Per school: participants, classroom headcount (students in front of endpoints), time."""
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        if row.sessions == 0:
            continue
        school = totals.setdefault(
            row.school, {"participants": 0, "classroom_headcount": 0, "seconds_present": 0.0}
        )
        school["participants"] += 1
        school["classroom_headcount"] += row.headcount or 0
        school["seconds_present"] += row.seconds_present
    return totals


def rows_as_json(lesson: str, rows: list[AttendanceRow]) -> dict[str, object]:
    """The JSON export of a lesson's attendance."""
    return {
        "lesson": lesson,
        "participants": [asdict(row) for row in rows],
        "schools": school_totals(rows),
    }


CSV_COLUMNS = [
    "name",
    "role",
    "school",
    "headcount",
    "first_joined",
    "last_left",
    "seconds_present",
    "sessions",
    "removed",
    "denied",
    "still_present",
]


def _cell(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        # A name like "=HYPERLINK(...)" must not run as a spreadsheet formula.
        return "'" + value
    return value


def rows_as_csv(rows: list[AttendanceRow]) -> str:
    """The CSV export: one line per participant (times as Unix seconds, UTC)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = asdict(row)
        writer.writerow([_cell(values[c]) for c in CSV_COLUMNS])
    return out.getvalue()
