"""Summaries of repeated measurements: medians with their spread, paired ratios, trends.

Pure functions on numbers, so that ``tests/test_bench_stats.py`` checks the
arithmetic without running a benchmark.

- :func:`spread`: median and min-max of a figure over rounds.
- :func:`paired_ratios`: ours / baseline round by round (rounds run back to back,
  so each pair saw the same state of the machine), with median and min-max. With
  five rounds, "every ratio below 1" happens by chance with probability 1/32 if the
  two systems were the same: :func:`excludes_one` is what makes a claim bold.
- :func:`trend`: least-squares slope of a series with its standard error and the
  scatter of the points around the line, and a verdict: a series is "growing" only
  if its slope is clearly above zero *and* it grew by more than its own noise over
  the run (:data:`TREND_SIGMAS`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

# A slope is "clearly" non-zero beyond this many standard errors (about 95 %).
SLOPE_SIGMAS = 2.0
# ... and matters only if the change over the run exceeds this many residual deviations.
TREND_SIGMAS = 2.0


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and range of one figure over rounds."""

    median: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """JSON form."""
        return asdict(self)


def spread(values: Sequence[float | None]) -> Spread | None:
    """Median and min-max of the values that are present; ``None`` if none are."""
    present = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present), len(present))


def paired_ratios(ours: Sequence[float | None], other: Sequence[float | None]) -> Spread | None:
    """``ours[i] / other[i]`` for every round where both are present and ``other`` > 0."""
    ratios = [
        a / b for a, b in zip(ours, other, strict=True) if a is not None and b is not None and b > 0
    ]
    return spread(ratios)


def excludes_one(ratio: Spread | None) -> bool:
    """Whether every round agrees on the side of 1 (the range does not contain it),
    from at least three rounds."""
    return ratio is not None and ratio.n >= 3 and (ratio.high < 1.0 or ratio.low > 1.0)


@dataclass(frozen=True, slots=True)
class Trend:
    """A least-squares line through (x, y) and what it says."""

    slope: float  # y units per x unit
    slope_se: float  # standard error of the slope
    intercept: float
    residual_sd: float  # scatter of the points around the line
    change: float  # slope times the span of x: what the line gained over the run
    n: int
    verdict: str  # "flat", "growing" or "shrinking"

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def trend(xs: Sequence[float], ys: Sequence[float]) -> Trend | None:
    """Fit ``y = intercept + slope * x``; ``None`` with fewer than three points.

    Verdict: "growing" (or "shrinking") when the slope is more than
    :data:`SLOPE_SIGMAS` standard errors from zero and the change it predicts over the
    run exceeds :data:`TREND_SIGMAS` residual deviations; else "flat". A series that
    does not move at all (open descriptors) is flat with zero noise; one step up in a
    long series is "growing" only if the step is large against the scatter.
    """
    n = len(xs)
    if n != len(ys) or n < 3:
        return None
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    residuals = [y - (intercept + slope * x) for x, y in zip(xs, ys, strict=True)]
    sse = sum(r * r for r in residuals)
    residual_sd = math.sqrt(sse / (n - 2))
    slope_se = residual_sd / math.sqrt(sxx)
    change = slope * (max(xs) - min(xs))
    verdict = "flat"
    if abs(slope) > SLOPE_SIGMAS * slope_se and abs(change) > TREND_SIGMAS * residual_sd:
        verdict = "growing" if slope > 0 else "shrinking"
    return Trend(slope, slope_se, intercept, residual_sd, change, n, verdict)


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits, but never into its integer
    part (compact JSON: 14.68, 0.001235, 12346)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def rounds_summary(
    rounds: Sequence[dict[str, Any]], figures: Sequence[str], targets: dict[str, float]
) -> dict[str, Any]:
    """Median and range of each figure over rounds, and each target (an upper limit in
    seconds) met or not by the worst round; a round without the figure misses it."""
    spreads: dict[str, Any] = {}
    for key in figures:
        found = spread([r.get(key) for r in rounds])
        spreads[key] = found.as_dict() if found else None
    verdicts = {}
    for key, limit in targets.items():
        values = [r.get(key) for r in rounds]
        present = [float(v) for v in values if v is not None]
        worst = max(present) if present and len(present) == len(values) else None
        verdicts[key] = {
            "limit": limit,
            "worst": worst,
            "met": worst is not None and worst <= limit,
        }
    return {"figures": spreads, "targets": verdicts, "rounds": len(rounds)}


def rounds_lines(summary: dict[str, Any], errors: Sequence[str]) -> list[str]:
    """A :func:`rounds_summary` as lines of text: each figure, each target, each error."""
    lines = []
    for key, found in summary["figures"].items():
        if found:
            lines.append(
                f"  {key}: median {found['median']:.2f} [{found['low']:.2f}-{found['high']:.2f}]"
            )
    for key, target in summary["targets"].items():
        verdict = "met" if target["met"] else "NOT met"
        lines.append(f"  {key} <= {target['limit']:g} s (worst round): {verdict}")
    return lines + [f"  error: {e}" for e in errors]


def seconds_text(value: float | None) -> str:
    """A figure in seconds as a round's progress line shows it ("-": none)."""
    return "-" if value is None else f"{value:.2f}"
