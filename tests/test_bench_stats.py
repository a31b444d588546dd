"""The arithmetic of benchmark summaries: spreads, paired ratios, trends, CPU sources."""

from __future__ import annotations

import math

import pytest

from benchmarks import procstat
from benchmarks.stats import excludes_one, paired_ratios, significant, spread, trend


def test_spread_ignores_missing_values() -> None:
    found = spread([3.0, None, 1.0, 2.0, float("nan")])
    assert found is not None
    assert (found.median, found.low, found.high, found.n) == (2.0, 1.0, 3.0, 3)
    assert spread([None, None]) is None


def test_ratios_are_paired_round_by_round() -> None:
    ours = [10.0, 12.0, 11.0, None, 9.0]
    other = [20.0, 20.0, 0.0, 15.0, 18.0]  # round 3: no baseline figure, round 4: none of ours
    found = paired_ratios(ours, other)
    assert found is not None
    assert found.n == 3
    assert (found.low, found.median, found.high) == (0.5, 0.5, 0.6)


def test_a_claim_needs_three_rounds_on_one_side_of_one() -> None:
    below = paired_ratios([1.0, 1.0, 1.0], [2.0, 1.5, 1.1])
    straddling = paired_ratios([1.0, 1.0, 1.0], [2.0, 0.9, 1.1])
    too_few = paired_ratios([1.0, 1.0], [2.0, 2.0])
    above = paired_ratios([3.0, 3.0, 3.0], [2.0, 2.5, 1.0])
    assert excludes_one(below) and excludes_one(above)
    assert not excludes_one(straddling) and not excludes_one(too_few)
    assert not excludes_one(None)


def test_a_flat_noisy_series_is_flat() -> None:
    xs = [float(x) for x in range(60)]
    ys = [100.0 + (3.0 if x % 2 else -3.0) for x in range(60)]
    found = trend(xs, ys)
    assert found is not None
    assert found.verdict == "flat"
    assert abs(found.slope) < 0.01


def test_a_steady_leak_is_growing_and_its_slope_is_exact() -> None:
    xs = [float(x) for x in range(30)]
    ys = [50.0 + 0.5 * x + (0.2 if x % 3 == 0 else -0.1) for x in range(30)]
    found = trend(xs, ys)
    assert found is not None
    assert found.verdict == "growing"
    assert found.slope == pytest.approx(0.5, abs=0.01)
    assert found.change == pytest.approx(0.5 * 29, rel=0.02)


def test_a_step_smaller_than_the_noise_is_not_growth() -> None:
    xs = [float(x) for x in range(40)]
    noise = [((x * 37) % 11 - 5) * 2.0 for x in range(40)]  # +-10, deterministic
    ys = [200.0 + noise[x] + (1.0 if x >= 20 else 0.0) for x in range(40)]
    found = trend(xs, ys)
    assert found is not None
    assert found.verdict == "flat"


def test_descriptors_that_never_move_are_flat_and_one_leak_per_minute_is_not() -> None:
    xs = [float(x) for x in range(20)]
    flat = trend(xs, [120.0] * 20)
    assert flat is not None and flat.verdict == "flat" and flat.residual_sd == 0
    leak = trend(xs, [120.0 + x for x in range(20)])
    assert leak is not None and leak.verdict == "growing"


def test_too_few_points_give_no_trend() -> None:
    assert trend([1.0, 2.0], [1.0, 2.0]) is None
    assert trend([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None


def test_significant_digits() -> None:
    assert significant(12345.678) == 12346  # the integer part is never rounded away
    assert significant(14.6789) == 14.68
    assert significant(0.00123456) == 0.001235
    assert significant(0.0) == 0.0
    assert math.isnan(significant(float("nan")))


def _sample(ticks_seconds: float, ns: int, processes: int = 1) -> dict[str, float]:
    return {"user": ticks_seconds, "system": 0.0, "cpu_ns": ns, "processes": processes}


def test_cpu_comes_from_nanoseconds_unless_a_thread_ended() -> None:
    # 1.23 s in nanoseconds, 1.2 s in ticks: rounding, nanoseconds win.
    seconds, source = procstat.cpu_seconds(_sample(10.0, 0), _sample(11.2, 1_230_000_000))
    assert (seconds, source) == (1.23, "schedstat")
    # Ticks show 3 s where the live threads hold 1 s: a thread ended, ticks win.
    seconds, source = procstat.cpu_seconds(_sample(10.0, 0), _sample(13.0, 1_000_000_000))
    assert (seconds, source) == (3.0, "ticks")


def test_this_process_has_nanoseconds_threads_and_descriptors() -> None:
    import os

    sample = procstat.sample(os.getpid())
    assert sample.cpu_ns > 0 and sample.threads >= 1 and sample.fds >= 3
    assert sample.processes >= 1 and sample.rss_bytes > 0
