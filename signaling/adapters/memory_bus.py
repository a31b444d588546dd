"""The in-process event bus: one asyncio queue per subscription."""

from __future__ import annotations

import asyncio

from ..bus import OVERFLOW


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
                subscription.queue.put_nowait(OVERFLOW)

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
