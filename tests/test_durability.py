"""Acknowledged attendance and chat survive SIGKILL; webhooks are signed and retried."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from media.client import LessonClient
from server.webhooks import sign
from signaling import protocol as p
from signaling.permissions import Role

from .conftest import SECRET, lco, loopback_http, start_server, stop_server


def export(data_dir: Path, lesson: str, fmt: str) -> str:
    """``lco attendance`` as an operator runs it."""
    done = subprocess.run(
        lco("attendance", "--lesson", lesson, "--format", fmt, "--data-dir", str(data_dir)),
        capture_output=True,
        text=True,
        check=True,
        env={"LCO_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
    )
    return done.stdout


async def test_sigkill_loses_no_acknowledged_attendance_or_chat(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    spans: dict[str, tuple[float, float]] = {}
    try:
        teacher = LessonClient(server.ws, server.token("Ms T", Role.TEACHER, lesson="crash"))
        await teacher.connect()
        joined_at = time.time()
        people: dict[str, LessonClient] = {}
        for name, role, school in (
            ("Ana", Role.STUDENT, "north"),
            ("Room 4", Role.CLASSROOM, "west"),
            ("Ben", Role.STUDENT, "south"),
        ):
            extra = {"headcount": 24} if role is Role.CLASSROOM else {}
            client = LessonClient(
                server.ws, server.token(name, role, lesson="crash", school=school, **extra)
            )
            before = time.time()
            await client.connect()
            spans[name] = (before, time.time())
            people[name] = client
        echoed = people["Ana"].wait_for(lambda m: m["type"] == "chat_message")
        await people["Ana"].send(p.Chat(text="is this recorded?"))
        await echoed  # acknowledged: stored before it was delivered
        for name in ("Ana", "Room 4"):
            left = teacher.wait_for(lambda m: m["type"] == "participant_left")
            leave_sent = time.time()
            await people[name].close()
            await left  # acknowledged: the leave was recorded before others were told
            spans[name] = (spans[name][1], leave_sent, time.time())  # type: ignore[assignment]
        # Ben is still in the lesson when the server dies.
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        killed_at = time.time()
        for client in (teacher, people["Ben"]):
            await asyncio.wait_for(client.closed.wait(), 10)
            await client.close()
    finally:
        stop_server(server)

    restarted = start_server(tmp_path)
    try:
        report = json.loads(export(tmp_path / "data", "crash", "json"))
        rows = {row["name"]: row for row in report["participants"]}
        assert set(rows) == {"Ms T", "Ana", "Room 4", "Ben"}
        for name in ("Ana", "Room 4"):
            row = rows[name]
            joined_ack, leave_sent, left_ack = spans[name]  # type: ignore[misc]
            kinds = [e["kind"] for e in row["events"]]
            assert kinds == ["joined", "left"], kinds
            joined, left = (e["at"] for e in row["events"])
            assert (
                row["seconds_present"] == round(left - joined, 9)
                or abs(row["seconds_present"] - (left - joined)) < 1e-6
            )
            # The recorded span lies within what the clients saw of it.
            assert joined <= joined_ack and leave_sent <= left <= left_ack
        assert rows["Room 4"]["headcount"] == 24
        assert report["schools"]["west"]["classroom_headcount"] == 24
        ben = rows["Ben"]
        assert [e["kind"] for e in ben["events"]] == ["joined", "left"]
        assert ben["events"][1]["reason"] == "server stopped"
        assert joined_at <= ben["events"][1]["at"] <= killed_at
        csv_lines = export(tmp_path / "data", "crash", "csv").splitlines()
        assert csv_lines[0].startswith("name,role,school,headcount")
        assert len(csv_lines) == 5
        # The chat is still there for the next person who joins.
        late = LessonClient(restarted.ws, restarted.token("Late", Role.STUDENT, lesson="crash"))
        history = late.wait_for(lambda m: m["type"] == "chat_history")
        await late.connect()
        assert [m["text"] for m in (await history)["messages"]] == ["is this recorded?"]
        await late.close()
    finally:
        stop_server(restarted)


class Receiver:
    """A webhook receiver on loopback that fails the first delivery of each event."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes, int]] = []
        self.accepted: list[dict[str, Any]] = []
        self.event = asyncio.Event()
        self._seen: set[str] = set()

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        delivery = request.headers["x-lco-delivery"]
        status = 200 if delivery in self._seen else 503
        self._seen.add(delivery)
        self.calls.append((dict(request.headers), body, status))
        if status == 200:
            self.accepted.append(json.loads(body))
            self.event.set()
        return Response(status_code=status)


async def test_webhooks_are_signed_and_retried(tmp_path: Path) -> None:
    receiver = Receiver()
    secret = "hook-secret-" + "h" * 30
    async with loopback_http([Route("/hook", receiver.hook, methods=["POST"])]) as hook_url:
        server = start_server(
            tmp_path, "--webhook-url", f"{hook_url}/hook", "--webhook-secret", secret
        )
        try:
            teacher = LessonClient(server.ws, server.token("Ms T", Role.TEACHER, lesson="hooks"))
            await teacher.connect()
            student = LessonClient(server.ws, server.token("Ana", Role.STUDENT, lesson="hooks"))
            await student.connect()
            await student.send(p.RaiseHand())
            async with asyncio.timeout(20):
                while {"lesson.started", "participant.joined", "hand.raised"} - {
                    a["event"] for a in receiver.accepted
                }:
                    receiver.event.clear()
                    await receiver.event.wait()
            for client in (student, teacher):
                await client.close()
        finally:
            stop_server(server)
    first_attempts = [c for c in receiver.calls if c[2] == 503]
    assert first_attempts, "no delivery was retried"
    for headers, body, _ in receiver.calls:
        expected = sign(secret.encode(), headers["x-lco-timestamp"], body)
        assert headers["x-lco-signature"] == expected
        assert json.loads(body)["event"] == headers["x-lco-event"]
    raised = next(a for a in receiver.accepted if a["event"] == "hand.raised")
    assert raised["data"]["name"] == "Ana" and raised["data"]["lesson"] == "hooks"
