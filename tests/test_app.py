"""The signalling socket and HTTP routes of a real ``lco serve`` process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from media.client import LessonClient
from signaling.permissions import Role
from signaling.protocol import MAX_MESSAGE_BYTES
from signaling.tokens import mint_token

from .conftest import SECRET, RunningServer, start_server, stop_server


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("app"),
        "--join-timeout",
        "0.5",
        "--allowed-origin",
        "https://school.example",
    )
    yield running
    stop_server(running)


def token(role: Role = Role.TEACHER, name: str = "N", lesson: str = "app-1", **kw: Any) -> str:
    return mint_token(SECRET.encode(), lesson=lesson, name=name, role=role, school="north", **kw)


@pytest.fixture
async def connect(app_server: RunningServer) -> AsyncIterator[Any]:
    sockets: list[ClientConnection] = []

    async def open_socket(origin: str | None = None) -> ClientConnection:
        headers = {"Origin": origin} if origin else None
        ws = await websockets.connect(app_server.ws, additional_headers=headers, max_size=2**22)
        sockets.append(ws)
        return ws

    yield open_socket
    for ws in sockets:
        await ws.close()


async def receive(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not the server's keep-alive ping."""
    while True:
        message: dict[str, Any] = json.loads(await ws.recv())
        if message["type"] != "ping":
            return message


async def join(ws: ClientConnection, tok: str, **extra: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"v": 1, "type": "join", "token": tok, **extra}))
    return await receive(ws)


async def expect_refusal(ws: ClientConnection, words: str) -> None:
    error = await receive(ws)
    assert (error["type"], error["code"]) == ("error", "bad_token")
    assert words in error["message"]
    bye = await receive(ws)
    assert (bye["type"], bye["reason"]) == ("bye", "bad_token")
    with pytest.raises(websockets.ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 1008


def test_healthz_and_metrics(app_server: RunningServer) -> None:
    assert httpx.get(f"{app_server.http}/healthz").json() == {"status": "ok"}
    metrics = app_server.metrics()
    assert isinstance(metrics["sfu"], dict) and metrics["sfu"]["frames_decoded"] == 0


def test_the_join_page_is_served_and_the_token_never_in_the_log(
    app_server: RunningServer,
) -> None:
    response = httpx.get(f"{app_server.http}/join")
    assert response.status_code == 200 and "html" in response.headers["content-type"]
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "no-referrer"
    assert SECRET not in app_server.log()


async def test_join_is_welcomed(connect: Any) -> None:
    welcome = await join(await connect(), token(name="Ms Rivera"))
    assert welcome["type"] == "welcome"
    assert welcome["you"]["name"] == "Ms Rivera" and welcome["you"]["role"] == "teacher"
    assert "grant_publish" in welcome["permissions"]


@pytest.mark.parametrize(
    ("make_token", "words"),
    [
        (lambda: token(ttl_seconds=60, now=time.time() - 3600), "expired"),
        (lambda: token()[:-4] + "AAAA", "bad signature"),
        (lambda: mint_token(b"z" * 48, lesson="l1", name="n", role=Role.TEACHER), "signature"),
        (lambda: "garbage", "damaged"),
    ],
    ids=["expired", "tampered", "wrong-secret", "garbage"],
)
async def test_bad_tokens_are_refused_with_a_reason(
    connect: Any, make_token: Any, words: str
) -> None:
    ws = await connect()
    await ws.send(json.dumps({"v": 1, "type": "join", "token": make_token()}))
    await expect_refusal(ws, words)


async def test_a_token_repeating_a_key_is_refused(connect: Any) -> None:
    from .test_tokens import HEADER, payload, signed

    claims = payload('"role":"student"', '"role":"teacher"').replace("maths-7", "app-1")
    ws = await connect()
    await ws.send(
        json.dumps({"v": 1, "type": "join", "token": signed(HEADER, claims, SECRET.encode())})
    )
    await expect_refusal(ws, "duplicate key 'role'")


async def test_a_token_for_another_lesson_is_refused(connect: Any) -> None:
    ws = await connect()
    await ws.send(json.dumps({"v": 1, "type": "join", "token": token(), "lesson": "other"}))
    await expect_refusal(ws, "another lesson")


async def test_a_missing_token_is_refused(connect: Any) -> None:
    ws = await connect()
    await ws.send('{"v":1,"type":"join"}')
    error = await receive(ws)
    assert error["code"] == "invalid_message" and "token" in error["message"]
    assert (await receive(ws))["type"] == "bye"


async def test_a_late_join_is_refused(connect: Any) -> None:
    ws = await connect()
    bye = await receive(ws)  # nothing sent: the join timeout fires
    assert bye == {
        "v": 1,
        "type": "bye",
        "reason": "join_timeout",
        "message": "no join within 0.5 s",
    }
    with pytest.raises(websockets.ConnectionClosed):
        await ws.recv()


async def test_a_foreign_origin_is_refused_before_accept(connect: Any) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect("https://evil.example")
    assert info.value.response.status_code == 403


async def test_the_same_origin_and_allowed_origins_are_accepted(
    connect: Any, app_server: RunningServer
) -> None:
    for origin in (app_server.http, "https://school.example"):
        assert (await join(await connect(origin), token()))["type"] == "welcome"


async def test_bad_messages_get_errors_and_the_lesson_goes_on(connect: Any) -> None:
    teacher, student = await connect(), await connect()
    await join(teacher, token(name="T", lesson="bad-input"))
    await join(student, token(Role.STUDENT, name="S", lesson="bad-input"))
    assert (await receive(teacher))["type"] == "participant_joined"
    oversized = json.dumps({"v": 1, "type": "ping", "pad": "x" * MAX_MESSAGE_BYTES})
    bad = [
        ("{oops", "malformed_json"),
        ('{"v":1,"type":"ping","v":1}', "duplicate_key"),
        ('{"v":1,"type":"teleport"}', "unknown_type"),
        ('{"v":1,"type":"grant_publish","participant_id":7}', "invalid_message"),
        (oversized, "message_too_large"),
        ('{"v":1,"type":"publish_offer","sdp":"v=0","tracks":[]}', "forbidden"),
    ]
    for text, code in bad:
        await student.send(text)
        error = await receive(student)
        assert (error["type"], error["code"]) == ("error", code), text
    await student.send(b'{"v":1,"type":"ping"}')
    assert (await receive(student))["code"] == "binary_message"
    await student.send('{"v":1,"type":"ping"}')
    assert (await receive(student))["type"] == "pong"
    await teacher.send('{"v":1,"type":"ping"}')
    assert (await receive(teacher))["type"] == "pong"


async def test_a_frame_over_a_mebibyte_closes_only_that_socket(connect: Any) -> None:
    ws, other = await connect(), await connect()
    await join(ws, token(lesson="huge"))
    await join(other, token(lesson="huge", name="O"))
    await ws.send("x" * (16 * MAX_MESSAGE_BYTES + 1))
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await ws.recv()
    assert ws.close_code == 1009
    # Its seat is held for a reconnect, as for any socket that went.
    assert (await receive(other))["type"] == "participant_disconnected"
    await other.send('{"v":1,"type":"ping"}')
    assert (await receive(other))["type"] == "pong"


async def test_the_socket_does_not_agree_to_compression(
    connect: Any, app_server: RunningServer
) -> None:
    # Compressed frames inflate about 1000 times before any size check (one student
    # made /healthz take seconds): the server does not negotiate permessage-deflate.
    ws = await connect()
    assert ws.response is not None
    assert "sec-websocket-extensions" not in ws.response.headers
    await join(ws, token(lesson="deflate"))
    other = await connect()
    await join(other, token(lesson="deflate", name="O"))
    # A compressed frame sent anyway (RSV1 set) is a protocol error: that socket closes.
    writer = ws.transport
    writer.write(b"\xc1\x85\x00\x00\x00\x00" + b"\xab\xa8\x00\x00\x00")
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await ws.recv()
    assert ws.close_code == 1002
    assert (await receive(other))["type"] == "participant_disconnected"
    await other.send('{"v":1,"type":"ping"}')
    assert (await receive(other))["type"] == "pong"


async def test_a_bad_sdp_offer_is_refused_and_the_session_goes_on(connect: Any) -> None:
    ws = await connect()
    await join(ws, token(lesson="bad-sdp"))
    offer = {"v": 1, "type": "publish_offer", "sdp": "this is not sdp", "tracks": []}
    await ws.send(json.dumps(offer))
    error = await receive(ws)
    assert error["code"] == "bad_sdp" and error["request_type"] == "publish_offer"
    await ws.send('{"v":1,"type":"subscribe_answer","sdp":"v=0"}')
    error = await receive(ws)
    assert error["code"] == "bad_sdp" and "no subscribe offer" in error["message"]
    await ws.send('{"v":1,"type":"ice_candidate","pc":"publish","candidate":"candidate:x"}')
    assert (await receive(ws))["code"] == "bad_sdp"
    await ws.send('{"v":1,"type":"ping"}')
    assert (await receive(ws))["type"] == "pong"


async def test_grant_reaches_the_student_and_everyone(connect: Any) -> None:
    teacher, student = await connect(), await connect()
    await join(teacher, token(name="T", lesson="grant"))
    student_id = (await join(student, token(Role.STUDENT, name="S", lesson="grant")))[
        "participant_id"
    ]
    assert (await receive(teacher))["type"] == "participant_joined"
    await teacher.send(json.dumps({"v": 1, "type": "grant_publish", "participant_id": student_id}))
    assert await receive(student) == {
        "v": 1,
        "type": "permissions_changed",
        "permissions": ["ask_to_unmute", "chat", "join", "publish", "raise_hand", "subscribe"],
        "targets": {},
    }
    updated = await receive(teacher)
    assert updated["type"] == "participant_updated" and updated["participant"]["can_publish"]


async def test_leaving_tells_the_others(connect: Any) -> None:
    teacher, student = await connect(), await connect()
    await join(teacher, token(name="T", lesson="leave"))
    student_id = (await join(student, token(Role.STUDENT, name="S", lesson="leave")))[
        "participant_id"
    ]
    assert (await receive(teacher))["type"] == "participant_joined"
    await student.send('{"v":1,"type":"leave"}')
    assert (await receive(student))["reason"] == "left"
    left = await receive(teacher)
    assert left["type"] == "participant_left" and left["participant_id"] == student_id


async def test_rejoining_with_the_same_link_replaces_the_old_socket(connect: Any) -> None:
    link = token(name="T", lesson="rejoin")
    first = await connect()
    await join(first, link)
    second = await connect()
    assert (await join(second, link))["participants"] == []
    bye = await receive(first)
    assert bye["type"] == "bye" and bye["reason"] == "replaced"


def test_the_secret_file_is_created_private(tmp_path: Path) -> None:
    from server.config import load_or_create_secret

    secret = load_or_create_secret(tmp_path)
    assert len(secret) >= 32
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0
    assert load_or_create_secret(tmp_path) == secret


async def test_silent_sockets_are_closed_and_answering_ones_kept(tmp_path: Path) -> None:
    own = start_server(tmp_path, "--idle-timeout", "1", "--ping-interval", "0.2")
    try:
        answering = LessonClient(own.ws, token(lesson="idle", name="P"))
        welcome = await answering.connect()
        assert welcome["keepalive"] == {"interval": 0.2, "timeout": 1.0}
        silent = LessonClient(own.ws, token(lesson="idle", name="S"), answer_pings=False)
        await silent.connect()
        await asyncio.wait_for(silent.closed.wait(), 10)
        assert silent.bye is not None and silent.bye["reason"] == "timeout"
        for _ in range(8):  # well past the idle timeout, pinged (and answering) throughout
            await answering.wait_for(lambda m: m["type"] == "ping")
        assert not answering.closed.is_set()
        await answering.close()
        await silent.close()
    finally:
        stop_server(own)


def test_the_server_raises_its_open_file_limit() -> None:
    import resource

    from server.serve import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_open_file_limit(512) == 512
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 512
        assert raise_open_file_limit(300) == 512  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
