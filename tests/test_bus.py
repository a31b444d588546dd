"""The in-memory event bus."""

from __future__ import annotations

from signaling.adapters.memory_bus import InMemoryEventBus
from signaling.bus import OVERFLOW, participant_topic


async def test_messages_reach_every_subscriber_in_order() -> None:
    bus = InMemoryEventBus()
    first = bus.subscribe(participant_topic("a"))
    second = bus.subscribe(participant_topic("a"))
    other = bus.subscribe(participant_topic("b"))
    for text in ("one", "two"):
        await bus.publish(participant_topic("a"), text)
    assert [await first.get(), await first.get()] == ["one", "two"]
    assert [await second.get(), await second.get()] == ["one", "two"]
    assert other.queue.empty()


async def test_closing_forgets_the_topic() -> None:
    bus = InMemoryEventBus()
    subscription = bus.subscribe("t")
    assert bus.topic_count() == 1
    subscription.close()
    assert bus.topic_count() == 0
    await bus.publish("t", "nobody listens")


async def test_a_subscriber_that_falls_behind_is_cut_off() -> None:
    bus = InMemoryEventBus(limit=3)
    slow = bus.subscribe("t")
    for i in range(5):
        await bus.publish("t", str(i))
    drained = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
    assert drained[-1] == OVERFLOW
    assert bus.topic_count() == 0
