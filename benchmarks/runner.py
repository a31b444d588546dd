"""The orchestrator: start a server under test, drive it with load processes, measure.

For each workload size, round and system, back to back in one run:

1. start the server as a subprocess (``lco serve`` for ours and pack(), the
   ``MediaRelay`` baseline, Janus, or the zero-hop UDP relay) on a free port;
2. start the publisher processes, wait until the server receives their media, and
   note the server's memory;
3. start the subscriber processes and wait until every subscriber has its first
   frames (join time and time to first frame are measured here);
4. pick a measurement window ``[T1, T2]`` in wall-clock time, tell every load
   process, and sample the server's CPU (``/proc``, nanoseconds), the machine and
   ``/metrics`` at both ends;
5. collect what each subscriber received inside the window and stop everything.

Rounds are interleaved: round 1 runs the systems in the given order, round 2 in the
reverse order, and so on, so that a slow drift of the machine does not favour one
system; a ramp decides after all rounds of a size, on their medians, whether a
system goes on to the next size.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from signaling.permissions import Role
from signaling.tokens import mint_token

from . import procstat
from .encoded import load_audio, load_video
from .figures import derive, packet_latency, ramp_stop_reason
from .processes import REPO_ROOT, Child, chunks, http_json, start_server, wait_healthy
from .rawmedia import SRTP_KEY_BYTES, relay_profile
from .stats import spread
from .workloads import SIGNALLED, Workload

LOAD_MODES = ("aiortc", "raw")
# Subscribers per load process: an aiortc peer costs its process far more than a raw one.
PER_PROCESS = {"aiortc": 8, "raw": 24}


@dataclass(slots=True)
class RunOptions:
    """How to run: systems, load mode, rounds, subscribers per process, where to write."""

    systems: tuple[str, ...] = ("ours", "pack", "mediarelay")
    # Address for ICE host candidates of every system: the namespace's veth address
    # under scripts/netns-run (needed by Janus), else loopback.
    host: str = field(default_factory=lambda: os.environ.get("LCO_TEST_HOST_ADDRESS", "127.0.0.1"))
    load: str = "aiortc"  # or "raw": see benchmarks/rawmedia.py
    per_process: int | None = None  # default PER_PROCESS[load]
    publishers_per_process: int = 4
    rounds: int | None = None  # default: HEADLINE_ROUNDS for headline workloads, else 1
    ready_timeout: float = 30.0
    settle: float = 1.0
    cache_dir: Path | None = None
    # The SRTP profile the load offers (so every system uses the same), or "any".
    srtp_profile: str = "aes128-cm-sha1-80"
    # Where the server under test runs from (cwd, first on sys.path); the load
    # processes always run from this checkout, the same instrument for every tree.
    server_dir: Path = REPO_ROOT
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lco-bench-")))
    progress: TextIO = sys.stderr
    # Called with (runs done, runs in all, what runs now): lco bench draws a progress
    # bar with an ETA from it.
    on_progress: Callable[[int, int, str], None] | None = None

    @property
    def subscribers_per_process(self) -> int:
        """Subscribers per load process."""
        return self.per_process or PER_PROCESS[self.load]


class Stage:
    """One system under test and its load processes, from start to stop.

    Used by :func:`run_one` (a measurement window) and by the soak (ticks for an hour).
    """

    def __init__(self, system: str, tag: str, options: RunOptions, deadline: float) -> None:
        self.system = system
        self.tag = tag
        self.options = options
        self.deadline = deadline
        self.secret = secrets.token_urlsafe(48)
        self.server: Child | None = None
        self.url = ""
        self.health = ""
        self.publishers: list[Child] = []
        self.subscribers: list[Child] = []
        # The zero-hop relay's shared SRTP master key and salt, sized for its profile.
        length = SRTP_KEY_BYTES[relay_profile(options.srtp_profile)]
        self.relay_key = secrets.token_bytes(length).hex()

    @property
    def signalled(self) -> bool:
        """Whether the load joins through the system's signalling (all but the relay)."""
        return self.system in SIGNALLED

    @property
    def has_metrics(self) -> bool:
        """Whether the system counts what it forwards (ours and aiortc's; not Janus or
        the relay)."""
        return self.system not in ("janus", "udprelay")

    async def metrics(self) -> dict[str, Any] | None:
        """Our server's JSON counters: ``/metrics.json``, or ``/metrics`` for a tree
        older than its Prometheus exposition (``--server-dir``). None if neither answers."""
        if not self.has_metrics:
            return None
        base = self.url.replace("ws://", "http://").removesuffix("/ws")
        return await http_json(base + "/metrics.json") or await http_json(base + "/metrics")

    def token(self, lesson: str, name: str, role: Role) -> str:
        """A join token for our server (ignored by Janus and the relay)."""
        key = self.secret.encode()
        return mint_token(key, lesson=lesson, name=name, role=role, ttl_seconds=6 * 3600)

    async def start(self, extra: Sequence[str] = ()) -> None:
        """Start the system under test (``extra``: more options of our server's command
        line) and wait until it answers."""
        options = self.options
        self.server, self.url, self.health = await start_server(
            self.system,
            self.tag,
            options.host,
            options.log_dir,
            options.server_dir,
            self.secret,
            extra,
        )
        await wait_healthy(self.server, self.health)

    def _common(self, raw: bool | None) -> list[str]:
        options = self.options
        argv = ["--url", self.url, "--deadline", str(self.deadline), "--ice-host", options.host]
        argv += ["--ready-timeout", str(options.ready_timeout)]
        argv += ["--srtp-profile", options.srtp_profile]
        if self.system == "janus":
            argv += ["--janus"]
        if raw if raw is not None else options.load == "raw":
            argv += ["--raw"]
        if self.system == "udprelay":
            argv += ["--relay", "--srtp-key", self.relay_key]
        if options.cache_dir is not None:
            argv += ["--cache-dir", str(options.cache_dir)]
        return argv

    async def add_publishers(
        self,
        tokens: list[str],
        video: str | None,
        audio: bool,
        first_index: int = 0,
        hear_each_other: int = 0,
        raw: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Publisher processes for ``tokens`` (``raw``: the load mode, if not the run's);
        returns their ready events."""
        options = self.options
        started = []
        for offset, group in enumerate(chunks(tokens, options.publishers_per_process)):
            index = first_index + offset * options.publishers_per_process
            argv = [sys.executable, "-m", "benchmarks", "_publishers", *self._common(raw)]
            argv += ["--first-index", str(index)]
            for value in group:
                argv += ["--token", value]
            if video:
                argv += ["--video", video]
            if audio:
                argv += ["--audio"]
            if hear_each_other and self.system == "janus":
                # Janus subscribes nobody by itself: each publisher subscribes to the
                # others, as our server does for participants of one lesson.
                argv += ["--hear-each-other", str(hear_each_other)]
            child = await Child.start(
                f"pub{index}-{self.tag}", argv, options.log_dir, REPO_ROOT, env=_LOAD_ENV
            )
            self.publishers.append(child)
            started.append(child)
        readies = await asyncio.gather(
            *(c.next_event("ready", options.ready_timeout + 10) for c in started)
        )
        for ready in readies:
            if not ready.get("ok"):
                raise RuntimeError(f"publishers failed: {ready}")
        return list(readies)

    async def wait_server_receives(self) -> None:
        """Until our server counts incoming media (Janus and the relay: no metrics)."""
        if not self.has_metrics:
            return
        # Bounded like every other wait, but not tighter: ten publishers' handshakes on
        # a loaded machine took more than 15 s.
        timeout = self.options.ready_timeout
        try:
            async with asyncio.timeout(timeout):
                while True:
                    metrics = await self.metrics()
                    sfu = metrics.get("sfu", {}) if metrics else {}
                    if sfu.get("frames_received", 0) > 0 or sfu.get("packets_received", 0) > 0:
                        return
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise RuntimeError(f"the server received no media within {timeout:.0f} s") from None

    async def add_subscribers(
        self,
        tokens: list[str],
        expect: list[str],
        first_index: int = 0,
        churn: bool = False,
        raw: bool | None = None,
        per_process: int | None = None,
    ) -> list[dict[str, Any]]:
        """Subscriber processes (``expect``: their expectation arguments, ``raw``: the
        load mode if not the run's, ``per_process``: if not the run's); returns their
        ready events."""
        options = self.options
        size = len(tokens) if churn else per_process or options.subscribers_per_process
        started = []
        for offset, group in enumerate(chunks(tokens, size)):
            index = first_index + offset * size
            argv = [sys.executable, "-m", "benchmarks", "_subscribers", *self._common(raw)]
            argv += expect
            argv += ["--first-index", str(index)]
            if churn:
                argv += ["--churn"]
            for value in group:
                argv += ["--token", value]
            name = f"churn-{self.tag}" if churn else f"sub{index}-{self.tag}"
            child = await Child.start(name, argv, options.log_dir, REPO_ROOT, env=_LOAD_ENV)
            self.subscribers.append(child)
            started.append(child)
        return list(
            await asyncio.gather(
                *(c.next_event("ready", options.ready_timeout + 15) for c in started)
            )
        )

    @property
    def children(self) -> list[Child]:
        """Every load process, publishers first."""
        return [*self.publishers, *self.subscribers]

    async def stop(self) -> int | None:
        """Stop the load processes, then the server; returns the server's exit code."""
        for child in self.children:
            child.send({"stop": True})
        await asyncio.gather(*(c.wait(15) for c in self.children))
        if self.server is None:
            return None
        return await self.server.stop(15)


# Load processes never write bytecode into the checkout, and stay unbuffered.
_LOAD_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}


def expectations(workload: Workload) -> list[str]:
    """The subscriber processes' arguments for what each subscriber must receive."""
    video_tracks = workload.publishers if workload.video else 0
    audio_tracks = workload.publishers if workload.audio else 0
    expect = ["--expect-video", str(video_tracks), "--expect-audio", str(audio_tracks)]
    if workload.video:
        expect += ["--latency-video", workload.video]
    if workload.inject_loss or workload.inject_delay:
        expect += ["--inject-loss", str(workload.inject_loss)]
        expect += ["--inject-delay", str(workload.inject_delay)]
    return expect


def supported(workload: Workload, system: str, options: RunOptions) -> str | None:
    """Why ``system`` cannot run ``workload`` in this load mode, or ``None``."""
    if system == "udprelay" and options.load != "raw":
        return "the zero-hop relay needs the raw load mode (--load raw)"
    if options.load == "raw" and (workload.churn or workload.inject_loss or workload.inject_delay):
        return "churn and loss injection are measured in the aiortc load mode only"
    if system == "udprelay" and workload.publishers_hear_each_other:
        return "the zero-hop relay does not make publishers hear each other"
    return None


def load_deadline(workload: Workload, options: RunOptions, lessons: int = 1) -> float:
    """Seconds a load process lives at most: its set-up, the window and the results
    (each lesson more adds its publishers' set-up, one after another)."""
    return workload.duration + 3 * options.ready_timeout + 30 + 5 * (lessons - 1)


async def run_one(
    workload: Workload, system: str, subscribers: int, options: RunOptions
) -> dict[str, Any]:
    """One system under one workload size; returns raw samples and derived figures."""
    tag = f"{workload.name}-{system}-{subscribers}-{int(time.time() * 1000) % 100000}"
    result: dict[str, Any] = {"system": system, "subscribers": subscribers, "errors": []}
    why = supported(workload, system, options)
    if why:
        result["skipped"] = why
        return result
    stage = Stage(system, tag, options, load_deadline(workload, options))
    try:
        await stage.start()
        await load_and_measure(stage, workload, [f"bench-{workload.name}"], subscribers, result)
    except Exception as exc:  # one failed run must not lose the others
        result["errors"].append(f"run failed: {type(exc).__name__}: {exc}")
    finally:
        result["server_exit"] = await stage.stop()
    return result


async def load_and_measure(
    stage: Stage,
    workload: Workload,
    lessons: Sequence[str],
    subscribers: int,
    result: dict[str, Any],
    placed: Callable[[str], Awaitable[None]] | None = None,
    pids: Sequence[int] = (),
) -> None:
    """On a started ``stage``: the workload's publishers and ``subscribers`` subscribers
    in each of ``lessons`` (churners in the first), then the measurement window; fills
    ``result`` with what was negotiated, the raw samples and the figures of every
    lesson together. ``placed(lesson)`` is awaited once a lesson's publishers are up,
    before the next lesson's join; ``pids``: processes of the server whose CPU the
    window also samples one by one (``raw["pids_cpu_s"]``)."""
    assert stage.server is not None
    readies = []
    for number, lesson in enumerate(lessons):
        publisher_tokens = [
            stage.token(lesson, f"pub{index}", workload.publisher_role)
            for index in range(workload.publishers)
        ]
        readies += await stage.add_publishers(
            publisher_tokens,
            workload.video,
            workload.audio,
            first_index=number * workload.publishers,
            hear_each_other=workload.publishers if workload.publishers_hear_each_other else 0,
        )
        if placed is not None:
            await placed(lesson)
    result["negotiated"] = [codecs for r in readies for codecs in r.get("codecs", [])]
    profiles = {p for r in readies for p in r.get("srtp_profiles", []) if p}
    # Wait until the server receives media, then note its memory with no subscriber.
    await stage.wait_server_receives()
    await asyncio.sleep(stage.options.settle)
    idle = procstat.sample(stage.server.process.pid)
    expect = expectations(workload)
    readies = []
    for number, lesson in enumerate(lessons):
        tokens = [
            stage.token(lesson, f"sub{i}", workload.subscriber_role) for i in range(subscribers)
        ]
        if tokens:
            readies += await stage.add_subscribers(tokens, expect, first_index=number * subscribers)
    if workload.churn:
        churners = [
            stage.token(lessons[0], f"churn{i}", workload.subscriber_role)
            for i in range(workload.churn)
        ]
        readies += await stage.add_subscribers(churners, expect, first_index=1000, churn=True)
    for entry in readies:
        result["errors"] += entry.get("errors", [])
        profiles.update(p for p in entry.get("srtp_profiles", []) if p and p != "None")
    result["srtp_profiles"] = sorted(profiles)
    result["raw"] = await _measure(stage, workload, idle, pids)
    arrivals = result["raw"].pop("arrivals")
    result["figures"] = derive(workload, result["raw"], subscribers * len(lessons))
    result["figures"].update(packet_latency(result["raw"]["publishers"], arrivals))
    # The send logs are only needed for the latency: keep the JSON small.
    for publisher in result["raw"]["publishers"]:
        for track in publisher["tracks"]:
            track.pop("sent", None)


async def _measure(
    stage: Stage, workload: Workload, idle: procstat.CpuSample, pids: Sequence[int] = ()
) -> dict[str, Any]:
    """The measurement window: samples at both ends (``pids`` one by one too), what
    every process counted."""
    assert stage.server is not None
    options = stage.options
    children = stage.children
    # The window, in wall-clock time shared by every process.
    start = time.time() + options.settle
    end = start + workload.duration
    for child in children:
        child.send({"start": start, "end": end})
    await asyncio.sleep(max(0.0, start - time.time()))
    pid = stage.server.process.pid
    cpu_start = procstat.sample(pid)
    machine_start = procstat.machine_ticks()
    tasks_start = procstat.task_ticks()
    # This process and every child (server, load, Janus): what the run itself used.
    ours_start = procstat.sample(os.getpid())
    load_start = [procstat.sample(c.process.pid) for c in children]
    pids_start = [procstat.sample(pid) for pid in pids]
    t_start = time.time()
    metrics_start = await stage.metrics()
    await asyncio.sleep(max(0.0, end - time.time()))
    cpu_end = procstat.sample(pid)
    machine_end = procstat.machine_ticks()
    tasks_end = procstat.task_ticks()
    ours_end = procstat.sample(os.getpid())
    load_end = [procstat.sample(c.process.pid) for c in children]
    pids_end = [procstat.sample(pid) for pid in pids]
    t_end = time.time()
    metrics_end = await stage.metrics()
    results = await asyncio.gather(
        *(c.next_event("result", 30 + options.ready_timeout) for c in children)
    )
    count = len(stage.publishers)
    load_cpu = [
        procstat.cpu_seconds(asdict(s), asdict(e))[0]
        for s, e in zip(load_start, load_end, strict=True)
    ]
    return {
        "window": [t_start, t_end],
        "nproc": os.cpu_count(),
        "server_idle": asdict(idle),
        "server_start": asdict(cpu_start),
        "server_end": asdict(cpu_end),
        "metrics_start": metrics_start,
        "metrics_end": metrics_end,
        "machine_busy_ticks": [
            machine_end[0] - machine_start[0],
            machine_end[1] - machine_start[1],
        ],
        "foreign_cpu_pct": procstat.foreign_cpu_pct(
            tasks_end - tasks_start,
            machine_end[1] - machine_start[1],
            ours_end.total - ours_start.total,
            t_end - t_start,
        ),
        "load_cpu_s": load_cpu,
        "pids_cpu_s": {
            str(pid): procstat.cpu_seconds(asdict(s), asdict(e))[0]
            for pid, s, e in zip(pids, pids_start, pids_end, strict=True)
        },
        "publishers": [p for r in results[:count] for p in r.get("publishers", [])],
        "publishers_received": [w for r in results[:count] for w in r.get("received", [])],
        "subscribers": [s for r in results[count:] for s in r.get("subscribers", [])],
        "churn": [s for r in results[count:] for s in r.get("churn", [])],
        "churn_counters": [s for r in results[count:] for s in r.get("churn_counters", [])],
        "arrivals": [a for r in results for a in r.get("arrivals", [])],
    }


def rounds_for(workload: Workload, options: RunOptions, headline_rounds: int) -> int:
    """Rounds per size: as asked, else the headline default for headline workloads."""
    if options.rounds is not None:
        return max(1, options.rounds)
    return headline_rounds if workload.headline else 1


async def run_workload(
    workload: Workload, options: RunOptions, rounds: int = 1
) -> list[dict[str, Any]]:
    """Every size of ``workload`` on every system, ``rounds`` times, interleaved.

    A ramp (W2) takes its sizes as steps; a system leaves it after the first step
    whose median figures cross a ramp limit (or where every round failed).
    """
    # Encode the media once, before anything is timed, so that processes only read it.
    if workload.video:
        load_video(workload.video, options.cache_dir)
    load_audio(options.cache_dir)
    runs: list[dict[str, Any]] = []
    stopped: dict[str, str] = {}
    steps, done = len(workload.sizes) * rounds * len(options.systems), 0
    for size in workload.sizes:
        at_size: dict[str, list[dict[str, Any]]] = {}
        for number in range(rounds):
            order = options.systems if number % 2 == 0 else tuple(reversed(options.systems))
            for system in order:
                if options.on_progress:
                    options.on_progress(done, steps, f"{workload.name}: {system} x{size}")
                done += 1
                if system in stopped:
                    continue
                _progress(
                    options,
                    f"{workload.name}: {system} with {size} subscribers, round "
                    f"{number + 1}/{rounds}, {workload.duration:.0f} s window ...",
                )
                run = await run_one(workload, system, size, options)
                run["round"] = number
                runs.append(run)
                if run.get("skipped"):
                    _progress(options, f"    {run['skipped']}")
                    continue
                at_size.setdefault(system, []).append(run)
                _progress(options, "    " + _summary_line(run))
        if workload.ramp:
            for system, system_runs in at_size.items():
                reason = ramp_stop_reason(_median_run(system_runs))
                if reason:
                    stopped[system] = reason
                    for run in system_runs:
                        run["ramp_stop"] = reason
                    _progress(options, f"    {system}: ramp stops ({reason})")
    if options.on_progress:
        options.on_progress(steps, steps, f"{workload.name}: done")
    return runs


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A run whose figures are the medians of ``runs`` (for the ramp's decision)."""
    with_figures = [r["figures"] for r in runs if r.get("figures")]
    if not with_figures:
        return {}
    keys = {k for figures in with_figures for k, v in figures.items() if isinstance(v, int | float)}
    median = {}
    for key in keys:
        found = spread([f.get(key) for f in with_figures])
        median[key] = found.median if found else None
    return {"figures": median}


def _progress(options: RunOptions, line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=options.progress, flush=True)


def _summary_line(run: dict[str, Any]) -> str:
    figures = run.get("figures") or {}
    return (
        "server CPU {} % of one core, {} packets/s, {} us/packet, loss {} %, video {} fps, "
        "latency p50 {} ms, machine {} %, other work {} % of a core, errors {}".format(
            _fmt(figures.get("server_cpu_pct")),
            _fmt(figures.get("forwarded_packets_per_s"), 0),
            _fmt(figures.get("cpu_us_per_packet")),
            _fmt(figures.get("loss_pct"), 2),
            _fmt(figures.get("video_fps_mean")),
            _fmt(figures.get("latency_p50_ms"), 2),
            _fmt(figures.get("machine_busy_pct"), 0),
            _fmt(figures.get("foreign_cpu_pct"), 0),
            len(run["errors"]),
        )
    )


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
