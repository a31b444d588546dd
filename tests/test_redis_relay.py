"""The entry side of the Redis relay, against a real redis-server: what a client says
last reaches the lesson's node even when its socket breaks under a message to it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis
from starlette.websockets import WebSocketDisconnect

from server import redis_keys as keys
from server.redis_relay import Relay


class LeavingClient:
    """A client socket as Starlette gives it to the entry node: once the first message
    to it fails (it is gone), its last frame, a ``leave``, can still be read."""

    client = None

    def __init__(self) -> None:
        self.sent_to = asyncio.Event()
        self._frames = [
            {"type": "websocket.receive", "text": '{"v": 1, "type": "leave"}'},
            {"type": "websocket.disconnect", "code": 1000},
        ]

    async def receive(self) -> dict[str, Any]:
        await self.sent_to.wait()
        return self._frames.pop(0)

    async def send_text(self, data: str) -> None:
        self.sent_to.set()
        raise WebSocketDisconnect(code=1006)

    async def close(self, code: int = 1000) -> None:
        return None


async def refuse(*args: Any) -> Any:
    raise AssertionError("only the entry side runs here")


async def test_a_leave_read_after_a_failed_send_reaches_the_owner_before_the_close(
    store: aioredis.Redis,
) -> None:
    entry = Relay(store, "entry", refuse, refuse, refuse)
    listening = asyncio.create_task(entry.listen())
    owner_channel = store.pubsub()
    await owner_channel.subscribe(keys.relay_channel("owner"))
    try:
        await asyncio.wait_for(entry.listening.wait(), 5)
        await owner_channel.get_message(timeout=1)  # the subscription's confirmation
        pumping = asyncio.create_task(entry.relay_client(LeavingClient(), "owner", "{}"))  # type: ignore[arg-type]

        async def next_message() -> dict[str, Any]:
            while True:
                found = await owner_channel.get_message(ignore_subscribe_messages=True, timeout=1)
                if found is not None:
                    message: dict[str, Any] = json.loads(found["data"])
                    return message

        opened = await asyncio.wait_for(next_message(), 5)
        assert opened["k"] == "open"
        # The owner writes to the client, which has already gone.
        await entry.publish("entry", {"k": "out", "r": opened["r"], "d": "{}"})
        assert await asyncio.wait_for(pumping, 5) is False
        said = await asyncio.wait_for(next_message(), 5)
        closed = await asyncio.wait_for(next_message(), 5)
        assert (said["k"], json.loads(said["d"])["type"]) == ("in", "leave")
        assert closed["k"] == "close"
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await owner_channel.aclose()
