"""A lesson cascaded over two nodes (``--cascade``): real redis-server, real nodes,
real aiortc peers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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


def subscriptions(node: RunningServer) -> int:
    """Subscribers of every track this node's SFU forwards (one per copy it sends)."""
    return int(node.metrics()["sfu"]["subscriptions"])


async def test_each_track_crosses_once_to_the_node_of_its_subscribers(
    two_nodes: list[RunningServer], joined: Any
) -> None:
    teacher = await joined(two_nodes[0], "Ms T", Role.TEACHER, "trip")
    (owner_name,) = owners(two_nodes, "trip")
    owner = next(n for n in two_nodes if n.metrics()["cluster"]["node"] == owner_name)
    home = next(n for n in two_nodes if n is not owner)
    home_name = home.metrics()["cluster"]["node"]
    students = [await joined(home, f"Student {i}", Role.STUDENT, "trip") for i in range(3)]
    await teacher.publish(camera_and_microphone())
    teacher_id = teacher.participant_id or ""
    for student in students:
        for kind in ("video", "audio"):
            track = await student.wait_track(teacher_id, kind)
            await student.wait_frames(track, 10)

    # Three students on the other node, two tracks: the lesson's node sends one copy
    # of each there, and that node forwards six.
    crossing = cascade(owner)["crossing"]
    assert crossing == {home_name: 2}
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
