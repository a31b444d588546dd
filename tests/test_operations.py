"""Operations: Prometheus /metrics, /readyz, JSON logs, the demo links at start, the log check.

Real ``lco serve`` processes and real aiortc peers; the Prometheus text is parsed with
``prometheus_client``'s own parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from media.testsource import PatternVideoTrack, ToneAudioTrack
from server.config import Settings
from server.state import ServerState
from signaling.permissions import Role
from signaling.tokens import mint_token

from .conftest import ADMIN_KEY, SECRET, RunningServer, start_server, stop_server
from .logcheck import scan

pytestmark = pytest.mark.usefixtures("decoding_clients")


def samples(server: RunningServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by (name, labels), parsed as Prometheus parses it."""
    response = httpx.get(f"{server.http}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    """One sample; every series has the node label."""
    return found[(name, frozenset({("node", "test-node"), *labels.items()}))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("operations"), "--node-name", "test-node", "--log-format", "json"
    )
    yield running
    stop_server(running)


async def test_metrics_parse_and_move_during_a_lesson(server: RunningServer, clients: Any) -> None:
    before = samples(server)
    assert value(before, "lco_accepting") == 1
    assert value(before, "lco_participants", role="teacher") == 0
    assert value(before, "lco_participants", role="field_trip") == 0  # every role counted
    teacher = await clients("Ms T", Role.TEACHER, "prom")
    student = await clients("Ana", Role.STUDENT, "prom", "south")
    room = await clients("Room 4", Role.CLASSROOM, "prom", "west")
    await teacher.publish([(PatternVideoTrack(), "camera"), (ToneAudioTrack(), "microphone")])
    for watcher in (student, room):
        video = await watcher.wait_track(teacher.participant_id or "", "video")
        await watcher.wait_track(teacher.participant_id or "", "audio")
        await watcher.wait_frames(video, 10)
    during = samples(server)
    assert value(during, "lco_lessons") == value(before, "lco_lessons") + 1
    assert value(during, "lco_participants", role="teacher") == 1
    assert value(during, "lco_participants", role="student") == 1
    assert value(during, "lco_participants", role="classroom") == 1
    for kind in ("audio", "video"):
        for name in ("lco_forwarded_packets_total", "lco_forwarded_bytes_total"):
            assert value(during, name, kind=kind) > value(before, name, kind=kind), (name, kind)
        assert value(during, "lco_publisher_packets_received", kind=kind) > 0
    assert value(during, "lco_keyframe_requests_total", outcome="relayed") >= 1
    assert value(during, "lco_join_latency_seconds_count") == (
        value(before, "lco_join_latency_seconds_count") + 3
    )
    assert value(during, "lco_event_loop_lag_seconds_count") > 0
    assert value(during, "lco_open_fds") > value(before, "lco_open_fds")
    assert value(during, "lco_resident_memory_bytes") > 0
    assert value(during, "lco_frames_decoded_total") == 0
    # Counters of tracks that ended stay counted: they never go back.
    forwarded = value(during, "lco_forwarded_packets_total", kind="video")
    left = student.wait_for(  # expected before the leave, which may be told at once
        lambda m: m["type"] == "participant_left" and m["participant_id"] == teacher.participant_id
    )
    await teacher.close()
    await left
    after = samples(server)
    assert value(after, "lco_forwarded_packets_total", kind="video") >= forwarded
    assert value(after, "lco_participants", role="teacher") == 0
    # The JSON counters the suite and lco bench read are still there.
    assert server.metrics()["sfu"]["forwarded_tracks"] == 0  # type: ignore[index]


async def test_the_live_view_shows_who_publishes_bitrate_and_a_silent_classroom(
    server: RunningServer, clients: Any
) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "live-view", "north")
    room = await clients("Room 4", Role.CLASSROOM, "live-view", "west")
    await teacher.publish([(PatternVideoTrack(), "camera"), (ToneAudioTrack(), "microphone")])
    await room.publish([(PatternVideoTrack(), "camera")])  # a room PC without a microphone
    video = await room.wait_track(teacher.participant_id or "", "video")
    await room.wait_frames(video, 5)
    first = server.api("GET", "/api/lessons/live-view/live").json()
    assert first["participants"] == 2 and first["scheduled"] is False
    assert all(p["kbps_in"] is None for p in first["people"])  # one look: no rate yet
    # Bitrate is the change between two looks: look again after more frames arrived.
    for _ in range(20):
        await room.wait_frames(video, 20)
        live = server.api("GET", "/api/lessons/live-view/live").json()
        people = {p["name"]: p for p in live["people"]}
        if people["Ms T"]["kbps_in"] and people["Room 4"]["kbps_out"]:
            break
    assert {t["source"] for t in people["Ms T"]["tracks"]} == {"camera", "microphone"}
    assert people["Ms T"]["kbps_in"] > 0
    assert people["Room 4"]["kbps_out"] > 0
    assert "no audio: the classroom sends no microphone" in people["Room 4"]["warnings"]
    assert "Room 4: no audio: the classroom sends no microphone" in live["warnings"]
    assert {s["school"]: s["participants"] for s in live["schools"]} == {"north": 1, "west": 1}
    listed = server.api("GET", "/api/live").json()
    assert "live-view" in {lesson["id"] for lesson in listed}
    assert server.api("GET", "/api/lessons/nobody-here/live").status_code == 404
    teacher_token = server.token("Ms T", Role.TEACHER, lesson="live-view")
    assert server.api("GET", "/api/live", key=teacher_token).status_code == 403


def test_readiness_is_its_own_check(server: RunningServer) -> None:
    assert httpx.get(f"{server.http}/readyz", timeout=5).json() == {"status": "ready"}
    assert httpx.get(f"{server.http}/healthz", timeout=5).json() == {"status": "ok"}


def test_readiness_names_what_is_wrong(tmp_path: Path) -> None:
    """The checks themselves: a database that cannot answer, a server shutting down."""
    state = ServerState(Settings(secret=SECRET.encode(), data_dir=tmp_path, admin_key=ADMIN_KEY))
    assert state.readiness() == {}
    state.catalogue.close()
    state.accepting = False
    problems = state.readiness()
    assert problems["accepting"] == "shutting down"
    assert "closed database" in problems["catalogue"]
    assert "records" not in problems
    state.records.close()


async def test_json_logs_carry_request_and_participant_ids(
    server: RunningServer, clients: Any
) -> None:
    response = server.api("GET", "/healthz", key=None)
    request_id = response.headers["x-request-id"]
    student = await clients("Ana", Role.STUDENT, "logged", "south")
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    joined = [line for line in lines if line["message"] == "joined lesson logged as student"]
    assert len(joined) == 1
    assert joined[0]["participant_id"] == student.participant_id
    assert joined[0]["request_id"] is not None
    assert all(
        {"time", "level", "logger", "message", "request_id", "participant_id"} <= set(line)
        for line in lines
    )
    assert any(line["request_id"] == request_id and "/healthz" in line["message"] for line in lines)
    # Every line is JSON: nothing else reaches standard error.
    assert all(line.startswith("{") for line in server.log().splitlines() if line.strip())


def test_the_demo_links_go_to_stdout_and_never_to_the_logs(server: RunningServer) -> None:
    shown = server.log_path.with_suffix(".out").read_text()
    links = re.findall(r"http://127\.0\.0\.1:\d+/join#token=\S+", shown)
    assert len(links) == 2, shown
    assert "admin.key" not in shown  # the key came from LCO_ADMIN_KEY: never printed
    assert ADMIN_KEY not in shown and SECRET not in shown
    assert "--admin-key or LCO_ADMIN_KEY" in shown
    assert "/join#token=" not in server.log()


def test_no_demo_prints_no_links(tmp_path: Path) -> None:
    running = start_server(tmp_path, "--no-demo")
    try:
        assert "#token=" not in running.log_path.with_suffix(".out").read_text()
    finally:
        stop_server(running)


def test_the_log_check_finds_secrets_and_tokens() -> None:
    """The run-wide check (tests/logcheck.py) can fail: it finds what it looks for."""
    token = mint_token(SECRET.encode(), lesson="l", name="Ana", role=Role.STUDENT)
    text = f"GET /x\nsomething {ADMIN_KEY} leaked\nand {token}\n"
    found = scan(text, {ADMIN_KEY: "the admin key", SECRET: "the secret"}, "server.log")
    assert found == [
        "server.log: the admin key appears in the log",
        f"server.log: a token appears in the log ({token[:24]}...)",
    ]
    assert scan("all quiet", {ADMIN_KEY: "the admin key"}, "x") == []


def test_the_grafana_dashboard_uses_only_metrics_the_server_exports(server: RunningServer) -> None:
    dashboard = json.loads(
        (Path(__file__).parents[1] / "docs" / "grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 15
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {
        re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"lco_\w+", e)
    }
    text = httpx.get(f"{server.http}/metrics", timeout=5).text
    exported = {family.name for family in text_string_to_metric_families(text)}
    # The parser names counters without their _total suffix.
    exported |= {f"{name}_total" for name in exported}
    assert used <= exported, used - exported
    assert "lco_info" in used  # the node picker
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
