"""The HTTP API of a real server: OpenAPI, credentials, validation, lessons and links."""

from __future__ import annotations

import json
import select
import socket
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from openapi_spec_validator import validate

from signaling.permissions import Role
from signaling.tokens import verify_token

from .conftest import ADMIN_KEY, SECRET, RunningServer, start_server, stop_server


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("api"), "--max-link-lifetime", "2d")
    yield running
    stop_server(running)
    # Bad input gets a 4xx; nothing a client sends may end in a traceback.
    assert "Traceback" not in running.log()


@pytest.fixture(scope="module")
def valley(api_server: RunningServer) -> dict[str, Any]:
    """A community of three schools, two classroom endpoints, one lesson."""
    ok = api_server.api("POST", "/api/communities", json={"id": "valley", "name": "Valley"})
    assert ok.status_code == 201, ok.text
    for school in ("north", "west", "south"):
        created = api_server.api(
            "POST", "/api/communities/valley/schools", json={"id": school, "name": school.title()}
        )
        assert created.status_code == 201
    for school, room, headcount in (("west", "Room 4", 24), ("south", "Lab", 18)):
        made = api_server.api(
            "POST",
            f"/api/schools/{school}/endpoints",
            json={"name": room, "headcount": headcount},
        )
        assert made.status_code == 201 and made.json()["headcount"] == headcount
    lesson = api_server.api(
        "POST",
        "/api/lessons",
        json={
            "id": "maths-7",
            "community_id": "valley",
            "title": "Fractions",
            "host_teacher": "Ms Rivera",
            "host_school": "north",
            "starts_at": "2026-12-01T09:00:00Z",
            "ends_at": "2026-12-01T10:00:00Z",
            "invited_schools": ["west", "south"],
            "settings": {"lobby": False, "chat_policy": "no_observers"},
        },
    )
    assert lesson.status_code == 201, lesson.text
    result: dict[str, Any] = lesson.json()
    return result


def test_the_openapi_document_is_valid(api_server: RunningServer) -> None:
    document = httpx.get(f"{api_server.http}/openapi.json").json()
    validate(document)
    assert "/api/lessons/{lesson_id}/attendance" in document["paths"]
    assert "LessonIn" in document["components"]["schemas"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/communities"),
        ("POST", "/api/lessons"),
        ("GET", "/api/lessons/maths-7"),
        ("GET", "/api/lessons/maths-7/links"),
        ("GET", "/api/lessons/maths-7/attendance"),
        ("POST", "/api/lessons/maths-7/end"),
    ],
)
def test_without_credentials_every_route_answers_401(
    api_server: RunningServer, method: str, path: str
) -> None:
    response = api_server.api(method, path, key=None)
    assert response.status_code == 401
    assert "credentials required" in response.json()["error"]
    assert api_server.api(method, path, key="wrong" * 10).status_code == 401


def test_tokens_reach_only_their_own_lesson(
    api_server: RunningServer, valley: dict[str, Any]
) -> None:
    teacher = api_server.token("Ms Rivera", Role.TEACHER, lesson="maths-7")
    assert api_server.api("GET", "/api/lessons/maths-7", key=teacher).status_code == 200
    assert api_server.api("GET", "/api/communities", key=teacher).status_code == 403
    other = api_server.token("Mr X", Role.TEACHER, lesson="history")
    assert api_server.api("GET", "/api/lessons/maths-7", key=other).status_code == 403
    student = api_server.token("Ana", Role.STUDENT, lesson="maths-7")
    response = api_server.api("GET", "/api/lessons/maths-7/links", key=student)
    assert response.status_code == 403 and "teachers" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"community_id": "valley"}, 422, "missing field 'title'"),
        (
            {
                "community_id": "valley",
                "title": "t",
                "host_teacher": "h",
                "host_school": "north",
                "starts_at": "2026-12-01T09:00:00Z",
                "ends_at": "2026-12-01T10:00:00Z",
                "nonsense": 1,
            },
            422,
            "unknown field 'nonsense'",
        ),
        (
            {
                "community_id": "valley",
                "title": "t",
                "host_teacher": "h",
                "host_school": "north",
                "starts_at": "2026-12-01T10:00:00Z",
                "ends_at": "2026-12-01T09:00:00Z",
            },
            422,
            "ends_at",
        ),
        (
            {
                "community_id": "valley",
                "title": "t",
                "host_teacher": "h",
                "host_school": "mars",
                "starts_at": "2026-12-01T09:00:00Z",
                "ends_at": "2026-12-01T10:00:00Z",
            },
            422,
            "'mars' is not a member",
        ),
        (
            {
                "community_id": "nowhere",
                "title": "t",
                "host_teacher": "h",
                "host_school": "north",
                "starts_at": "2026-12-01T09:00:00Z",
                "ends_at": "2026-12-01T10:00:00Z",
            },
            404,
            "no community",
        ),
    ],
)
def test_bad_lessons_are_refused_naming_the_field(
    api_server: RunningServer, valley: dict[str, Any], body: dict[str, Any], status: int, words: str
) -> None:
    response = api_server.api("POST", "/api/lessons", json=body)
    assert response.status_code == status
    assert words in response.json()["error"]


def test_bad_json_and_duplicates(api_server: RunningServer, valley: dict[str, Any]) -> None:
    response = api_server.api("POST", "/api/communities", content=b"{nope")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    again = api_server.api("POST", "/api/communities", json={"id": "valley", "name": "Again"})
    assert again.status_code == 409
    assert api_server.api("GET", "/api/lessons/unknown").status_code == 404


def test_lessons_are_listed_shown_and_updated(
    api_server: RunningServer, valley: dict[str, Any]
) -> None:
    listed = api_server.api("GET", "/api/lessons", params={"community": "valley"}).json()
    assert [x["id"] for x in listed] == ["maths-7"]
    patched = api_server.api("PATCH", "/api/lessons/maths-7", json={"title": "Fractions II"})
    assert patched.status_code == 200 and patched.json()["title"] == "Fractions II"
    bad = api_server.api("PATCH", "/api/lessons/maths-7", json={"settings": {"lobby": "maybe"}})
    assert bad.status_code == 422 and "settings.lobby" in bad.json()["error"]
    shown = api_server.api("GET", "/api/lessons/maths-7").json()
    assert shown["settings"]["chat_policy"] == "no_observers" and shown["live"] is None


async def test_links_join_with_their_role_school_and_headcount(
    api_server: RunningServer, valley: dict[str, Any]
) -> None:
    links = api_server.api("GET", "/api/lessons/maths-7/links").json()
    assert [(x["role"], x["name"], x["school"]) for x in links] == [
        ("teacher", "Ms Rivera", "north"),
        ("expert", "Guest expert", ""),
        ("classroom", "Room 4", "west"),
        ("classroom", "Lab", "south"),
    ]
    students = api_server.api(
        "POST",
        "/api/lessons/maths-7/links",
        json={"role": "student", "names": ["Ana", "Ben"], "school": "west"},
    )
    assert students.status_code == 201 and len(students.json()) == 2
    refused = api_server.api(
        "POST",
        "/api/lessons/maths-7/links",
        json={"role": "student", "names": ["Eve"], "school": "mars"},
    )
    assert refused.status_code == 422 and "school" in refused.json()["error"]
    room = links[2]
    assert "#token=" in room["link"] and room["headcount"] == 24
    token = room["link"].split("#token=", 1)[1]
    async with websockets.connect(api_server.ws) as ws:
        await ws.send(json.dumps({"v": 1, "type": "join", "token": token}))
        welcome = json.loads(await ws.recv())
        assert welcome["you"]["role"] == "classroom" and welcome["you"]["school"] == "west"
        shown = api_server.api("GET", "/api/lessons/maths-7").json()
        assert shown["live"] == {"participants": 1, "waiting": 0}
        ended = api_server.api("POST", "/api/lessons/maths-7/end")
        assert ended.status_code == 200 and ended.json()["state"] == "ended"
        bye = json.loads(await ws.recv())
        assert bye["type"] == "bye" and bye["reason"] == "lesson_ended"
    async with websockets.connect(api_server.ws) as ws:
        await ws.send(json.dumps({"v": 1, "type": "join", "token": token}))
        refusal = json.loads(await ws.recv())
        assert refusal["code"] == "forbidden" and "ended" in refusal["message"]
    attendance = api_server.api("GET", "/api/lessons/maths-7/attendance").json()
    (row,) = attendance["participants"]
    assert row["name"] == "Room 4" and row["headcount"] == 24 and row["sessions"] == 1
    assert attendance["schools"]["west"]["classroom_headcount"] == 24
    assert ADMIN_KEY not in api_server.log()


# -- hardening: bodies, inputs that used to answer 500, link lifetimes ---------------


def raw_exchange(server: RunningServer, head: str, body: list[bytes]) -> tuple[int, bytes]:
    """Send ``head`` and then ``body`` chunk by chunk (stopping if the server answers);
    return the status and the whole response. Waits at most 10 s for the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        for chunk in body:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered before taking the whole body
            try:
                sock.sendall(chunk)
            except BlockingIOError:
                break  # nobody reads what we send: wait for the answer instead
            except OSError:
                break
        sock.setblocking(True)
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            response += data
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1") else 0
    return status, response


@pytest.mark.parametrize(
    ("method", "path", "framing"),
    [
        ("POST", "/api/communities", "length"),
        ("POST", "/api/communities", "chunked"),
        ("PATCH", "/api/lessons/maths-7", "chunked"),
        ("POST", "/api/lessons/maths-7/links", "chunked"),
        ("GET", "/api/lessons/maths-7", "length"),
    ],
)
def test_a_huge_body_is_refused_without_reading_it_whole(
    api_server: RunningServer, valley: dict[str, Any], method: str, path: str, framing: str
) -> None:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
    head += "Content-Type: application/json\r\n"
    piece = b" " * 65536
    if framing == "length":
        head += f"Content-Length: {300 * 1024 * 1024}\r\n\r\n"
        body = [piece] * 8
    else:
        head += "Transfer-Encoding: chunked\r\n\r\n"
        body = [b"10000\r\n" + piece + b"\r\n"] * 8  # 512 KiB, never finished
    status, response = raw_exchange(api_server, head, body)
    assert status == 413, response[:300]
    assert b"256 KiB" in response


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"name": "\xff\xfe"}', "UTF-8"),
        (b'{"name": "a", "name": "b"}', "duplicate key 'name'"),
        (b'{"name": ' + b"9" * 5000 + b"}", "number too long"),
    ],
    ids=["nested", "not-utf-8", "duplicate-key", "huge-number"],
)
def test_bodies_that_used_to_crash_are_refused_with_400(
    api_server: RunningServer, body: bytes, words: str
) -> None:
    response = api_server.api("POST", "/api/communities", content=body)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


LESSON = {
    "community_id": "valley",
    "title": "Names",
    "host_teacher": "Ms Rivera",
    "host_school": "north",
    "starts_at": "2026-12-01T09:00:00Z",
    "ends_at": "2026-12-01T10:00:00Z",
}


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/api/lessons", {**LESSON, "host_teacher": "T" * 81}, "'host_teacher'"),
        ("/api/lessons", {**LESSON, "host_teacher": " \t "}, "'host_teacher'"),
        ("/api/lessons", {**LESSON, "host_teacher": "\x1c"}, "'host_teacher'"),
        ("/api/lessons", {**LESSON, "starts_at": "2026-12-01T09:00:00"}, "'starts_at'"),
        ("/api/schools/west/endpoints", {"name": "R" * 81, "headcount": 3}, "'name'"),
        ("/api/schools/west/endpoints", {"name": "  ", "headcount": 3}, "'name'"),
        ("/api/lessons/maths-7/links", {"role": "student", "names": ["N" * 81]}, "'names.0'"),
    ],
    ids=[
        "long-teacher",
        "blank-teacher",
        "separator-teacher",
        "naive-time",
        "long-endpoint",
        "blank-endpoint",
        "long-student",
    ],
)
def test_names_a_token_cannot_carry_are_refused_where_they_enter(
    api_server: RunningServer, valley: dict[str, Any], path: str, body: dict[str, Any], words: str
) -> None:
    response = api_server.api("POST", path, json=body)
    assert response.status_code == 422, response.text
    assert words in response.json()["error"]
    assert "Traceback" not in api_server.log()


def test_a_stored_name_a_token_cannot_carry_is_named_not_a_500(
    api_server: RunningServer, valley: dict[str, Any]
) -> None:
    # A lesson stored before names were limited like tokens.
    stored = {
        **LESSON,
        "id": "legacy",
        "host_teacher": "T" * 100,
        "invited_schools": [],
        "settings": {},
        "state": "scheduled",
    }
    with sqlite3.connect(api_server.data_dir / "catalogue.sqlite3") as db:
        db.execute(
            "INSERT INTO lessons (id, community_id, body) VALUES (?, ?, ?)",
            ("legacy", "valley", json.dumps(stored)),
        )
    response = api_server.api("GET", "/api/lessons/legacy/links")
    assert response.status_code == 422, response.text
    assert "'host_teacher'" in response.json()["error"]


def test_a_patch_that_ends_before_the_start_is_a_422(
    api_server: RunningServer, valley: dict[str, Any]
) -> None:
    created = api_server.api("POST", "/api/lessons", json={**LESSON, "id": "patchy"})
    assert created.status_code == 201, created.text
    for change, words in (
        ({"ends_at": "2026-12-01T08:00:00Z"}, "ends_at"),
        ({"ends_at": "2026-12-01T10:00:00"}, "ends_at"),
    ):
        response = api_server.api("PATCH", "/api/lessons/patchy", json=change)
        assert response.status_code == 422, response.text
        assert words in response.json()["error"]


@pytest.mark.parametrize(
    ("lesson", "status", "filename"),
    [
        ("%E4%B8%AD%E6%96%87", 200, "filename*=UTF-8''%E4%B8%AD%E6%96%87.csv"),
        ("caf%C3%A9", 200, "filename*=UTF-8''caf%C3%A9.csv"),
        ("a%0D%0Ab", 422, None),
        ("a%22b", 422, None),
    ],
    ids=["chinese", "latin-1", "crlf", "quote"],
)
def test_csv_attendance_for_any_lesson_id_is_never_a_500(
    api_server: RunningServer, lesson: str, status: int, filename: str | None
) -> None:
    response = api_server.api("GET", f"/api/lessons/{lesson}/attendance", params={"format": "csv"})
    assert response.status_code == status, response.text
    if filename is None:
        assert "'lesson_id'" in response.json()["error"]
    else:
        disposition = response.headers["content-disposition"]
        assert disposition.startswith("attachment; filename=") and filename in disposition


def exp_of(link: str) -> int:
    grant = verify_token(SECRET.encode(), link.split("#token=", 1)[1])
    return grant.expires_at


def test_no_link_outlives_the_cap_or_the_teacher_token_that_minted_it(
    api_server: RunningServer, valley: dict[str, Any]
) -> None:
    created = api_server.api("POST", "/api/lessons", json={**LESSON, "id": "forever"})
    assert created.status_code == 201, created.text
    teacher = api_server.token("Ms Rivera", Role.TEACHER, lesson="forever", ttl_seconds=3600)
    teacher_expires = verify_token(SECRET.encode(), teacher).expires_at
    moved = api_server.api(
        "PATCH", "/api/lessons/forever", key=teacher, json={"ends_at": "2099-01-01T00:00:00Z"}
    )
    assert moved.status_code == 200, moved.text
    minted = api_server.api("GET", "/api/lessons/forever/links", key=teacher).json()
    minted += api_server.api(
        "POST",
        "/api/lessons/forever/links",
        key=teacher,
        json={"role": "teacher", "names": ["Co Teacher"], "ttl_minutes": 7 * 24 * 60},
    ).json()
    assert minted and all(exp_of(x["link"]) <= teacher_expires for x in minted)
    assert all(x["expires_at"] == exp_of(x["link"]) for x in minted)
    # The operator's links stop at the server's cap (2 days for this server).
    before = int(time.time())
    by_admin = api_server.api("GET", "/api/lessons/forever/links").json()
    assert by_admin and all(exp_of(x["link"]) <= int(time.time()) + 2 * 86400 for x in by_admin)
    assert all(exp_of(x["link"]) >= before + 2 * 86400 for x in by_admin)


async def test_a_removed_teachers_link_opens_no_door(
    api_server: RunningServer, valley: dict[str, Any]
) -> None:
    from media.client import LessonClient
    from signaling import protocol as p

    created = api_server.api("POST", "/api/lessons", json={**LESSON, "id": "banned-7"})
    assert created.status_code == 201, created.text
    host = api_server.token("Ms Rivera", Role.TEACHER, lesson="banned-7")
    rogue = api_server.token("Mr Rogue", Role.TEACHER, lesson="banned-7")
    assert api_server.api("GET", "/api/lessons/banned-7", key=rogue).status_code == 200
    teacher = LessonClient(api_server.ws, host)
    removed = LessonClient(api_server.ws, rogue)
    await teacher.connect()
    await removed.connect()
    left = teacher.wait_for(lambda m: m["type"] == "participant_left")
    await teacher.send(p.Remove(participant_id=removed.participant_id or ""))
    assert (await left)["reason"] == "removed"
    for method, path in (
        ("GET", "/api/lessons/banned-7"),
        ("GET", "/api/lessons/banned-7/links"),
        ("GET", "/api/lessons/banned-7/attendance"),
        ("POST", "/api/lessons/banned-7/end"),
    ):
        refused = api_server.api(method, path, key=rogue)
        assert refused.status_code == 403, (path, refused.text)
        assert "removed" in refused.json()["error"]
    minting = api_server.api(
        "POST", "/api/lessons/banned-7/links", key=rogue, json={"role": "student", "names": ["X"]}
    )
    assert minting.status_code == 403
    again = LessonClient(api_server.ws, rogue)
    with pytest.raises(ConnectionError, match="removed"):
        await again.connect()
    for client in (teacher, removed, again):
        await client.close()
