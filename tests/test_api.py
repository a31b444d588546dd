"""The HTTP API of a real server: OpenAPI, credentials, validation, lessons and links."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from openapi_spec_validator import validate

from signaling.permissions import Role

from .conftest import ADMIN_KEY, RunningServer, start_server, stop_server


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("api"))
    yield running
    stop_server(running)


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
