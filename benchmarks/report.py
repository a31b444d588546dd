"""The side-by-side tables (text and Markdown) of a results document, and the ramp plot.

Each cell is the median over rounds, with the range ``[min-max]`` when there was
more than one round. Ratio columns are ours / baseline, paired round by round; in
Markdown a ratio is bold only when every round agrees on its side of 1
(``stats.excludes_one``).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

# (figure key, label, digits)
ROWS: list[tuple[str, str, int]] = [
    ("server_cpu_pct", "server CPU, % of one core", 1),
    ("cpu_us_per_packet", "server CPU per forwarded packet, us", 1),
    ("marginal_us_per_packet", "server CPU per extra packet vs previous size, us", 1),
    ("forwarded_packets_per_s", "forwarded packets/s (received by subscribers)", 0),
    ("forwarded_mbit_per_s", "forwarded Mbit/s (RTP payload + 12 B header)", 2),
    ("loss_pct", "loss at subscribers after repair, % (sequence gaps)", 2),
    ("loss_before_repair_pct", "loss before RTX repair, %", 2),
    ("rtx_packets", "RTX packets received by subscribers (window)", 0),
    ("repaired_by_rtx", "gaps repaired by RTX (window)", 0),
    ("video_fps_mean", "video fps per subscriber, mean", 1),
    ("video_fps_min", "video fps per subscriber, worst", 1),
    ("audio_fps_mean", "audio frames/s per track per subscriber (source 50)", 1),
    ("latency_p50_ms", "frame latency p50, ms (publisher send to last packet arrival)", 2),
    ("latency_p99_ms", "frame latency p99, ms", 2),
    ("ttff_video_p50_s", "first video frame p50, s (from join start)", 2),
    ("ttff_video_p95_s", "first video frame p95, s", 2),
    ("ttff_audio_p50_s", "first audio frame p50, s", 2),
    ("join_p50_s", "join (socket to welcome) p50, s", 3),
    ("join_p95_s", "join p95, s", 3),
    ("churn_joins", "churn: subscribers that joined in the window", 0),
    ("churn_join_p50_s", "churn: join p50, s", 3),
    ("churn_join_p95_s", "churn: join p95, s", 3),
    ("churn_ttff_p50_s", "churn: first video frame p50, s", 2),
    ("churn_ttff_p95_s", "churn: first video frame p95, s", 2),
    ("rss_per_subscriber_mib", "server RSS growth per subscriber, MiB", 2),
    ("keyframe_requests_relayed", "keyframe requests relayed to the publisher (run)", 0),
    ("publisher_keyframe_requests", "keyframe requests reaching the publishers (run)", 0),
    ("frames_decoded", "frames decoded by the server (window)", 0),
    ("frames_encoded", "frames encoded by the server (window)", 0),
    ("load_generator_cpu_pct", "load generator CPU, % of one core", 1),
    ("machine_busy_pct", "whole machine busy, % of all cores", 0),
    ("foreign_cpu_pct", "other work on the machine, % of one core (noise)", 0),
]

# The rows of ``show --brief`` and of the generated tables in docs/benchmarks.md.
BRIEF = {
    "server_cpu_pct",
    "cpu_us_per_packet",
    "marginal_us_per_packet",
    "forwarded_packets_per_s",
    "loss_pct",
    "video_fps_mean",
    "audio_fps_mean",
    "latency_p50_ms",
    "latency_p99_ms",
    "ttff_video_p50_s",
    "ttff_video_p95_s",
    "join_p95_s",
    "churn_ttff_p50_s",
    "rss_per_subscriber_mib",
    "load_generator_cpu_pct",
    "foreign_cpu_pct",
}

SYSTEM_LABELS = {
    "ours": "ours",
    "pack": "aiortc pack()",
    "mediarelay": "MediaRelay",
    "janus": "Janus",
    "udprelay": "UDP relay (zero hop)",
}


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def cell(triple: list[Any] | None, digits: int) -> str:
    """``median`` or ``median [min-max]`` of a ``[median, min, max, rounds]`` summary."""
    if not triple:
        return "-"
    median, low, high, rounds = triple[:4]
    if rounds <= 1 or _fmt(low, digits) == _fmt(high, digits):
        return _fmt(median, digits)
    return f"{_fmt(median, digits)} [{_fmt(low, digits)}-{_fmt(high, digits)}]"


def ratio_cell(entry: list[Any] | None, markdown: bool) -> str:
    """A ratio ``[median, min, max, rounds, excludes_one]``, bold (Markdown) when its
    range excludes 1."""
    if not entry:
        return "-"
    text = cell(entry[:4], 2)
    return f"**{text}**" if markdown and len(entry) > 4 and entry[4] else text


def add_marginal_costs(runs: list[dict[str, Any]]) -> None:
    """Per system and round, CPU per extra forwarded packet between consecutive sizes
    (in place); left out where either size had loss > 1 % or a saturated machine."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("figures"):
            groups.setdefault((run["system"], run.get("round", 0)), []).append(run)
    for group in groups.values():
        group.sort(key=lambda r: r["subscribers"])
        for before, after in itertools.pairwise(group):
            a, b = before["figures"], after["figures"]
            b.pop("marginal_us_per_packet", None)
            if not (_clean(a) and _clean(b)):
                continue
            extra = b["forwarded_packets_per_s"] - a["forwarded_packets_per_s"]
            if extra > 0.2 * a["forwarded_packets_per_s"]:
                cpu = (b["server_cpu_pct"] - a["server_cpu_pct"]) / 100
                b["marginal_us_per_packet"] = cpu * 1e6 / extra


def _clean(figures: dict[str, Any]) -> bool:
    loss = figures.get("loss_pct") or 0.0
    busy = figures.get("machine_busy_pct") or 0.0
    server = figures.get("server_cpu_pct") or 0.0
    return bool(loss <= 1.0 and busy <= 90.0 and server <= 90.0)


def table_header(systems: list[str]) -> list[str]:
    """Column titles: each system, then ours divided by each baseline."""
    baselines = [s for s in systems if s != "ours"]
    return [
        "subs",
        "metric",
        *(SYSTEM_LABELS.get(s, s) for s in systems),
        *(f"ours/{SYSTEM_LABELS.get(s, s)}" for s in baselines if "ours" in systems),
    ]


def table_rows(
    summary: list[dict[str, Any]], systems: list[str], brief: bool = False, markdown: bool = False
) -> list[list[str]]:
    """Rows of [subscribers, metric, one cell per system, ours/baseline ratios]."""
    baselines = [s for s in systems if s != "ours"] if "ours" in systems else []
    rows = []
    for entry in summary:
        for key, label, digits in ROWS:
            if brief and key not in BRIEF:
                continue
            triples = [entry["systems"].get(s, {}).get("figures", {}).get(key) for s in systems]
            if all(t is None for t in triples):
                continue
            ratios = [ratio_cell(entry["ratios"].get(b, {}).get(key), markdown) for b in baselines]
            rows.append(
                [str(entry["subscribers"]), label, *(cell(t, digits) for t in triples), *ratios]
            )
    return rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A fixed-width table for the terminal."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *rows]):
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """The same table in Markdown."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_ramp(
    summary: list[dict[str, Any]], title: str, path: Path, cpu_limit: float = 170.0
) -> Path | None:
    """Medians of server CPU, CPU per packet, loss and machine load against
    subscribers, one line per system (PNG). ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [
        ("server_cpu_pct", "server CPU, % of one core (log)"),
        ("cpu_us_per_packet", "server CPU per forwarded packet, us (log)"),
        ("loss_pct", "loss after repair, %"),
        ("machine_busy_pct", "whole machine busy, % (load generator included)"),
    ]
    figure, axes = plt.subplots(1, 4, figsize=(14, 3.6), dpi=72)
    systems = sorted(
        {s for entry in summary for s in entry["systems"]},
        key=lambda s: list(SYSTEM_LABELS).index(s) if s in SYSTEM_LABELS else 99,
    )
    for axis, (key, label) in zip(axes, panels, strict=True):
        for system in systems:
            points = []
            for entry in summary:
                triple = entry["systems"].get(system, {}).get("figures", {}).get(key)
                if triple:
                    points.append((entry["subscribers"], triple[0], triple[1], triple[2]))
            if points:
                xs, ys, lows, highs = zip(*sorted(points), strict=True)
                errors = [
                    [y - lo for y, lo in zip(ys, lows, strict=True)],
                    [hi - y for y, hi in zip(ys, highs, strict=True)],
                ]
                axis.errorbar(
                    xs,
                    ys,
                    yerr=errors,
                    marker="o",
                    capsize=2,
                    label=SYSTEM_LABELS.get(system, system),
                )
        axis.set_xlabel("subscribers")
        axis.set_title(label, fontsize=9)
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[0].axhline(cpu_limit, color="grey", linestyle="--", linewidth=1)
    axes[0].set_ylim(top=cpu_limit * 1.6)
    axes[0].annotate(
        f"ramp limit {cpu_limit:.0f} %", (0.02, 0.93), xycoords="axes fraction", fontsize=7
    )
    axes[2].axhline(1.0, color="grey", linestyle="--", linewidth=1)
    axes[0].legend(fontsize=8)
    figure.suptitle(title + " (median, range over rounds)", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
