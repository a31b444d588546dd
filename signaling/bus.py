"""The fan-out of lesson events to participants' connections.

Every message for a participant is published on that participant's topic; the
connection that owns the participant reads its topic and writes to its socket.
The core owns the interface; the in-memory bus that serves one process is
``signaling/adapters/memory_bus.py``, and a Redis bus can take its place behind the
same interface when participants of one lesson sit on different nodes.
"""

from __future__ import annotations

from typing import Protocol

# What a subscription returns, as its last message, when its reader fell so far
# behind that the bus cut it off: the reader then drops its connection.
OVERFLOW = "\x00overflow"


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
