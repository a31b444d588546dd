"""A lesson cascaded over two nodes (``--cascade``): real redis-server, real nodes,
real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media.client import LessonClient
from media.sfu import OfferedTrack, SubscribeOffer
from media.viewer import QualityNotice, ReceivedVideo
from server.cascade import decode_notice, encode_notice
from signaling.permissions import Role

from .conftest import RunningServer, start_server, stop_server
from .redis_server import RedisServer
from .test_cluster import camera_and_microphone, owners, start_nodes, wait_until

pytestmark = pytest.mark.usefixtures("decoding_clients")


@pytest.fixture
def two_nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[RunningServer]]:
    running = start_nodes(tmp_path, redis_server, 2, "--cascade")
    yield running
    for node in running:
        stop_server(node)


def cascade(node: RunningServer) -> dict[str, Any]:
    info = node.metrics()["cascade"]
    assert isinstance(info, dict)
    return info


def node_name(node: RunningServer) -> str:
    return str(node.metrics()["cluster"]["node"])


async def teacher_on_the_lessons_node(
    nodes: list[RunningServer], joined: Any, lesson: str = "trip"
) -> tuple[RunningServer, RunningServer, LessonClient]:
    """(the lesson's node, the other node, a teacher whose socket is on the first): a
    first participant places the lesson wherever the nodes' load says, then leaves."""
    # Schools of their own, none of the students' (--cascade-by-school).
    placer = await joined(nodes[0], "Placer", Role.TEACHER, lesson, school="placer")
    (owner_name,) = owners(nodes, lesson)
    owner = next(n for n in nodes if node_name(n) == owner_name)
    home = next(n for n in nodes if n is not owner)
    teacher = await joined(owner, "Ms T", Role.TEACHER, lesson, school="host")
    await placer.close()
    await wait_until(lambda: cascade(owner)["homed_elsewhere"] == 0)
    return owner, home, teacher


def subscriptions(node: RunningServer) -> int:
    """Subscribers of every track this node's SFU forwards (one per copy it sends)."""
    return int(node.metrics()["sfu"]["subscriptions"])


async def test_each_track_crosses_once_to_the_node_of_its_subscribers(
    two_nodes: list[RunningServer], joined: Any
) -> None:
    owner, home, teacher = await teacher_on_the_lessons_node(two_nodes, joined)
    owner_name, home_name = node_name(owner), node_name(home)
    students = [await joined(home, f"Student {i}", Role.STUDENT, "trip") for i in range(3)]
    await teacher.publish(camera_and_microphone())
    teacher_id = teacher.participant_id or ""
    for student in students:
        for kind in ("video", "audio"):
            track = await student.wait_track(teacher_id, kind)
            await student.wait_frames(track, 10)

    # Three students on the other node, two tracks: the lesson's node sends one copy
    # of each there, and that node forwards six.
    assert cascade(owner)["crossing"] == {home_name: 2}
    assert cascade(owner)["homed_elsewhere"] == 3
    assert cascade(home)["upstream"] == {owner_name: 2}
    assert cascade(home)["homed_here"] == 3
    # The teacher subscribes to nothing (the students do not publish).
    assert subscriptions(owner) == 2
    assert subscriptions(home) == 6

    # A student who comes later gets a picture at once: its node asks upstream for a
    # keyframe, which the lesson's node asks of the teacher.
    relayed_before = owner.metrics()["sfu"]["keyframe_requests_relayed"]
    late = await joined(home, "Late", Role.STUDENT, "trip")
    track = await late.wait_track(teacher_id, "video")
    await late.wait_frames(track, 5)
    assert subscriptions(owner) == 2  # still one copy per track
    assert owner.metrics()["sfu"]["keyframe_requests_relayed"] > relayed_before

    # An expert on the other node publishes: its tracks go to the lesson's node (the
    # teacher receives them there) and cross back once for the students.
    expert = await joined(home, "Dr E", Role.EXPERT, "trip")
    await expert.publish(camera_and_microphone())
    eid = expert.participant_id or ""
    for viewer in (teacher, *students, late):
        track = await viewer.wait_track(eid, "video")
        await viewer.wait_frames(track, 5)
    await wait_until(lambda: cascade(owner)["crossing"] == {home_name: 4})

    # When the last subscriber there leaves, nothing crosses any more.
    for client in [*students, late, expert]:
        await client.close()
    await wait_until(lambda: cascade(owner)["crossing"] == {home_name: 0})
    await wait_until(lambda: cascade(home)["upstream"] == {owner_name: 0})
    assert cascade(home)["homed_here"] == 0
    assert subscriptions(owner) == 0 and subscriptions(home) == 0


def test_media_notices_cross_between_nodes_unchanged() -> None:
    offer = SubscribeOffer(
        "v=0\r\n", (OfferedTrack("0", "t-1", "p-1", "video", "camera"),), 7, True
    )
    quality = QualityNotice("low", "network", (ReceivedVideo("t-1", True, 320, 180),))
    assert decode_notice(encode_notice(offer)) == offer
    assert decode_notice(encode_notice(quality)) == quality


def test_cascade_needs_redis(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="--cascade needs --redis"):
        start_server(tmp_path, "--cascade")


async def test_a_student_whose_node_dies_gets_the_lesson_again_through_another(
    two_nodes: list[RunningServer], joined: Any
) -> None:
    owner, home, teacher = await teacher_on_the_lessons_node(two_nodes, joined)
    student = await joined(home, "Student", Role.STUDENT, "trip", reconnect=True)
    # Another student on that node does not come back: its seat is held meanwhile.
    away = await joined(home, "Away", Role.STUDENT, "trip")
    await teacher.publish(camera_and_microphone())
    teacher_id = teacher.participant_id or ""
    before = await student.wait_track(teacher_id, "video")
    await student.wait_frames(before, 5)
    await away.wait_track(teacher_id, "video")
    assert cascade(owner)["homed_elsewhere"] == 2

    # Its node is killed; the student comes back through the lesson's node, which
    # now serves its subscriptions itself, on a new connection.
    received = {kind: student.track_from(teacher_id, kind) for kind in ("video", "audio")}
    student.url = owner.ws
    home.process.kill()
    home.process.wait()
    async with asyncio.timeout(30):
        await student.resumed.wait()
    for kind, old in received.items():
        track = await student.wait_track(teacher_id, kind, timeout=30, replacing=old)
        await student.wait_frames(track, 5)
    # Once the dead node's heartbeat has expired, the lesson's node serves the other
    # student here too, and nothing crosses there any more.
    # (Heartbeats expire after 5 s; two looks 2 s apart must miss the node.)
    await wait_until(lambda: cascade(owner)["homed_elsewhere"] == 0, timeout=30)
    await wait_until(lambda: cascade(owner)["crossing"] == {}, timeout=30)


async def test_two_lessons_cross_both_ways_between_two_nodes(
    two_nodes: list[RunningServer], joined: Any
) -> None:
    """Each node is the lesson's node of one lesson and the home of the other's
    students: tracks cross both ways, each way on a connection of its own."""
    node_a, node_b, teacher_a = await teacher_on_the_lessons_node(two_nodes, joined, "trip")
    await teacher_a.publish(camera_and_microphone())
    # The second lesson goes to the less loaded node: the other one.
    second, first, teacher_b = await teacher_on_the_lessons_node([node_b, node_a], joined, "maths")
    assert second is node_b and first is node_a
    await teacher_b.publish(camera_and_microphone())
    on_b = [await joined(node_b, f"Trip {i}", Role.STUDENT, "trip") for i in range(2)]
    on_a = [await joined(node_a, f"Maths {i}", Role.STUDENT, "maths") for i in range(2)]
    for students, teacher in ((on_b, teacher_a), (on_a, teacher_b)):
        for student in students:
            track = await student.wait_track(teacher.participant_id or "", "video")
            await student.wait_frames(track, 5)
    assert cascade(node_a)["crossing"] == {node_name(node_b): 2}
    assert cascade(node_a)["upstream"] == {node_name(node_b): 2}
    assert cascade(node_b)["crossing"] == {node_name(node_a): 2}
    assert cascade(node_b)["upstream"] == {node_name(node_a): 2}
    # Both ways still take new tracks: an expert of each lesson starts publishing.
    for lesson, node, students in (("trip", node_a, on_b), ("maths", node_b, on_a)):
        expert = await joined(node, f"Dr {lesson}", Role.EXPERT, lesson)
        await expert.publish(camera_and_microphone())
        for student in students:
            track = await student.wait_track(expert.participant_id or "", "video")
            await student.wait_frames(track, 5)
    assert cascade(node_a)["crossing"] == {node_name(node_b): 4}
    assert cascade(node_b)["crossing"] == {node_name(node_a): 4}


@pytest.fixture
def two_school_nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[RunningServer]]:
    running = start_nodes(tmp_path, redis_server, 2, "--cascade-by-school")
    yield running
    for node in running:
        stop_server(node)


async def test_by_school_a_schools_students_are_served_on_one_node(
    two_school_nodes: list[RunningServer], joined: Any
) -> None:
    """With --cascade-by-school the first student of a school decides its node: the
    next ones of that school are served there whatever node their socket came
    through, so the school's copy of each track crosses once."""
    owner, other, teacher = await teacher_on_the_lessons_node(two_school_nodes, joined)
    await teacher.publish(camera_and_microphone())
    first = await joined(other, "North 1", Role.STUDENT, "trip", school="north")
    second = await joined(owner, "North 2", Role.STUDENT, "trip", school="north")
    south = await joined(owner, "South 1", Role.STUDENT, "trip", school="south")
    for student in (first, second, south):
        track = await student.wait_track(teacher.participant_id or "", "video")
        await student.wait_frames(track, 5)
    # Both north students on the other node (one copy of each track crosses), the
    # south student (and the teacher) on the lesson's node.
    assert cascade(owner)["homed_elsewhere"] == 2
    assert cascade(owner)["crossing"] == {node_name(other): 2}
    assert cascade(other)["homed_here"] == 2
    assert subscriptions(other) == 4
    assert subscriptions(owner) == 2 + 2  # the crossing and the south student
