"""The orchestrator: start a server under test, drive it with load processes, measure.

For each workload size and each system, back to back in one run:

1. start the server as a subprocess (``lco serve`` for ours, ``benchmarks.relay``
   for the ``MediaRelay`` baseline) on a free loopback port;
2. start the publisher processes, wait until the server receives its frames, and
   note the server's memory;
3. start the subscriber processes and wait until every subscriber has its first
   frames (join time and time to first frame are measured here);
4. pick a measurement window ``[T1, T2]`` in wall-clock time, tell every load
   process, and sample the server's CPU time (``/proc``, the process and its
   descendants) and ``/metrics`` at both ends;
5. collect what each subscriber received inside the window and stop everything.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from signaling.permissions import Role
from signaling.tokens import mint_token

from . import procstat
from .encoded import VIDEO_VARIANTS, load_audio, load_video

REPO_ROOT = str(Path(__file__).resolve().parent.parent)
SYSTEMS: dict[str, str] = {
    "ours": "LCO Classroom: RTP packets forwarded (lco serve, the default)",
    "pack": "aiortc pre-encoded pack() path: lco serve --forwarding frames",
    "mediarelay": "aiortc MediaRelay: decode once, encode per subscriber",
    "janus": "Janus VideoRoom 1.1.2 (Debian), event_loops = 2, HTTP API",
}
# Server CPU above this (% of one core) ends a ramp: 85 % of the machine's cores.
RAMP_CPU_LIMIT = 85.0 * (os.cpu_count() or 1)
RAMP_LOSS_LIMIT = 1.0  # % lost (after repair) at subscribers
RAMP_FPS_FRACTION = 0.9  # ... or fewer video frames delivered than this part of the source


@dataclass(frozen=True, slots=True)
class Workload:
    """Who publishes what to how many subscribers."""

    name: str
    description: str
    publishers: int
    video: str | None
    audio: bool
    sizes: tuple[int, ...]  # subscriber counts, one run per size and system
    duration: float  # measurement window, seconds
    publisher_role: Role = Role.TEACHER
    subscriber_role: Role = Role.STUDENT
    ramp: bool = False  # sizes are steps, stopped per system at the ramp limits
    inject_loss: float = 0.0  # fraction of datagrams dropped in subscriber processes
    inject_delay: float = 0.0  # seconds added to every datagram there
    churn: int = 0  # extra subscribers that join and leave, one event per second
    publishers_hear_each_other: bool = False


def workloads(quick: bool) -> dict[str, Workload]:
    """The workloads of issue 5 implemented so far, full or ``--quick`` size."""
    return {
        "core": Workload(
            "core",
            "one teacher, 640x480 20 fps VP8 (~0.8 Mbit/s) + Opus, to N students",
            publishers=1,
            video="480p20",
            audio=True,
            sizes=(8,) if quick else (1, 4, 8),
            duration=4.0 if quick else 20.0,
        ),
        "w1": Workload(
            "w1",
            "one teacher, 1280x720 30 fps VP8 (~1.5 Mbit/s) + Opus, to N classrooms",
            publishers=1,
            video="720p30",
            audio=True,
            sizes=(10,) if quick else (30,),
            duration=4.0 if quick else 20.0,
            subscriber_role=Role.CLASSROOM,
        ),
        "w2": Workload(
            "w2",
            "teacher + expert, each 1280x720 30 fps VP8 (~1.5 Mbit/s) + Opus, to N students, "
            "ramped until loss > 1 %, server CPU > 85 % of the cores or < 90 % of frames",
            publishers=2,
            video="720p30",
            audio=True,
            sizes=(2, 8) if quick else (1, 2, 4, 8, 12, 16, 24, 32),
            duration=3.0 if quick else 10.0,
            ramp=True,
        ),
        "w3": Workload(
            "w3",
            "six schools, each publishing 640x480 20 fps VP8 + Opus and receiving the other five",
            publishers=6,
            video="480p20",
            audio=True,
            sizes=(0,),
            duration=5.0 if quick else 20.0,
            publisher_role=Role.CLASSROOM,
            publishers_hear_each_other=True,
        ),
        "w4": Workload(
            "w4",
            "audio only: 10 speakers (Opus 20 ms) to N listeners (speakers hear each other)",
            publishers=10,
            video=None,
            audio=True,
            sizes=(4,) if quick else (4, 10),
            duration=4.0 if quick else 20.0,
            publisher_role=Role.EXPERT,
            publishers_hear_each_other=True,
        ),
        "w5": Workload(
            "w5",
            "W1 with churn: one classroom joins or leaves every second during the window",
            publishers=1,
            video="720p30",
            audio=True,
            sizes=(6,) if quick else (30,),
            duration=6.0 if quick else 20.0,
            subscriber_role=Role.CLASSROOM,
            churn=8 if quick else 20,
        ),
        "w6": Workload(
            "w6",
            "W2 with 2 % loss and 50 ms delay on every subscriber's ingress (NACK, RTX, PLI)",
            publishers=2,
            video="720p30",
            audio=True,
            sizes=(4,) if quick else (4, 8),
            duration=4.0 if quick else 15.0,
            inject_loss=0.02,
            inject_delay=0.05,
        ),
    }


@dataclass(slots=True)
class RunOptions:
    """How to run: systems, subscribers per load process, where to write."""

    systems: tuple[str, ...] = ("ours", "pack", "mediarelay")
    # Address for ICE host candidates of every system: the namespace's veth address
    # under scripts/netns-run (needed by Janus), else loopback.
    host: str = field(default_factory=lambda: os.environ.get("LCO_TEST_HOST_ADDRESS", "127.0.0.1"))
    per_process: int = 8
    publishers_per_process: int = 4
    ready_timeout: float = 30.0
    settle: float = 1.0
    cache_dir: Path | None = None
    # Where the server and load processes run from (their cwd, first on sys.path).
    source_dir: Path = Path(REPO_ROOT)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lco-bench-")))
    progress: TextIO = sys.stderr
    # Called with (runs done, runs in all, what runs now): lco bench draws a progress
    # bar with an ETA from it.
    on_progress: Callable[[int, int, str], None] | None = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


def _get_json(url: str, timeout: float = 2.0) -> dict[str, Any]:
    with _OPENER.open(url, timeout=timeout) as response:  # this machine only
        data: dict[str, Any] = json.loads(response.read())
        return data


async def _http_json(url: str) -> dict[str, Any] | None:
    try:
        return await asyncio.to_thread(_get_json, url)
    except (OSError, ValueError):
        return None


class _Child:
    """A subprocess speaking JSON lines on stdout/stdin; stderr goes to a log file."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    @classmethod
    async def start(
        cls,
        name: str,
        argv: list[str],
        log_dir: Path,
        cwd: Path,
        env: dict[str, str] | None = None,
        quiet: bool = False,
    ) -> _Child:
        log = log_dir / f"{name}.log"
        with log.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                # A program that is not ours (Janus) logs to stdout: to the file.
                stdout=err if quiet else asyncio.subprocess.PIPE,
                stderr=err,
                limit=64 * 2**20,  # result lines carry per-frame arrival times
                env={**os.environ, **(env or {})},
                cwd=str(cwd),
            )
        return cls(name, process, log)

    async def next_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The next JSON line with ``"event": event``; raises ``TimeoutError``/``EOFError``."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise EOFError(f"{self.name} exited (see {self.log})")
                with contextlib.suppress(ValueError):
                    message: dict[str, Any] = json.loads(line)
                    if message.get("event") == event:
                        return message

    def send(self, command: dict[str, Any]) -> None:
        """One JSON command on the child's stdin (ignored if it is gone)."""
        if self.process.stdin is not None and self.process.returncode is None:
            with contextlib.suppress(OSError, RuntimeError):
                self.process.stdin.write((json.dumps(command) + "\n").encode())

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL. Returns the exit code."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        return self.process.returncode

    async def wait(self, timeout: float) -> int | None:
        """Let the child exit by itself, at most ``timeout`` seconds, then stop it."""
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            return await self.stop(2.0)
        return self.process.returncode


def _server_argv(system: str, port: int, data_dir: Path, host: str) -> list[str]:
    common = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ice-host",
        host,
        "--data-dir",
        str(data_dir),
        "--log-level",
        "warning",
    ]
    if system == "ours":
        return [sys.executable, "-m", "server.cli", "serve", *common]
    if system == "pack":
        return [sys.executable, "-m", "server.cli", "serve", "--forwarding", "frames", *common]
    if system == "mediarelay":
        return [sys.executable, "-m", "benchmarks", "relay-server", *common]
    raise ValueError(f"unknown system {system!r}")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _start_server(
    system: str, tag: str, options: RunOptions, secret: str
) -> tuple[_Child, str, str]:
    """Start the system under test; returns it, the load's URL and its health URL."""
    port = _free_port()
    if system == "janus":
        from . import janus

        why = janus.available()
        if why:
            raise RuntimeError(why)
        if options.host.startswith("127."):
            raise RuntimeError(
                "Janus needs the test namespace (libnice skips loopback): run "
                "scripts/netns-run .venv/bin/lco bench run --system janus ..."
            )
        directory = options.log_dir / f"janus-{tag}"
        janus.write_config(directory, options.host, port)
        server = await _Child.start(
            f"server-{tag}",
            janus.argv(directory, options.log_dir / f"janus-{tag}.log"),
            options.log_dir,
            options.source_dir,
            quiet=True,
        )
        base = f"http://{options.host}:{port}/janus"
        return server, base, base + "/info"
    data_dir = options.log_dir / f"data-{tag}"
    server = await _Child.start(
        f"server-{tag}",
        _server_argv(system, port, data_dir, options.host),
        options.log_dir,
        options.source_dir,
        env={"LCO_SECRET": secret},
    )
    return server, f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}/healthz"


async def run_one(
    workload: Workload, system: str, subscribers: int, options: RunOptions
) -> dict[str, Any]:
    """One system under one workload size; returns raw samples and derived figures."""
    secret = secrets.token_urlsafe(48)
    tag = f"{workload.name}-{system}-{subscribers}"
    lesson = f"bench-{workload.name}"
    key = secret.encode()
    is_janus = system == "janus"

    def token(name: str, role: Role) -> str:
        return mint_token(key, lesson=lesson, name=name, role=role, ttl_seconds=3600)

    deadline = workload.duration + 3 * options.ready_timeout + 30
    result: dict[str, Any] = {"system": system, "subscribers": subscribers, "errors": []}
    children: list[_Child] = []
    server: _Child | None = None
    try:
        server, url, health = await _start_server(system, tag, options, secret)
        base = url.replace("ws://", "http://").removesuffix("/ws")
        common = ["--url", url, "--deadline", str(deadline), "--ice-host", options.host]
        common += ["--ready-timeout", str(options.ready_timeout)]
        if is_janus:
            common += ["--janus"]
        if options.cache_dir is not None:
            common += ["--cache-dir", str(options.cache_dir)]
        async with asyncio.timeout(20):
            while await _http_json(health) is None:
                if server.process.returncode is not None:
                    raise RuntimeError(f"the server exited (see {server.log})")
                await asyncio.sleep(0.1)
        publisher_tokens = [
            token(f"pub{index}", workload.publisher_role) for index in range(workload.publishers)
        ]
        publisher_groups = _chunks(publisher_tokens, options.publishers_per_process)
        for index, group in enumerate(publisher_groups):
            argv = [sys.executable, "-m", "benchmarks", "_publishers", *common]
            for value in group:
                argv += ["--token", value]
            if workload.video:
                argv += ["--video", workload.video]
            if workload.audio:
                argv += ["--audio"]
            if is_janus and workload.publishers_hear_each_other:
                # Janus subscribes nobody by itself: each publisher subscribes to the
                # others, as our server does for participants of one lesson.
                argv += ["--hear-each-other", str(workload.publishers)]
            children.append(
                await _Child.start(f"pub{index}-{tag}", argv, options.log_dir, options.source_dir)
            )
        publisher_count = len(children)
        readies = await asyncio.gather(
            *(c.next_event("ready", options.ready_timeout + 10) for c in children)
        )
        for ready in readies:
            if not ready.get("ok"):
                raise RuntimeError(f"publishers failed: {ready}")
        result["negotiated"] = [codecs for r in readies for codecs in r.get("codecs", [])]
        # Wait until the server receives media, then note its memory with no subscriber.
        if not is_janus:  # Janus: the publishers are connected; it has no /metrics
            async with asyncio.timeout(15):
                while True:
                    metrics = await _http_json(base + "/metrics.json")
                    sfu = metrics.get("sfu", {}) if metrics else {}
                    if sfu.get("frames_received", 0) > 0 or sfu.get("packets_received", 0) > 0:
                        break
                    await asyncio.sleep(0.1)
        await asyncio.sleep(options.settle)
        idle = procstat.sample(server.process.pid)
        # Subscribers in load processes of at most ``per_process`` each.
        tokens = [token(f"sub{i}", workload.subscriber_role) for i in range(subscribers)]
        video_tracks = workload.publishers if workload.video else 0
        audio_tracks = workload.publishers if workload.audio else 0
        expect = ["--expect-video", str(video_tracks), "--expect-audio", str(audio_tracks)]
        if workload.video:
            expect += ["--latency-video", workload.video]
        if workload.inject_loss or workload.inject_delay:
            expect += ["--inject-loss", str(workload.inject_loss)]
            expect += ["--inject-delay", str(workload.inject_delay)]
        groups = _chunks(tokens, options.per_process)
        for index, group in enumerate(groups):
            argv = [sys.executable, "-m", "benchmarks", "_subscribers", *common, *expect]
            for value in group:
                argv += ["--token", value]
            children.append(
                await _Child.start(f"sub{index}-{tag}", argv, options.log_dir, options.source_dir)
            )
        if workload.churn:
            argv = [sys.executable, "-m", "benchmarks", "_subscribers", *common, *expect]
            argv += ["--churn"]
            for index in range(workload.churn):
                argv += ["--token", token(f"churn{index}", workload.subscriber_role)]
            children.append(
                await _Child.start(f"churn-{tag}", argv, options.log_dir, options.source_dir)
            )
        subscriber_children = children[publisher_count:]
        readies = await asyncio.gather(
            *(c.next_event("ready", options.ready_timeout + 15) for c in subscriber_children)
        )
        for entry in readies:
            result["errors"] += entry.get("errors", [])
        # The measurement window, in wall-clock time shared by every process.
        start = time.time() + options.settle
        end = start + workload.duration
        for child in children:
            child.send({"start": start, "end": end})
        await asyncio.sleep(max(0.0, start - time.time()))
        cpu_start = procstat.sample(server.process.pid)
        machine_start = procstat.machine_ticks()
        load_start = [procstat.sample(c.process.pid) for c in children]
        t_start = time.time()
        metrics_start = None if is_janus else await _http_json(base + "/metrics.json")
        await asyncio.sleep(max(0.0, end - time.time()))
        cpu_end = procstat.sample(server.process.pid)
        machine_end = procstat.machine_ticks()
        load_end = [procstat.sample(c.process.pid) for c in children]
        t_end = time.time()
        metrics_end = None if is_janus else await _http_json(base + "/metrics.json")
        results = await asyncio.gather(
            *(c.next_event("result", 30 + options.ready_timeout) for c in children)
        )
        result["raw"] = {
            "window": [t_start, t_end],
            "server_idle": asdict(idle),
            "server_start": asdict(cpu_start),
            "server_end": asdict(cpu_end),
            "metrics_start": metrics_start,
            "metrics_end": metrics_end,
            "machine_busy_ticks": [
                machine_end[0] - machine_start[0],
                machine_end[1] - machine_start[1],
            ],
            "load_cpu_s": [e.total - s.total for s, e in zip(load_start, load_end, strict=True)],
            "publishers": [p for r in results[:publisher_count] for p in r.get("publishers", [])],
            "publishers_received": [
                w for r in results[:publisher_count] for w in r.get("received", [])
            ],
            "subscribers": [s for r in results[publisher_count:] for s in r.get("subscribers", [])],
            "churn": [s for r in results[publisher_count:] for s in r.get("churn", [])],
            "churn_counters": [
                s for r in results[publisher_count:] for s in r.get("churn_counters", [])
            ],
        }
        arrivals = [a for r in results for a in r.get("arrivals", [])]
        result["figures"] = derive(workload, result["raw"], subscribers)
        result["figures"].update(packet_latency(result["raw"]["publishers"], arrivals))
        # The send logs are only needed for the latency: keep the JSON small.
        for publisher in result["raw"]["publishers"]:
            for track in publisher["tracks"]:
                track.pop("sent", None)
    except Exception as exc:  # one failed run must not lose the others
        result["errors"].append(f"run failed: {type(exc).__name__}: {exc}")
    finally:
        for child in children:
            child.send({"stop": True})
        await asyncio.gather(*(c.wait(15) for c in children))
        if server is not None:
            result["server_exit"] = await server.stop(15)
    return result


def packet_latency(publishers: list[dict[str, Any]], arrivals: list[Any]) -> dict[str, Any]:
    """Latency from each video frame's send to the arrival of its last RTP packet.

    The publisher logs (wall time, loop position) when its sender takes a frame;
    a subscriber logs (wall time, loop position, publisher) when the packet that
    ends the frame arrives. The send is the latest one of that position by that
    publisher not after the arrival (the loop is 10 s long). One clock: the
    machine's wall clock, shared by every process.
    """
    sends: dict[tuple[str, int], list[float]] = {}
    for publisher in publishers:
        for track in publisher.get("tracks", []):
            for wall, position in track.get("sent") or []:
                sends.setdefault((str(publisher["participant_id"]), position), []).append(wall)
    for logged in sends.values():
        logged.sort()
    values = []
    for arrival, position, owner in arrivals:
        times = sends.get((str(owner), int(position)))
        if not times:
            continue
        index = bisect.bisect_right(times, arrival) - 1
        if index >= 0:
            values.append(arrival - times[index])
    if not values:
        return {"latency_frames_matched": 0}
    p50, p99 = _percentile(values, 50), _percentile(values, 99)
    return {
        "latency_frames_matched": len(values),
        "latency_p50_ms": 1000 * p50 if p50 is not None else None,
        "latency_p99_ms": 1000 * p99 if p99 is not None else None,
    }


def _delta(before: dict[str, Any] | None, after: dict[str, Any] | None, name: str) -> int | None:
    if not before or not after:
        return None
    value: int = after.get("sfu", {}).get(name, 0) - before.get("sfu", {}).get(name, 0)
    return value


def derive(workload: Workload, raw: dict[str, Any], subscribers: int) -> dict[str, Any]:
    """The figures of one run from its raw samples."""
    t_start, t_end = raw["window"]
    window = max(1e-6, t_end - t_start)
    cpu = raw["server_end"]["user"] + raw["server_end"]["system"]
    cpu -= raw["server_start"]["user"] + raw["server_start"]["system"]
    subs = raw["subscribers"]
    windows = [s["window"] for s in subs if "window" in s]
    # Everything the server sent: to subscribers and to publishers that hear each other.
    counted = windows + list(raw.get("publishers_received") or [])
    counted += list(raw.get("churn_counters") or [])
    packets = sum(w["packets"] for w in counted)
    payload = sum(w["bytes"] for w in counted)
    expected = sum(w["expected"] for w in counted)
    received = sum(w["media_received"] for w in counted)
    lost = sum(max(0, w["expected"] - w["media_received"]) for w in counted)
    repaired = sum(w.get("repaired", 0) for w in counted)
    churn = raw.get("churn") or []
    churn_joins = [s["join_s"] for s in churn if s.get("join_s") is not None]
    churn_ttff = [s["first_frame_s"]["video"] for s in churn if "video" in s["first_frame_s"]]
    if not churn_ttff:
        churn_ttff = [s["first_frame_s"]["audio"] for s in churn if "audio" in s["first_frame_s"]]
    keyframe_requests = sum(
        t.get("keyframe_requests", 0)
        for p in raw.get("publishers") or []
        for t in p["tracks"]
        if t["kind"] == "video"
    )
    video_tracks = workload.publishers if workload.video else 0
    fps_source = VIDEO_VARIANTS[workload.video].fps if workload.video else 0
    fps_windows, tracks_each = windows, workload.publishers
    if not windows and workload.publishers > 1:  # W3: the publishers are the receivers
        fps_windows = [w for w in raw.get("publishers_received") or [] if "frames" in w]
        tracks_each = workload.publishers - 1
    video_fps = [
        w["frames"].get("video", 0) / window / tracks_each for w in fps_windows if video_tracks
    ]
    audio_fps = [w["frames"].get("audio", 0) / window / tracks_each for w in fps_windows]
    ttff_video = [s["first_frame_s"]["video"] for s in subs if "video" in s["first_frame_s"]]
    ttff_audio = [s["first_frame_s"]["audio"] for s in subs if "audio" in s["first_frame_s"]]
    joins = [s["join_s"] for s in subs if s["join_s"] is not None]
    rss_growth = raw["server_end"]["rss_bytes"] - raw["server_idle"]["rss_bytes"]
    m0, m1 = raw["metrics_start"], raw["metrics_end"]
    return {
        "window_s": window,
        "subscribers_measured": len(windows),
        "server_cpu_s": cpu,
        "server_cpu_pct": 100 * cpu / window,
        "forwarded_packets_per_s": packets / window,
        "forwarded_mbit_per_s": payload * 8 / window / 1e6,
        "cpu_us_per_packet": cpu * 1e6 / packets if packets else None,
        # Lost after repair: a gap that neither a late packet nor an RTX packet filled.
        "loss_pct": 100 * max(0, lost - repaired) / expected if expected else None,
        "loss_before_repair_pct": 100 * lost / expected if expected else None,
        "repaired_by_rtx": repaired,
        "media_packets_expected": expected,
        "media_packets_received": received,
        "rtx_packets": sum(w["rtx_packets"] for w in counted),
        "video_fps_source": fps_source,
        "video_fps_mean": sum(video_fps) / len(video_fps) if video_fps else None,
        "video_fps_min": min(video_fps) if video_fps else None,
        "audio_fps_mean": sum(audio_fps) / len(audio_fps) if audio_fps else None,
        "ttff_video_p50_s": _percentile(ttff_video, 50),
        "ttff_video_p95_s": _percentile(ttff_video, 95),
        "ttff_audio_p50_s": _percentile(ttff_audio, 50),
        "ttff_audio_p95_s": _percentile(ttff_audio, 95),
        "join_p50_s": _percentile(joins, 50),
        "join_p95_s": _percentile(joins, 95),
        "churn_joins": len(churn) or None,
        "churn_join_p50_s": _percentile(churn_joins, 50),
        "churn_join_p95_s": _percentile(churn_joins, 95),
        "churn_ttff_p50_s": _percentile(churn_ttff, 50),
        "churn_ttff_p95_s": _percentile(churn_ttff, 95),
        "publisher_keyframe_requests": keyframe_requests if workload.video else None,
        "server_rss_mib": raw["server_end"]["rss_bytes"] / 2**20,
        "rss_per_subscriber_mib": rss_growth / 2**20 / subscribers if subscribers else None,
        "load_generator_cpu_pct": 100 * sum(raw["load_cpu_s"]) / window,
        # Whole machine, all cores (100 % = every core busy): includes other people's work.
        "machine_busy_pct": (
            100 * raw["machine_busy_ticks"][0] / raw["machine_busy_ticks"][1]
            if raw["machine_busy_ticks"][1]
            else None
        ),
        "server_frames_forwarded": _delta(m0, m1, "frames_forwarded"),
        "server_packets_forwarded": _delta(m0, m1, "packets_forwarded"),
        "server_frames_dropped": _delta(m0, m1, "frames_dropped"),
        # Whole run (requests happen when subscribers join, before the window).
        "keyframe_requests_relayed": (m1 or {}).get("sfu", {}).get("keyframe_requests_relayed"),
        "frames_decoded": _delta(m0, m1, "frames_decoded"),
        "frames_encoded": _delta(m0, m1, "frames_encoded"),
        "frames_packed": _delta(m0, m1, "frames_packed"),
    }


async def run_workload(workload: Workload, options: RunOptions) -> list[dict[str, Any]]:
    """Every size of ``workload`` on every system, back to back.

    A ramp (W2) takes its sizes as steps, all systems at each step; a system stops
    after the first step where its loss exceeds 1 % or its server CPU exceeds 85 %
    of the machine's cores (or where the run failed).
    """
    # Encode the media once, before anything is timed, so that processes only read it.
    if workload.video:
        load_video(workload.video, options.cache_dir)
    load_audio(options.cache_dir)
    runs = []
    stopped: dict[str, str] = {}
    steps, done = len(workload.sizes) * len(options.systems), 0
    for size in workload.sizes:
        for system in options.systems:
            if options.on_progress:
                options.on_progress(done, steps, f"{workload.name}: {system} x{size}")
            done += 1
            if system in stopped:
                continue
            print(
                f"[{time.strftime('%H:%M:%S')}] {workload.name}: {system} with {size} "
                f"subscribers, {workload.duration:.0f} s window ...",
                file=options.progress,
                flush=True,
            )
            run = await run_one(workload, system, size, options)
            if run.get("skipped"):
                print(f"    {run['skipped']}", file=options.progress, flush=True)
                runs.append(run)
                continue
            figures = run.get("figures") or {}
            print(
                "    server CPU {} % of one core, {} packets/s, {} us/packet, loss {} %, "
                "video {} fps, latency p50 {} ms, machine {} %, errors {}".format(
                    _fmt(figures.get("server_cpu_pct")),
                    _fmt(figures.get("forwarded_packets_per_s")),
                    _fmt(figures.get("cpu_us_per_packet")),
                    _fmt(figures.get("loss_pct"), 2),
                    _fmt(figures.get("video_fps_mean")),
                    _fmt(figures.get("latency_p50_ms")),
                    _fmt(figures.get("machine_busy_pct"), 0),
                    len(run["errors"]),
                ),
                file=options.progress,
                flush=True,
            )
            runs.append(run)
            if workload.ramp:
                reason = ramp_stop_reason(run)
                if reason:
                    stopped[system] = reason
                    run["ramp_stop"] = reason
                    print(f"    {system}: ramp stops ({reason})", file=options.progress)
    if options.on_progress:
        options.on_progress(steps, steps, f"{workload.name}: done")
    return runs


def ramp_stop_reason(run: dict[str, Any]) -> str | None:
    """Why a ramp stops after this run, or ``None``."""
    figures = run.get("figures")
    if not figures:
        return "run failed"
    loss = figures.get("loss_pct") or 0.0
    cpu = figures.get("server_cpu_pct") or 0.0
    if loss > RAMP_LOSS_LIMIT:
        return f"loss {loss:.2f} % > {RAMP_LOSS_LIMIT:.0f} %"
    if cpu > RAMP_CPU_LIMIT:
        return f"server CPU {cpu:.0f} % > {RAMP_CPU_LIMIT:.0f} % of one core"
    # A transcoding server loses no packets when saturated: it sends fewer frames.
    fps, source = figures.get("video_fps_mean"), figures.get("video_fps_source")
    if fps is not None and source and fps < RAMP_FPS_FRACTION * source:
        return f"delivered {fps:.1f} of {source} fps (< {RAMP_FPS_FRACTION:.0%})"
    return None


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
