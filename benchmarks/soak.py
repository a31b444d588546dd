"""The soak: one realistic lesson for an hour, watched every 10 s (issue 8, item 5).

A lesson lasts 45 to 90 minutes; every other benchmark window is seconds long. The
lesson: a teacher at 1280x720 30 fps, an expert at 640x480 20 fps, eight classrooms
each publishing a 640x360 15 fps room camera, every one of them with Opus audio;
every classroom, the teacher and the expert receive everyone else (as our server
subscribes them), and N students receive everyone, in the aiortc load processes,
optionally with real Chromium students (``--browsers``).

Every 10 s (a tick, the same wall-clock instant in every process) each publisher
process reports the packets it has sent per track, and every receiver what it has
received per track (packets and frames); :mod:`benchmarks.soak_analysis` turns them
into stalls (a window with no media: count, when, how long) and loss against what
was sent. Every minute the orchestrator samples the server: CPU (nanoseconds), RSS,
open descriptors and threads, whose least-squares trends after a warm-up say
whether they are flat.

Load modes: ``mixed`` (default) makes the ten publishers raw (signalling, ICE,
DTLS and RTCP in aiortc, media as SRTP through pylibsrtp: ``benchmarks/rawmedia.py``)
and the students full aiortc peers. Ten full aiortc publishers that each receive
nine 720p/480p/360p videos and nine audio tracks would cost the load more than this
2-core machine has (about 100 µs per received packet); ``aiortc`` makes everyone a
full aiortc peer (for a smaller lesson, ``--classrooms``), ``raw`` everyone raw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from signaling.permissions import Role

from . import procstat
from .browsers import BrowserStudents, unavailable
from .encoded import load_audio, load_video
from .processes import Child
from .runner import RunOptions, Stage
from .soak_analysis import Receiver, analyse, per_minute, stall_summary, track_name, trends

SOAK_MODES = ("mixed", "aiortc", "raw")


@dataclass(frozen=True, slots=True)
class SoakPlan:
    """The lesson and how long it is watched."""

    minutes: float = 60.0
    students: int = 4
    classrooms: int = 8
    browsers: int = 0
    load: str = "mixed"
    period: float = 10.0  # seconds per window
    sample_every: float = 60.0  # seconds between server samples
    warmup_minutes: float = 2.0  # left out of the trends (allocator and caches settle)
    teacher_video: str = "720p30"
    expert_video: str = "480p20"
    classroom_video: str = "360p15"

    @property
    def publishers(self) -> int:
        """Teacher, expert and classrooms."""
        return 2 + self.classrooms


def _raw_for(plan: SoakPlan, role: str) -> bool:
    if plan.load == "raw":
        return True
    if plan.load == "aiortc":
        return False
    return role == "publisher"


async def run_soak(system: str, plan: SoakPlan, options: RunOptions) -> dict[str, Any]:
    """Run the lesson for ``plan.minutes``; returns the results document's body."""
    for video in {plan.teacher_video, plan.expert_video, plan.classroom_video}:
        load_video(video, options.cache_dir)  # encode once, before anything is timed
    load_audio(options.cache_dir)
    seconds = plan.minutes * 60.0
    stage = Stage(system, f"soak-{system}", options, deadline=seconds + 600.0)
    browsers: BrowserStudents | None = None
    lesson = "soak"
    errors: list[str] = []
    try:
        await stage.start()
        assert stage.server is not None
        raw = _raw_for(plan, "publisher")
        await stage.add_publishers(
            [stage.token(lesson, "Teacher", Role.TEACHER)], plan.teacher_video, True, 0, raw=raw
        )
        await stage.add_publishers(
            [stage.token(lesson, "Expert", Role.EXPERT)], plan.expert_video, True, 1, raw=raw
        )
        classrooms = [
            stage.token(lesson, f"Classroom {n + 1}", Role.CLASSROOM)
            for n in range(plan.classrooms)
        ]
        await stage.add_publishers(classrooms, plan.classroom_video, True, 2, raw=raw)
        await stage.wait_server_receives()
        expect = ["--expect-video", str(plan.publishers), "--expect-audio", str(plan.publishers)]
        students = [
            stage.token(lesson, f"Student {n + 1}", Role.STUDENT) for n in range(plan.students)
        ]
        raw = _raw_for(plan, "student")
        # A full aiortc student receives every track of the lesson: one per process, or
        # the students of one process lose packets to each other's CPU (not the server's).
        per_process = options.per_process or (None if raw else 1)
        readies = await stage.add_subscribers(
            students, expect, first_index=100, raw=raw, per_process=per_process
        )
        for ready in readies:
            errors += ready.get("errors", [])
        if plan.browsers:
            why = unavailable(options.host)
            if why:
                raise RuntimeError(why)
            browsers = BrowserStudents()
            port = stage.url.rsplit(":", 1)[1].split("/")[0]
            links = [
                f"http://127.0.0.1:{port}/join#token="
                + stage.token(lesson, f"Browser {n + 1}", Role.STUDENT)
                for n in range(plan.browsers)
            ]
            await browsers.start(links)
            await browsers.wait_tracks(plan.publishers, plan.publishers)
        body = await _watch(stage, plan, browsers)
    except Exception as exc:
        errors.append(f"soak failed: {type(exc).__name__}: {exc}")
        body = {}
    finally:
        if browsers is not None:
            errors += browsers.errors[:20]
            await browsers.close()
        exit_code = await stage.stop()
    return {
        "system": system,
        "plan": asdict(plan),
        "errors": errors,
        "server_exit": exit_code,
        **body,
    }


async def _watch(stage: Stage, plan: SoakPlan, browsers: BrowserStudents | None) -> dict[str, Any]:
    """Ticks from every process, server samples every minute, until the end."""
    assert stage.server is not None
    t0 = time.time() + 2.0
    end = t0 + plan.minutes * 60.0
    command = {"soak": {"t0": t0, "period": plan.period, "end": end}}
    for child in stage.children:
        child.send(command)
    sent: dict[int, dict[str, int]] = {}
    receivers: dict[str, Receiver] = {}
    timeout = plan.period * 3 + 60
    results = await asyncio.gather(
        *(
            _read_ticks(c, sent, receivers, _raw_for(plan, "publisher"), timeout)
            for c in stage.publishers
        ),
        *(
            _read_ticks(c, sent, receivers, _raw_for(plan, "student"), timeout)
            for c in stage.subscribers
        ),
        _sample_server(stage, t0, end, plan.sample_every),
        _browser_ticks(browsers, receivers, t0, end, plan.period),
    )
    samples: list[dict[str, Any]] = results[-2] or []
    # Who each publisher is: pub0 the teacher, pub1 the expert, then the classrooms.
    roles = {0: "teacher", 1: "expert"}
    names = {
        r.own: roles.get(int(r.name[3:]), f"classroom{int(r.name[3:]) - 1}")
        for r in receivers.values()
        if r.own and r.name.startswith("pub") and r.name[3:].isdigit()
    }
    analysis = analyse(sent, list(receivers.values()), plan.period)
    stalls = analysis.pop("stalls")
    minutes = per_minute(samples)
    found_trends = trends(minutes, plan.warmup_minutes)
    growing = sorted(k for k, v in found_trends.items() if v["verdict"] == "growing")
    return {
        "t0": t0,
        "ticks": len(sent),
        "publishers": names,
        "summary": {
            "stalls": stall_summary(stalls),
            "loss": analysis["loss"],
            "tracks": analysis["tracks"],
            "receivers": analysis["receivers"],
            "growing": growing,
            "ok": not stalls and not growing,
        },
        "stalls": [s.as_dict() for s in stalls[:200]],
        "server_minutes": minutes,
        "trends": found_trends,
        "raw": {
            "sent": sent,
            "receivers": {name: asdict(r) for name, r in receivers.items()},
            "server_samples": samples,
        },
    }


async def _read_ticks(
    child: Child,
    sent: dict[int, dict[str, int]],
    receivers: dict[str, Receiver],
    raw: bool,
    timeout: float,
) -> None:
    """Fold one load process's tick events into ``sent`` and ``receivers``."""
    kind = "raw" if raw else "aiortc"
    with contextlib.suppress(TimeoutError, EOFError):
        async for event in child.events(timeout):
            if event.get("event") == "result":
                return
            if event.get("event") != "tick":
                continue
            number = int(event["k"])
            for publisher in event.get("publishers", []):
                sent.setdefault(number, {}).update(
                    {track: int(v["packets"]) for track, v in publisher["sent"].items()}
                )
                name = publisher["name"]
                receiver = receivers.setdefault(
                    name, Receiver(name, kind, own=publisher.get("participant_id"))
                )
                receiver.ticks[number] = publisher["tracks"]
            for subscriber in event.get("subscribers", []):
                name = subscriber["name"]
                receivers.setdefault(name, Receiver(name, kind)).ticks[number] = subscriber[
                    "tracks"
                ]


async def _sample_server(stage: Stage, t0: float, end: float, every: float) -> list[dict[str, Any]]:
    """The server's CPU (ns), RSS, descriptors and threads, and the machine, each
    ``every`` seconds from ``t0`` to ``end``."""
    assert stage.server is not None
    pid = stage.server.process.pid
    samples = []
    at = t0
    machine_before = procstat.machine_ticks()
    tasks_before = procstat.task_ticks()
    ours_before = procstat.sample(os.getpid()).total
    wall_before = time.time()
    while at <= end + 1e-6:
        delay = at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        sample = procstat.sample(pid)
        now = time.time()
        machine, tasks = procstat.machine_ticks(), procstat.task_ticks()
        ours = procstat.sample(os.getpid()).total
        busy, total = machine[0] - machine_before[0], machine[1] - machine_before[1]
        foreign = procstat.foreign_cpu_pct(
            tasks - tasks_before, total, ours - ours_before, now - wall_before
        )
        machine_before, tasks_before, ours_before, wall_before = machine, tasks, ours, now
        load_ns = sum(procstat.sample(c.process.pid).cpu_ns for c in stage.children)
        samples.append(
            {
                "t": now,
                "t_rel": now - t0,
                "cpu_ns": sample.cpu_ns,
                "rss_bytes": sample.rss_bytes,
                "fds": sample.fds,
                "threads": sample.threads,
                "load_cpu_ns": load_ns,
                "machine_busy_pct": 100.0 * busy / total if total else 0.0,
                "foreign_cpu_pct": foreign,
            }
        )
        at += every
    return samples


async def _browser_ticks(
    browsers: BrowserStudents | None,
    receivers: dict[str, Receiver],
    t0: float,
    end: float,
    period: float,
) -> None:
    """Read every page at each tick (the same instants as the load processes)."""
    if browsers is None:
        return
    number = 0
    while t0 + number * period <= end + 1e-6:
        delay = t0 + number * period - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for page in await browsers.sample():
            name = page["name"]
            receivers.setdefault(name, Receiver(name, "browser")).ticks[number] = page["tracks"]
        number += 1


def _pct(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_lines(document: dict[str, Any]) -> list[str]:
    """The printed summary of a soak."""
    soak = document["soak"]
    plan = soak["plan"]
    lines = [
        f"soak ({soak['system']}): {plan['minutes']:g} min, teacher {plan['teacher_video']}, "
        f"expert {plan['expert_video']}, {plan['classrooms']} classrooms "
        f"{plan['classroom_video']}, {plan['students']} students, {plan['browsers']} browsers, "
        f"load {plan['load']}; {soak.get('ticks', 0)} ticks of {plan['period']:g} s",
    ]
    summary = soak.get("summary")
    if not summary:
        return [*lines, *soak["errors"]]
    stalls = summary["stalls"]
    if stalls["count"]:
        lines.append(
            f"STALLS: {stalls['count']} on {stalls['tracks']} tracks at {stalls['receivers']} "
            f"receivers; first at {stalls['first_start_s']:.0f} s, longest "
            f"{stalls['longest_s']:.0f} s, {stalls['total_s']:.0f} s in all ({stalls['by_reason']})"
        )
        for stall in soak["stalls"][:10]:
            lines.append(
                f"  {stall['receiver']} ({stall['receiver_kind']}) "
                f"{track_name(stall['track'], soak.get('publishers', {}))}: "
                f"from {stall['start_s']:.0f} s for {stall['duration_s']:.0f} s, {stall['reason']}"
            )
    else:
        lines.append(
            f"no stall: every receiver got media on each of {summary['tracks']} tracks "
            "in every window"
        )
    for kind, loss in summary["loss"].items():
        lines.append(
            f"loss at {kind} receivers against what was sent: {_pct(loss['loss_pct'], 3)} % "
            f"({loss['packets_received']:,} of {loss['packets_sent']:,} packets), worst window "
            f"{loss['worst_window_loss_pct']} %, {loss['windows_with_loss']} of {loss['windows']} "
            f"windows lost more than {loss.get('lossy_above_pct', 1.0):g} %"
        )
    for fitted in soak["trends"].values():
        if "slope_per_hour" not in fitted:
            lines.append(f"{fitted['label']}: {fitted['verdict']}")
            continue
        lines.append(
            f"{fitted['label']}: {fitted['verdict']} (slope {fitted['slope_per_hour']} "
            f"± {fitted['slope_se']} {fitted['unit']}, scatter {fitted['residual_sd']}, "
            f"{fitted['points']} minutes)"
        )
    minutes = soak.get("server_minutes") or []
    if minutes:
        last = minutes[-1]
        lines.append(
            f"server at the end: {last['cpu_pct']} % CPU, {last['rss_mib']} MiB, "
            f"{last['fds']} fds, {last['threads']} threads"
        )
    lines.append("verdict: " + ("ok" if summary["ok"] else "NOT OK"))
    return lines + [f"error: {e}" for e in soak["errors"]]
