"""The figures of one run, derived from its raw samples (no I/O, unit-tested)."""

from __future__ import annotations

import bisect
import math
from typing import Any

from . import procstat
from .encoded import VIDEO_VARIANTS
from .workloads import RAMP_CPU_LIMIT, RAMP_FPS_FRACTION, RAMP_LOSS_LIMIT, Workload


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``, ``None`` if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


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
    p50, p99 = percentile(values, 50), percentile(values, 99)
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
    cpu, cpu_source = procstat.cpu_seconds(raw["server_start"], raw["server_end"])
    load_cpu = sum(raw["load_cpu_s"])
    busy, total = raw["machine_busy_ticks"]
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
        "server_cpu_source": cpu_source,
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
        "ttff_video_p50_s": percentile(ttff_video, 50),
        "ttff_video_p95_s": percentile(ttff_video, 95),
        "ttff_audio_p50_s": percentile(ttff_audio, 50),
        "ttff_audio_p95_s": percentile(ttff_audio, 95),
        "join_p50_s": percentile(joins, 50),
        "join_p95_s": percentile(joins, 95),
        "churn_joins": len(churn) or None,
        "churn_join_p50_s": percentile(churn_joins, 50),
        "churn_join_p95_s": percentile(churn_joins, 95),
        "churn_ttff_p50_s": percentile(churn_ttff, 50),
        "churn_ttff_p95_s": percentile(churn_ttff, 95),
        "publisher_keyframe_requests": keyframe_requests if workload.video else None,
        "server_rss_mib": raw["server_end"]["rss_bytes"] / 2**20,
        "rss_per_subscriber_mib": rss_growth / 2**20 / subscribers if subscribers else None,
        "load_generator_cpu_pct": 100 * load_cpu / window,
        # Whole machine, all cores (100 % = every core busy): includes other people's work.
        "machine_busy_pct": 100 * busy / total if total else None,
        # Other work on the machine (noise), % of one core: see procstat.foreign_cpu_pct.
        "foreign_cpu_pct": raw.get("foreign_cpu_pct"),
        "server_frames_forwarded": _delta(m0, m1, "frames_forwarded"),
        "server_packets_forwarded": _delta(m0, m1, "packets_forwarded"),
        "server_frames_dropped": _delta(m0, m1, "frames_dropped"),
        # Whole run (requests happen when subscribers join, before the window).
        "keyframe_requests_relayed": (m1 or {}).get("sfu", {}).get("keyframe_requests_relayed"),
        "frames_decoded": _delta(m0, m1, "frames_decoded"),
        "frames_encoded": _delta(m0, m1, "frames_encoded"),
        "frames_packed": _delta(m0, m1, "frames_packed"),
    }


def ramp_stop_reason(run: dict[str, Any], cpu_limit: float | None = RAMP_CPU_LIMIT) -> str | None:
    """Why a ramp stops after this run, or ``None``; ``cpu_limit`` None: only loss and
    frames stop it (a ramp that compares how much several processes forward)."""
    figures = run.get("figures")
    if not figures:
        return "run failed"
    loss = figures.get("loss_pct") or 0.0
    cpu = figures.get("server_cpu_pct") or 0.0
    if loss > RAMP_LOSS_LIMIT:
        return f"loss {loss:.2f} % > {RAMP_LOSS_LIMIT:.0f} %"
    if cpu_limit is not None and cpu > cpu_limit:
        return f"server CPU {cpu:.0f} % > {cpu_limit:.0f} % of one core"
    # A transcoding server loses no packets when saturated: it sends fewer frames.
    fps, source = figures.get("video_fps_mean"), figures.get("video_fps_source")
    if fps is not None and source and fps < RAMP_FPS_FRACTION * source:
        return f"delivered {fps:.1f} of {source} fps (< {RAMP_FPS_FRACTION:.0%})"
    return None
