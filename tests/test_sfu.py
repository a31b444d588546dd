"""End to end: a real server process and real aiortc peers over loopback.

The test process decodes what it receives (proof the forwarded media is valid);
the server must have decoded and encoded nothing.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiortc.rtp import is_rtcp
from aiortc.sdp import SessionDescription

from media.client import LessonClient
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling import protocol as p
from signaling.permissions import Role

from .conftest import RunningServer, start_server, stop_server

pytestmark = pytest.mark.usefixtures("decoding_clients")


@pytest.fixture(scope="module", params=["rtp", "frames"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The server under test, once per forwarding path (RTP packets, or frames)."""
    running = start_server(tmp_path_factory.mktemp("sfu"), "--forwarding", request.param)
    yield running
    stop_server(running)


def camera_and_microphone() -> list[tuple[Any, p.Source]]:
    return [(PatternVideoTrack(), "camera"), (ToneAudioTrack(), "microphone")]


def sfu_metrics(server: RunningServer) -> dict[str, int]:
    sfu = server.metrics()["sfu"]
    assert isinstance(sfu, dict)
    return sfu


async def test_a_teacher_reaches_students_and_a_classroom_without_transcoding(
    server: RunningServer, clients: Any
) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "fanout")
    watchers = [
        await clients("Ana", Role.STUDENT, "fanout", "south"),
        await clients("Ben", Role.STUDENT, "fanout", "east"),
        await clients("Room 4", Role.CLASSROOM, "fanout", "west"),
    ]
    reply = await teacher.publish(camera_and_microphone())
    assert reply["type"] == "publish_answer"
    for watcher in watchers:
        video = await watcher.wait_track(teacher.participant_id or "", "video")
        audio = await watcher.wait_track(teacher.participant_id or "", "audio")
        assert (video.width, video.height) == (320, 240)
        assert video.source == "camera" and audio.source == "microphone"
    # Keep receiving: frames keep arriving, decodable, on every subscriber.
    for watcher in watchers:
        video = watcher.track_from(teacher.participant_id or "", "video")
        assert video is not None
        await watcher.wait_frames(video, 10)
    metrics = sfu_metrics(server)
    assert metrics["frames_decoded"] == 0
    assert metrics["frames_encoded"] == 0
    if metrics["forwarding"] == "rtp":
        assert metrics["packets_forwarded"] > 0
    else:
        assert metrics["frames_packed"] > 0 and metrics["frames_passed_through"] > 0


async def test_a_late_joiner_gets_video_after_a_relayed_keyframe_request(
    server: RunningServer, clients: Any
) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "late")
    early = await clients("Early", Role.CLASSROOM, "late")
    await teacher.publish(camera_and_microphone())
    await early.wait_track(teacher.participant_id or "", "video")
    relayed_before = sfu_metrics(server)["keyframe_requests_relayed"]
    late = await clients("Late", Role.STUDENT, "late")
    assert [x["id"] for x in late.welcome["participants"]] == [  # type: ignore[index]
        teacher.participant_id,
        early.participant_id,
    ]
    video = await late.wait_track(teacher.participant_id or "", "video", timeout=10)
    assert video.frames >= 1
    assert sfu_metrics(server)["keyframe_requests_relayed"] > relayed_before


async def test_when_the_teacher_leaves_tracks_end_and_the_list_updates(
    server: RunningServer, clients: Any
) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "leave")
    room = await clients("Room", Role.CLASSROOM, "leave")
    await teacher.publish(camera_and_microphone())
    video = await room.wait_track(teacher.participant_id or "", "video")
    audio = await room.wait_track(teacher.participant_id or "", "audio")
    left = room.wait_for(lambda m: m["type"] == "participant_left")
    await teacher.close()
    message = await left
    assert message["participant_id"] == teacher.participant_id
    await asyncio.wait_for(video.ended.wait(), 10)
    await asyncio.wait_for(audio.ended.wait(), 10)
    assert teacher.participant_id not in room.participants


async def test_a_student_publishes_only_with_a_grant_and_revocation_stops_it(
    server: RunningServer, clients: Any
) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "grant")
    student = await clients("Ana", Role.STUDENT, "grant")
    refused = await student.publish([(ToneAudioTrack(), "microphone")])
    assert refused["type"] == "error" and refused["code"] == "forbidden"
    assert "until the teacher allows it" in refused["message"]
    await student.close()

    student = await clients("Ana", Role.STUDENT, "grant")
    granted = student.wait_for(lambda m: m["type"] == "permissions_changed")
    await teacher.send(p.GrantPublish(participant_id=student.participant_id or ""))
    assert "publish" in (await granted)["permissions"]
    reply = await student.publish(camera_and_microphone())
    assert reply["type"] == "publish_answer"
    video = await teacher.wait_track(student.participant_id or "", "video")
    audio = await teacher.wait_track(student.participant_id or "", "audio")

    unpublished = teacher.wait_for(lambda m: m["type"] == "track_unpublished")
    await teacher.send(p.RevokePublish(participant_id=student.participant_id or ""))
    message = await unpublished
    assert message["participant_id"] == student.participant_id
    assert message["reason"] == "publishing revoked"
    await asyncio.wait_for(video.ended.wait(), 10)
    await asyncio.wait_for(audio.ended.wait(), 10)
    assert sfu_metrics(server)["forwarded_tracks"] == 0 or all(
        t.participant_id != student.participant_id
        for t in teacher.received.values()
        if not t.ended.is_set()
    )
    refused_again = student.wait_for(lambda m: m["type"] == "error")
    await student.send(json.dumps({"v": 1, "type": "publish_offer", "sdp": "v=0", "tracks": []}))
    assert (await refused_again)["code"] == "forbidden"


async def test_join_and_leave_cycles_leak_nothing(server: RunningServer, clients: Any) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "cycles")
    await teacher.publish(camera_and_microphone())

    async def cycle() -> None:
        student = LessonClient(server.ws, server.token("S", Role.STUDENT, lesson="cycles"))
        await student.connect()
        await student.wait_track(teacher.participant_id or "", "video")
        left = teacher.wait_for(lambda m: m["type"] == "participant_left")
        await student.close()
        await left

    await cycle()  # warm up lazily created pools and caches
    before = server.metrics()
    for _ in range(20):
        await cycle()
    after = server.metrics()
    for resource in ("asyncio_tasks", "threads", "open_fds", "connections", "bus_topics"):
        assert after[resource] == before[resource], resource
    assert after["sfu"]["subscriptions"] == before["sfu"]["subscriptions"]  # type: ignore[index]
    assert after["sfu"]["peer_connections"] == before["sfu"]["peer_connections"]  # type: ignore[index]


def rtx_payload_types(sdp: str) -> set[int]:
    description = SessionDescription.parse(sdp)
    return {c.payloadType for m in description.media for c in m.rtp.codecs if c.name == "rtx"}


def video_transport(pc: Any) -> Any:
    (transceiver,) = [t for t in pc.getTransceivers() if t.kind == "video"]
    return transceiver.sender.transport


async def test_lost_packets_are_recovered_with_nack_and_rtx_on_each_hop(
    server: RunningServer, clients: Any
) -> None:
    """Drop every 15th video packet on each hop; both hops must retransmit them."""
    teacher = await clients("Ms T", Role.TEACHER, "nack")
    room = await clients("Room", Role.CLASSROOM, "nack")
    await teacher.publish([(PatternVideoTrack(), "camera")])
    video = await room.wait_track(teacher.participant_id or "", "video")

    # Hop 1, publisher -> server: drop outgoing first transmissions, count RTX sent.
    publish_transport = video_transport(teacher.publish_pc)
    publish_rtx = rtx_payload_types(teacher.publish_pc.remoteDescription.sdp)  # type: ignore[union-attr]
    sent = {"media": 0, "rtx": 0}
    send_rtp = publish_transport._send_rtp

    async def lossy_send(data: bytes) -> None:
        if not is_rtcp(data):
            payload_type = data[1] & 0x7F
            if payload_type in publish_rtx:
                sent["rtx"] += 1
            else:
                sent["media"] += 1
                if sent["media"] % 15 == 0:
                    return
        await send_rtp(data)

    publish_transport._send_rtp = lossy_send

    # Hop 2, server -> subscriber: drop incoming first transmissions, count RTX received.
    subscribe_transport = video_transport(room.subscribe_pc)
    subscribe_rtx = rtx_payload_types(room.subscribe_pc.remoteDescription.sdp)  # type: ignore[union-attr]
    received = {"media": 0, "rtx": 0}
    handle_rtp = subscribe_transport._handle_rtp_data

    async def lossy_receive(data: bytes, arrival_time_ms: int) -> None:
        payload_type = data[1] & 0x7F
        if payload_type in subscribe_rtx:
            received["rtx"] += 1
        else:
            received["media"] += 1
            if received["media"] % 15 == 0:
                return
        await handle_rtp(data, arrival_time_ms)

    subscribe_transport._handle_rtp_data = lossy_receive

    await room.wait_frames(video, 45, timeout=20)
    assert sent["rtx"] > 0, "the server never NACKed the publisher's lost packets"
    assert received["rtx"] > 0, "the server never retransmitted the subscriber's lost packets"


async def test_sigterm_tells_everyone_and_closes_peer_connections(
    tmp_path: Path, clients: Any
) -> None:
    own = start_server(tmp_path)
    try:
        teacher = LessonClient(own.ws, own.token("T", Role.TEACHER, lesson="stop"))
        room = LessonClient(own.ws, own.token("R", Role.CLASSROOM, lesson="stop"))
        for client in (teacher, room):
            await client.connect()
        await teacher.publish(camera_and_microphone())
        video = await room.wait_track(teacher.participant_id or "", "video")
        byes = [c.wait_for(lambda m: m["type"] == "bye") for c in (teacher, room)]
        own.process.send_signal(signal.SIGTERM)
        for bye in byes:
            assert (await bye)["reason"] == "server_shutdown"
        await asyncio.wait_for(video.ended.wait(), 10)
        for client in (teacher, room):
            await asyncio.wait_for(client.closed.wait(), 10)
            await client.close()
        assert await asyncio.to_thread(own.process.wait, 15) in (0, -signal.SIGTERM)
        assert "all participants told; peer connections closed" in own.log()
    finally:
        stop_server(own)


async def test_a_late_joiner_receives_every_track_offered_at_once(
    server: RunningServer, clients: Any
) -> None:
    """Two videos and two audios in the first subscribe offer: each must get a live transport.

    With aiortc's default "balanced" bundle policy the second video transceiver of
    one offer kept a transport that BUNDLE then discarded, and its media never
    flowed; peer connections use max-bundle.
    """
    teacher = await clients("Ms T", Role.TEACHER, "two-videos")
    expert = await clients("Dr E", Role.EXPERT, "two-videos")
    await teacher.publish(camera_and_microphone())
    await expert.publish(camera_and_microphone())
    await teacher.wait_track(expert.participant_id or "", "video")
    late = await clients("Late", Role.CLASSROOM, "two-videos")
    for publisher in (teacher, expert):
        for kind in ("video", "audio"):
            track = await late.wait_track(publisher.participant_id or "", kind)
            await late.wait_frames(track, 5)


async def test_h264_is_forwarded_when_the_publisher_offers_only_h264(
    server: RunningServer, clients: Any
) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "h264")
    room = await clients("Room", Role.CLASSROOM, "h264")
    reply = await teacher.publish([(PatternVideoTrack(), "camera")], video_codec="H264")
    assert reply["type"] == "publish_answer" and "H264" in reply["sdp"]
    video = await room.wait_track(teacher.participant_id or "", "video")
    await room.wait_frames(video, 10)
    assert (video.width, video.height) == (320, 240)
    assert room.subscribe_pc is not None
    assert "H264" in (room.subscribe_pc.remoteDescription.sdp or "")
    metrics = sfu_metrics(server)
    assert metrics["frames_decoded"] == 0 and metrics["frames_encoded"] == 0


def media_sections(sdp: str) -> int:
    return sum(1 for line in sdp.splitlines() if line.startswith("m="))


async def test_a_participant_stays_while_a_hundred_publishers_come_and_go(
    server: RunningServer, clients: Any
) -> None:
    """aiortc never reuses an m-line: unless the SFU does, the subscribe SDP grows with
    every track that ever came and went, until it no longer fits a message."""
    room = await clients("Room", Role.CLASSROOM, "churn")
    offers: list[int] = []
    original = room._answer_subscribe_offer

    async def counting(message: dict[str, Any]) -> None:
        offers.append(media_sections(message["sdp"]))
        await original(message)

    room._answer_subscribe_offer = counting  # type: ignore[method-assign]
    for number in range(100):
        guest = LessonClient(server.ws, server.token(f"G{number}", Role.EXPERT, lesson="churn"))
        await guest.connect()
        offered = room.wait_for(
            lambda m, g=guest: (
                m["type"] == "subscribe_offer"
                and any(t["participant_id"] == g.participant_id for t in m["tracks"])
            )
        )
        await guest.publish(camera_and_microphone())
        await offered
        if number % 25 == 0:  # now and then, media really flows on a reused m-line
            await room.wait_track(guest.participant_id or "", "video")
        left = room.wait_for(lambda m: m["type"] == "participant_left")
        await guest.close()
        await left
    last = await clients("Last", Role.EXPERT, "churn")
    await last.publish(camera_and_microphone())
    for kind in ("video", "audio"):
        track = await room.wait_track(last.participant_id or "", kind)
        await room.wait_frames(track, 5)
    assert not room.errors
    # At most a guest's two tracks plus two being freed at any time: bounded, not 200.
    assert max(offers) <= 4, offers


async def test_a_publish_offer_with_more_media_sections_than_allowed_is_refused(
    server: RunningServer, clients: Any
) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "m-lines")
    room = await clients("Room", Role.CLASSROOM, "m-lines")
    sources: list[p.Source] = ["camera", "microphone", "screen", "screen_audio"]
    tracks = [
        (PatternVideoTrack() if n % 2 == 0 else ToneAudioTrack(), sources[n % 4])
        for n in range(p.MAX_PUBLISHED_TRACKS + 1)
    ]
    refused = await teacher.publish(tracks)  # type: ignore[arg-type]
    assert refused["type"] == "error" and refused["code"] == "too_many_tracks"
    assert str(p.MAX_PUBLISHED_TRACKS) in refused["message"]
    assert sfu_metrics(server)["forwarded_tracks"] == 0 or not any(
        t.participant_id == teacher.participant_id for t in room.received.values()
    )
    # The socket and the lesson go on: the same participant publishes what it may.
    allowed = LessonClient(server.ws, server.token("Ms T", Role.TEACHER, lesson="m-lines"))
    await allowed.connect()
    assert (await allowed.publish(camera_and_microphone()))["type"] == "publish_answer"
    await room.wait_track(allowed.participant_id or "", "video")
    await allowed.close()


async def test_a_subscribe_offer_left_unanswered_closes_that_connection_only(
    tmp_path: Path,
) -> None:
    own = start_server(tmp_path, "--negotiation-timeout", "1")
    try:
        teacher = LessonClient(own.ws, own.token("T", Role.TEACHER, lesson="mute-client"))
        silent = LessonClient(own.ws, own.token("S", Role.CLASSROOM, lesson="mute-client"))
        room = LessonClient(own.ws, own.token("R", Role.CLASSROOM, lesson="mute-client"))
        for client in (teacher, silent, room):
            await client.connect()

        answer = silent._answer_subscribe_offer

        async def never_answer(message: dict[str, Any]) -> None:
            return None

        silent._answer_subscribe_offer = never_answer  # type: ignore[method-assign]
        bye = silent.wait_for(lambda m: m["type"] == "bye", timeout=15)
        await teacher.publish(camera_and_microphone())
        assert (await bye)["reason"] == "negotiation_failed"
        video = await room.wait_track(teacher.participant_id or "", "video")
        await room.wait_frames(video, 5)  # everyone else goes on
        # It comes back (a client that answers now): the same offer would be stuck
        # again, so its media comes on a new subscribe connection.
        silent._answer_subscribe_offer = answer  # type: ignore[method-assign]
        again = LessonClient(own.ws, silent.token)  # the same link
        again.subscribe_pc = silent.subscribe_pc  # as if it had kept its connection
        offered = again.wait_for(lambda m: m["type"] == "subscribe_offer")
        welcome = await again._open(resume=True)
        assert welcome["resumed"] and (await offered)["new_connection"]
        video = await again.wait_track(teacher.participant_id or "", "video")
        await again.wait_frames(video, 5)
        # What it receives on the new connection still follows what it asks for.
        audio = await again.wait_track(teacher.participant_id or "", "audio")
        told = again.wait_for(
            lambda m: m["type"] == "receive_quality" and m["level"] == "audio_only"
        )
        await again.receive_settings("audio_only")
        await told
        frames = video.frames
        await again.wait_frames(audio, 50)  # a second of audio ...
        assert video.frames <= frames + 2  # ... and no more video than was in flight
        for client in (teacher, silent, room, again):
            await client.close()
    finally:
        stop_server(own)
