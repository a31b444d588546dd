"""The fan-out of lesson events to participants' connections.

Every message for a participant is published on that participant's topic; the
connection that owns the participant reads its topic and writes to its socket.
An in-memory bus serves one process; a Redis bus can take its place behind the
same interface when participants of one lesson sit on different nodes.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


def participant_topic(participant_id: str) -> str:
    """The topic that carries messages for one participant."""
    return f"participant:{participant_id}"


class Subscription(Protocol):
    """Messages published on one topic, in order."""

    async def get(self) -> str:
        """Wait for the next message."""
        ...

    def close(self) -> None:
        """Stop receiving; pending messages are dropped."""
        ...


class EventBus(Protocol):
    """Publish text messages on topics; subscribers receive them in order."""

    def subscribe(self, topic: str) -> Subscription:
        """Start receiving messages published on ``topic`` from now on."""
        ...

    async def publish(self, topic: str, message: str) -> None:
        """Publish ``message`` to every current subscriber of ``topic``."""
        ...


class _QueueSubscription:
    def __init__(self, bus: InMemoryEventBus, topic: str, limit: int) -> None:
        self._bus = bus
        self.topic = topic
        self.queue: asyncio.Queue[str] = asyncio.Queue(limit)

    async def get(self) -> str:
        return await self.queue.get()

    def close(self) -> None:
        self._bus._remove(self)


class InMemoryEventBus:
    """In-process bus; a subscriber that falls ``limit`` messages behind is cut off."""

    OVERFLOW = "\x00overflow"

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._topics: dict[str, set[_QueueSubscription]] = {}

    def subscribe(self, topic: str) -> _QueueSubscription:
        subscription = _QueueSubscription(self, topic, self._limit)
        self._topics.setdefault(topic, set()).add(subscription)
        return subscription

    async def publish(self, topic: str, message: str) -> None:
        for subscription in list(self._topics.get(topic, ())):
            try:
                subscription.queue.put_nowait(message)
            except asyncio.QueueFull:
                # A connection this far behind is stuck: tell its owner to drop it
                # rather than let one slow socket grow memory without bound.
                subscription.close()
                subscription.queue.get_nowait()
                subscription.queue.put_nowait(self.OVERFLOW)

    def topic_count(self) -> int:
        """How many topics have subscribers (for leak checks)."""
        return len(self._topics)

    def _remove(self, subscription: _QueueSubscription) -> None:
        subscribers = self._topics.get(subscription.topic)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._topics[subscription.topic]
