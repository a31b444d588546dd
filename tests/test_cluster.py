"""Several nodes on one Redis (a real redis-server), real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc import RTCSessionDescription
from prometheus_client.parser import text_string_to_metric_families

from media.client import JoinRefused, LessonClient
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling import protocol as p
from signaling.permissions import Role

from .conftest import RunningServer, start_server, stop_server
from .redis_server import RedisServer

pytestmark = pytest.mark.usefixtures("decoding_clients")


def start_nodes(tmp: Path, redis: RedisServer, count: int, *extra: str) -> list[RunningServer]:
    """``count`` nodes on one Redis; they share the data directory as a machine's do."""
    return [
        start_server(tmp, "--redis", redis.url, "--node-name", f"n{index}", "--no-demo", *extra)
        for index in range(1, count + 1)
    ]


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[RunningServer]]:
    running = start_nodes(tmp_path, redis_server, 3)
    yield running
    for node in running:
        stop_server(node)


def prometheus(node: RunningServer, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric in ``/metrics``, by their labels."""
    text = httpx.get(f"{node.http}/metrics", timeout=5).text
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def cluster(node: RunningServer) -> dict[str, Any]:
    info = node.metrics()["cluster"]
    assert isinstance(info, dict)
    return info


def owners(nodes: list[RunningServer], lesson: str) -> list[str]:
    """The nodes on which ``lesson`` lives, by what each node says of itself."""
    return [c["node"] for c in map(cluster, nodes) if lesson in c["lessons"]]


def camera_and_microphone() -> list[tuple[Any, p.Source]]:
    return [(PatternVideoTrack(), "camera"), (ToneAudioTrack(), "microphone")]


async def wait_until(condition: Any, timeout: float = 15.0) -> None:
    """Poll a condition about another process (its metrics, Redis), off the loop."""
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(condition):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_clients_of_one_lesson_on_three_nodes_see_and_hear_each_other(
    nodes: list[RunningServer], redis_server: RedisServer, joined: Any
) -> None:
    n1, n2, n3 = nodes
    teacher = await joined(n1, "Ms T", Role.TEACHER, "wide")
    room = await joined(n2, "Room", Role.CLASSROOM, "wide")
    expert = await joined(n3, "Dr E", Role.EXPERT, "wide")
    everyone = [teacher, room, expert]
    # One lesson on exactly one node, whatever node each socket landed on.
    (owner,) = owners(nodes, "wide")
    assert redis_server.client().get("lco:lesson:wide:owner") == owner
    for client in everyone:
        await client.publish(camera_and_microphone())
    for viewer in everyone:
        for other in everyone:
            if other is viewer:
                continue
            for kind in ("video", "audio"):
                track = await viewer.wait_track(other.participant_id or "", kind)
                await viewer.wait_frames(track, 10)
    relayed = sum(c["relay"]["frames_in"] for c in map(cluster, nodes))
    assert relayed > 0  # two of the three sockets went through the relay
    entries = [prometheus(n, "lco_relayed_sockets") for n in nodes]
    assert sum(e[(("node", f"n{i}"), ("side", "entry"))] for i, e in enumerate(entries, 1)) == 2
    assert sum(e[(("node", f"n{i}"), ("side", "owner"))] for i, e in enumerate(entries, 1)) == 2

    # Moderation from a socket relayed from another node takes effect everywhere.
    elsewhere = next(n for n in nodes if cluster(n)["node"] != owner)
    moderator = await joined(elsewhere, "Mr Co", Role.TEACHER, "wide")
    everyone.append(moderator)
    mid = room.participant_id or ""
    notice = room.wait_for(lambda m: m["type"] == "notice")
    seen = expert.wait_for(
        lambda m: m["type"] == "participant_updated" and m["participant"]["id"] == mid
    )
    await moderator.send(p.Mute(participant_id=mid, kind="audio"))
    assert (await notice)["code"] == "muted_audio"
    assert (await seen)["participant"]["muted"] == ["audio"]
    eid = expert.participant_id or ""
    bye = expert.wait_for(lambda m: m["type"] == "bye")
    left = room.wait_for(lambda m: m["type"] == "participant_left")
    await moderator.send(p.Remove(participant_id=eid))
    assert (await bye)["reason"] == "removed"
    assert (await left)["participant_id"] == eid

    # When the lesson ends, nothing of it is left in Redis.
    for client in everyone:
        await client.close()
    await wait_until(lambda: not redis_server.keys("lco:lesson:*"))
    await wait_until(
        lambda: all(not redis_server.client().smembers(f"lco:node:n{i}:lessons") for i in (1, 2, 3))
    )


async def test_sockets_racing_into_one_lesson_on_two_nodes_meet_on_one_owner(
    tmp_path: Path, redis_server: RedisServer, joined: Any
) -> None:
    pair = start_nodes(tmp_path, redis_server, 2)
    try:
        tokens = [(pair[i % 2], f"S{i}") for i in range(8)]
        clients = await asyncio.gather(
            *(joined(node, name, Role.EXPERT, "race") for node, name in tokens)
        )
        assert len(owners(pair, "race")) == 1
        ids = {c.participant_id for c in clients}
        for client in clients:
            others = ids - {client.participant_id}
            await wait_until(lambda c=client, o=others: o <= set(c.participants))
    finally:
        for node in pair:
            stop_server(node)


def readiness(node: RunningServer) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{node.http}/readyz", timeout=5)
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def test_redis_outage_keeps_media_refuses_new_joins_and_recovers(
    tmp_path: Path, redis_server: RedisServer, joined: Any
) -> None:
    pair = start_nodes(tmp_path, redis_server, 2)
    try:
        first = await joined(pair[0], "Room A", Role.CLASSROOM, "outage", reconnect=True)
        (owner,) = owners(pair, "outage")
        owner_node = next(n for n in pair if cluster(n)["node"] == owner)
        second = await joined(
            pair[1] if owner_node is pair[0] else pair[0],
            "Room B",
            Role.CLASSROOM,
            "outage",
            reconnect=True,
        )
        relayed = second if owner_node is pair[0] else first
        direct = first if relayed is second else second
        for client in (direct, relayed):
            await client.publish(camera_and_microphone())
        to_direct = await direct.wait_track(relayed.participant_id or "", "video")
        to_relayed = await relayed.wait_track(direct.participant_id or "", "video")

        redis_server.stop()
        for node in pair:
            await wait_until(lambda n=node: readiness(n)[0] == 503)
            assert "redis" in readiness(node)[1]["problems"]
            assert list(prometheus(node, "lco_redis_up").values()) == [0]
        with pytest.raises(JoinRefused) as refused:
            await joined(pair[1], "Late", Role.EXPERT, "outage-2")
        assert refused.value.reason == "unavailable"
        # Running lessons keep their media both ways, relayed signalling or not.
        await direct.wait_frames(to_direct, 20)
        await relayed.wait_frames(to_relayed, 20)
        assert relayed.resumes == 0

        redis_server.start()
        for node in pair:
            await wait_until(lambda n=node: readiness(n)[0] == 200)
            assert list(prometheus(node, "lco_redis_up").values()) == [1]
        await asyncio.wait_for(relayed.resumed.wait(), 20)
        await direct.wait_frames(to_direct, 20)
        await relayed.wait_frames(to_relayed, 20)
        # The lesson kept its node; Redis knows it again.
        assert owners(pair, "outage") == [owner]
        assert redis_server.client().get("lco:lesson:outage:owner") == owner
        late = await joined(pair[1], "Late", Role.EXPERT, "outage-2")
        assert late.welcome is not None

        for client in (direct, relayed, late):
            await client.close()
        await wait_until(lambda: not redis_server.keys("lco:lesson:*"))
    finally:
        for node in pair:
            stop_server(node)
    # Nodes that stopped leave nothing behind.
    assert redis_server.keys() == []


async def test_two_workers_serve_two_lessons_in_two_processes(
    tmp_path: Path, redis_server: RedisServer, joined: Any
) -> None:
    server = start_server(
        tmp_path, "--redis", redis_server.url, "--workers", "2", "--node-name", "box", "--no-demo"
    )
    try:
        store = redis_server.client()
        await wait_until(lambda: store.smembers("lco:nodes") == {"box-w1", "box-w2"})
        for lesson in ("maths", "art"):
            teacher = await joined(server, "T", Role.TEACHER, lesson)
            student = await joined(server, "S", Role.STUDENT, lesson)
            await teacher.publish(camera_and_microphone())
            track = await student.wait_track(teacher.participant_id or "", "video")
            await student.wait_frames(track, 10)
        maths, art = store.get("lco:lesson:maths:owner"), store.get("lco:lesson:art:owner")
        assert {maths, art} == {"box-w1", "box-w2"}
        pids = {int(store.hget(f"lco:node:{node}", "pid") or 0) for node in (maths, art)}
        assert len(pids) == 2 and server.process.pid not in pids
        # The shared port's metrics are one worker's, named as that worker.
        cluster = server.metrics()["cluster"]
        assert isinstance(cluster, dict) and cluster["node"] in {"box-w1", "box-w2"}
        owned = [
            lesson for lesson, owner in (("maths", maths), ("art", art)) if owner == cluster["node"]
        ]
        assert cluster["lessons"] == owned
    finally:
        stop_server(server)
    assert redis_server.keys() == []


def test_workers_need_redis(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="--workers needs --redis"):
        start_server(tmp_path, "--workers", "2")


async def test_the_api_about_a_lesson_answers_on_every_node(
    nodes: list[RunningServer], redis_server: RedisServer, joined: Any
) -> None:
    n1, n2, n3 = nodes
    assert n1.api("POST", "/api/communities", json={"id": "valley", "name": "V"}).is_success
    school = {"id": "north", "name": "North"}
    assert n1.api("POST", "/api/communities/valley/schools", json=school).is_success
    now = time.time()
    lesson = {
        "id": "maths-7",
        "community_id": "valley",
        "title": "Fractions",
        "host_teacher": "Ms Rivera",
        "host_school": "north",
        "starts_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60)),
        "ends_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600)),
        "settings": {"lobby": False},
    }
    assert n1.api("POST", "/api/lessons", json=lesson).status_code == 201
    # Links minted on one node join through another.
    links = n2.api("GET", "/api/lessons/maths-7/links").json()
    token = links[0]["link"].split("#token=", 1)[1]
    teacher = LessonClient(n3.ws, token)
    await teacher.connect()
    try:
        guest = await joined(n1, "Dr E", Role.EXPERT, "maths-7")
        (owner,) = owners(nodes, "maths-7")
        for node in nodes:
            running = node.api("GET", "/api/live").json()
            assert [(x["id"], x["participants"]) for x in running] == [("maths-7", 2)]
            shown = node.api("GET", "/api/lessons/maths-7").json()
            assert shown["live"] == {"participants": 2, "waiting": 0}
            live = node.api("GET", "/api/lessons/maths-7/live")
            assert live.status_code == 200 and live.json()["participants"] == 2
        elsewhere = next(n for n in nodes if cluster(n)["node"] != owner)
        # Recording started from a node that does not serve it: everyone is told.
        told = teacher.wait_for(lambda m: m["type"] == "recording_changed")
        started = elsewhere.api("POST", "/api/lessons/maths-7/recording", json={"recording": True})
        assert started.status_code == 200 and started.json()["recording"] is True
        assert (await told)["recording"] is True
        # Ended from a node that does not serve it: its node ends it for everyone.
        byes = [c.wait_for(lambda m: m["type"] == "bye") for c in (teacher, guest)]
        assert elsewhere.api("POST", "/api/lessons/maths-7/end").json()["state"] == "ended"
        for bye in byes:
            assert (await bye)["reason"] == "lesson_ended"
        await wait_until(lambda: not redis_server.keys("lco:lesson:*"))
        with pytest.raises(ConnectionError):
            await joined(n2, "Late", Role.EXPERT, "maths-7")
    finally:
        await teacher.close()


async def test_a_lesson_whose_node_was_killed_is_placed_again_on_a_live_node(
    tmp_path: Path, redis_server: RedisServer, joined: Any
) -> None:
    pair = start_nodes(tmp_path, redis_server, 2)
    try:
        probe = await joined(pair[0], "Probe", Role.OBSERVER, "failover")
        (owner,) = owners(pair, "failover")
        dead = next(n for n in pair if cluster(n)["node"] == owner)
        survivor = next(n for n in pair if n is not dead)
        a = await joined(survivor, "Room A", Role.CLASSROOM, "failover", reconnect=True)
        b = await joined(survivor, "Room B", Role.CLASSROOM, "failover", reconnect=True)
        await a.publish(camera_and_microphone())
        await b.wait_frames(await b.wait_track(a.participant_id or "", "video"), 5)
        old_a = a.participant_id

        back = a.wait_for(lambda m: m["type"] == "welcome", 30)
        killed = time.monotonic()
        dead.process.kill()
        # Both clients hear nothing, reconnect to the survivor, get "unavailable" until
        # the dead node's heartbeat expires, then a new seat on a new owner.
        assert (await back)["participant_id"] != old_a
        track = await b.wait_track(a.participant_id or "", "video", timeout=30)
        await b.wait_frames(track, 5)
        moved = time.monotonic() - killed
        print(f"\nfailover: media again {moved:.2f} s after SIGKILL of the lesson's node")
        assert owners([survivor], "failover") == [cluster(survivor)["node"]]
        assert redis_server.client().get("lco:lesson:failover:owner") == cluster(survivor)["node"]
        await probe.close()
    finally:
        for node in pair:
            stop_server(node)


async def test_a_node_that_finds_its_lesson_owned_elsewhere_sends_its_sockets_there(
    tmp_path: Path, redis_server: RedisServer, joined: Any
) -> None:
    pair = start_nodes(tmp_path, redis_server, 2)
    try:
        a = await joined(pair[0], "Room A", Role.CLASSROOM, "split", reconnect=True)
        b = await joined(pair[1], "Room B", Role.CLASSROOM, "split", reconnect=True)
        (first,) = owners(pair, "split")
        other = next(cluster(n)["node"] for n in pair if cluster(n)["node"] != first)
        backs = [c.wait_for(lambda m: m["type"] == "welcome", 20) for c in (a, b)]
        # As if Redis had lost the key and another node had placed the lesson.
        redis_server.client().set("lco:lesson:split:owner", other, px=5000)
        for back in backs:
            await back
        await wait_until(lambda: owners(pair, "split") == [other])
        assert redis_server.client().get("lco:lesson:split:owner") == other
        assert max(cluster(n)["placement_conflicts"] for n in pair) == 1
        await wait_until(lambda: b.participant_id in a.participants)
        await wait_until(lambda: a.participant_id in b.participants)
    finally:
        for node in pair:
            stop_server(node)


async def test_the_relay_adds_little_to_a_signalling_round_trip(
    tmp_path: Path, redis_server: RedisServer, joined: Any
) -> None:
    pair = start_nodes(tmp_path, redis_server, 2)
    try:
        first = await joined(pair[0], "A", Role.OBSERVER, "rtt")
        (owner,) = owners(pair, "rtt")
        owner_node = next(n for n in pair if cluster(n)["node"] == owner)
        other_node = next(n for n in pair if n is not owner_node)
        direct = (
            first if owner_node is pair[0] else await joined(owner_node, "B", Role.OBSERVER, "rtt")
        )
        relayed = (
            first if other_node is pair[0] else await joined(other_node, "C", Role.OBSERVER, "rtt")
        )
        figures = {}
        for name, client in (("direct", direct), ("relayed", relayed)):
            times = []
            for _ in range(40):  # within the socket's burst of 60 messages
                pong = client.wait_for(lambda m: m["type"] == "pong", 5)
                started = time.perf_counter()
                await client.send(p.Ping())
                await pong
                times.append((time.perf_counter() - started) * 1000)
            times.sort()
            figures[name] = (times[19], times[37])
        print(
            "\nping round trip, ms (p50, p95): "
            + ", ".join(f"{k} {v[0]:.2f} {v[1]:.2f}" for k, v in figures.items())
        )
        assert figures["relayed"][0] < 50
    finally:
        for node in pair:
            stop_server(node)


def test_a_node_refuses_the_name_of_a_live_node(tmp_path: Path, redis_server: RedisServer) -> None:
    (first,) = start_nodes(tmp_path, redis_server, 1)
    try:
        with pytest.raises(RuntimeError, match="in use by a live node"):
            start_nodes(tmp_path, redis_server, 1)
    finally:
        stop_server(first)


async def test_a_whip_publisher_on_another_node_reaches_the_lesson(
    tmp_path: Path, redis_server: RedisServer, joined: Any
) -> None:
    from .test_whip import wait_for_participant, whip_offer

    pair = start_nodes(tmp_path, redis_server, 2)
    try:
        student = await joined(pair[0], "Ana", Role.STUDENT, "trip")
        (owner,) = owners(pair, "trip")
        elsewhere = next(n for n in pair if cluster(n)["node"] != owner)
        token = elsewhere.token("Museum camera", Role.FIELD_TRIP, lesson="trip")
        pc = await whip_offer()
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=elsewhere.http, timeout=30) as http:
            response = await http.post("/whip", content=pc.localDescription.sdp, headers=headers)
            assert response.status_code == 201, response.text
            await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
            camera = await wait_for_participant(student, "Museum camera")
            video = await student.wait_track(camera["id"], "video", timeout=30)
            await student.wait_frames(video, 15)
            assert owners(pair, "trip") == [owner]  # published on the lesson's node
            left = student.wait_for(lambda m: m["type"] == "participant_left")
            ended = await http.delete(response.headers["location"], headers=headers)
            assert ended.status_code == 200
            assert (await left)["participant_id"] == camera["id"]
        await pc.close()
    finally:
        for node in pair:
            stop_server(node)
