"""Which node serves a lesson.

A lesson lives on exactly one node: its state machine, its seats and its SFU. When
several nodes share the work (``lco serve --redis``), a placement decides which one,
and a socket that lands elsewhere is relayed to it. This module only says what a
placement does; the Redis implementation is ``server/redis_placement.py``. The
default, :class:`SingleNode`, serves every lesson here and does no I/O.
"""

from __future__ import annotations

from typing import Protocol


class PlacementUnavailable(Exception):
    """Placement cannot be decided now (the coordination service is unreachable)."""


class LessonPlacement(Protocol):
    """Decides and remembers which node serves each lesson."""

    @property
    def node_id(self) -> str:
        """This node's id."""
        ...

    async def owner(self, lesson_id: str) -> str:
        """The node serving ``lesson_id``, placing the lesson now if none does.

        Raises :class:`PlacementUnavailable` when that cannot be known."""
        ...

    async def claim(self, lesson_id: str) -> str:
        """Take ``lesson_id`` for this node unless another node holds it; returns the
        owner (this node's id when the claim holds)."""
        ...

    def forget(self, lesson_id: str) -> None:
        """This node no longer serves ``lesson_id`` (its last participant left)."""
        ...


class SingleNode:
    """Every lesson is served by this node: the one-process default."""

    def __init__(self, node_id: str = "local") -> None:
        self._node_id = node_id

    @property
    def node_id(self) -> str:
        return self._node_id

    async def owner(self, lesson_id: str) -> str:
        return self._node_id

    async def claim(self, lesson_id: str) -> str:
        return self._node_id

    def forget(self, lesson_id: str) -> None:
        pass
