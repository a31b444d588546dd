"""How a connection ends when the client leaves while the server is writing to it.

A client that sends ``leave`` and closes its socket at once often makes the server's
next write fail before the server has read the ``leave`` (both reached the socket
together). The leave must still count as a leave: the seat is freed at once, not
held for the reconnect grace as if the network had broken.

These tests drive a real ``ParticipantConnection`` on a real ``ServerState`` through a
socket whose wire is scripted, so the order of that race is fixed, not left to the
scheduler.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from server.config import Settings
from server.connection import ParticipantConnection
from server.state import ServerState
from signaling import protocol as p
from signaling.permissions import Role
from signaling.tokens import mint_token

from .conftest import ADMIN_KEY, SECRET


class ClosingWire:
    """A socket whose client sends everything in ``parting`` and closes: the
    server's writes fail from then on, and what the client sent reaches the
    server's reader only after the first write failed."""

    client = None

    def __init__(self, reader_sees_the_close: bool = True) -> None:
        self._incoming: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.write_failed = asyncio.Event()
        self._parting: list[str] | None = None
        self._welcomed = asyncio.Event()
        self._reader_sees_the_close = reader_sees_the_close

    def client_sends(self, message: Any) -> None:
        self._incoming.put_nowait(
            {"type": "websocket.receive", "text": p.encode_client_message(message)}
        )

    def client_parts(self, *messages: Any) -> None:
        """The client sends ``messages`` and closes, all on the wire at once."""
        self._parting = [p.encode_client_message(m) for m in messages]

    async def welcomed(self) -> None:
        await asyncio.wait_for(self._welcomed.wait(), 10)

    async def receive(self) -> MutableMapping[str, Any]:
        return await self._incoming.get()

    async def send_text(self, data: str) -> None:
        if self._parting is not None:
            for text in self._parting:
                self._incoming.put_nowait({"type": "websocket.receive", "text": text})
            if self._reader_sees_the_close:
                self._incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
            self._parting = []
            self.write_failed.set()
            raise WebSocketDisconnect(1000)
        if self.write_failed.is_set():
            raise WebSocketDisconnect(1000)
        message = json.loads(data)
        self.sent.append(message)
        if message["type"] == "welcome":
            self._welcomed.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        return None


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ServerState]:
    running = ServerState(Settings(secret=SECRET.encode(), data_dir=tmp_path, admin_key=ADMIN_KEY))
    yield running
    running.close()


async def test_a_leave_that_arrives_after_a_failed_write_frees_the_seat(
    state: ServerState,
) -> None:
    wire = ClosingWire()
    token = mint_token(SECRET.encode(), lesson="parting", name="Ana", role=Role.STUDENT)
    wire.client_sends(p.Join(token=token))
    connection = ParticipantConnection(state, wire)
    running = asyncio.create_task(connection.run())
    await wire.welcomed()
    # The server answers the ping; that write fails, and only then does the reader
    # get the leave the client sent before it closed.
    wire.client_parts(p.Leave())
    wire.client_sends(p.Ping())
    await asyncio.wait_for(running, 10)
    assert wire.write_failed.is_set()
    assert state.seats.held() == 0
    lesson = state.registry.lesson("parting")
    assert lesson is None or not lesson.participants
    assert state.connections == {}


async def test_a_socket_whose_writes_fail_and_reads_never_end_is_still_let_go(
    state: ServerState,
) -> None:
    """A relayed socket whose Redis is gone: writes fail, reads wait forever. The
    connection ends anyway, holding the seat as for any broken network."""
    wire = ClosingWire(reader_sees_the_close=False)
    token = mint_token(SECRET.encode(), lesson="parting", name="Ben", role=Role.STUDENT)
    wire.client_sends(p.Join(token=token))
    connection = ParticipantConnection(state, wire)
    running = asyncio.create_task(connection.run())
    await wire.welcomed()
    wire.client_parts()
    wire.client_sends(p.Ping())
    await asyncio.wait_for(running, 10)
    assert state.seats.held() == 1
    assert state.connections == {}
