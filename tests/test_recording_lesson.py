"""Recording a lesson of real aiortc peers through ``lco serve`` (both forwarding paths).


A teacher's desk camera, a classroom and an expert publish camera and microphone
(each an ``lco publish`` process); a delegate
of the expert's school declines recording; an observer receives everything and
counts the frames forwarded to it. The teacher records about 20 s with a mute of
the classroom's camera in the middle; the files are decoded with PyAV.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from signaling import protocol as p
from signaling.permissions import Role

from .conftest import RunningServer, lco, lco_publish, start_server, stop_server

pytestmark = pytest.mark.usefixtures("decoding_clients")

RECORD_SECONDS = 20.0


@pytest.fixture(scope="module", params=["rtp", "frames"])
def server(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("rec"), "--forwarding", request.param)
    yield running
    stop_server(running)


def decode(path: Path) -> tuple[int, int, float]:
    """Decoded video frames (or audio 20 ms frames), frames the decoder refused, and
    how long they play: from the first timestamp to the end of the last frame (a
    video frame shows for 1/15 s)."""
    with av.open(str(path)) as container:
        stream = container.streams[0]
        count, refused, first, last = 0, 0, None, 0.0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                # Written as forwarded: a frame that the publisher's hop damaged (the
                # subscribers' decoders refuse it too).
                refused += 1
                continue
            for frame in frames:
                assert frame.pts is not None and frame.time_base is not None
                at = float(frame.pts * frame.time_base)
                first = at if first is None else first
                audio = stream.type == "audio"
                last = at + (frame.samples / frame.sample_rate if audio else 1 / 15)
                count += round(frame.samples / 960) if audio else 1
        return count, refused, last - (first or 0.0)


def composed_layouts(path: Path) -> tuple[list[str], float, float]:
    """Per frame: "pair" when the top rows are black (two pictures side by side,
    letterboxed), "single" when not, "empty" when all is black; the duration;
    seconds of audio."""
    layouts: list[str] = []
    sound = 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            plane = bytes(frame.planes[0])
            top = plane[20 * frame.planes[0].line_size :][:640]
            middle = plane[180 * frame.planes[0].line_size :][:640]
            if sum(middle) / 640 < 24:
                layouts.append("empty")  # before the first keyframe of what is shown
            else:
                layouts.append("pair" if sum(top) / 640 < 24 else "single")
        duration = len(layouts) / 15
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            sound += frame.samples / frame.sample_rate
    return layouts, duration, sound


async def test_a_recorded_lesson_has_a_file_per_track_and_a_timeline(
    server: RunningServer, clients: Any
) -> None:
    lesson = "recorded"
    teacher = await clients("Ms T", Role.TEACHER, lesson, "north")
    delegate = await clients("South office", Role.DELEGATE, lesson, "south")
    observer = await clients("Inspector", Role.OBSERVER, lesson, "north")
    # The cameras: the teacher's desk camera, a classroom and a guest expert, each an
    # ``lco publish`` process of its own, so that their media clocks keep to the wall
    # clock however busy this test's process is.
    cameras: list[asyncio.subprocess.Process] = []
    try:
        ids = []
        for name, role, school in (
            ("Ms T desk", Role.TEACHER, "north"),
            ("Room 4", Role.CLASSROOM, "west"),
            ("Dr E", Role.EXPERT, "south"),
        ):
            joined = observer.wait_for(
                lambda m, name=name: (
                    m["type"] == "participant_joined" and m["participant"]["name"] == name
                ),
                30,
            )
            cameras.append(await start_camera(server, lesson, name, role, school))
            ids.append((await joined)["participant"]["id"])
        await record_lesson(server, lesson, teacher, delegate, observer, *ids)
    finally:
        for camera in cameras:
            camera.terminate()
            await camera.wait()


async def start_camera(
    server: RunningServer, lesson: str, name: str, role: Role, school: str
) -> asyncio.subprocess.Process:
    token = server.token(name, role, lesson=lesson, school=school)
    return await asyncio.create_subprocess_exec(
        *lco_publish(server.http, token, "--source", "test-pattern", "--ice-host", "127.0.0.1"),
        stdout=asyncio.subprocess.DEVNULL,
    )


async def record_lesson(
    server: RunningServer,
    lesson: str,
    teacher: Any,
    delegate: Any,
    observer: Any,
    desk_id: str,
    classroom_id: str,
    expert_id: str,
) -> None:
    for publisher in (desk_id, classroom_id, expert_id):
        for kind in ("video", "audio"):
            await observer.wait_track(publisher, kind, timeout=30)

    declined = delegate.wait_for(lambda m: m["type"] == "lesson_updated")
    await delegate.send(p.DeclineRecording())
    assert (await declined)["state"]["recording_declined"] == ["south"]

    # Every participant is told when recording starts (the page shows a notice).
    notices = [
        c.wait_for(lambda m: m["type"] == "recording_changed" and m["recording"])
        for c in (teacher, delegate, observer)
    ]
    await teacher.send(p.StartRecording())
    for notice in notices:
        message = await notice
        assert message["by"] == "Ms T" and message["declined_schools"] == ["south"]
    started = time.monotonic()
    at_start = {key: track.frames for key, track in observer.received.items()}
    # The publishers' media clocks: on a busy machine a camera process falls behind
    # the wall clock, and its files hold what it sent, not the wall clock's time.
    media_at_start = {key: track.media_time for key, track in observer.received.items()}

    # The classroom's camera is muted for 4 s in the middle.
    video_of_classroom = observer.track_from(classroom_id, "video")
    assert video_of_classroom is not None
    await observer.wait_frames(video_of_classroom, 120, timeout=30)  # 8 s at 15 fps
    await teacher.send(p.Mute(participant_id=classroom_id, kind="video"))
    # The director puts the teacher beside the classroom, later the classroom alone.
    pair = p.Stage(
        items=[
            p.StageItem(participant_id=desk_id, source="camera"),
            p.StageItem(participant_id=classroom_id, source="camera"),
        ]
    )
    await teacher.send(p.DirectStage(stage=pair))
    teacher_video = observer.track_from(desk_id, "video")
    assert teacher_video is not None
    await observer.wait_frames(teacher_video, 60, timeout=30)  # 4 s
    await teacher.send(p.AllowUnmute(participant_id=classroom_id, kind="video"))
    await observer.wait_frames(teacher_video, 45, timeout=30)  # 3 s
    alone = p.Stage(items=[p.StageItem(participant_id=classroom_id)])
    await teacher.send(p.DirectStage(stage=alone))
    # Until about 20 s have passed, on the teacher's frames.
    remaining = RECORD_SECONDS - (time.monotonic() - started)
    await observer.wait_frames(teacher_video, int(remaining * 15), timeout=40)

    stopped = teacher.wait_for(lambda m: m["type"] == "recording_changed" and not m["recording"])
    await teacher.send(p.StopRecording())
    assert (await stopped)["reason"] == "stopped by Ms T"
    lesson_seconds = time.monotonic() - started
    media = {
        key: track.media_time - media_at_start[key] for key, track in observer.received.items()
    }
    forwarded = {
        key: track.frames - at_start.get(key, 0) for key, track in observer.received.items()
    }

    listing = server.api("GET", f"/api/lessons/{lesson}/recordings", key=teacher.token)
    assert listing.status_code == 200, listing.text
    [recording] = listing.json()
    manifest = recording["manifest"]
    assert manifest["stop_reason"] == "stopped by Ms T"
    assert manifest["declined_schools"] == ["south"]
    tracks = {t["track_id"]: t for t in manifest["tracks"]}
    files = {f["name"]: f for f in recording["files"]}
    directory = server.data_dir / "recordings" / lesson / recording["id"]
    assert directory.stat().st_mode & 0o777 == 0o700

    for publisher in (desk_id, classroom_id, expert_id):
        for kind in ("video", "audio"):
            received = observer.track_from(publisher, kind)
            assert received is not None
            entry = tracks[received.track_id]
            if publisher == expert_id:
                # The school declined: no file, and the manifest says why.
                assert entry["file"] is None
                assert entry["status"] == "not recorded: the school declined recording"
                assert not any(name.startswith(received.track_id) for name in files)
                continue
            assert entry["file"] in files, entry
            path = directory / entry["file"]
            assert path.stat().st_mode & 0o777 == 0o600
            count, refused, duration = decode(path)
            assert count + refused == entry["frames_written"]
            assert refused <= 0.01 * count
            # The file lasts what the camera sent during the lesson, within 0.5 s,
            # less the wait for its first keyframe (asked for at once; later on a
            # loaded machine, where the camera's own clock also falls behind).
            assert entry["first_frame_at"] < 1.0
            sent = media[received.track_id]
            assert abs(sent - lesson_seconds) < 2.0
            assert sent - entry["first_frame_at"] - 0.5 < duration < sent + 0.5, (
                {
                    k: entry.get(k)
                    for k in ("kind", "first_frame_at", "ended_at", "frames_discarded")
                },
                duration,
                sent,
                lesson_seconds,
            )
            if kind == "video":
                # What was forwarded to the observer from the moment the file began
                # (its first keyframe came first_frame_at seconds into the recording).
                frames_sent = forwarded[received.track_id] - round(entry["first_frame_at"] * 15)
                assert abs(count - frames_sent) <= 0.02 * frames_sent, (entry, count, frames_sent)
            assert entry["packets_dropped"] == 0

    events = [(e["event"], e.get("track_id")) for e in manifest["timeline"]]
    assert ("muted", video_of_classroom.track_id) in events
    assert ("unmuted", video_of_classroom.track_id) in events
    assert events.index(("muted", video_of_classroom.track_id)) < events.index(
        ("unmuted", video_of_classroom.track_id)
    )

    # The stage over time, composed into one file: the teacher alone (no director
    # yet), the pair, then the classroom alone.
    changes = [e["t"] for e in manifest["timeline"] if e["event"] == "stage"]
    assert len(changes) == 3
    composed = directory.parent / "composed.webm"
    process = await asyncio.create_subprocess_exec(
        *lco("recording", "compose", lesson, "--data-dir", str(server.data_dir)),
        *("--output", str(composed)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err
    assert b"composing: 100.0 %" in err  # the progress display
    layouts, duration, sound = composed_layouts(composed)
    assert abs(duration - lesson_seconds) < 0.5
    assert abs(len(layouts) - duration * 15) <= 2
    assert sound > 0.9 * duration
    assert layouts.index("single") < 15  # the teacher's first keyframe came within 1 s
    assert "empty" not in layouts[15:]
    shown = [x for x in layouts if x != "empty"]
    seen = [layout for i, layout in enumerate(shown) if i == 0 or shown[i - 1] != layout]
    assert seen == ["single", "pair", "single"], seen
    switches = [i / 15 for i in range(16, len(layouts)) if layouts[i] != layouts[i - 1]]
    for switch, change in zip(switches, changes[1:], strict=True):
        assert abs(switch - change) <= 2 / 15, (switches, changes)

    # A file plays from a signed link, with ranges, without credentials.
    some = next(f for f in recording["files"] if f["name"].endswith((".webm", ".mkv")))
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        ranged = await http.get(some["url"], headers={"Range": "bytes=0-99"})
        tampered = await http.get(some["url"].replace("sig=", "sig=0"))
    assert ranged.status_code == 206 and len(ranged.content) == 100
    assert tampered.status_code == 401
    # Deleting needs the lesson's teacher or the operator.
    other = server.token("Other", Role.TEACHER, lesson="another")
    assert (
        server.api("DELETE", f"/api/lessons/{lesson}/recordings/{recording['id']}", key=other)
    ).status_code == 403
    assert (
        server.api("DELETE", f"/api/lessons/{lesson}/recordings/{recording['id']}")
    ).status_code == 204
    assert server.api("GET", f"/api/lessons/{lesson}/recordings").json() == []
