"""Seats held for participants whose socket went: the timers that free them, and the
events of their media while no socket owns them.

The lesson decides that a seat is held and until when (``HoldSeat``); this keeper
only calls ``Lesson.release`` when that time comes, and carries out what it returns.
A seat taken again before then makes the call a no-op. While a seat has no socket,
events about its media (a track that ended) are applied to its lesson here, in the
order they come, instead of by a socket's owner task.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from signaling.effects import Effect, HoldSeat

if TYPE_CHECKING:
    from signaling.registry import LessonRegistry

logger = logging.getLogger(__name__)

ExecuteEffects = Callable[[list[Effect]], Awaitable[None]]


class SeatKeeper:
    """Frees held seats when their time is up; applies events of seats without a socket."""

    def __init__(
        self,
        registry: LessonRegistry,
        execute: ExecuteEffects,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._execute = execute
        self._clock = clock
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        # One task at a time carries out effects here, so they keep their order.
        self._queue: asyncio.Queue[Callable[[], list[Effect]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.expedited: set[str] = set()

    def hold(self, effect: HoldSeat) -> None:
        """Call ``Lesson.release`` for the seat at ``effect.until``."""
        key = (effect.lesson, effect.participant_id)
        previous = self._timers.pop(key, None)
        if previous is not None:
            previous.cancel()
        # An expedited seat is released now, whatever its deadline (see expedite()).
        until = math.inf if effect.lesson in self.expedited else effect.until
        delay = 0.0 if until == math.inf else max(0.0, until - self._clock())
        self._timers[key] = asyncio.get_running_loop().call_later(
            delay, self._due, effect.lesson, effect.participant_id, until
        )

    def expedite(self, lesson_id: str) -> None:
        """Release the lesson's held seats now, and seats held from now on at once (the
        lesson is served by another node now: nobody comes back to them here)."""
        self.expedited.add(lesson_id)
        for lesson, participant_id in [key for key in self._timers if key[0] == lesson_id]:
            self._timers.pop((lesson, participant_id)).cancel()
            self._due(lesson, participant_id, math.inf)

    def held(self) -> int:
        """How many seats wait for their release time (for ``/metrics``)."""
        return len(self._timers)

    def apply(self, lesson_id: str, change: Callable[[], list[Effect]]) -> None:
        """Run ``change`` (a lesson operation) and carry out its effects, in order with
        the other changes made here."""
        if self._registry.find(lesson_id) is None:
            return
        self._queue.put_nowait(change)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="seat-keeper")

    def lesson_of(self, participant_id: str) -> str | None:
        """The live lesson in which ``participant_id`` has a seat, if any."""
        for lesson in self._registry.lessons():
            if participant_id in lesson.participants or lesson.is_waiting(participant_id):
                return lesson.id
        return None

    async def close(self) -> None:
        """Stop every timer and the worker (server shutdown)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    def _due(self, lesson_id: str, participant_id: str, until: float) -> None:
        self._timers.pop((lesson_id, participant_id), None)

        def release() -> list[Effect]:
            lesson = self._registry.find(lesson_id)
            if lesson is None:
                return []
            # asyncio runs a timer up to its clock's resolution early, and the lesson's
            # clock is another one: it is at least ``until`` now, as far as we know.
            effects = lesson.release(participant_id, max(self._clock(), until))
            self._registry.discard_if_empty(lesson_id)
            if self._registry.find(lesson_id) is None:
                self.expedited.discard(lesson_id)
            return effects

        self.apply(lesson_id, release)

    async def _work(self) -> None:
        while not self._queue.empty():
            change = self._queue.get_nowait()
            try:
                await self._execute(change())
            except Exception:  # one seat's trouble must not stop the others'
                logger.exception("applying a held seat's change failed")
