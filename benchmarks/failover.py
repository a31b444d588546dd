"""How long a lesson takes to move when its node dies (issue 12): ``--workload failover``.

Each round starts a redis-server-backed pair of nodes (``lco serve --redis``, one
data directory, as two processes of one machine share it) and a lesson on them: an
observer's join places it on one node, two classrooms join through the other node
(their signalling is relayed to the lesson's node), one publishes a camera and a
microphone and the other decodes it. Then the lesson's node is killed with SIGKILL,
and the round measures, from the kill:

- **owner**: until the surviving node owns the lesson (its ``/metrics.json``, polled
  every 50 ms);
- **seat**: until the publisher has a seat again (its ``welcome``);
- **media**: until the viewer decodes the first frame of the publisher's new track.

The clients notice the dead node only through silence: their watchdog, then a
reconnect that waits for the dead node's heartbeat to expire before the lesson can
be placed again. Runs on loopback; needs ``redis-server`` (``scripts/test`` installs
it). ``tests/test_bench_failover.py`` runs one round of the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from media.client import LessonClient
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling.permissions import Role
from signaling.tokens import mint_token

from . import procstat
from .processes import (
    Child,
    decoding_on_loopback,
    free_port,
    http_json,
    server_argv,
    wait_healthy,
)
from .runner import RunOptions
from .stats import rounds_lines, rounds_summary, seconds_text

# What the issue asks (seconds after SIGKILL): its worst round counts.
TARGETS = {"owner_s": 10.0, "media_s": 10.0}
FIGURES = ("owner_s", "seat_s", "media_s")
STEP_TIMEOUT = 60.0  # a round that takes longer reports no figure


class Redis:
    """A redis-server on a free loopback port, in a directory of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """Where the nodes find it."""
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def available() -> str | None:
        """Why it cannot start here (None: it can)."""
        if shutil.which("redis-server") is None:
            return "this workload needs redis-server (apt-get install redis-server)"
        return None

    async def start(self) -> None:
        """Start it and wait until it answers PING."""
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        with (self.directory / "redis.log").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    if self.process.returncode is not None:
                        raise RuntimeError((self.directory / "redis.log").read_text())
                    with contextlib.suppress(redis.ConnectionError):
                        if await client.ping():
                            return
                    await asyncio.sleep(0.05)  # not listening yet: nothing to wait on
        finally:
            await client.aclose()

    async def forget_everything(self) -> None:
        """Start from empty: nodes stopped a moment ago may still look alive for their
        heartbeat's lifetime (5 s), and the next lesson must not be placed on one."""
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            await client.flushdb()
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """Stop it (its keys go with it: nothing is saved)."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


@contextlib.asynccontextmanager
async def redis_on_loopback(prefix: str) -> AsyncIterator[tuple[Path, Redis]]:
    """A temporary directory (named ``prefix``...) and a redis-server started in it,
    for a workload's nodes; both go when the block ends. Raises ``RuntimeError`` when
    there is no redis-server here."""
    why = Redis.available()
    if why:
        raise RuntimeError(why)
    with tempfile.TemporaryDirectory(prefix=prefix) as temporary:
        directory = Path(temporary)
        redis_server = Redis(directory)
        try:
            await redis_server.start()
            yield directory, redis_server
        finally:
            await redis_server.stop()


@dataclass
class Node:
    """One ``lco serve --redis`` process."""

    child: Child
    http: str

    @property
    def ws(self) -> str:
        """Its signalling URL."""
        return self.http.replace("http://", "ws://") + "/ws"

    async def metrics(self) -> dict[str, Any]:
        """Its ``/metrics.json`` (empty: no answer)."""
        return await http_json(self.http + "/metrics.json") or {}

    async def cluster(self) -> dict[str, Any] | None:
        """What it says of itself: its name and the lessons it owns (None: no answer)."""
        info = (await self.metrics()).get("cluster")
        return info if isinstance(info, dict) else None


async def start_node(
    name: str,
    redis_server: Redis,
    data_dir: Path,
    options: RunOptions,
    secret: str,
    extra: Sequence[str] = (),
) -> Node:
    """A node on ``redis``, ready to take participants; ``extra``: more options of
    ``lco serve`` (the cascade workload's ``--cascade``)."""
    port = free_port()
    argv = server_argv("ours", port, data_dir, options.host)
    argv += ["--redis", redis_server.url, "--node-name", name, "--no-demo", *extra]
    child = await Child.start(
        f"server-{name}", argv, options.log_dir, options.server_dir, env={"LCO_SECRET": secret}
    )
    http = f"http://127.0.0.1:{port}"
    await wait_healthy(child, http + "/healthz")
    return Node(child, http)


async def placed_by_a_join(nodes: Sequence[Node], lesson: str, probe: LessonClient) -> int:
    """Connect ``probe`` (its socket on the first node): its join places ``lesson`` where
    the nodes' load says. The index of the node that owns the lesson then."""
    await probe.connect()
    infos = [await node.cluster() for node in nodes]
    owner = next((i for i, info in enumerate(infos) if info and lesson in info["lessons"]), None)
    if owner is None:
        raise RuntimeError(f"no node says it owns {lesson} after a join")
    return owner


async def _until(
    condition: Callable[[], Any], since: float, timeout: float = STEP_TIMEOUT
) -> float | None:
    """Seconds from ``since`` (monotonic) until ``await condition()`` is found true,
    polled every 50 ms (so up to that, and one HTTP request, late); None if not within
    ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            # Another process's state: nothing to wait on but polling.
            while not await condition():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        return None
    return time.monotonic() - since


async def measure_round(
    number: int, redis_server: Redis, options: RunOptions, directory: Path
) -> dict[str, Any]:
    """One round (see the module's docstring): its figures, None where a step did not
    happen within its time."""
    secret = os.urandom(32).hex()
    lesson = f"failover-{number}"

    def token(name: str, role: Role) -> str:
        return mint_token(secret.encode(), lesson=lesson, name=name, role=role, ttl_seconds=3600)

    data_dir = directory / f"data-{number}"
    nodes: list[Node] = []
    clients: list[LessonClient] = []
    try:
        for side in "ab":
            nodes.append(
                await start_node(f"r{number}{side}", redis_server, data_dir, options, secret)
            )
        probe = LessonClient(nodes[0].ws, token("Probe", Role.OBSERVER))
        clients.append(probe)
        owner = await placed_by_a_join(nodes, lesson, probe)
        dead, survivor = nodes[owner], nodes[1 - owner]
        room_a, room_b = (
            LessonClient(survivor.ws, token(name, Role.CLASSROOM), reconnect=True)
            for name in ("Room A", "Room B")
        )
        clients += [room_a, room_b]
        for client in (room_a, room_b):
            await client.connect()
        await room_a.publish([(PatternVideoTrack(), "camera"), (ToneAudioTrack(), "microphone")])
        before = room_a.participant_id or ""
        await room_b.wait_frames(await room_b.wait_track(before, "video"), 5)

        # Expected before the kill: the new welcome cannot pass unseen.
        welcomed = room_a.wait_for(lambda m: m["type"] == "welcome", STEP_TIMEOUT)
        killed = time.monotonic()
        dead.child.process.kill()

        async def owned() -> bool:
            info = await survivor.cluster()
            return info is not None and lesson in info["lessons"]

        async def seated() -> float | None:
            """When the publisher has a seat again, from the kill."""
            try:
                welcome = await welcomed
            except TimeoutError:
                return None
            return time.monotonic() - killed if welcome["participant_id"] != before else None

        async def seen(seat: asyncio.Future[float | None]) -> float | None:
            """When the viewer decoded the publisher's new track: its first frame (once
            five have come)."""
            if await seat is None:
                return None
            try:
                track = await room_b.wait_track(room_a.participant_id or "", "video", STEP_TIMEOUT)
                await room_b.wait_frames(track, 5, STEP_TIMEOUT)
            except TimeoutError:
                return None
            return track.arrivals[0] - killed

        seat = asyncio.ensure_future(seated())
        owner_s, seat_s, media_s = await asyncio.gather(_until(owned, killed), seat, seen(seat))
        return {
            "owner_s": owner_s,
            "seat_s": seat_s,
            "media_s": media_s,
            # Attempts, each client's: a try refused while the dead node's heartbeat
            # had not expired yet counts as one.
            "reconnects": [room_a.reconnects, room_b.reconnects],
            "errors": [str(m) for m in (*room_a.errors, *room_b.errors)][:5],
        }
    finally:
        for client in clients:
            await client.close()
        for node in nodes:
            await node.child.stop()


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of each figure over rounds, and each target met or not (by
    the worst round; a round that never got there misses it)."""
    return rounds_summary(rounds, FIGURES, TARGETS)


async def run_failover(options: RunOptions, rounds: int) -> dict[str, Any]:
    """``rounds`` rounds, each on two new nodes of one redis-server; returns the results
    document's body."""
    # Clients and nodes on loopback, as in one machine's test.
    options = replace(options, host="127.0.0.1")
    measured: list[dict[str, Any]] = []
    errors: list[str] = []
    with decoding_on_loopback():
        async with redis_on_loopback("lco-failover-") as (directory, redis_server):
            for number in range(1, rounds + 1):
                other_work = procstat.ForeignWork()
                try:
                    figures = await measure_round(number, redis_server, options, directory)
                except Exception as exc:
                    errors.append(f"round {number}: {type(exc).__name__}: {exc}")
                    continue
                figures["foreign_cpu_pct"] = other_work.pct()
                measured.append(figures)
                print(f"  round {number}: {round_line(figures)}", file=options.progress)
    return {
        "system": "ours",
        "nodes": 2,
        "rounds": measured,
        "summary": summarise(measured),
        "errors": errors,
    }


def round_line(figures: dict[str, Any]) -> str:
    """One round, as the progress shows it."""
    return (
        f"owner {seconds_text(figures['owner_s'])} s, seat {seconds_text(figures['seat_s'])} s, "
        f"media {seconds_text(figures['media_s'])} s after SIGKILL"
    )


def summary_lines(document: dict[str, Any]) -> list[str]:
    """What ``lco bench run --workload failover`` prints at the end."""
    body = document["failover"]
    header = f"a lesson's node is killed: {body['summary']['rounds']} rounds"
    return [header, *rounds_lines(body["summary"], body["errors"])]
