"""Per-participant limits of a real server: lobby seats per link, chat history on join.

Issue 10's defects 6 (one student link opened 300 lobby seats, each sending the
whole waiting list to every teacher) and 7 (540 long chat messages made the lesson
unjoinable for ``lco publish``, which exited 0 without an error, also after a
restart).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from media.client import LessonClient
from signaling import protocol as p
from signaling.adapters.sqlite_records import SqliteRecordStore
from signaling.permissions import Role
from signaling.records import ChatRecord
from signaling.tokens import mint_token

from .conftest import SECRET, RunningServer, lco_publish, start_server, stop_server

CHATTY = "chatty"
LONG_CHAT = 540


def token(name: str, role: Role, lesson: str) -> str:
    return mint_token(SECRET.encode(), lesson=lesson, name=name, role=role, school="north")


@pytest.fixture(scope="module")
def chatty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose records already hold 540 chat messages of 2000 characters in one
    lesson, all from one student: what a flood left behind before a restart."""
    tmp = tmp_path_factory.mktemp("chatty")
    (tmp / "data").mkdir(mode=0o700)
    store = SqliteRecordStore(tmp / "data" / "lco.sqlite3")
    for number in range(1, LONG_CHAT + 1):
        entry = p.ChatEntry(
            id=number,
            from_id="a1b2c3d4e5f6",
            name="Flooder",
            role="student",
            school="north",
            text=f"{number:04d}" + "x" * 1996,
            to="everyone",
            group=None,
            sent_at=1_700_000_000.0 + number,
        )
        store.append(ChatRecord(CHATTY, entry, "flooder-link"))
    store.close()
    running = start_server(tmp)
    yield running
    stop_server(running)


async def test_a_long_chat_history_keeps_nobody_out(chatty_server: RunningServer) -> None:
    client = LessonClient(chatty_server.ws, token("Late", Role.STUDENT, CHATTY))
    history = client.wait_for(lambda m: m["type"] == "chat_history")
    await client.connect()
    message = await history
    # The newest messages only, in order; the socket stays up and answers.
    texts = [entry["text"][:4] for entry in message["messages"]]
    assert texts == [f"{n:04d}" for n in range(LONG_CHAT - len(texts) + 1, LONG_CHAT + 1)]
    assert 0 < len(texts) <= p.CHAT_HISTORY_ON_JOIN
    pong = client.wait_for(lambda m: m["type"] == "pong")
    await client.send(p.Ping())
    await pong
    assert not client.closed.is_set() and not client.errors
    await client.close()


def test_lco_publish_joins_a_lesson_with_a_long_chat_and_stays(
    chatty_server: RunningServer,
) -> None:
    started = time.monotonic()
    result = subprocess.run(
        lco_publish(
            chatty_server.http,
            token("Camera", Role.CLASSROOM, CHATTY),
            *("--source", "none", "--duration", "2", "--report"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert "error" not in report and report["errors"] == []
    assert time.monotonic() - started >= 2  # it stayed for its duration


def schedule_lobby_lesson(server: RunningServer, lesson: str) -> None:
    """A scheduled lesson whose students wait in the lobby."""
    community = server.api("POST", "/api/communities", json={"id": "c-" + lesson, "name": "C"})
    assert community.status_code == 201, community.text
    school = server.api(
        "POST", f"/api/communities/c-{lesson}/schools", json={"id": "north", "name": "North"}
    )
    assert school.status_code in (201, 409), school.text
    created = server.api(
        "POST",
        "/api/lessons",
        json={
            "id": lesson,
            "community_id": "c-" + lesson,
            "title": "Lobby",
            "host_teacher": "Ms T",
            "host_school": "north",
            "starts_at": "2026-12-01T09:00:00Z",
            "ends_at": "2099-12-01T10:00:00Z",
            "settings": {"lobby": True},
        },
    )
    assert created.status_code == 201, created.text


SOCKETS_OF_ONE_LINK = 40


async def test_one_link_holds_one_lobby_seat_and_moderators_get_changes_only(
    chatty_server: RunningServer,
) -> None:
    server = chatty_server
    lesson = "lobby-seats"
    schedule_lobby_lesson(server, lesson)
    teacher = LessonClient(server.ws, token("Ms T", Role.TEACHER, lesson))
    await teacher.connect()
    lobby_bytes: list[int] = []

    def lobby_traffic(message: dict[str, Any]) -> bool:
        if message["type"] in ("lobby_updated", "lobby_changed"):
            lobby_bytes.append(len(json.dumps(message)))
        return False

    watching = asyncio.ensure_future(teacher.wait_for(lobby_traffic, timeout=120))
    link = token("Ana", Role.STUDENT, lesson)
    sockets = []
    seat_ids = set()
    for _ in range(SOCKETS_OF_ONE_LINK):
        ws = await websockets.connect(server.ws)
        sockets.append(ws)
        await ws.send(json.dumps({"v": 1, "type": "join", "token": link}))
        seat_ids.add(json.loads(await ws.recv())["participant_id"])
    # Every socket of the link took the same seat; the teacher sees one waiting.
    assert len(seat_ids) == 1
    (seat,) = seat_ids
    probe = teacher.wait_for(lambda m: m["type"] == "pong")
    await teacher.send(p.Ping())
    await probe
    waiting = teacher.lobby if hasattr(teacher, "lobby") else None
    assert waiting == {seat}
    # Each change costs the teacher one small message, not the whole list again.
    assert sum(lobby_bytes) < 2_000, lobby_bytes
    watching.cancel()
    for ws in sockets:
        await ws.close()
    await teacher.close()
