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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from signaling.permissions import Role
from signaling.tokens import mint_token

from . import procstat
from .encoded import VIDEO_VARIANTS, load_audio, load_video
from .loadgen import frame_latencies

REPO_ROOT = str(Path(__file__).resolve().parent.parent)
SYSTEMS: dict[str, str] = {
    "ours": "LCO Classroom: RTP packets forwarded (lco serve, the default)",
    "pack": "aiortc pre-encoded pack() path: lco serve --forwarding frames",
    "mediarelay": "aiortc MediaRelay: decode once, encode per subscriber",
}


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


def workloads(quick: bool) -> dict[str, Workload]:
    """The workloads of issue 5 implemented so far, full or ``--quick`` size."""
    return {
        "core": Workload(
            "core",
            "one teacher, 640x480 20 fps VP8 (~0.8 Mbit/s) + Opus, to N students",
            publishers=1,
            video="480p20",
            audio=True,
            sizes=(1, 8) if quick else (1, 4, 8),
            duration=6.0 if quick else 20.0,
        ),
        "w1": Workload(
            "w1",
            "one teacher, 1280x720 30 fps VP8 (~1.5 Mbit/s) + Opus, to N classrooms",
            publishers=1,
            video="720p30",
            audio=True,
            sizes=(10,) if quick else (30,),
            duration=6.0 if quick else 20.0,
            subscriber_role=Role.CLASSROOM,
        ),
        "w4": Workload(
            "w4",
            "audio only: 10 speakers (Opus 20 ms) to N listeners (speakers hear each other)",
            publishers=10,
            video=None,
            audio=True,
            sizes=(4,) if quick else (4, 10),
            duration=6.0 if quick else 20.0,
            publisher_role=Role.EXPERT,
        ),
    }


@dataclass(slots=True)
class RunOptions:
    """How to run: systems, subscribers per load process, where to write."""

    systems: tuple[str, ...] = ("ours", "pack", "mediarelay")
    per_process: int = 8
    publishers_per_process: int = 4
    ready_timeout: float = 30.0
    settle: float = 1.0
    cache_dir: Path | None = None
    # Where the server and load processes run from (their cwd, first on sys.path).
    source_dir: Path = Path(REPO_ROOT)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lco-bench-")))
    progress: TextIO = sys.stderr


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get_json(url: str, timeout: float = 2.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
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
    ) -> _Child:
        log = log_dir / f"{name}.log"
        with log.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
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


def _server_argv(system: str, port: int, data_dir: Path) -> list[str]:
    common = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ice-host",
        "127.0.0.1",
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


async def run_one(
    workload: Workload, system: str, subscribers: int, options: RunOptions
) -> dict[str, Any]:
    """One system under one workload size; returns raw samples and derived figures."""
    port = _free_port()
    secret = secrets.token_urlsafe(48)
    tag = f"{workload.name}-{system}-{subscribers}"
    data_dir = options.log_dir / f"data-{tag}"
    url = f"ws://127.0.0.1:{port}/ws"
    base = f"http://127.0.0.1:{port}"
    lesson = f"bench-{workload.name}"
    key = secret.encode()

    def token(name: str, role: Role) -> str:
        return mint_token(key, lesson=lesson, name=name, role=role, ttl_seconds=3600)

    deadline = workload.duration + 3 * options.ready_timeout + 30
    common = ["--url", url, "--deadline", str(deadline)]
    common += ["--ready-timeout", str(options.ready_timeout)]
    if options.cache_dir is not None:
        common += ["--cache-dir", str(options.cache_dir)]
    result: dict[str, Any] = {"system": system, "subscribers": subscribers, "errors": []}
    server = await _Child.start(
        f"server-{tag}",
        _server_argv(system, port, data_dir),
        options.log_dir,
        options.source_dir,
        env={"LCO_SECRET": secret},
    )
    children: list[_Child] = []
    try:
        async with asyncio.timeout(20):
            while await _http_json(base + "/healthz") is None:
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
        async with asyncio.timeout(15):
            while True:
                metrics = await _http_json(base + "/metrics")
                sfu = metrics.get("sfu", {}) if metrics else {}
                # The publisher's media reaches the server (frames or RTP packets).
                if sfu.get("frames_received", 0) > 0 or sfu.get("packets_received", 0) > 0:
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(options.settle)
        idle = procstat.sample(server.process.pid)
        # Subscribers in load processes of at most ``per_process`` each.
        tokens = [token(f"sub{i}", workload.subscriber_role) for i in range(subscribers)]
        video_tracks = workload.publishers if workload.video else 0
        audio_tracks = workload.publishers if workload.audio else 0
        groups = _chunks(tokens, options.per_process)
        for index, group in enumerate(groups):
            argv = [sys.executable, "-m", "benchmarks", "_subscribers", *common]
            argv += ["--expect-video", str(video_tracks), "--expect-audio", str(audio_tracks)]
            if workload.video and workload.publishers == 1:
                argv += ["--latency-video", workload.video]
            for value in group:
                argv += ["--token", value]
            children.append(
                await _Child.start(f"sub{index}-{tag}", argv, options.log_dir, options.source_dir)
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
        metrics_start = await _http_json(base + "/metrics")
        await asyncio.sleep(max(0.0, end - time.time()))
        cpu_end = procstat.sample(server.process.pid)
        machine_end = procstat.machine_ticks()
        load_end = [procstat.sample(c.process.pid) for c in children]
        t_end = time.time()
        metrics_end = await _http_json(base + "/metrics")
        results = await asyncio.gather(*(c.next_event("result", 30) for c in children))
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
        }
        arrivals = [a for r in results[publisher_count:] for a in r.get("arrivals", [])]
        result["figures"] = derive(workload, result["raw"], subscribers)
        result["figures"].update(_latency(workload, result["raw"], arrivals, options))
    except Exception as exc:  # one failed run must not lose the others
        result["errors"].append(f"run failed: {type(exc).__name__}: {exc}")
    finally:
        for child in children:
            child.send({"stop": True})
        await asyncio.gather(*(c.wait(15) for c in children))
        result["server_exit"] = await server.stop(15)
    return result


def _latency(
    workload: Workload, raw: dict[str, Any], arrivals: list[Any], options: RunOptions
) -> dict[str, Any]:
    """Frame latency (publisher schedule to subscriber reassembly) when frames match."""
    publishers = raw.get("publishers") or []
    if not workload.video or len(publishers) != 1:
        return {}
    video = next((t for t in publishers[0]["tracks"] if t["kind"] == "video"), None)
    if video is None or video.get("schedule_epoch_wall") is None:
        return {}
    if not video.get("stable_in_window"):
        return {"latency_note": "publisher schedule moved in the window: latency not measured"}
    stream = load_video(workload.video, options.cache_dir)
    values = frame_latencies(
        [(float(t), int(i)) for t, i in arrivals],
        video["schedule_epoch_wall"],
        stream.frame_interval,
        len(stream.frames),
        video.get("frames_skipped", 0),
    )
    return {
        "latency_frames_matched": len(values),
        "latency_p50_ms": 1000 * p50 if (p50 := _percentile(values, 50)) is not None else None,
        "latency_p99_ms": 1000 * p99 if (p99 := _percentile(values, 99)) is not None else None,
        "publisher_schedule_resets": video.get("schedule_resets"),
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
    packets = sum(w["packets"] for w in counted)
    payload = sum(w["bytes"] for w in counted)
    expected = sum(w["expected"] for w in counted)
    received = sum(w["media_received"] for w in counted)
    lost = sum(max(0, w["expected"] - w["media_received"]) for w in counted)
    video_tracks = workload.publishers if workload.video else 0
    fps_source = VIDEO_VARIANTS[workload.video].fps if workload.video else 0
    video_fps = [
        w["frames"].get("video", 0) / window / video_tracks for w in windows if video_tracks
    ]
    audio_fps = [w["frames"].get("audio", 0) / window / workload.publishers for w in windows]
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
        "loss_pct": 100 * lost / expected if expected else None,
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
    """Every size of ``workload`` on every system, back to back."""
    # Encode the media once, before anything is timed, so that processes only read it.
    if workload.video:
        load_video(workload.video, options.cache_dir)
    load_audio(options.cache_dir)
    runs = []
    for size in workload.sizes:
        for system in options.systems:
            print(
                f"[{time.strftime('%H:%M:%S')}] {workload.name}: {system} with {size} "
                f"subscribers, {workload.duration:.0f} s window ...",
                file=options.progress,
                flush=True,
            )
            run = await run_one(workload, system, size, options)
            figures = run.get("figures") or {}
            print(
                "    server CPU {} % of one core, {} packets/s, {} us/packet, "
                "loss {} %, video {} fps, errors {}".format(
                    _fmt(figures.get("server_cpu_pct")),
                    _fmt(figures.get("forwarded_packets_per_s")),
                    _fmt(figures.get("cpu_us_per_packet")),
                    _fmt(figures.get("loss_pct"), 2),
                    _fmt(figures.get("video_fps_mean")),
                    len(run["errors"]),
                ),
                file=options.progress,
                flush=True,
            )
            runs.append(run)
    return runs


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
