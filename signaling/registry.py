"""Where live lessons are kept.

One small interface so that a Redis-backed registry can replace the in-memory
one when lessons span several server processes.
"""

from __future__ import annotations

from typing import Protocol

from . import protocol as p
from .lesson import Lesson


class LessonRegistry(Protocol):
    """Finds or creates the live state of a lesson."""

    def lesson(self, lesson_id: str) -> Lesson:
        """The live lesson ``lesson_id``, created empty if nobody is in it yet."""
        ...

    def discard_if_empty(self, lesson_id: str) -> None:
        """Forget a lesson once its last participant has left."""
        ...

    def lessons(self) -> list[Lesson]:
        """Every live lesson."""
        ...


class InMemoryLessonRegistry:
    """The default registry: lessons live in this process."""

    def __init__(self, ice_servers: list[p.IceServer] | None = None) -> None:
        self._lessons: dict[str, Lesson] = {}
        self._ice_servers = list(ice_servers or [])

    def lesson(self, lesson_id: str) -> Lesson:
        lesson = self._lessons.get(lesson_id)
        if lesson is None:
            lesson = self._lessons[lesson_id] = Lesson(lesson_id, self._ice_servers)
        return lesson

    def discard_if_empty(self, lesson_id: str) -> None:
        lesson = self._lessons.get(lesson_id)
        if lesson is not None and lesson.is_empty:
            del self._lessons[lesson_id]

    def lessons(self) -> list[Lesson]:
        return list(self._lessons.values())
