"""Where live lessons are kept.

One small interface so that a Redis-backed registry can replace the in-memory
one when lessons span several server processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from . import protocol as p
from .lesson import DEFAULT_SEAT_GRACE, IceServersFor, Lesson, LessonSettings
from .records import InMemoryRecordStore, RecordStore


class LessonRegistry(Protocol):
    """Finds or creates the live state of a lesson."""

    def lesson(self, lesson_id: str) -> Lesson:
        """The live lesson ``lesson_id``, created empty if nobody is in it yet."""
        ...

    def discard_if_empty(self, lesson_id: str) -> None:
        """Forget a lesson once its last participant has left."""
        ...

    def find(self, lesson_id: str) -> Lesson | None:
        """The live lesson ``lesson_id`` if anyone is in it on this node."""
        ...

    def lessons(self) -> list[Lesson]:
        """Every live lesson."""
        ...


class InMemoryLessonRegistry:
    """The default registry: lessons live in this process."""

    def __init__(
        self,
        ice_servers: IceServersFor | None = None,
        records: RecordStore | None = None,
        settings_for: Callable[[str], LessonSettings] | None = None,
        seat_grace: float = DEFAULT_SEAT_GRACE,
        keepalive: p.Keepalive | None = None,
        on_discard: Callable[[str], None] | None = None,
    ) -> None:
        """``on_discard`` hears the id of each lesson forgotten because it emptied."""
        self._lessons: dict[str, Lesson] = {}
        self._on_discard = on_discard
        self._seat_grace = seat_grace
        self._keepalive = keepalive
        self._ice_servers = ice_servers
        self._records: RecordStore = records or InMemoryRecordStore()
        self._settings_for = settings_for or (lambda lesson_id: LessonSettings())

    def lesson(self, lesson_id: str) -> Lesson:
        lesson = self._lessons.get(lesson_id)
        if lesson is None:
            # A lesson reopened on this node starts from what was recorded: chat
            # history, removed links, what moderators decided per link, whether it
            # has ended.
            lesson = self._lessons[lesson_id] = Lesson(
                lesson_id,
                self._ice_servers,
                settings=self._settings_for(lesson_id),
                history=self._records.history(lesson_id),
                seat_grace=self._seat_grace,
                keepalive=self._keepalive,
            )
        return lesson

    def find(self, lesson_id: str) -> Lesson | None:
        return self._lessons.get(lesson_id)

    def discard_if_empty(self, lesson_id: str) -> None:
        lesson = self._lessons.get(lesson_id)
        if lesson is not None and lesson.is_empty:
            del self._lessons[lesson_id]
            if self._on_discard is not None:
                self._on_discard(lesson_id)

    def lessons(self) -> list[Lesson]:
        return list(self._lessons.values())
