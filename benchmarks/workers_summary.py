"""The figures of ``--workload workers`` (:mod:`benchmarks.workers`) from its
measured steps: pure functions, so that the arithmetic and the tables are tested
without running a benchmark.

A round holds, per workload, the steps of its ramp; each step holds what each
variant measured there. From them: each variant's capacity in the round (the most
it forwarded at a step before its ramp stopped), the ratio workers / one process of
the capacities, and at each step both variants ran, the ratio of what they
forwarded and of their CPU per forwarded packet. Over rounds: median [min-max] of
each (rounds whose placement was wrong left out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .report import text_table
from .stats import spread

WORKERS = 2
VARIANTS = ("one", "workers")
LABELS = {"one": "one process", "workers": f"workers {WORKERS}"}
# What the issue asks of the ratio workers / one process, at the same loss.
TARGET_RATIO = 1.7
# Figures of each variant at each step, summarised over rounds.
STEP_FIGURES = (
    "forwarded_packets_per_s",
    "loss_pct",
    "video_fps_mean",
    "server_cpu_pct",
    "load_generator_cpu_pct",
    "foreign_cpu_pct",
    "cpu_us_per_packet",
)
STEP_HEADER = [
    "lessons x subscribers",
    "variant",
    "forwarded packets/s",
    "loss %",
    "video fps",
    "server CPU %",
    "each process %",
    "Redis CPU %",
    "load generator CPU %",
    "other work %",
    "us/packet",
    "workers / one",
]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def step_ratios(entry: dict[str, Any]) -> dict[str, float | None]:
    """At one step of a round: workers / one process of what they forwarded and of
    their CPU per forwarded packet (None unless both ran it)."""
    if not all(v in entry for v in VARIANTS):
        return {"forwarded_ratio": None, "cpu_per_packet_ratio": None}
    workers, one = (entry[v]["figures"] for v in ("workers", "one"))
    return {
        "forwarded_ratio": _ratio(
            workers.get("forwarded_packets_per_s"), one.get("forwarded_packets_per_s")
        ),
        "cpu_per_packet_ratio": _ratio(
            workers.get("cpu_us_per_packet"), one.get("cpu_us_per_packet")
        ),
    }


def round_figures(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A round's capacity per variant (the most it forwarded at a step that did not stop
    its ramp, and where), why each ramp stopped (None: it ran out of steps, so the
    capacity is a lower bound), the ratio workers / one process, and why the round is
    invalid (a variant's lessons were not where it needs them; None: valid)."""
    capacity: dict[str, dict[str, Any] | None] = {}
    stops: dict[str, str | None] = {}
    problems = []
    for variant in VARIANTS:
        best: dict[str, Any] | None = None
        stops[variant] = None
        for entry in steps:
            record = entry.get(variant)
            if record is None:
                continue
            if record["placement_problem"]:
                problems.append(
                    f"{LABELS[variant]} at {entry['lessons']}x{entry['subscribers']}: "
                    f"{record['placement_problem']}"
                )
            if record["ramp_stop"]:
                stops[variant] = record["ramp_stop"]
                continue
            rate = record["figures"].get("forwarded_packets_per_s")
            if rate is not None and (best is None or rate > best["forwarded_packets_per_s"]):
                best = {
                    "forwarded_packets_per_s": rate,
                    "lessons": entry["lessons"],
                    "subscribers": entry["subscribers"],
                }
        capacity[variant] = best
    rates = [(capacity[v] or {}).get("forwarded_packets_per_s") for v in ("workers", "one")]
    return {
        "capacity": capacity,
        "ramp_stops": stops,
        "ratio": _ratio(*rates),
        "invalid": "; ".join(problems) or None,
    }


def _spread(values: Sequence[float | None]) -> dict[str, float | int] | None:
    found = spread(values)
    return found.as_dict() if found else None


def summarise(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One workload's valid rounds: median [min-max] of each variant's capacity, of the
    ratio (and the target met or not by its median), and at each step of each
    variant's figures, its processes' CPU (highest first) and the two ratios."""
    valid = [r for r in rounds if not r["invalid"]]
    ratio = _spread([r["ratio"] for r in valid])
    steps: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for found in valid:
        for entry in found["steps"]:
            steps.setdefault((entry["lessons"], entry["subscribers"]), []).append(entry)
    by_step = []
    for (lessons, subscribers), entries in steps.items():
        step: dict[str, Any] = {"lessons": lessons, "subscribers": subscribers}
        for variant in VARIANTS:
            records = [e[variant] for e in entries if variant in e]
            if not records:
                continue
            ranked = [sorted(r["node_cpu_pct"].values(), reverse=True) for r in records]
            processes = max(len(r) for r in ranked)
            step[variant] = {
                "rounds": len(records),
                **{k: _spread([r["figures"].get(k) for r in records]) for k in STEP_FIGURES},
                "process_cpu_pct": [
                    _spread([r[i] if i < len(r) else None for r in ranked])
                    for i in range(processes)
                ],
                "redis_cpu_pct": _spread([r["redis_cpu_pct"] for r in records]),
                "ramp_stops": sum(1 for r in records if r["ramp_stop"]),
            }
        for key in ("forwarded_ratio", "cpu_per_packet_ratio"):
            step[key] = _spread([e.get(key) for e in entries])
        by_step.append(step)
    return {
        "rounds": len(valid),
        "invalid_rounds": len(rounds) - len(valid),
        "capacity": {
            v: _spread([(r["capacity"][v] or {}).get("forwarded_packets_per_s") for r in valid])
            for v in VARIANTS
        },
        # Rounds in which a variant never stopped: its capacity there is a lower bound.
        "ran_out_of_steps": {
            v: sum(1 for r in valid if r["ramp_stops"][v] is None) for v in VARIANTS
        },
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "met": target_met(ratio, valid),
        "steps": by_step,
    }


def target_met(ratio: dict[str, Any] | None, rounds: Sequence[dict[str, Any]]) -> bool | None:
    """Whether the median ratio reaches :data:`TARGET_RATIO`; None when the rounds
    cannot say: no ratio, one process never stopped (its most is unknown), or the
    workers never stopped in some round (their most, so the ratio, is a lower bound:
    it says "met" but never "not met")."""
    if ratio is None or any(r["ramp_stops"]["one"] is None for r in rounds):
        return None
    met = bool(ratio["median"] >= TARGET_RATIO)
    if not met and any(r["ramp_stops"]["workers"] is None for r in rounds):
        return None
    return met


def verdict(summary: dict[str, Any]) -> str:
    """The target's status in words."""
    met = summary["met"]
    return "not measured (a ramp never stopped)" if met is None else "met" if met else "not met"


# -- text ------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def spread_text(found: dict[str, Any] | None, digits: int = 0) -> str:
    """median [min-max], or only the median of a single round."""
    if found is None:
        return "-"
    median = _number(found["median"], digits)
    if found["n"] < 2:
        return median
    return f"{median} [{_number(found['low'], digits)}-{_number(found['high'], digits)}]"


def step_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The rows of :data:`STEP_HEADER` for one workload's summary: each variant at each
    step (medians [min-max] for what it forwarded and the ratio, medians else)."""
    rows = []
    for step in summary["steps"]:
        size = f"{step['lessons']} x {step['subscribers']}"
        for variant in VARIANTS:
            found = step.get(variant)
            if found is None:
                continue

            def median(key: str, digits: int = 1, found: dict[str, Any] = found) -> str:
                return _number((found[key] or {}).get("median"), digits)

            each = " / ".join(_number((p or {}).get("median")) for p in found["process_cpu_pct"])
            ratio = spread_text(step["forwarded_ratio"], 2) if variant == "workers" else ""
            rows.append(
                [
                    size,
                    LABELS[variant],
                    spread_text(found["forwarded_packets_per_s"]),
                    median("loss_pct", 2),
                    median("video_fps_mean"),
                    median("server_cpu_pct", 0),
                    each or "-",
                    median("redis_cpu_pct"),
                    median("load_generator_cpu_pct", 0),
                    median("foreign_cpu_pct", 0),
                    median("cpu_us_per_packet"),
                    ratio,
                ]
            )
    return rows


def headline(summary: dict[str, Any]) -> str:
    """The capacities and their ratio, in a sentence."""
    capacity = summary["capacity"]
    parts = [f"{LABELS[v]} {spread_text(capacity[v])}" for v in VARIANTS]
    ratio = summary["ratio"]
    lower = [LABELS[v] for v, n in summary["ran_out_of_steps"].items() if n]
    return (
        f"most forwarded packets/s at loss <= 1 %: {', '.join(parts)}; workers / one "
        f"process {spread_text(ratio, 2)} (target >= {summary['target_ratio']:g}: "
        f"{verdict(summary)})"
        + (f"; never stopped in some rounds (a lower bound): {', '.join(lower)}" if lower else "")
    )


def round_line(entry: dict[str, Any]) -> str:
    """One step of a round, as the progress shows it."""
    parts = []
    for variant in VARIANTS:
        record = entry.get(variant)
        if record is None:
            continue
        figures = record["figures"]
        placed = ", ".join(f"{lesson} on {node}" for lesson, node in record["owners"].items())
        parts.append(
            f"{LABELS[variant]} {_number(figures.get('forwarded_packets_per_s'))} packets/s, "
            f"loss {_number(figures.get('loss_pct'), 2)} %, server CPU "
            f"{_number(figures.get('server_cpu_pct'))} % ({placed or 'placement unknown'})"
            + (f", stops: {record['ramp_stop']}" if record["ramp_stop"] else "")
        )
    ratio = entry.get("forwarded_ratio")
    return (
        f"{entry['lessons']} x {entry['subscribers']}: "
        + "; ".join(parts)
        + (f"; workers / one {ratio:.2f}" if ratio is not None else "")
    )


def summary_lines(document: dict[str, Any]) -> list[str]:
    """What ``lco bench run --workload workers`` prints at the end."""
    body = document["workers"]
    lines = []
    for name, found in body["workloads"].items():
        summary = found["summary"]
        lines += [
            "",
            f"{name}: {found['description']}; lessons x subscribers per lesson, "
            f"{body['window_s']:g} s windows, {summary['rounds']} valid round(s)"
            + (f", {summary['invalid_rounds']} INVALID" if summary["invalid_rounds"] else "")
            + ": median [min-max]",
            text_table(STEP_HEADER, step_rows(summary)),
            f"  {headline(summary)}",
        ]
        for record in body["rounds"]:
            if record["workload"] != name:
                continue
            stops = "; ".join(
                f"{LABELS[v]}: {record['ramp_stops'][v] or 'ran out of steps'}" for v in VARIANTS
            )
            lines.append(f"  round {record['round']} stops: {stops}")
    return lines + [f"  error: {e}" for e in body["errors"]]
