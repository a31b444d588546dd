"""The console's cookie session over HTTP, against a real server: sign-in, the cookie's
attributes, CSRF on every state-changing request, sign-out, expiry, QR codes, pages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest
import segno
from starlette.requests import Request

from server.sessions import ConsoleSessions
from signaling.permissions import Role

from .conftest import ADMIN_KEY, RunningServer, start_server, stop_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("console"))
    yield running
    stop_server(running)


@contextlib.contextmanager
def signed_in(server: RunningServer) -> Iterator[tuple[httpx.Client, str]]:
    """A client with the session cookie, and the session's CSRF token."""
    with httpx.Client(base_url=server.http, timeout=10) as client:
        response = client.post("/console/session", json={"key": ADMIN_KEY})
        assert response.status_code == 200
        yield client, response.json()["csrf_token"]


def test_a_wrong_key_is_refused_and_sets_no_cookie(server: RunningServer) -> None:
    for key in ("", "x" * 40, ADMIN_KEY[:-1] + "?"):
        response = httpx.post(f"{server.http}/console/session", json={"key": key}, timeout=10)
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
    assert httpx.get(f"{server.http}/console/session", timeout=10).status_code == 401


def test_the_cookie_is_http_only_strict_and_the_api_takes_it(server: RunningServer) -> None:
    with signed_in(server) as (client, csrf):
        cookie = client.cookies.jar
        (session,) = list(cookie)
        header = httpx.post(
            f"{server.http}/console/session", json={"key": ADMIN_KEY}, timeout=10
        ).headers["set-cookie"]
        assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/" in header
        assert "Max-Age=" in header and "Secure" not in header  # plain HTTP here
        assert session.value not in (ADMIN_KEY, csrf)
        # Reading needs no CSRF token; changing does.
        assert client.get("/api/communities").status_code == 200
        refused = client.post("/api/communities", json={"id": "c1", "name": "One"})
        assert refused.status_code == 403
        assert "CSRF" in refused.json()["error"]
        wrong = client.post(
            "/api/communities", json={"id": "c1", "name": "One"}, headers={"X-CSRF-Token": "x"}
        )
        assert wrong.status_code == 403
        made = client.post(
            "/api/communities", json={"id": "c1", "name": "One"}, headers={"X-CSRF-Token": csrf}
        )
        assert made.status_code == 201


def test_a_request_from_another_site_is_refused_even_with_the_token(server: RunningServer) -> None:
    with signed_in(server) as (client, csrf):
        for headers in (
            {"Origin": "http://evil.example", "X-CSRF-Token": csrf},
            {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": csrf},
            {"Sec-Fetch-Site": "same-site", "X-CSRF-Token": csrf},
        ):
            response = client.post("/api/communities", json={"name": "Evil"}, headers=headers)
            assert response.status_code == 403, headers
        # Signing in from another site is refused too.
        response = httpx.post(
            f"{server.http}/console/session",
            json={"key": ADMIN_KEY},
            headers={"Origin": "http://evil.example"},
            timeout=10,
        )
        assert response.status_code == 403
    names = {c["name"] for c in server.api("GET", "/api/communities").json()}
    assert "Evil" not in names


def test_signing_out_ends_the_session(server: RunningServer) -> None:
    with signed_in(server) as (client, csrf):
        cookie = client.cookies.get("lco_session")
        assert client.delete("/console/session").status_code == 403  # no CSRF token
        response = client.delete("/console/session", headers={"X-CSRF-Token": csrf})
        assert response.status_code == 204
        assert 'lco_session=""' in response.headers["set-cookie"]
    # The old cookie is refused from now on, even if a browser kept it.
    stale = httpx.get(
        f"{server.http}/api/communities", cookies={"lco_session": cookie or ""}, timeout=10
    )
    assert stale.status_code == 401


def test_sessions_expire() -> None:
    now = [1000.0]
    sessions = ConsoleSessions("k" * 40, lifetime=60, clock=lambda: now[0])
    assert sessions.sign_in("wrong") is None
    session = sessions.sign_in("k" * 40)
    assert session is not None and session.expires_at == 1060

    request = Request(
        {"type": "http", "headers": [(b"cookie", f"lco_session={session.id}".encode())]}
    )
    assert sessions.find(request) == session
    now[0] = 1060
    assert sessions.find(request) is None


def test_a_teacher_token_is_not_a_console_session(server: RunningServer) -> None:
    """A teacher's link keeps its lesson's scope: no cookie comes of it."""
    token = server.token("Ms T", Role.TEACHER, lesson="any")
    response = httpx.post(f"{server.http}/console/session", json={"key": token}, timeout=10)
    assert response.status_code == 401


def test_links_come_with_qr_codes_of_exactly_the_link(server: RunningServer) -> None:
    api = server.api
    assert api("POST", "/api/communities", json={"id": "qr", "name": "QR"}).status_code == 201
    for school in ("north", "west"):
        api("POST", "/api/communities/qr/schools", json={"id": f"qr-{school}", "name": school})
    api("POST", "/api/schools/qr-west/endpoints", json={"name": "Room 4", "headcount": 24})
    lesson = {
        "id": "qr-lesson",
        "community_id": "qr",
        "title": "QR",
        "host_teacher": "Ms T",
        "host_school": "qr-north",
        "starts_at": "2030-01-01T09:00:00Z",
        "ends_at": "2030-01-01T10:00:00Z",
        "invited_schools": ["qr-west"],
        "settings": {"recording_declined": ["qr-west"]},
    }
    made = api("POST", "/api/lessons", json=lesson).json()
    assert made["settings"]["recording_declined"] == ["qr-west"]
    plain = api("GET", "/api/lessons/qr-lesson/links").json()
    assert all(link["qr_svg"] is None for link in plain)
    links = api("GET", "/api/lessons/qr-lesson/links?qr=svg").json()
    room = next(link for link in links if link["role"] == "classroom")
    expected = segno.make(room["link"], error="m", micro=False)
    assert room["qr_svg"] == expected.svg_data_uri(scale=4, border=2, dark="#000", light="#fff")
    students = api(
        "POST",
        "/api/lessons/qr-lesson/links?qr=svg",
        json={"role": "student", "names": ["Ana"], "school": "qr-west"},
    ).json()
    assert students[0]["qr_svg"].startswith("data:image/svg+xml")
    assert api("GET", "/api/lessons/qr-lesson/links?qr=png").status_code == 422


def test_the_pages_are_served(server: RunningServer) -> None:
    landing = httpx.get(f"{server.http}/", timeout=10)
    assert landing.status_code == 200 and "I have a link" in landing.text
    console = httpx.get(f"{server.http}/console", timeout=10)
    assert console.status_code == 200 and "Schedule a lesson" in console.text
    join = httpx.get(f"{server.http}/join", timeout=10)
    assert join.status_code == 200 and "Join the lesson" in join.text
