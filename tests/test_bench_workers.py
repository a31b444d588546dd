"""``lco serve --workers 2`` against one process: both forward every lesson, the
workers hold one lesson each, and the figures become a table.

The quick run of ``lco bench run --workload workers`` (``benchmarks/workers.py``)
runs end to end on a real redis-server: W1 and W3 in two lessons each, on one
process and on two workers. What the workers gain, ramped on a quiet machine, is
for ``docs/benchmarks.md``; here only that every variant forwarded and that the
lessons were where each variant needs them. The arithmetic of rounds and the
region ``lco bench report`` renders are checked on made-up rounds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import docgen, results
from benchmarks.failover import Redis
from benchmarks.processes import REPO_ROOT
from benchmarks.workers import placement_problem
from benchmarks.workers_summary import (
    VARIANTS,
    round_figures,
    step_ratios,
    summarise,
    target_met,
)


@pytest.mark.timeout(240)
def test_one_process_and_two_workers_forward_two_lessons_each_on_its_own_worker(
    tmp_path: Path,
) -> None:
    why = Redis.available()
    if why:
        pytest.skip(why)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "run",
            "--workload",
            "workers",
            "--quick",
            "--results-dir",
            str(tmp_path),
            "--logs-dir",
            str(tmp_path / "logs"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    print(f"\nworkers: {completed.stdout.strip()}")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-2000:]
    (path,) = tmp_path.glob("*-workers.json")
    document = results.load(path)
    assert document["kind"] == "workers" and document["quick"]
    assert document["options"]["load"] == "raw"
    body = document["workers"]
    assert not body["errors"], body["errors"]
    assert [r["workload"] for r in body["rounds"]] == ["w1", "w3"]
    for record in body["rounds"]:
        assert record["invalid"] is None
        (step,) = record["steps"]
        assert step["lessons"] == 2
        for variant in VARIANTS:
            found = step[variant]
            assert found["figures"]["forwarded_packets_per_s"] > 0, (variant, found)
            assert found["figures"]["loss_pct"] is not None
            assert found["figures"]["server_cpu_pct"] > 0
            assert found["figures"]["load_generator_cpu_pct"] > 0
            owners = found["owners"]
            assert len(owners) == 2 and None not in owners.values()
            # Every node that owns a lesson was sampled for its CPU, and only those beat.
            assert set(owners.values()) == set(found["node_cpu_pct"])
        assert len(set(step["one"]["owners"].values())) == 1
        assert len(set(step["workers"]["owners"].values())) == 2
        assert record["ratio"] is not None and record["ratio"] > 0
    for name in ("w1", "w3"):
        summary = body["workloads"][name]["summary"]
        assert summary["rounds"] == 1 and summary["ratio"] is not None
        region = docgen.Region("workers", {"workload": name, "need": "pinned"}, 0, 0, 0)
        assert docgen.qualifies(document, region) is None
        assert "| 2 x " in docgen.render_workers(document, region)
    assert "most forwarded packets/s at loss <= 1 %" in completed.stdout


# -- the arithmetic and the region, on made-up rounds ---------------------------------


def _variant(variant: str, rate: float, stop: str | None, problem: str | None = None) -> Any:
    nodes = ["n-w1", "n-w2"] if variant == "workers" else ["n"]
    return {
        "variant": variant,
        "figures": {
            "forwarded_packets_per_s": rate,
            "loss_pct": 0.0 if stop is None else 3.0,
            "video_fps_mean": 30.0,
            "server_cpu_pct": rate / 200,
            "load_generator_cpu_pct": rate / 100,
            "foreign_cpu_pct": 1.0,
            "cpu_us_per_packet": 20.0,
        },
        "owners": {f"w1-{k}": nodes[k % len(nodes)] for k in range(2)},
        "node_cpu_pct": {node: rate / 200 / len(nodes) for node in nodes},
        "redis_cpu_pct": 0.5,
        "placement_problem": problem,
        "ramp_stop": f"invalid placement: {problem}" if problem else stop,
        "errors": [],
    }


def _round(number: int, one: list[float], workers: list[float], problem: bool = False) -> Any:
    """A round of W1 whose variants forwarded these at 30, 60, 90 ... classrooms; each
    variant's ramp stops at its last step (loss)."""
    steps = []
    for index in range(max(len(one), len(workers))):
        entry: dict[str, Any] = {"lessons": 2, "subscribers": 30 * (index + 1)}
        for variant, rates in (("one", one), ("workers", workers)):
            if index < len(rates):
                last = index == len(rates) - 1
                bad = (
                    "lessons per node n-w1: 2, n-w2: 0"
                    if problem and variant == "workers"
                    else None
                )
                entry[variant] = _variant(
                    variant, rates[index], "loss 3.00 % > 1 %" if last else None, bad
                )
        entry.update(step_ratios(entry))
        steps.append(entry)
    record = {"workload": "w1", "round": number, "order": list(VARIANTS), "steps": steps}
    record.update(round_figures(steps))
    record["foreign_cpu_pct"] = 1.0
    return record


def test_the_ratio_takes_each_variants_most_before_its_ramp_stopped_and_skips_invalid_rounds() -> (
    None
):
    rounds = [
        _round(1, [10_000, 20_000, 25_000], [10_000, 20_000, 30_000, 34_000]),
        _round(2, [10_000, 21_000, 26_000], [10_000, 20_000, 31_000, 35_000]),
        _round(3, [10_000, 19_000, 24_000], [10_000, 20_000, 29_000, 33_000]),
        # Its workers variant put both lessons on one worker: left out, not hidden.
        _round(4, [10_000, 20_000, 25_000], [90_000], problem=True),
    ]
    # The step that stopped a ramp does not count: 20,000 and 30,000.
    assert rounds[0]["capacity"]["one"]["forwarded_packets_per_s"] == 20_000
    assert rounds[0]["capacity"]["workers"] == {
        "forwarded_packets_per_s": 30_000,
        "lessons": 2,
        "subscribers": 90,
    }
    assert rounds[0]["ratio"] == pytest.approx(1.5)
    assert rounds[0]["ramp_stops"] == {"one": "loss 3.00 % > 1 %", "workers": "loss 3.00 % > 1 %"}
    assert rounds[3]["invalid"] == "workers 2 at 2x30: lessons per node n-w1: 2, n-w2: 0"
    summary = summarise(rounds)
    assert summary["rounds"] == 3 and summary["invalid_rounds"] == 1
    assert summary["ratio"]["median"] == pytest.approx(1.5)
    assert summary["ratio"]["low"] == pytest.approx(31_000 / 21_000)
    assert summary["ratio"]["high"] == pytest.approx(29_000 / 19_000)
    assert summary["met"] is False and summary["ran_out_of_steps"] == {"one": 0, "workers": 0}
    at_90 = summary["steps"][2]
    assert at_90["forwarded_ratio"]["median"] == pytest.approx(30_000 / 25_000)
    assert at_90["workers"]["process_cpu_pct"][0]["median"] == pytest.approx(75.0)
    # At 120 classrooms only the workers ran: no ratio there.
    assert "one" not in summary["steps"][3] and summary["steps"][3]["forwarded_ratio"] is None

    document = {
        "kind": "workers",
        "quick": False,
        "noise": results.noise([{"figures": r} for r in rounds]),
        "workers": {
            "workers": 2,
            "load": "raw",
            "window_s": 10.0,
            "workloads": {"w1": {"description": "W1", "summary": summary}},
            "rounds": rounds,
            "errors": [],
        },
    }
    region = docgen.Region("workers", {"workload": "w1", "need": "headline"}, 0, 0, 0)
    assert docgen.qualifies(document, region) == "fewer than 5 valid rounds"
    assert docgen.qualifies(document, docgen.Region("workers", {"workload": "w3"}, 0, 0, 0))
    text = docgen.render_workers(document, region)
    assert (
        "| W1 | 20,000 [19,000-21,000] | 30,000 [29,000-31,000] | 1.50 [1.48-1.53]: **not met** |"
        in text
    )
    assert (
        "| 2 x 90 | workers 2 | 30,000 [29,000-31,000] | 0.00 | 30.0 | 150 | 75 / 75 | 0.5 | 300 "
        "| 1 | 20.0 | 1.20 [1.19-1.21] |" in text
    )
    assert (
        "- round 4, stops: one process: loss 3.00 % > 1 %; workers 2: invalid placement: " in text
    )
    assert "**Invalid**: workers 2 at 2x30" in text


def test_a_placement_is_valid_only_with_the_lessons_spread_evenly_over_the_workers() -> None:
    assert placement_problem("one", {"a": "n", "b": "n"}, ["n"]) is None
    assert placement_problem("workers", {"a": "w1", "b": "w2"}, ["w1", "w2"]) is None
    assert placement_problem("workers", {"a": "w1", "b": "w1"}, ["w1", "w2"]) == (
        "lessons per node w1: 2, w2: 0: not 1 each"
    )
    assert (
        placement_problem("workers", {"a": "w1", "b": "w2"}, ["w1"]) == "1 nodes beat (w1), not 2"
    )
    assert placement_problem("workers", {"a": "w1", "b": None}, ["w1", "w2"]) == "no node owns b"
    four = {"a": "w1", "b": "w2", "c": "w2", "d": "w1"}
    assert placement_problem("workers", four, ["w1", "w2"]) is None


def test_the_target_is_judged_only_on_ramps_that_stopped_except_a_lower_bound_that_meets_it() -> (
    None
):
    def rounds(one: str | None, workers: str | None) -> list[dict[str, Any]]:
        return [{"ramp_stops": {"one": one, "workers": workers}}]

    low, high = {"median": 1.2}, {"median": 1.8}
    assert target_met(low, rounds("loss", "loss")) is False
    assert target_met(high, rounds("loss", "loss")) is True
    # One process never stopped: what it can forward is unknown.
    assert target_met(high, rounds(None, "loss")) is None
    # The workers never stopped: their ratio is a lower bound, enough to meet it only.
    assert target_met(high, rounds("loss", None)) is True
    assert target_met(low, rounds("loss", None)) is None
    assert target_met(None, rounds("loss", "loss")) is None
