"""Communities, schools, classroom endpoints and lessons: what the HTTP API manages.

Models are pydantic (they are also the API's schemas); the store is SQLite in the
data directory, shared by the server and the ``lco`` command line.
"""

from __future__ import annotations

import datetime
import secrets
import sqlite3
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from .lesson import LessonSettings
from .permissions import ChatPolicy
from .private_files import open_database
from .tokens import MAX_NAME_LENGTH, check_name

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Name = Annotated[str, Field(min_length=1, max_length=120)]
# A person's or a room's name, which join links carry: the token's own rule.
PersonName = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(check_name)
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CommunityIn(_Model):
    """A learning community: schools that teach together."""

    id: Identifier | None = None
    name: Name


class Community(_Model):
    id: Identifier
    name: Name


class SchoolIn(_Model):
    id: Identifier | None = None
    name: Name


class School(_Model):
    id: Identifier
    community_id: Identifier
    name: Name


class EndpointIn(_Model):
    """A classroom endpoint: the room PC that joins for a whole class."""

    id: Identifier | None = None
    name: PersonName
    headcount: int = Field(ge=0, le=1000, description="students in front of this endpoint")


class Endpoint(_Model):
    id: Identifier
    school_id: Identifier
    name: Name
    headcount: int


class LessonSettingsModel(_Model):
    lobby: bool = Field(default=False, description="students and guests wait until admitted")
    wait_for_teacher: bool = Field(default=False, description="nobody is admitted before a teacher")
    students_publish: bool = Field(default=False, description="students may publish from the start")
    chat_policy: ChatPolicy = ChatPolicy.EVERYONE
    recording_declined: list[Identifier] = Field(
        default_factory=list,
        description="schools that decline recording: nothing of their participants is recorded",
    )

    def to_settings(self, invited: list[str]) -> LessonSettings:
        """The lesson state machine's settings."""
        return LessonSettings(
            lobby=self.lobby,
            wait_for_teacher=self.wait_for_teacher,
            students_publish=self.students_publish,
            chat_policy=self.chat_policy,
            invited_schools=frozenset(invited),
            recording_declined=frozenset(self.recording_declined),
        )


def _utc_if_naive(value: datetime.datetime) -> datetime.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)


StoredDatetime = Annotated[datetime.datetime, AfterValidator(_utc_if_naive)]


class LessonIn(_Model):
    id: Identifier | None = None
    community_id: Identifier
    title: Name
    host_teacher: PersonName
    host_school: Identifier
    # With a time zone: naive and aware times cannot be compared or ordered.
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    invited_schools: list[Identifier] = Field(default_factory=list, max_length=200)
    settings: LessonSettingsModel = Field(default_factory=lambda: LessonSettingsModel())

    @field_validator("ends_at")
    @classmethod
    def _ends_after_start(cls, value: datetime.datetime, info: object) -> datetime.datetime:
        starts = getattr(info, "data", {}).get("starts_at")
        if starts is not None and value <= starts:
            raise ValueError("must be after starts_at")
        return value


class LessonPatch(_Model):
    title: Name | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    invited_schools: list[Identifier] | None = Field(default=None, max_length=200)
    settings: LessonSettingsModel | None = None


class Lesson(LessonIn):
    id: Identifier
    state: Literal["scheduled", "ended"] = "scheduled"
    # Stored lessons are read back as they were written: names from before names
    # were limited like tokens, and times without a zone (taken as UTC).
    host_teacher: Name
    starts_at: StoredDatetime
    ends_at: StoredDatetime


class CatalogueError(Exception):
    """A request that names something missing or conflicting; ``status`` is the HTTP one."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


SCHEMA = """
CREATE TABLE IF NOT EXISTS communities (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS schools (id TEXT PRIMARY KEY, community_id TEXT NOT NULL,
    body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (id TEXT PRIMARY KEY, school_id TEXT NOT NULL,
    body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lessons (id TEXT PRIMARY KEY, community_id TEXT NOT NULL,
    body TEXT NOT NULL);
"""


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


class Catalogue:
    """The SQLite-backed catalogue."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path, check_same_thread=False)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def ping(self) -> None:
        """Raise if the database cannot answer (for readiness checks)."""
        self._db.execute("SELECT 1").fetchone()

    # -- communities and schools -------------------------------------------

    def add_community(self, data: CommunityIn) -> Community:
        """Create a community."""
        community = Community(id=data.id or _new_id("community"), name=data.name)
        self._insert("communities", community.id, None, community)
        return community

    def communities(self) -> list[Community]:
        """Every community."""
        return [Community.model_validate_json(b) for (b,) in self._rows("communities")]

    def community(self, community_id: str) -> Community:
        """One community, or 404."""
        return Community.model_validate_json(self._one("communities", community_id, "community"))

    def add_school(self, community_id: str, data: SchoolIn) -> School:
        """Add a member school to a community."""
        self.community(community_id)
        school = School(id=data.id or _new_id("school"), community_id=community_id, name=data.name)
        self._insert("schools", school.id, ("community_id", community_id), school)
        return school

    def schools(self, community_id: str) -> list[School]:
        """A community's member schools."""
        self.community(community_id)
        return [
            School.model_validate_json(b)
            for (b,) in self._db.execute(
                "SELECT body FROM schools WHERE community_id = ? ORDER BY id", (community_id,)
            )
        ]

    def school(self, school_id: str) -> School:
        """One school, or 404."""
        return School.model_validate_json(self._one("schools", school_id, "school"))

    def add_endpoint(self, school_id: str, data: EndpointIn) -> Endpoint:
        """Register a classroom endpoint of a school."""
        self.school(school_id)
        endpoint = Endpoint(
            id=data.id or _new_id("room"),
            school_id=school_id,
            name=data.name,
            headcount=data.headcount,
        )
        self._insert("endpoints", endpoint.id, ("school_id", school_id), endpoint)
        return endpoint

    def endpoints(self, school_id: str) -> list[Endpoint]:
        """A school's classroom endpoints."""
        return [
            Endpoint.model_validate_json(b)
            for (b,) in self._db.execute(
                "SELECT body FROM endpoints WHERE school_id = ? ORDER BY id", (school_id,)
            )
        ]

    # -- lessons ----------------------------------------------------------------

    def add_lesson(self, data: LessonIn) -> Lesson:
        """Schedule a lesson; its schools must be members of its community."""
        self._check_lesson_schools(data.community_id, [data.host_school, *data.invited_schools])
        lesson = Lesson(**{**data.model_dump(), "id": data.id or _new_id("lesson")})
        self._insert("lessons", lesson.id, ("community_id", lesson.community_id), lesson)
        return lesson

    def lessons(self, community_id: str | None = None) -> list[Lesson]:
        """Lessons, newest start first."""
        rows = (
            self._db.execute(
                "SELECT body FROM lessons WHERE community_id = ?", (community_id,)
            ).fetchall()
            if community_id
            else self._rows("lessons")
        )
        found = [Lesson.model_validate_json(b) for (b,) in rows]
        return sorted(found, key=lambda x: x.starts_at, reverse=True)

    def lesson(self, lesson_id: str) -> Lesson:
        """One lesson, or 404."""
        return Lesson.model_validate_json(self._one("lessons", lesson_id, "lesson"))

    def find_lesson(self, lesson_id: str) -> Lesson | None:
        """One lesson, or None (ad-hoc lessons from ``lco token`` are not in the catalogue)."""
        row = self._db.execute("SELECT body FROM lessons WHERE id = ?", (lesson_id,)).fetchone()
        return Lesson.model_validate_json(row[0]) if row else None

    def update_lesson(self, lesson_id: str, patch: LessonPatch) -> Lesson:
        """Change a scheduled lesson."""
        lesson = self.lesson(lesson_id)
        if lesson.state == "ended":
            raise CatalogueError(409, "the lesson has ended and cannot be changed")
        changed = lesson.model_copy(update=patch.model_dump(exclude_none=True))
        try:
            merged = Lesson.model_validate(changed.model_dump())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise CatalogueError(422, f"field {where!r}: {first['msg']}") from None
        self._check_lesson_schools(
            merged.community_id, [merged.host_school, *merged.invited_schools]
        )
        self._db.execute(
            "UPDATE lessons SET body = ? WHERE id = ?", (merged.model_dump_json(), lesson_id)
        )
        return merged

    def end_lesson(self, lesson_id: str) -> Lesson:
        """Mark a lesson ended."""
        lesson = self.lesson(lesson_id).model_copy(update={"state": "ended"})
        self._db.execute(
            "UPDATE lessons SET body = ? WHERE id = ?", (lesson.model_dump_json(), lesson_id)
        )
        return lesson

    def settings_for(self, lesson_id: str) -> LessonSettings:
        """The live lesson's settings (defaults for ad-hoc lessons)."""
        lesson = self.find_lesson(lesson_id)
        if lesson is None:
            return LessonSettings()
        return lesson.settings.to_settings(lesson.invited_schools)

    # -- internals --------------------------------------------------------------

    def _check_lesson_schools(self, community_id: str, school_ids: list[str]) -> None:
        self.community(community_id)
        members = {s.id for s in self.schools(community_id)}
        for school_id in school_ids:
            if school_id not in members:
                raise CatalogueError(
                    422, f"school {school_id!r} is not a member of community {community_id!r}"
                )

    # Table and column names below are this module's constants, never request input.
    def _insert(
        self, table: str, key: str, parent: tuple[str, str] | None, body: BaseModel
    ) -> None:
        columns = "id, body" if parent is None else f"id, {parent[0]}, body"
        values = (
            (key, body.model_dump_json())
            if parent is None
            else (key, parent[1], body.model_dump_json())
        )
        marks = ", ".join("?" for _ in values)
        try:
            self._db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)
        except sqlite3.IntegrityError:
            raise CatalogueError(409, f"{table[:-1]} {key!r} already exists") from None

    def _rows(self, table: str) -> list[tuple[str]]:
        return self._db.execute(f"SELECT body FROM {table} ORDER BY id").fetchall()

    def _one(self, table: str, key: str, what: str) -> str:
        row = self._db.execute(f"SELECT body FROM {table} WHERE id = ?", (key,)).fetchone()
        if row is None:
            raise CatalogueError(404, f"no {what} {key!r}")
        body: str = row[0]
        return body
