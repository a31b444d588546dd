"""Simulcast to a mix of viewers, against one layer (issue 11): ``--workload mix``.

Each round is a lesson of its own on one ``lco serve``: a teacher and an expert each
publish a 640x360 15 fps camera with a voice, either as three simulcast layers
(about 150 kbit/s, 500 kbit/s and 1.2 Mbit/s, :data:`media.simulcast.DEFAULT_LAYERS`)
or as the large layer alone (the same encoder, one layer); each round runs both, in
alternating order. Eight students receive them (aiortc peers in this process,
decoding):

- **stage** (3): show both videos as large as they come;
- **thumbnails** (2): show both at 160x90 (they say so in ``receive_settings``);
- **slow link** (2, a quarter): show the teacher as large as it comes and hide the
  expert (two videos do not fit in 300 kbit/s even at the smallest layer), their
  downlink shaped to 300 kbit/s (an HTB class on ``lo`` per viewer, a 20-packet
  queue, as the downlink workload);
- **audio only** (1): ask for no video.

After a warm-up that lets the slow viewers settle, a window measures what each
viewer received (kbit/s, from its subscribe connection's byte count), its stalls
(a video with no new frame for over a second), how often the size of a video it
decodes changed (layer switches per minute), and the server's CPU per packet it
forwarded (its counters, its process's CPU in nanoseconds).

Shaping needs ``tc`` and root in the test namespace: run it under
``scripts/netns-run``. ``tests/test_bench_viewer_mix.py`` runs one round of each.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from media.client import LessonClient, ReceivedTrack
from media.simulcast import DEFAULT_LAYERS
from media.testsource import PatternVideoTrack
from signaling.permissions import Role

from . import procstat
from .downlink import SHAPED_KBIT, Shaper, local_port
from .encoded import PreEncodedTrack, encode_audio
from .processes import decoding_on_loopback, http_json
from .runner import RunOptions, Stage
from .stats import paired_ratios, spread

VARIANTS = ("simulcast", "single")
# Viewer classes and how many of each: a quarter on slow links, one in eight audio only.
CLASSES = {"stage": 3, "thumbnails": 2, "slow": 2, "audio_only": 1}
THUMBNAIL = (160, 90)
STALL = 1.0  # seconds without a new frame of a video that counts as a stall
WARM_UP = 15.0  # seconds for the slow viewers' level to settle before the window
WINDOW = 20.0
READY_TIMEOUT = 30.0


@dataclass
class Viewer:
    """One student: its class, its client, the videos it decodes."""

    cls: str
    client: LessonClient
    videos: list[ReceivedTrack]


async def _received_bytes(client: LessonClient) -> int:
    """Bytes its subscribe connection received so far (media and RTCP, as on the wire)."""
    if client.subscribe_pc is None:
        return 0
    report = await client.subscribe_pc.getStats()
    return sum(int(s.bytesReceived) for s in report.values() if s.type == "transport")


def _window_figures(video: ReceivedTrack, start: float, end: float) -> tuple[float, int, int, int]:
    """The longest time without a new frame in the window, the stalls in it (one per
    gap over :data:`STALL`), the size changes in it, and its frames."""
    frames = [t for t in video.arrivals if start <= t <= end]
    gaps = [b - a for a, b in itertools.pairwise([start, *frames, end])]
    switches = sum(1 for t, _, _ in video.sizes if start <= t <= end)
    return max(gaps), sum(1 for g in gaps if g > STALL), switches, len(frames)


async def measure_round(
    stage: Stage, lesson: str, variant: str, shaper: Shaper, server_pid: int
) -> dict[str, Any]:
    """One round of ``variant`` (see the module's docstring): figures per viewer class
    and the server's cost."""

    def client(name: str, role: Role) -> LessonClient:
        return LessonClient(stage.url, stage.token(lesson, name, role))

    publishers = [client("Teacher", Role.TEACHER), client("Expert", Role.EXPERT)]
    viewers = [
        Viewer(cls, client(f"{cls}-{n}", Role.STUDENT), [])
        for cls, count in CLASSES.items()
        for n in range(count)
    ]
    everyone = [*publishers, *(v.client for v in viewers)]
    try:
        for participant in everyone:
            await participant.connect()
        layers = DEFAULT_LAYERS if variant == "simulcast" else DEFAULT_LAYERS[-1:]
        for publisher in publishers:
            camera = PatternVideoTrack(640, 360, fps=15, detail=0.1)
            voice = PreEncodedTrack(encode_audio(seconds=2))
            await publisher.publish([(camera, "camera"), (voice, "microphone")], simulcast=layers)
        ids = [p.participant_id or "" for p in publishers]
        for viewer in viewers:
            for publisher_id in ids:
                track = await viewer.client.wait_track(publisher_id, "video", READY_TIMEOUT)
                await LessonClient.wait_frames(track, 1, READY_TIMEOUT)
                viewer.videos.append(track)
            if viewer.cls == "thumbnails":
                sizes = {video.track_id: THUMBNAIL for video in viewer.videos}
                await viewer.client.receive_settings("auto", sizes)
            elif viewer.cls == "slow":
                viewer.videos, (hidden,) = viewer.videos[:1], viewer.videos[1:]
                await viewer.client.receive_settings("auto", {hidden.track_id: (0, 0)})
            elif viewer.cls == "audio_only":
                await viewer.client.receive_settings("audio_only")
        shaper.limit_each([local_port(v.client) for v in viewers if v.cls == "slow"], SHAPED_KBIT)
        await asyncio.sleep(WARM_UP)  # a measurement's warm-up, not a wait for an event

        metrics = stage.url.replace("ws://", "http://").removesuffix("/ws") + "/metrics.json"
        before = [await _received_bytes(v.client) for v in viewers]
        server_before = procstat.sample(server_pid)
        forwarded_before = ((await http_json(metrics)) or {})["sfu"]["packets_forwarded"]
        start = time.monotonic()
        await asyncio.sleep(WINDOW)  # the measurement window itself
        end = time.monotonic()
        forwarded = ((await http_json(metrics)) or {})["sfu"]["packets_forwarded"]
        server_after = procstat.sample(server_pid)
        after = [await _received_bytes(v.client) for v in viewers]

        seconds = end - start
        cpu, source = procstat.cpu_seconds(asdict(server_before), asdict(server_after))
        packets = forwarded - forwarded_before
        classes: dict[str, dict[str, Any]] = {}
        for cls in CLASSES:
            members = [(i, v) for i, v in enumerate(viewers) if v.cls == cls]
            kbits = [(after[i] - before[i]) * 8 / seconds / 1000 for i, _ in members]
            figures = [_window_figures(video, start, end) for _, v in members for video in v.videos]
            video_off = cls == "audio_only"
            classes[cls] = {
                "viewers": len(members),
                "video_frames": sum(f[3] for f in figures),
                "kbit_s": statistics.median(kbits),
                "longest_gap_s": None if video_off else max(f[0] for f in figures),
                "stalls": None if video_off else sum(f[1] for f in figures),
                "switches_per_min": None
                if video_off
                else sum(f[2] for f in figures) / len(figures) / (seconds / 60),
                "sizes": sorted({f"{v.width}x{v.height}" for _, m in members for v in m.videos}),
            }
        return {
            "variant": variant,
            "window_s": seconds,
            "classes": classes,
            "server_cpu_pct": 100 * cpu / seconds,
            "cpu_source": source,
            "forwarded_packets_per_s": packets / seconds,
            "cpu_us_per_packet": 1e6 * cpu / packets if packets else None,
            "errors": [str(m) for c in everyone for m in c.errors][:5],
        }
    finally:
        shaper.lift()
        for participant in everyone:
            await participant.close()


async def run_viewer_mix(options: RunOptions, rounds: int) -> dict[str, Any]:
    """``rounds`` rounds of each variant, interleaved, on one server."""
    why = Shaper.available()
    if why:
        raise RuntimeError(why)
    options = replace(options, host="127.0.0.1")  # shaping on ``lo`` sees the media
    stage = Stage("ours", "mix", options, deadline=rounds * 240.0 + 300.0)
    measured: list[dict[str, Any]] = []
    errors: list[str] = []
    with decoding_on_loopback():
        try:
            await stage.start()
            assert stage.server is not None
            pid = stage.server.process.pid
            for number in range(rounds):
                order = VARIANTS if number % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    lesson = f"mix-{number + 1}-{variant}"
                    other_work = procstat.ForeignWork()
                    try:
                        figures = await measure_round(stage, lesson, variant, Shaper(), pid)
                    except Exception as exc:
                        errors.append(f"round {number + 1} {variant}: {type(exc).__name__}: {exc}")
                        continue
                    figures["round"] = number + 1
                    figures["foreign_cpu_pct"] = other_work.pct()
                    measured.append(figures)
                    print(
                        f"  round {number + 1} {variant}: {round_line(figures)}",
                        file=options.progress,
                    )
        finally:
            exit_code = await stage.stop()
    return {
        "system": "ours",
        "classes": dict(CLASSES),
        "shaped_kbit": SHAPED_KBIT,
        "window_s": WINDOW,
        "rounds": measured,
        "summary": summarise(measured),
        "errors": errors,
        "server_exit": exit_code,
    }


CLASS_FIGURES = ("kbit_s", "longest_gap_s", "stalls", "switches_per_min")


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: each class's figures and the server's, median [min-max] over rounds;
    and the ratio simulcast / single of CPU per forwarded packet, round by round."""
    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        mine = [r for r in rounds if r["variant"] == variant]
        classes = {
            cls: {
                key: _as_dict(spread([r["classes"][cls][key] for r in mine]))
                for key in CLASS_FIGURES
            }
            for cls in CLASSES
        }
        server = {
            key: _as_dict(spread([r[key] for r in mine]))
            for key in ("server_cpu_pct", "forwarded_packets_per_s", "cpu_us_per_packet")
        }
        summary[variant] = {"rounds": len(mine), "classes": classes, "server": server}
    by_round: dict[int, dict[str, float | None]] = {}
    for r in rounds:
        by_round.setdefault(r["round"], {})[r["variant"]] = r["cpu_us_per_packet"]
    paired = [v for v in by_round.values() if len(v) == 2]
    ratio = paired_ratios([v["simulcast"] for v in paired], [v["single"] for v in paired])
    summary["cpu_per_packet_ratio"] = _as_dict(ratio)
    return summary


def _as_dict(found: Any) -> dict[str, Any] | None:
    return found.as_dict() if found is not None else None


def _cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def round_line(figures: dict[str, Any]) -> str:
    """One round, as the progress shows it."""
    parts = [f"{cls} {_cell(c['kbit_s'], 0)} kbit/s" for cls, c in figures["classes"].items()]
    return (
        ", ".join(parts)
        + f"; server {_cell(figures['cpu_us_per_packet'])} us/packet, "
        + f"{_cell(figures['forwarded_packets_per_s'], 0)} packets/s"
    )


def summary_lines(document: dict[str, Any]) -> list[str]:
    """What ``lco bench run --workload mix`` prints at the end."""
    body = document["mix"]
    summary = body["summary"]
    lines = [f"simulcast to a mix of viewers, against one layer: {len(body['rounds'])} runs"]
    for variant in VARIANTS:
        found = summary[variant]
        lines.append(f"  {variant} ({found['rounds']} rounds):")
        for cls, figures in found["classes"].items():
            kbit = figures["kbit_s"]
            gap = figures["longest_gap_s"]
            lines.append(
                f"    {cls}: {_cell(kbit and kbit['median'], 0)} kbit/s, longest gap "
                f"{_cell(gap and gap['median'], 2)} s, switches/min "
                f"{_cell(figures['switches_per_min'] and figures['switches_per_min']['median'])}"
            )
        cost = found["server"]["cpu_us_per_packet"]
        lines.append(f"    server: {_cell(cost and cost['median'])} us per forwarded packet")
    ratio = summary["cpu_per_packet_ratio"]
    if ratio:
        lines.append(
            f"  CPU per packet, simulcast/single: {ratio['median']:.2f} "
            f"[{ratio['low']:.2f}-{ratio['high']:.2f}]"
        )
    return lines + [f"  error: {e}" for e in body["errors"]]
