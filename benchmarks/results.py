"""Results files: a compact one to commit, the raw samples beside it, never committed.

``benchmarks/results/<stamp>.json`` (committed when the docs quote it) holds what
a figure needs to be traced: the environment (machine, kernel, CPU, versions,
commits, SRTP profile), the options, every run's main figures and, per size, the
median and range over rounds of every figure and of every ratio ours / baseline.
The raw samples (per-subscriber windows, ``/metrics`` snapshots, per-process
counts) go to ``benchmarks/results/raw/`` (git-ignored) or the ``--raw-dir``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from .stats import Spread, excludes_one, paired_ratios, significant, spread

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RAW_DIR = RESULTS_DIR / "raw"
FORMAT = 2

# Figures kept for each run in the compact file (the summary has every figure).
RUN_KEYS = (
    "server_cpu_pct",
    "cpu_us_per_packet",
    "forwarded_packets_per_s",
    "loss_pct",
    "video_fps_mean",
    "audio_fps_mean",
    "latency_p50_ms",
    "latency_p99_ms",
    "ttff_video_p50_s",
    "join_p95_s",
    "rss_per_subscriber_mib",
    "load_generator_cpu_pct",
    "machine_busy_pct",
    "foreign_cpu_pct",
    "server_cpu_source",
)
# Ratios ours / baseline, round by round.
RATIO_KEYS = (
    "cpu_us_per_packet",
    "server_cpu_pct",
    "latency_p50_ms",
    "latency_p99_ms",
    "rss_per_subscriber_mib",
)
# A run is "quiet" when the machine's other work took at most this much of a core.
QUIET_FOREIGN_PCT = 10.0


def _compact(value: Any) -> Any:
    if isinstance(value, float):
        return significant(value)
    return value


def compact_run(run: dict[str, Any]) -> dict[str, Any]:
    """One run as the committed file keeps it."""
    figures = run.get("figures") or {}
    out: dict[str, Any] = {
        "system": run["system"],
        "subscribers": run["subscribers"],
        "round": run.get("round", 0),
        "errors": run.get("errors", [])[:5],
    }
    for key in ("skipped", "ramp_stop", "srtp_profiles", "server_exit"):
        if run.get(key) is not None:
            out[key] = run[key]
    if figures:
        out["figures"] = {k: _compact(figures.get(k)) for k in RUN_KEYS if k in figures}
    return out


def _triple(found: Spread | None) -> list[float | int] | None:
    if found is None:
        return None
    return [significant(found.median), significant(found.low), significant(found.high), found.n]


def summarise(runs: list[dict[str, Any]], systems: list[str]) -> list[dict[str, Any]]:
    """Per size: each system's figures as [median, min, max, rounds], and each ratio
    ours / baseline, paired round by round, in the same form."""
    sizes = sorted({r["subscribers"] for r in runs})
    out = []
    for size in sizes:
        here = [r for r in runs if r["subscribers"] == size and r.get("figures")]
        entry: dict[str, Any] = {"subscribers": size, "systems": {}, "ratios": {}}
        by_system: dict[str, dict[int, dict[str, Any]]] = {}
        for run in here:
            by_system.setdefault(run["system"], {})[run.get("round", 0)] = run["figures"]
        for system, rounds in by_system.items():
            keys = sorted(
                {k for f in rounds.values() for k, v in f.items() if isinstance(v, int | float)}
            )
            entry["systems"][system] = {
                "rounds": len(rounds),
                "figures": {k: _triple(spread([f.get(k) for f in rounds.values()])) for k in keys},
            }
        ours = by_system.get("ours", {})
        for baseline in systems:
            other = by_system.get(baseline)
            if baseline == "ours" or not ours or not other:
                continue
            paired = sorted(set(ours) & set(other))
            ratios = {}
            for key in RATIO_KEYS:
                found = paired_ratios(
                    [ours[r].get(key) for r in paired], [other[r].get(key) for r in paired]
                )
                if found is not None:
                    ratios[key] = [*(_triple(found) or []), excludes_one(found)]
            entry["ratios"][baseline] = ratios
        out.append(entry)
    return out


def noise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """How busy the machine was with other work during the windows."""
    foreign = [
        r["figures"]["foreign_cpu_pct"]
        for r in runs
        if r.get("figures") and r["figures"].get("foreign_cpu_pct") is not None
    ]
    if not foreign:
        return {"foreign_cpu_pct_median": None, "foreign_cpu_pct_max": None, "quiet": False}
    median = statistics.median(foreign)
    return {
        "foreign_cpu_pct_median": significant(median),
        "foreign_cpu_pct_max": significant(max(foreign)),
        "quiet": median <= QUIET_FOREIGN_PCT,
    }


def stamp() -> str:
    """A results file's name: the UTC time it started."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def write(
    document: dict[str, Any],
    raw: dict[str, Any] | None,
    name: str,
    directory: Path | None = None,
    raw_directory: Path | None = None,
) -> tuple[Path, Path | None]:
    """Write the compact document (indented, for readable diffs) and the raw samples
    (one line); returns both paths."""
    target = directory or RESULTS_DIR
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{name}.json"
    path.write_text(json.dumps(document, indent=1, sort_keys=False, default=str) + "\n")
    raw_path = None
    if raw is not None:
        raw_target = raw_directory or RAW_DIR
        raw_target.mkdir(parents=True, exist_ok=True)
        raw_path = raw_target / f"{name}-raw.json"
        raw_path.write_text(json.dumps(raw, default=str) + "\n")
    return path, raw_path


def load(path: Path) -> dict[str, Any]:
    """A results document."""
    document: dict[str, Any] = json.loads(path.read_text())
    return document
