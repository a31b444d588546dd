"""Seats end to end: a real ``lco serve`` and real aiortc peers.

A participant's socket goes (dropped, silent, replaced) and its link takes the seat
back: same id, same decisions, same peer connections with their ICE restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from media import hooks
from media.client import LessonClient
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling import protocol as p
from signaling.permissions import Role

from .conftest import RunningServer, start_server, stop_server
from .test_hooks import silence
from .test_limits import CHATTY, chatty_server, schedule_lobby_lesson  # noqa: F401

pytestmark = pytest.mark.usefixtures("decoding_clients")

GRACE = 3  # seconds: the seat grace of this module's own server


@pytest.fixture(scope="module")
def short_grace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("grace"), "--seat-grace", str(GRACE))
    yield running
    stop_server(running)


def camera_and_microphone() -> list[tuple[Any, p.Source]]:
    return [(PatternVideoTrack(), "camera"), (ToneAudioTrack(), "microphone")]


def sfu(server: RunningServer) -> dict[str, int]:
    metrics = server.metrics()["sfu"]
    assert isinstance(metrics, dict)
    return metrics


def held_seats(server: RunningServer) -> tuple[object, float]:
    """Seats held for a reconnect, as /metrics.json and Prometheus's /metrics say it."""
    text = httpx.get(f"{server.http}/metrics", timeout=5).text
    (prometheus,) = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "lco_seats_held"
    ]
    return server.metrics()["held_seats"], prometheus


class SilentableProxy:
    """A TCP proxy in front of the server whose open connections can go silent: it
    stops carrying bytes either way, closing nothing (a network that went quiet)."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._flows: list[tuple[asyncio.Event, list[asyncio.StreamWriter]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SilentableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        for _, writers in self._flows:
            for writer in writers:
                writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    def go_silent(self) -> None:
        """Every connection open now carries nothing more; later ones work."""
        for flowing, _ in self._flows:
            flowing.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        flowing = asyncio.Event()
        flowing.set()
        self._flows.append((flowing, [writer, up_writer]))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, flowing))
            self._tasks.add(task)

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, flowing: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await source.read(65536):
                await flowing.wait()  # silent: hold the bytes, tell nobody
                sink.write(data)
                await sink.drain()


@pytest.fixture
async def joined(server: RunningServer) -> AsyncIterator[Any]:
    opened: list[LessonClient] = []

    async def join(
        name: str, role: Role, lesson: str, url: str | None = None, **options: Any
    ) -> LessonClient:
        client = LessonClient(url or server.ws, server.token(name, role, lesson=lesson), **options)
        await client.connect()
        opened.append(client)
        return client

    yield join
    for client in opened:
        await client.close()


# --- a socket that goes, and comes back --------------------------------------------


async def test_a_dropped_socket_takes_its_seat_back_with_its_media(
    server: RunningServer, joined: Any
) -> None:
    teacher = await joined("Ms T", Role.TEACHER, "drop")
    room = await joined("Room", Role.CLASSROOM, "drop", reconnect=True)
    await teacher.publish(camera_and_microphone())
    await room.publish(camera_and_microphone())
    video = await room.wait_track(teacher.participant_id or "", "video")
    room_video = await teacher.wait_track(room.participant_id or "", "video")
    seat = room.participant_id
    publish_pc, subscribe_pc = room.publish_pc, room.subscribe_pc
    seen: list[str] = []
    watching = asyncio.ensure_future(
        teacher.wait_for(lambda m: seen.append(m["type"]) is not None, timeout=60)
    )
    gone = teacher.wait_for(lambda m: m["type"] == "participant_disconnected")
    back = teacher.wait_for(lambda m: m["type"] == "participant_reconnected")
    await room.drop()
    assert (await gone)["participant_id"] == seat
    assert (await back)["participant_id"] == seat
    await asyncio.wait_for(room.resumed.wait(), 10)
    assert room.participant_id == seat and room.welcome is not None
    assert room.welcome["resumed"]
    # The same peer connections, ICE restarted, carry media both ways again.
    assert room.publish_pc is publish_pc and room.subscribe_pc is subscribe_pc
    await room.wait_frames(video, 10)
    await teacher.wait_frames(room_video, 10)
    assert "participant_left" not in seen and "track_unpublished" not in seen
    assert teacher.participants[seat or ""]["connected"]
    watching.cancel()
    assert not room.errors


async def test_ice_restart_brings_media_back_on_the_same_peer_connections(
    server: RunningServer, joined: Any
) -> None:
    """The paths go quiet under both of a participant's connections while its socket
    lives; ICE restarts (the client offers one, asks the server for the other) bring
    media back on the same peer connections, and the server's RTP fast path follows
    the new ICE pairs."""
    teacher = await joined("Ms T", Role.TEACHER, "restart")
    room = await joined("Room", Role.CLASSROOM, "restart")
    await teacher.publish(camera_and_microphone())
    video = await room.wait_track(teacher.participant_id or "", "video")
    await room.wait_frames(video, 5)
    assert room.subscribe_pc is not None and teacher.publish_pc is not None
    pcs = (room.subscribe_pc, teacher.publish_pc)
    old = [hooks.ice_transport(pc)._connection for pc in pcs]  # type: ignore[union-attr]
    for connection in old:
        silence(connection)
    forwarded = sfu(server)["packets_forwarded"]

    offer = room.wait_for(lambda m: m["type"] == "subscribe_offer")
    await room.send(p.IceRestart(pc="subscribe"))
    await offer
    restarted = await teacher._offer_publish(restart=True)
    assert restarted["type"] == "publish_answer"
    await room.wait_frames(video, 20, timeout=20)
    assert (room.subscribe_pc, teacher.publish_pc) == pcs
    now = [hooks.ice_transport(pc)._connection for pc in pcs]  # type: ignore[union-attr]
    assert all(a is not b for a, b in zip(old, now, strict=True))
    assert all(not connection._protocols for connection in old)  # closed: not used
    assert sfu(server)["packets_forwarded"] > forwarded
    assert not room.errors and not teacher.errors


async def test_a_silent_network_is_noticed_within_the_idle_timeout(
    server: RunningServer, joined: Any
) -> None:
    """Nothing is closed, nothing more arrives: the server notices it on its own."""
    teacher = await joined("Ms T", Role.TEACHER, "silent")
    async with SilentableProxy(server.port) as proxy:
        student = await joined("Ana", Role.STUDENT, "silent", url=proxy.url)
        welcome = student.welcome
        assert welcome is not None and welcome["keepalive"]["timeout"] == 4.0
        gone = teacher.wait_for(lambda m: m["type"] == "participant_disconnected", timeout=30)
        proxy.go_silent()
        silent_at = time.monotonic()
        message = await gone
        noticed = time.monotonic() - silent_at
    print(f"\nserver noticed a silent socket after {noticed:.2f} s")
    assert message["participant_id"] == student.participant_id
    assert message["reason"] == "timed out"
    assert noticed <= 5.0  # the idle timeout (4 s), and a margin for a loaded machine


async def test_a_client_notices_a_silent_server_and_takes_its_seat_back(
    server: RunningServer, joined: Any
) -> None:
    teacher = await joined("Ms T", Role.TEACHER, "silent-client")
    async with SilentableProxy(server.port) as proxy:
        room = await joined("Room", Role.CLASSROOM, "silent-client", url=proxy.url, reconnect=True)
        seat = room.participant_id
        proxy.go_silent()
        silent_at = time.monotonic()
        await asyncio.wait_for(room.resumed.wait(), 20)
        noticed = time.monotonic() - silent_at
        assert (room.silences, room.resumes, room.participant_id) == (1, 1, seat)
        # The server may have noticed the silence first (the same timeout): then the
        # teacher saw the seat held, and sees it taken back. (Inside the proxy's
        # block: leaving it closes the new socket too, and the seat is held again.)
        async with asyncio.timeout(10):
            while not teacher.participants[seat or ""]["connected"]:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    # The figure (about the 4 s timeout plus a reconnect) is for the reader; the
    # bound above is the test's, generous for a loaded machine.
    print(f"\nclient noticed a silent server and took its seat back after {noticed:.2f} s")


# --- what moderators decided survives the reload --------------------------------------


async def wait_muted_packets(server: RunningServer, count: int) -> None:
    """Until the server has counted ``count`` more packets it did not forward (muted)."""
    target = (await asyncio.to_thread(sfu, server))["packets_muted"] + count
    async with asyncio.timeout(15):
        while (await asyncio.to_thread(sfu, server))["packets_muted"] < target:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_reload_while_muted_stays_muted_and_forwards_nothing(
    server: RunningServer, joined: Any
) -> None:
    teacher = await joined("Ms T", Role.TEACHER, "muted-reload")
    link = server.token("Ana", Role.STUDENT, lesson="muted-reload")
    ana = LessonClient(server.ws, link)
    await ana.connect()
    seat = ana.participant_id or ""
    granted = ana.wait_for(lambda m: m["type"] == "permissions_changed")
    await teacher.send(p.GrantPublish(participant_id=seat))
    await granted
    muted = ana.wait_for(lambda m: m["type"] == "notice")
    await teacher.send(p.Mute(participant_id=seat, kind="audio"))
    await muted
    await ana.drop()  # the tab is reloaded: its peer connections go with it
    await ana.close()

    again = LessonClient(server.ws, link)
    welcome = await again.connect()
    assert welcome["resumed"] and again.participant_id == seat
    assert welcome["you"]["muted"] == ["audio"] and "publish" in welcome["permissions"]
    offered = teacher.wait_for(
        lambda m: (
            m["type"] == "subscribe_offer" and any(t["participant_id"] == seat for t in m["tracks"])
        )
    )
    await again.publish([(ToneAudioTrack(), "microphone")])
    (track,) = [t["track_id"] for t in (await offered)["tracks"] if t["participant_id"] == seat]
    # The server counts its packets as muted; the teacher's receiver gets none of them.
    await wait_muted_packets(server, 50)
    assert teacher.packets_received(track) == 0
    allowed = again.wait_for(lambda m: m["type"] == "notice")
    await teacher.send(p.AllowUnmute(participant_id=seat, kind="audio"))
    assert (await allowed)["code"] == "unmute_allowed_audio"
    heard = await teacher.wait_track(seat, "audio")
    await teacher.wait_frames(heard, 10)
    assert teacher.packets_received(track) > 0
    await again.close()


async def test_a_revoked_grant_holds_across_a_reload_and_a_released_seat(
    short_grace: RunningServer,
) -> None:
    server = short_grace
    teacher = LessonClient(server.ws, server.token("Ms T", Role.TEACHER, lesson="revoked"))
    await teacher.connect()
    link = server.token("Ana", Role.STUDENT, lesson="revoked")
    ana = LessonClient(server.ws, link)
    await ana.connect()
    seat = ana.participant_id or ""
    granted = ana.wait_for(lambda m: m["type"] == "permissions_changed")
    await teacher.send(p.GrantPublish(participant_id=seat))
    await granted
    await ana.publish([(ToneAudioTrack(), "microphone")])
    revoked = ana.wait_for(lambda m: m["type"] == "permissions_changed")
    await teacher.send(p.RevokePublish(participant_id=seat))
    assert "publish" not in (await revoked)["permissions"]
    # Reloaded: the same seat, still not allowed to publish.
    await ana.drop()
    await ana.close()
    again = LessonClient(server.ws, link)
    welcome = await again.connect()
    assert welcome["resumed"] and "publish" not in welcome["permissions"]
    refused = await again.publish([(ToneAudioTrack(), "microphone")])
    assert refused["type"] == "error" and refused["code"] == "forbidden"
    # Gone longer than the grace period: a new seat, still not allowed.
    left = asyncio.ensure_future(
        teacher.wait_for(lambda m: m["type"] == "participant_left", timeout=GRACE + 10)
    )
    await again.drop()
    await again.close()
    # Held meanwhile, as the operator's metrics say (the server has no event to wait on).
    while await asyncio.to_thread(held_seats, server) != (1, 1) and not left.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert not left.done()
    assert (await left)["participant_id"] == seat
    assert await asyncio.to_thread(held_seats, server) == (0, 0)
    third = LessonClient(server.ws, link)
    welcome = await third.connect()
    assert not welcome["resumed"] and third.participant_id != seat
    assert "publish" not in welcome["permissions"]
    # Until the teacher allows it again.
    granted = third.wait_for(lambda m: m["type"] == "permissions_changed")
    await teacher.send(p.GrantPublish(participant_id=third.participant_id or ""))
    assert "publish" in (await granted)["permissions"]
    for client in (teacher, third):
        await client.close()


async def test_a_removed_link_is_refused_on_reload(server: RunningServer, joined: Any) -> None:
    teacher = await joined("Ms T", Role.TEACHER, "banned")
    link = server.token("Troll", Role.STUDENT, lesson="banned")
    troll = LessonClient(server.ws, link, reconnect=True)
    await troll.connect()
    await teacher.send(p.Remove(participant_id=troll.participant_id or ""))
    await asyncio.wait_for(troll.closed.wait(), 10)
    assert troll.bye is not None and troll.bye["reason"] == "removed"
    assert troll.reconnects == 0  # a removal is final: no attempt to come back
    again = LessonClient(server.ws, link)
    with pytest.raises(ConnectionError, match="removed"):
        await again.connect()
    for client in (troll, again):
        await client.close()


# --- doors: the lobby and a locked lesson ------------------------------------------------


async def test_an_admitted_student_reconnects_straight_in_even_when_locked(
    server: RunningServer, joined: Any
) -> None:
    lesson = "lobby-return"
    schedule_lobby_lesson(server, lesson)
    teacher = await joined("Ms T", Role.TEACHER, lesson)
    waiting = teacher.wait_for(lambda m: m["type"] == "lobby_changed" and m["added"])
    ana = LessonClient(server.ws, server.token("Ana", Role.STUDENT, lesson=lesson), reconnect=True)
    assert (await ana.connect())["type"] == "lobby_wait"
    await waiting
    await teacher.send(p.Admit(participant_id=ana.participant_id or ""))
    await ana.admitted()
    seat = ana.participant_id
    locked = teacher.wait_for(lambda m: m["type"] == "lesson_updated")
    await teacher.send(p.LockLesson(locked=True))
    assert (await locked)["state"]["locked"]
    lobby: list[dict[str, Any]] = []
    watching = asyncio.ensure_future(
        ana.wait_for(lambda m: m["type"] == "lobby_wait" and lobby.append(m) is None, timeout=60)
    )
    await ana.drop()
    await asyncio.wait_for(ana.resumed.wait(), 10)
    assert ana.participant_id == seat and not lobby
    assert ana.welcome is not None and ana.welcome["resumed"]
    watching.cancel()
    # A link that never came in stays out of the locked lesson.
    ben = LessonClient(server.ws, server.token("Ben", Role.STUDENT, lesson=lesson))
    with pytest.raises(ConnectionError, match="locked"):
        await ben.connect()
    for client in (ana, ben):
        await client.close()


# --- attendance ---------------------------------------------------------------------------


async def test_attendance_a_short_drop_is_one_session_a_long_one_two(
    short_grace: RunningServer,
) -> None:
    server = short_grace
    lesson = "attendance-drops"
    teacher = LessonClient(server.ws, server.token("Ms T", Role.TEACHER, lesson=lesson))
    await teacher.connect()
    link = server.token("Ana", Role.STUDENT, lesson=lesson)
    ana = LessonClient(server.ws, link)
    await ana.connect()
    seat = ana.participant_id
    # A drop shorter than the grace period: the same seat, the same session.
    gone = teacher.wait_for(lambda m: m["type"] == "participant_disconnected")
    await ana.drop()
    await ana.close()
    await gone
    back = LessonClient(server.ws, link)
    await back.connect()
    assert back.participant_id == seat
    # A drop longer than the grace period: the seat is released, a new one follows.
    left = teacher.wait_for(lambda m: m["type"] == "participant_left", timeout=GRACE + 10)
    await back.drop()
    await back.close()
    assert (await left)["participant_id"] == seat
    last = LessonClient(server.ws, link)
    await last.connect()
    assert last.participant_id != seat
    await last.close()
    report = server.api("GET", f"/api/lessons/{lesson}/attendance").json()
    (row,) = [r for r in report["participants"] if r["name"] == "Ana"]
    assert row["sessions"] == 2, row
    assert [e["kind"] for e in row["events"]] == [
        "joined",
        "disconnected",
        "reconnected",
        "disconnected",
        "left",
        "joined",
        "left",
    ]
    released = row["events"][4]
    assert released["at"] == row["events"][3]["at"]  # as of the drop, not the release
    await teacher.close()


# --- a socket that does not read -----------------------------------------------------------


def server_memory_kib(server: RunningServer) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    (line,) = [x for x in status.splitlines() if x.startswith("VmRSS:")]
    return int(line.split()[1])


async def test_a_socket_that_never_reads_is_cut_off(chatty_server: RunningServer) -> None:  # noqa: F811
    """It asks for chat pages (about 200 KB each) and reads none of them: the server
    stops at its outbox limit and drops the socket, its memory bounded."""
    server = chatty_server
    teacher = LessonClient(server.ws, server.token("Ms T", Role.TEACHER, lesson=CHATTY))
    await teacher.connect()
    before = server_memory_kib(server)
    # max_queue=1: this client's library stops reading from the socket at once.
    greedy = await websockets.connect(server.ws, max_size=2**22, max_queue=1)
    await greedy.send(
        json.dumps({"v": 1, "type": "join", "token": server.token("G", Role.STUDENT, CHATTY)})
    )
    dropped = teacher.wait_for(
        lambda m: m["type"] == "participant_disconnected" and m["reason"] == "too slow",
        timeout=60,
    )
    request = json.dumps({"v": 1, "type": "fetch_chat", "limit": p.MAX_CHAT_PAGE})
    with contextlib.suppress(websockets.ConnectionClosed):
        for _ in range(60):  # the rate limit's burst: 60 pages, 12 MB asked for
            await greedy.send(request)
    await dropped
    after = server_memory_kib(server)
    print(f"\nserver memory: {before} KiB before, {after} KiB after the greedy socket")
    assert after - before < 64 * 1024
    async with asyncio.timeout(15):  # its connection is cleaned up, the teacher's stays
        while (await asyncio.to_thread(server.metrics))["connections"] != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    greedy.transport.abort()
    await teacher.close()


# --- the keeper of held seats --------------------------------------------------------------


async def test_a_held_seat_is_released_even_if_its_timer_fires_early() -> None:
    """asyncio may run a timer a little early, and the lesson's clock is not the loop's:
    the keeper releases the seat all the same, at its deadline."""
    from server.seats import SeatKeeper
    from signaling.lesson import Effect, EndMedia, HoldSeat
    from signaling.registry import InMemoryLessonRegistry
    from signaling.tokens import Grant

    registry = InMemoryLessonRegistry(seat_grace=0.05)
    lesson = registry.lesson("l1")
    ana, _ = lesson.join(Grant("l1", "Ana", Role.STUDENT, "north", "ana-link", 2**40))
    carried_out: list[Effect] = []
    released = asyncio.Event()

    async def execute(effects: list[Effect]) -> None:
        carried_out.extend(effects)
        released.set()

    readings = iter([100.0, 100.04])  # when held; when the timer fires (0.01 s "early")
    keeper = SeatKeeper(registry, execute, clock=lambda: next(readings))
    (hold,) = [
        e
        for e in lesson.disconnect(ana.id, ana.epoch, "disconnected", 100.0)
        if isinstance(e, HoldSeat)
    ]
    assert hold.until == 100.05
    keeper.hold(hold)
    await asyncio.wait_for(released.wait(), 5)
    assert ana.id not in lesson.participants
    assert EndMedia(ana.id) in carried_out
    await keeper.close()
