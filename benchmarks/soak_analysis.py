"""What a soak's ticks say: stalls, loss against what publishers sent, and trends.

Pure functions on the cumulative counts the load processes report every period (a
"tick" k at ``t0 + k * period``, the same wall-clock instants in every process):

- ``sent[k][track]``: packets the publisher process had sent on ``track``
  (``"<participant>/<kind>"``) by tick k;
- a :class:`Receiver`'s ``ticks[k][track]``: packets (received or repaired, each
  sequence number once) and frames it had by tick k.

Window k is (tick k-1, tick k]. A receiver *stalls* on a track in a window when the
publisher sent packets on it in that window and the receiver got none, or got
packets but no frame while it does get frames on that track at other times (a
browser that never decodes a hidden tile is not a stall). A receiver whose
process did not report a tick has no media for that window either. Consecutive
stalled windows are one stall. Loss compares the same wall-clock windows at both
ends, so a stream that stops shows as loss too, not only gaps between packets that
did arrive.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from .stats import Trend, significant, trend


@dataclass(slots=True)
class Receiver:
    """One subscriber (or publisher that hears the others) as the ticks saw it."""

    name: str
    kind: str  # "aiortc", "raw" or "browser": how it received
    own: str | None = None  # its own participant id: it does not receive its own tracks
    ticks: dict[int, dict[str, dict[str, int]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stall:
    """Consecutive windows in which a receiver got no media on a track."""

    receiver: str
    kind: str
    track: str
    start_s: float  # from the first tick
    duration_s: float
    reason: str  # "no packets", "no frames" or "no report"

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "receiver": self.receiver,
            "receiver_kind": self.kind,
            "track": self.track,
            "start_s": self.start_s,
            "duration_s": self.duration_s,
            "reason": self.reason,
        }


@dataclass(slots=True)
class _Loss:
    sent: int = 0
    received: int = 0
    windows: int = 0
    worst: float = 0.0
    lossy_windows: int = 0  # windows that lost more than LOSSY_PCT


# A window "lost" packets above this share. Not lower: the tick instants of different
# processes differ by up to a few hundred milliseconds on a loaded machine, which moves
# a few percent of a window's packets into the next one (the run's total is exact).
LOSSY_PCT = 5.0


def track_name(track: str, publishers: dict[str, str]) -> str:
    """``classroom3 video`` for ``<participant id>/video``, if the publisher is known."""
    owner, _, kind = track.rpartition("/")
    return f"{publishers[owner]} {kind}" if owner in publishers else track


def _owner(track: str) -> str:
    return track.rsplit("/", 1)[0]


def analyse(
    sent: dict[int, dict[str, int]], receivers: list[Receiver], period: float
) -> dict[str, Any]:
    """Stalls and loss of every receiver on every track it should receive."""
    ticks = sorted(sent)
    tracks = sorted({t for counts in sent.values() for t in counts})
    stalls: list[Stall] = []
    losses: dict[str, _Loss] = {}
    for receiver in receivers:
        loss = losses.setdefault(receiver.kind, _Loss())
        for track in tracks:
            if receiver.own is not None and _owner(track) == receiver.own:
                continue
            frames = [receiver.ticks.get(k, {}).get(track, {}).get("frames", 0) for k in ticks]
            decodes = any(b > a for a, b in itertools.pairwise(frames))
            open_stall: list[Any] | None = None  # [first window, windows, reason]
            for index, (a, b) in enumerate(itertools.pairwise(ticks)):
                sent_now = sent[b].get(track, 0) - sent[a].get(track, 0)
                reason = None
                if a not in receiver.ticks or b not in receiver.ticks:
                    reason = "no report" if sent_now > 0 else None
                    got = 0
                else:
                    before = receiver.ticks[a].get(track, {})
                    after = receiver.ticks[b].get(track, {})
                    # A receiver whose connection restarted counts from zero again (a
                    # browser's getStats): what it got in this window is then unknown,
                    # at least not negative.
                    got = max(0, after.get("packets", 0) - before.get("packets", 0))
                    new_frames = after.get("frames", 0) - before.get("frames", 0)
                    if sent_now > 0 and got <= 0:
                        reason = "no packets"
                    elif sent_now > 0 and decodes and new_frames <= 0:
                        reason = "no frames"
                if sent_now > 0:
                    # Not capped per window: a packet sent just before a tick and received
                    # just after it counts in the next window, so the sums compare the
                    # run's two ends.
                    loss.sent += sent_now
                    loss.received += max(0, got)
                    loss.windows += 1
                    lost = 100.0 * max(0, sent_now - got) / sent_now
                    loss.worst = max(loss.worst, lost)
                    loss.lossy_windows += lost > LOSSY_PCT
                if reason is not None:
                    if open_stall is None:
                        open_stall = [index, 0, reason]
                    open_stall[1] += 1
                elif open_stall is not None:
                    stalls.append(_stall(receiver, track, open_stall, period))
                    open_stall = None
            if open_stall is not None:
                stalls.append(_stall(receiver, track, open_stall, period))
    return {
        "tracks": len(tracks),
        "receivers": {kind: sum(r.kind == kind for r in receivers) for kind in losses},
        "stalls": stalls,
        "loss": {
            kind: {
                "packets_sent": value.sent,
                "packets_received": value.received,
                "loss_pct": significant(100.0 * max(0, value.sent - value.received) / value.sent)
                if value.sent
                else None,
                "worst_window_loss_pct": significant(value.worst),
                "windows": value.windows,
                "windows_with_loss": value.lossy_windows,
                "lossy_above_pct": LOSSY_PCT,
            }
            for kind, value in losses.items()
        },
    }


def _stall(receiver: Receiver, track: str, found: list[Any], period: float) -> Stall:
    first, windows, reason = found
    return Stall(receiver.name, receiver.kind, track, first * period, windows * period, reason)


def stall_summary(stalls: list[Stall]) -> dict[str, Any]:
    """Count, total and longest stall, first start, and how many receivers and tracks."""
    if not stalls:
        return {"count": 0}
    return {
        "count": len(stalls),
        "receivers": len({s.receiver for s in stalls}),
        "tracks": len({s.track for s in stalls}),
        "first_start_s": min(s.start_s for s in stalls),
        "longest_s": max(s.duration_s for s in stalls),
        "total_s": sum(s.duration_s for s in stalls),
        "by_reason": {
            reason: sum(s.reason == reason for s in stalls)
            for reason in sorted({s.reason for s in stalls})
        },
    }


# Server samples: (name in the sample, what the trend is of, unit).
TRENDS = (
    ("cpu_pct", "server CPU, % of one core", "%/h"),
    ("rss_mib", "server RSS, MiB", "MiB/h"),
    ("fds", "server open file descriptors", "fds/h"),
    ("threads", "server threads", "threads/h"),
)


def per_minute(samples: list[dict[str, float]]) -> list[dict[str, float]]:
    """Each minute's server CPU (from cumulative nanoseconds), RSS, descriptors, threads."""
    out = []
    for before, after in itertools.pairwise(samples):
        seconds = after["t"] - before["t"]
        if seconds <= 0:
            continue
        cpu = 100.0 * (after["cpu_ns"] - before["cpu_ns"]) / 1e9 / seconds
        load = 100.0 * (after.get("load_cpu_ns", 0) - before.get("load_cpu_ns", 0)) / 1e9 / seconds
        busy = after.get("machine_busy_pct", 0.0)
        out.append(
            {
                "minute": significant(after["t_rel"] / 60.0),
                "cpu_pct": significant(cpu),
                "rss_mib": significant(after["rss_bytes"] / 2**20),
                "fds": after["fds"],
                "threads": after["threads"],
                "load_cpu_pct": significant(load),
                "machine_busy_pct": significant(busy),
                # Other work on the machine, % of one core (procstat.foreign_cpu_pct).
                "foreign_cpu_pct": significant(after.get("foreign_cpu_pct") or 0.0),
            }
        )
    return out


# Fewer minutes after the warm-up than this give slopes, but no verdict: a few minutes
# of a server still filling its caches look like growth.
MIN_TREND_MINUTES = 8


def trends(minutes: list[dict[str, float]], warmup_minutes: float) -> dict[str, dict[str, Any]]:
    """A least-squares trend per server figure after the warm-up, slopes per hour."""
    kept = [m for m in minutes if m["minute"] > warmup_minutes]
    out: dict[str, dict[str, Any]] = {}
    for key, label, unit in TRENDS:
        fitted: Trend | None = trend([m["minute"] / 60.0 for m in kept], [m[key] for m in kept])
        if fitted is None:
            out[key] = {"label": label, "verdict": "too short"}
            continue
        out[key] = {
            "label": label,
            "unit": unit,
            "slope_per_hour": significant(fitted.slope),
            "slope_se": significant(fitted.slope_se),
            "residual_sd": significant(fitted.residual_sd),
            "change_over_run": significant(fitted.change),
            "points": fitted.n,
            "verdict": fitted.verdict if fitted.n >= MIN_TREND_MINUTES else "too short",
        }
    return out
