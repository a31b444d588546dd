"""The side-by-side table (text and Markdown) and the JSON file of a run."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

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
    ("latency_p50_ms", "frame latency p50, ms (publisher send to last packet arrival)", 1),
    ("latency_p99_ms", "frame latency p99, ms", 1),
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
    ("machine_busy_pct", "whole machine busy, % of all cores (noise check)", 0),
]


# The rows of ``show --brief`` (docs/benchmarks.md).
BRIEF = {
    "server_cpu_pct",
    "cpu_us_per_packet",
    "marginal_us_per_packet",
    "forwarded_packets_per_s",
    "loss_pct",
    "rtx_packets",
    "video_fps_mean",
    "audio_fps_mean",
    "latency_p50_ms",
    "latency_p99_ms",
    "ttff_video_p50_s",
    "ttff_video_p95_s",
    "join_p50_s",
    "join_p95_s",
    "churn_join_p50_s",
    "churn_join_p95_s",
    "churn_ttff_p50_s",
    "churn_ttff_p95_s",
    "rss_per_subscriber_mib",
    "publisher_keyframe_requests",
    "load_generator_cpu_pct",
    "machine_busy_pct",
}


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ratio(ours: Any, other: Any) -> str:
    if not isinstance(ours, int | float) or not isinstance(other, int | float) or other == 0:
        return "-"
    return f"{ours / other:.2f}"


def _clean(figures: dict[str, Any]) -> bool:
    loss = figures.get("loss_pct") or 0.0
    busy = figures.get("machine_busy_pct") or 0.0
    server = figures.get("server_cpu_pct") or 0.0
    return bool(loss <= 1.0 and busy <= 90.0 and server <= 90.0)


def add_marginal_costs(runs: list[dict[str, Any]]) -> None:
    """Per system, CPU per extra forwarded packet between consecutive sizes (in place)."""
    by_system: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("figures"):
            by_system.setdefault(run["system"], []).append(run)
    for system_runs in by_system.values():
        system_runs.sort(key=lambda r: r["subscribers"])
        for before, after in itertools.pairwise(system_runs):
            a, b = before["figures"], after["figures"]
            b.pop("marginal_us_per_packet", None)
            # A slope means nothing when the load generator or the machine was the limit.
            if not (_clean(a) and _clean(b)):
                continue
            extra = b["forwarded_packets_per_s"] - a["forwarded_packets_per_s"]
            if extra > 0.2 * a["forwarded_packets_per_s"]:
                cpu = (b["server_cpu_pct"] - a["server_cpu_pct"]) / 100
                b["marginal_us_per_packet"] = cpu * 1e6 / extra


SYSTEM_LABELS = {
    "ours": "ours",
    "pack": "aiortc pack()",
    "mediarelay": "MediaRelay",
    "janus": "Janus",
}


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
    runs: list[dict[str, Any]], systems: list[str], brief: bool = False
) -> list[list[str]]:
    """Rows of [subscribers, metric, one value per system, ours/baseline ratios]."""
    by_size: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_size.setdefault(run["subscribers"], {})[run["system"]] = run.get("figures") or {}
    baselines = [s for s in systems if s != "ours"] if "ours" in systems else []
    rows = []
    for size in sorted(by_size):
        figures = {s: by_size[size].get(s, {}) for s in systems}
        for key, label, digits in ROWS:
            if brief and key not in BRIEF:
                continue
            values = [figures[s].get(key) for s in systems]
            if all(v is None for v in values):
                continue
            ours = figures.get("ours", {}).get(key)
            ratios = [_ratio(ours, figures[b].get(key)) for b in baselines]
            rows.append([str(size), label, *(_fmt(v, digits) for v in values), *ratios])
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


def write_json(
    document: dict[str, Any], directory: Path | None = None, stamp: str | None = None
) -> Path:
    """Write ``document`` to ``benchmarks/results/<timestamp>.json`` (git-ignored)."""
    target = directory or RESULTS_DIR
    target.mkdir(parents=True, exist_ok=True)
    path = target / ((stamp or time.strftime("%Y%m%dT%H%M%S")) + ".json")
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def plot_ramp(
    runs: list[dict[str, Any]], title: str, path: Path, cpu_limit: float = 170.0
) -> Path | None:
    """Server CPU, CPU per packet and loss against subscribers, one line per system (PNG).

    Returns ``None`` when matplotlib is not installed (``pip install matplotlib``).
    """
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
        {r["system"] for r in runs},
        key=lambda s: list(SYSTEM_LABELS).index(s) if s in SYSTEM_LABELS else 99,
    )
    for axis, (key, label) in zip(axes, panels, strict=True):
        for system in systems:
            points = sorted(
                (r["subscribers"], r["figures"][key])
                for r in runs
                if r["system"] == system and r.get("figures") and r["figures"].get(key) is not None
            )
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=SYSTEM_LABELS.get(system, system))
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
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
