"""How fast a viewer's video follows its downlink (issue 11): ``--workload downlink``.

Each round is a lesson of its own on one ``lco serve``: a teacher publishes a
640x360 15 fps camera as three simulcast layers (about 150 kbit/s, 500 kbit/s and
1.2 Mbit/s, :data:`media.simulcast.DEFAULT_LAYERS`) with a voice, and two viewers
decode it (aiortc peers in this process; with ``--viewer browser`` the first is a
headless Chromium page instead, :mod:`benchmarks.chromium_viewer`). Once both show
the large layer, the first viewer's downlink is shaped to 300 kbit/s (an HTB class on
``lo`` for its UDP port, with a short queue, as a congested home router's: what does
not fit is lost). The round measures

- **down**: seconds from the shaping until the viewer decodes the smallest layer (and
  **decided**: until the server tells it, in `receive_quality`, that its level went down);
- **stall**: the longest time between two decoded frames from the shaping until 30
  frames after that (the picture the viewer sees frozen);
- **other's stall**: the same for the viewer on the good link, the smallest size it
  showed meanwhile, and when it shows the large layer (it must not be held down by
  the slow one);
- **stay stall**: the viewer then stays on the slow link for :data:`STAY_SECONDS`,
  as a student on a weak home connection does for the whole lesson; the server
  probes it with padding every 5 to 10 s meanwhile, and a probe the link does not
  carry must not freeze its picture: the longest time between two decoded frames
  during the stay;
- **up**: seconds from lifting the shaping until the viewer decodes the large layer
  again (the server probes with padding before each step up).

An aiortc viewer gives the server only loss signals (NACKs, receiver reports);
Chromium can also send transport-wide congestion-control feedback, which is why the
round is measured with both. Shaping needs ``tc`` and root in the test namespace: run
it under ``scripts/netns-run``. ``tests/test_downlink.py`` runs one round of the same
code, ``tests/browser/test_downlink_browser.py`` one with the Chromium viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from media.client import LessonClient, ReceivedTrack
from media.simulcast import DEFAULT_LAYERS
from media.testsource import PatternVideoTrack
from signaling.permissions import Role

from . import procstat
from .browsers import BrowserStudents, unavailable
from .encoded import PreEncodedTrack, encode_audio
from .processes import decoding_at, decoding_on_loopback
from .runner import RunOptions, Stage
from .stats import rounds_lines, rounds_summary, seconds_text

LARGE, SMALL = (640, 360), (160, 90)
SHAPED_KBIT = 300
# What the issue asks of a viewer whose link drops (seconds): its worst round counts.
# Its stall target holds while it stays on the slow link too.
TARGETS = {"down_s": 5.0, "stall_s": 1.0, "stay_stall_s": 1.0, "up_s": 20.0}
DOWN_TIMEOUT, UP_TIMEOUT = 30.0, 90.0  # a round that takes longer reports no figure
# Seconds on the slow link after the step down: long enough for two or three probes.
STAY_SECONDS = 30.0
FIGURES = ("decided_s", "down_s", "stall_s", "other_stall_s", "stay_stall_s", "up_s")


class Shaper:
    """HTB classes on ``lo``, one per UDP port whose incoming traffic is limited."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    @staticmethod
    def available() -> str | None:
        """Why shaping cannot work here (None: it can)."""
        if os.environ.get("LCO_IN_NETNS") != "1":
            return "shaping traffic needs the test network namespace (scripts/netns-run)"
        return None

    def tc(self, *args: str) -> None:
        """Run ``tc`` with ``args``."""
        subprocess.run(["tc", *args], check=True, capture_output=True)

    def limit_each(self, ports: list[int], kbit: int) -> None:
        """Let at most ``kbit`` kbit/s reach each of ``ports`` (a link of its own each)."""
        self._shape([[port] for port in ports], kbit)

    def limit_together(self, ports: list[int], kbit: int) -> None:
        """Let at most ``kbit`` kbit/s reach ``ports`` together: one viewer's link, all
        the ports its connection may receive on (a browser has a candidate per address
        and may move to another pair of them)."""
        self._shape([ports] if ports else [], kbit)

    def _shape(self, links: list[list[int]], kbit: int) -> None:
        """One HTB class of ``kbit`` per list of ``links``, matching its ports."""
        if not links:
            return
        self.ports = [port for ports in links for port in ports]
        self.tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10")
        self.tc(
            "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit"
        )
        for number, ports in enumerate(links, 20):
            self.tc(
                "class", "add", "dev", "lo", "parent", "1:", "classid", f"1:{number}",
                "htb", "rate", f"{kbit}kbit", "ceil", f"{kbit}kbit", "burst", "8k",
            )  # fmt: skip
            # A short queue, as a congested home router's: what does not fit is lost.
            self.tc("qdisc", "add", "dev", "lo", "parent", f"1:{number}", "pfifo", "limit", "20")
            for port in ports:
                self.tc(
                    "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "u32",
                    "match", "ip", "protocol", "17", "0xff", "match", "ip", "dport", str(port),
                    "0xffff", "flowid", f"1:{number}",
                )  # fmt: skip

    def lift(self) -> None:
        """Remove the shaping."""
        if self.ports:
            self.tc("qdisc", "del", "dev", "lo", "root")
            self.ports = []


def local_port(client: LessonClient) -> int:
    """The UDP port the viewer's subscribe connection receives on (ICE host candidate)."""
    assert client.subscribe_pc is not None
    transport = client.subscribe_pc.getTransceivers()[0].receiver.transport.transport
    (candidate,) = transport.iceGatherer.getLocalCandidates()
    port: int = candidate.port
    return port


async def reaches(track: ReceivedTrack, size: tuple[int, int], timeout: float) -> float | None:
    """Seconds until ``track`` decodes frames of ``size``; None if not within ``timeout``.

    Counted to the first frame of that size as the track noted it (a browser's frames
    are read from its page a moment after it showed them)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while (track.width, track.height) != size:
                track.progress.clear()
                await track.progress.wait()
    except TimeoutError:
        return None
    at = next((t for t, w, h in reversed(track.sizes) if (w, h) == size), started)
    return max(0.0, at - started)


def longest_gap(track: ReceivedTrack, since: float) -> tuple[float, float | None]:
    """The longest time between two decoded frames after ``since`` (monotonic), and
    when it began (seconds after ``since``; None without two frames)."""
    times = [t for t in track.arrivals if t >= since]
    gaps = [(b - a, a - since) for a, b in itertools.pairwise(times)]
    gap, began = max(gaps, default=(0.0, None))
    return gap, began


def window_stall(track: ReceivedTrack, start: float, end: float) -> float:
    """The longest time without a new frame from ``start`` to ``end`` (monotonic),
    counting from the window's edges: a picture frozen all along is all of it."""
    times = [start, *(t for t in track.arrivals if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(times))


@dataclass(frozen=True, slots=True)
class Lesson:
    """Where a round's participants join: the signalling URL and who mints tokens."""

    ws: str
    token: Callable[[str, Role], str]

    def link(self, name: str, role: Role) -> str:
        """A join link for a browser: the page served next to the signalling."""
        base = self.ws.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        return f"{base.removesuffix('/ws')}/join#token={self.token(name, role)}"


class Viewer(Protocol):
    """The viewer whose link drops: an aiortc peer or a Chromium page."""

    kind: str  # what the results call it: "aiortc" or "browser"

    async def join(self, lesson: Lesson, name: str, role: Role) -> None:
        """Join ``lesson`` (connected, not yet receiving anything in particular)."""

    async def video(self, publisher_id: str) -> ReceivedTrack:
        """The camera of ``publisher_id`` as this viewer decodes it, once it has a frame."""

    async def ports(self) -> list[int]:
        """The UDP ports its subscribe connection receives on (the one in use first)."""

    def watch_level(self) -> None:
        """From now on, note when the server says (``receive_quality``) that this
        viewer's level went down."""

    async def lowered_at(self) -> float | None:
        """When (monotonic) the server first said so since :meth:`watch_level`, waiting
        for it up to :data:`DOWN_TIMEOUT` from then; None if it did not."""

    async def details(self, shaped_at: float, stall_until: float) -> dict[str, Any]:
        """More of the round, for its results (what only this kind of viewer knows);
        the stall was measured from ``shaped_at`` to ``stall_until`` (monotonic)."""

    @property
    def errors(self) -> list[str]:
        """What went wrong on its side."""

    async def close(self) -> None:
        """Leave the lesson."""


class AiortcViewer:
    """An aiortc peer (``LessonClient``) in this process, as the other viewer is."""

    kind = "aiortc"

    def __init__(self) -> None:
        self.client: LessonClient | None = None
        self._told: list[float] = []
        self._waiting: asyncio.Future[dict[str, Any]] | None = None

    async def join(self, lesson: Lesson, name: str, role: Role) -> None:
        self.client = LessonClient(lesson.ws, lesson.token(name, role))
        await self.client.connect()

    async def video(self, publisher_id: str) -> ReceivedTrack:
        assert self.client is not None
        return await self.client.wait_track(publisher_id, "video")

    async def ports(self) -> list[int]:
        assert self.client is not None
        return [local_port(self.client)]

    def watch_level(self) -> None:
        assert self.client is not None

        def lowered(message: dict[str, Any]) -> bool:
            if message["type"] == "receive_quality" and message["level"] != "high":
                self._told.append(time.monotonic())
                return True
            return False

        self._waiting = asyncio.ensure_future(self.client.wait_for(lowered, DOWN_TIMEOUT))

    async def lowered_at(self) -> float | None:
        if self._waiting is not None:
            with contextlib.suppress(TimeoutError):
                await self._waiting
        return self._told[0] if self._told else None

    async def details(self, shaped_at: float, stall_until: float) -> dict[str, Any]:
        return {}

    @property
    def errors(self) -> list[str]:
        return [str(m) for m in self.client.errors] if self.client is not None else []

    async def close(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
        if self.client is not None:
            await self.client.close()


async def measure_round(
    lesson: Lesson, shaper: Shaper, slow: Viewer | None = None, stay: float = STAY_SECONDS
) -> dict[str, Any]:
    """One round (see the module's docstring) with ``slow`` on the link that drops (an
    aiortc peer unless told), staying there ``stay`` seconds after its step down: its
    figures, None where a step did not happen within its time."""
    slow = slow if slow is not None else AiortcViewer()
    teacher, fast = (
        LessonClient(lesson.ws, lesson.token(name, role))
        for name, role in (("T", Role.TEACHER), ("Room", Role.CLASSROOM))
    )
    try:
        await teacher.connect()
        await slow.join(lesson, "Home", Role.STUDENT)
        await fast.connect()
        camera = PatternVideoTrack(*LARGE, fps=15, detail=0.1)
        voice = PreEncodedTrack(encode_audio(seconds=2))
        await teacher.publish([(camera, "camera"), (voice, "microphone")], simulcast=DEFAULT_LAYERS)
        teacher_id = teacher.participant_id or ""
        slow_video = await slow.video(teacher_id)
        fast_video = await fast.wait_track(teacher_id, "video")
        for video in (slow_video, fast_video):
            if await reaches(video, LARGE, DOWN_TIMEOUT) is None:
                raise RuntimeError("a viewer never got the large layer on a good link")

        slow.watch_level()
        ports = await slow.ports()
        shaped_at = time.monotonic()
        shaper.limit_together(ports, SHAPED_KBIT)
        down = await reaches(slow_video, SMALL, DOWN_TIMEOUT)
        told = await slow.lowered_at()
        decided = told - shaped_at if told is not None else None
        if down is not None:
            await LessonClient.wait_frames(slow_video, 30)  # it goes on at the small size
        stall, stall_from = longest_gap(slow_video, shaped_at)
        stall_until = time.monotonic()
        other_stall, _ = longest_gap(fast_video, shaped_at)
        other_smallest = min(
            ((w, h) for t, w, h in fast_video.sizes if t >= shaped_at), default=LARGE
        )
        # The other viewer is not held down by the slow one (on a busy machine it may
        # step down a while itself, and climbs back on its own).
        other_large = await reaches(fast_video, LARGE, UP_TIMEOUT)
        stay_from = time.monotonic()
        await asyncio.sleep(stay)  # a measurement window: the probes come as they come
        stayed = window_stall(slow_video, stay_from, time.monotonic())
        stay_stall = stayed if down is not None and stay > 0 else None
        shaper.lift()
        lifted_at = time.monotonic()
        up = await reaches(slow_video, LARGE, UP_TIMEOUT) if down is not None else None
        return {
            "down_s": down,
            "decided_s": decided,
            "stall_s": stall,
            "stall_from_s": None if stall_from is None else round(stall_from, 3),
            "other_stall_s": other_stall,
            "other_smallest": list(other_smallest),
            "other_large_s": other_large,
            "stay_s": stay,
            "stay_stall_s": stay_stall,
            "up_s": up,
            "sizes": [
                [round(t - shaped_at, 3), w, h] for t, w, h in slow_video.sizes if t >= shaped_at
            ],
            "lifted_s": round(lifted_at - shaped_at, 3),
            **await slow.details(shaped_at, stall_until),
            "errors": [str(m) for m in (*teacher.errors, *slow.errors, *fast.errors)][:5],
        }
    finally:
        shaper.lift()
        await teacher.close()
        await slow.close()
        await fast.close()


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of each figure over rounds, and each target met or not (by
    the worst round; a round that did not step at all misses it)."""
    return rounds_summary(rounds, FIGURES, TARGETS)


VIEWERS = ("aiortc", "browser")


async def run_downlink(options: RunOptions, rounds: int, viewer: str = "aiortc") -> dict[str, Any]:
    """``rounds`` rounds on one server, the viewer whose link drops an aiortc peer or
    (``viewer`` "browser") a Chromium page; returns the results document's body."""
    if viewer not in VIEWERS:
        raise ValueError(f"the viewer is one of {', '.join(VIEWERS)}")
    why = Shaper.available()
    if why:
        raise RuntimeError(why)
    browsers: BrowserStudents | None = None
    new_viewer: Callable[[], Viewer] = AiortcViewer
    if viewer == "browser":
        # Chromium gathers no candidates on loopback: everyone on the namespace's veth
        # address, whose traffic still goes through ``lo``, where the shaping is.
        why = unavailable(options.host)
        if why:
            raise RuntimeError(why)
        from .chromium_viewer import ChromiumViewer

        peers = decoding_at(options.host)
        browsers = chromium = BrowserStudents()

        def new_viewer() -> Viewer:
            return ChromiumViewer(chromium)

    else:
        # Viewers, teacher and server all on loopback: the shaping on ``lo`` sees the media.
        options = replace(options, host="127.0.0.1")
        peers = decoding_on_loopback()
    stage = Stage("ours", "downlink", options, deadline=rounds * 300.0 + 300.0)
    measured: list[dict[str, Any]] = []
    errors: list[str] = []
    with peers:
        try:
            await stage.start()
            if browsers is not None:
                await browsers.launch()
            for number in range(rounds):
                lesson = Lesson(stage.url, _tokens(stage, f"downlink-{number + 1}"))
                other_work = procstat.ForeignWork()
                try:
                    figures = await measure_round(lesson, Shaper(), new_viewer())
                except Exception as exc:
                    errors.append(f"round {number + 1}: {type(exc).__name__}: {exc}")
                    continue
                figures["foreign_cpu_pct"] = other_work.pct()
                measured.append(figures)
                print(f"  round {number + 1}: {round_line(figures)}", file=options.progress)
        finally:
            if browsers is not None:
                await browsers.close()
            exit_code = await stage.stop()
    return {
        "system": "ours",
        "viewer": viewer,
        "shaped_kbit": SHAPED_KBIT,
        "large": list(LARGE),
        "small": list(SMALL),
        "rounds": measured,
        "summary": summarise(measured),
        "errors": errors,
        "server_exit": exit_code,
    }


def _tokens(stage: Stage, lesson: str) -> Callable[[str, Role], str]:
    """Who mints a round's tokens: each round is a lesson of its own."""

    def token(name: str, role: Role) -> str:
        return stage.token(lesson, name, role)

    return token


def round_line(figures: dict[str, Any]) -> str:
    """One round, as the progress shows it."""
    down, stall, other, stay, up = (
        seconds_text(figures[key])
        for key in ("down_s", "stall_s", "other_stall_s", "stay_stall_s", "up_s")
    )
    return (
        f"down {down} s, stall {stall} s, other's stall {other} s, "
        f"stall while staying {stay} s, up {up} s"
    )


def summary_lines(document: dict[str, Any]) -> list[str]:
    """What ``lco bench run --workload downlink`` prints at the end."""
    body = document["downlink"]
    summary = body["summary"]
    who = "a Chromium viewer" if body.get("viewer") == "browser" else "a viewer"
    header = f"{who}'s link drops to {body['shaped_kbit']} kbit/s: {summary['rounds']} rounds"
    return [header, *rounds_lines(summary, body["errors"])]
