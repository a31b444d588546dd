"""``lco bench run`` against our server end to end: a short quick run reads the
server's counters and forwards media (it broke once when ``/metrics`` changed format)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.processes import REPO_ROOT


def test_a_short_run_of_our_server_reads_its_counters(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "run",
            "--workload",
            "core",
            "--quick",
            "--system",
            "ours",
            "--duration",
            "2",
            "--subscribers",
            "2",
            "--results-dir",
            str(tmp_path),
            "--raw-dir",
            str(tmp_path),
            "--logs-dir",
            str(tmp_path / "logs"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    (raw_path,) = tmp_path.glob("*-raw.json")
    (run,) = json.loads(raw_path.read_text())["workloads"]["core"]
    start, end = run["raw"]["metrics_start"], run["raw"]["metrics_end"]
    assert start is not None and end is not None, "the server's counters were not read"
    assert end["sfu"]["packets_forwarded"] > start["sfu"]["packets_forwarded"]
    (compact_path,) = (p for p in tmp_path.glob("*.json") if not p.name.endswith("-raw.json"))
    (figures,) = [
        r["figures"] for r in json.loads(compact_path.read_text())["workloads"]["core"]["runs"]
    ]
    assert figures["forwarded_packets_per_s"] > 0
