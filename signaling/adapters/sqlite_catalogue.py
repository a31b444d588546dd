"""The catalogue in SQLite: one file in the data directory, shared by the server and
the ``lco`` command line. Each model is stored as its JSON body."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ..catalogue import (
    CatalogueError,
    Community,
    CommunityIn,
    Endpoint,
    EndpointIn,
    Lesson,
    LessonIn,
    LessonPatch,
    School,
    SchoolIn,
)
from ..lesson import LessonSettings
from .private_files import open_database

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
