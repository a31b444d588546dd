"""Moderation enforced at the SFU, with a real server and real aiortc peers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from media.client import LessonClient, ReceivedTrack
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling import protocol as p
from signaling.permissions import Role

from .conftest import RunningServer

pytestmark = pytest.mark.usefixtures("decoding_clients")


def muted_counter(server: RunningServer) -> str:
    """What the server counts while muted: RTP packets or (frames path) frames."""
    return "packets_muted" if sfu(server)["forwarding"] == "rtp" else "frames_muted"


def sfu(server: RunningServer) -> dict[str, int]:
    metrics = server.metrics()["sfu"]
    assert isinstance(metrics, dict)
    return metrics


async def server_frames_pass(server: RunningServer, counter: str, count: int) -> None:
    """Wait until the server has counted ``count`` more frames in ``counter``.

    The counter lives in another process: poll its metrics (off the event loop, so
    the clients' media keeps flowing meanwhile).
    """
    target = (await asyncio.to_thread(sfu, server))[counter] + count
    async with asyncio.timeout(15):
        while (await asyncio.to_thread(sfu, server))[counter] < target:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_muted_student_stops_reaching_others_until_allowed_back(
    server: RunningServer, clients: Any
) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "mute")
    room = await clients("Room", Role.CLASSROOM, "mute", "west")
    student = await clients("Ana", Role.STUDENT, "mute")
    sid = student.participant_id or ""
    granted = student.wait_for(lambda m: m["type"] == "permissions_changed")
    await teacher.send(p.GrantPublish(participant_id=sid))
    await granted
    await student.publish([(ToneAudioTrack(), "microphone"), (PatternVideoTrack(), "camera")])
    audio: ReceivedTrack = await room.wait_track(sid, "audio")
    video: ReceivedTrack = await room.wait_track(sid, "video")

    notice = student.wait_for(lambda m: m["type"] == "notice")
    updated = room.wait_for(lambda m: m["type"] == "participant_updated")
    await teacher.send(p.Mute(participant_id=sid, kind="audio"))
    assert (await notice)["code"] == "muted_audio"
    assert (await updated)["participant"]["muted"] == ["audio"]
    # Within a second of the mute (50 Opus frames the server did not forward),
    # whatever was already on its way has arrived; from then on nothing does.
    await server_frames_pass(server, muted_counter(server), 50)
    settled = audio.frames
    await server_frames_pass(server, muted_counter(server), 25)
    assert audio.frames == settled
    await room.wait_frames(video, 5)  # the camera was not muted

    asked = teacher.wait_for(lambda m: m["type"] == "unmute_requested")
    await student.send(p.AskToUnmute(kind="audio"))
    assert (await asked)["participant_id"] == sid
    allowed = student.wait_for(lambda m: m["type"] == "notice")
    await teacher.send(p.AllowUnmute(participant_id=sid, kind="audio"))
    assert (await allowed)["code"] == "unmute_allowed_audio"
    await room.wait_frames(audio, 25)


async def test_mute_all_leaves_the_teacher_audible(server: RunningServer, clients: Any) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "mute-all")
    expert = await clients("Dr E", Role.EXPERT, "mute-all")
    room = await clients("Room", Role.CLASSROOM, "mute-all")
    await teacher.publish([(ToneAudioTrack(), "microphone")])
    await expert.publish([(ToneAudioTrack(), "microphone")])
    teacher_audio = await room.wait_track(teacher.participant_id or "", "audio")
    expert_audio = await room.wait_track(expert.participant_id or "", "audio")
    muted = expert.wait_for(lambda m: m["type"] == "notice")
    await teacher.send(p.MuteAll(kind="audio"))
    await muted
    await server_frames_pass(server, muted_counter(server), 50)
    settled = expert_audio.frames
    await room.wait_frames(teacher_audio, 25)
    assert expert_audio.frames == settled


async def test_a_removed_participant_is_disconnected_and_its_link_refused(
    server: RunningServer, clients: Any
) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "remove")
    link = server.token("Troll", Role.STUDENT, lesson="remove")
    student = await clients("Troll", Role.STUDENT, "remove", token=link)
    left = teacher.wait_for(lambda m: m["type"] == "participant_left")
    await teacher.send(p.Remove(participant_id=student.participant_id or ""))
    await asyncio.wait_for(student.closed.wait(), 10)
    assert student.bye is not None and student.bye["reason"] == "removed"
    assert (await left)["reason"] == "removed"
    again = LessonClient(server.ws, link)
    with pytest.raises(ConnectionError, match="removed"):
        await again.connect()
    await again.close()


async def test_hands_queue_in_order_over_the_wire(server: RunningServer, clients: Any) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "hands")
    people = [
        await clients(name, Role.STUDENT, "hands", school)
        for name, school in (("Ana", "north"), ("Ben", "west"), ("Cy", "south"))
    ]
    for person in (people[1], people[2], people[0]):
        raised = teacher.wait_for(
            lambda m, pid=person.participant_id: (
                m["type"] == "hands_changed" and m["queue"][-1]["participant_id"] == pid
            )
        )
        await person.send(p.RaiseHand())
        await raised
    queue = teacher.wait_for(lambda m: m["type"] == "hands_changed")
    await teacher.send(p.GrantFloor(participant_id=people[2].participant_id or ""))
    remaining = (await queue)["queue"]
    assert [(h["name"], h["school"]) for h in remaining] == [("Ben", "west"), ("Ana", "north")]


async def test_breakout_groups_receive_only_their_groups_media(
    server: RunningServer, clients: Any
) -> None:
    teacher = await clients("Ms T", Role.TEACHER, "breakout")
    rooms = [
        await clients(name, Role.CLASSROOM, "breakout", school)
        for name, school in (("A1", "a"), ("A2", "a"), ("B1", "b"), ("B2", "b"))
    ]
    for room in rooms:
        await room.publish([(ToneAudioTrack(), "microphone")])
    for room in rooms[1:]:
        await rooms[0].wait_track(room.participant_id or "", "audio")
    split = rooms[0].wait_for(lambda m: m["type"] == "lesson_updated" and m["state"]["breakout"])
    await teacher.send(p.StartBreakout(count=2))
    groups: dict[str, list[str]] = (await split)["state"]["groups"]
    group_of = {pid: name for name, members in groups.items() for pid in members}
    assert len(groups) == 2
    a1 = rooms[0]
    for other in rooms[1:]:
        pid = other.participant_id or ""
        track = a1.track_from(pid, "audio")
        assert track is not None
        if group_of[pid] == group_of[a1.participant_id or ""]:
            await a1.wait_frames(track, 10)
        else:
            await asyncio.wait_for(track.ended.wait(), 10)
    # Back together: everyone hears everyone again.
    rejoined = a1.wait_for(lambda m: m["type"] == "lesson_updated" and not m["state"]["breakout"])
    await teacher.send(p.EndBreakout())
    await rejoined
    for other in rooms[1:]:
        pid = other.participant_id or ""
        async with asyncio.timeout(15):
            while (track := a1.track_from(pid, "audio")) is None or track.ended.is_set():
                await a1.wait_for(lambda m: m["type"] == "subscribe_offer")
        await a1.wait_frames(track, 5)


async def test_the_lobby_holds_students_until_admitted_or_denied(
    server: RunningServer, clients: Any
) -> None:
    for method, path, body in (
        ("POST", "/api/communities", {"id": "lobbyland", "name": "Lobby"}),
        ("POST", "/api/communities/lobbyland/schools", {"id": "n1", "name": "N"}),
        ("POST", "/api/communities/lobbyland/schools", {"id": "w1", "name": "W"}),
        (
            "POST",
            "/api/lessons",
            {
                "id": "lobby-lesson",
                "community_id": "lobbyland",
                "title": "Lobby",
                "host_teacher": "Ms T",
                "host_school": "n1",
                "starts_at": "2026-12-01T09:00:00Z",
                "ends_at": "2026-12-01T10:00:00Z",
                "invited_schools": ["w1"],
                "settings": {"lobby": True},
            },
        ),
    ):
        assert server.api(method, path, json=body).status_code == 201
    teacher = await clients("Ms T", Role.TEACHER, "lobby-lesson", "n1")
    await teacher.publish([(PatternVideoTrack(), "camera")])
    invited_room = await clients("Room W", Role.CLASSROOM, "lobby-lesson", "w1")
    assert invited_room.welcome is not None  # invited classrooms skip the lobby

    lobby = teacher.wait_for(lambda m: m["type"] == "lobby_changed" and m["added"])
    ana = await clients("Ana", Role.STUDENT, "lobby-lesson", "w1")
    assert ana.welcome is None and ana.participant_id is not None
    waiting = (await lobby)["added"]
    assert [x["name"] for x in waiting] == ["Ana"]
    refused = ana.wait_for(lambda m: m["type"] == "error")
    await ana.send(p.RaiseHand())
    assert (await refused)["code"] == "in_lobby"

    await teacher.send(p.Admit(participant_id=ana.participant_id))
    welcome = await ana.admitted()
    assert [x["name"] for x in welcome["participants"]] == ["Ms T", "Room W"]
    await ana.wait_track(teacher.participant_id or "", "video")

    eve = await clients("Eve", Role.STUDENT, "lobby-lesson", "w1")
    await teacher.send(p.Deny(participant_id=eve.participant_id or ""))
    with pytest.raises(ConnectionError, match="did not let you in"):
        await eve.admitted()
    attendance = server.api("GET", "/api/lessons/lobby-lesson/attendance").json()
    by_name = {row["name"]: row for row in attendance["participants"]}
    assert by_name["Eve"]["denied"] and by_name["Eve"]["sessions"] == 0
    assert [e["kind"] for e in by_name["Ana"]["events"]] == ["waiting", "admitted", "joined"]
