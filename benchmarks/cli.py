"""Command line of the benchmarks: ``python -m benchmarks`` (and ``lco bench``).

``run`` is the benchmark. ``media`` encodes the pre-encoded streams into the
cache. ``relay-server``, ``_publishers`` and ``_subscribers`` are the processes
that ``run`` starts; they are not meant to be started by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from server.progress import StepProgress

from . import procstat, report
from .encoded import VIDEO_VARIANTS, default_cache_dir, load_audio, load_video
from .runner import RAMP_CPU_LIMIT, SYSTEMS, RunOptions, run_workload, workloads


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m benchmarks``."""
    parser = argparse.ArgumentParser(
        prog="lco bench", description="Forwarding benchmarks of LCO Classroom against baselines"
    )
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run workloads and print the side-by-side table")
    run.add_argument(
        "--workload",
        action="append",
        choices=sorted(workloads(False)),
        help="core (default), w1 ... w6; repeat for several",
    )
    run.add_argument("--quick", action="store_true", help="small sizes and short windows")
    run.add_argument(
        "--system",
        action="append",
        choices=sorted(SYSTEMS),
        help="systems to measure (default: all, back to back)",
    )
    run.add_argument(
        "--subscribers",
        type=int,
        action="append",
        help="override the workload's subscriber counts; repeat for several",
    )
    run.add_argument("--duration", type=float, help="measurement window per run, seconds")
    run.add_argument(
        "--per-process", type=int, default=8, help="subscribers per load process (default 8)"
    )
    run.add_argument("--cache-dir", type=Path, help=f"media cache (default {default_cache_dir()})")
    run.add_argument("--results-dir", type=Path, help="where to write the JSON")
    run.add_argument("--logs-dir", type=Path, help="server and load-process logs")
    run.add_argument(
        "--source-dir",
        type=Path,
        help="run the server and load processes from this tree (e.g. a `git archive` "
        "snapshot with benchmarks/ copied in) instead of this checkout",
    )
    run.add_argument("--label", default="", help="free text stored in the JSON (e.g. a commit)")

    show = commands.add_parser("show", help="print the tables of a results JSON file")
    show.add_argument("path", type=Path)
    show.add_argument("--markdown", action="store_true")
    show.add_argument("--brief", action="store_true", help="the main rows only")

    plot = commands.add_parser("plot", help="draw the ramp of a results JSON file (PNG)")
    plot.add_argument("path", type=Path)
    plot.add_argument("--workload", default="w2")
    plot.add_argument("--out", type=Path, help="PNG path (default: next to the JSON)")

    check = commands.add_parser(
        "check", help="decode the replayed media through the server (proves it is valid)"
    )
    check.add_argument("--video", choices=sorted(VIDEO_VARIANTS), action="append")
    check.add_argument("--seconds", type=float, default=12.0, help="stay past the 10 s loop")
    check.add_argument("--cache-dir", type=Path)

    media = commands.add_parser("media", help="encode the benchmark media into the cache")
    media.add_argument("--cache-dir", type=Path)

    commands.add_parser(
        "relay-server", help="(internal) the MediaRelay baseline server", add_help=False
    )

    for name in ("_publishers", "_subscribers"):
        child = commands.add_parser(name, help="(internal) a load-generator process")
        child.add_argument("--url", required=True)
        child.add_argument("--token", action="append", required=True)
        child.add_argument("--deadline", type=float, default=120.0)
        child.add_argument("--ready-timeout", type=float, default=30.0)
        child.add_argument("--cache-dir")
        child.add_argument("--ice-host", default="127.0.0.1")
        child.add_argument("--janus", action="store_true", help="--url is Janus's HTTP API")
        if name == "_publishers":
            child.add_argument("--video", choices=sorted(VIDEO_VARIANTS))
            child.add_argument("--audio", action="store_true")
            child.add_argument(
                "--hear-each-other",
                type=int,
                default=0,
                help="(Janus) publishers in the room in all: each also subscribes to the others",
            )
        else:
            child.add_argument("--expect-video", type=int, default=1)
            child.add_argument("--expect-audio", type=int, default=1)
            child.add_argument("--stagger", type=float, default=0.05)
            child.add_argument("--latency-video", choices=sorted(VIDEO_VARIANTS))
            child.add_argument("--inject-loss", type=float, default=0.0)
            child.add_argument("--inject-delay", type=float, default=0.0)
            child.add_argument("--churn", action="store_true")
    return parser


def _run(args: argparse.Namespace, bar: StepProgress | None = None) -> int:
    chosen = workloads(args.quick)
    names = args.workload or ["core"]
    options = RunOptions(
        systems=tuple(args.system or SYSTEMS),
        per_process=args.per_process,
        cache_dir=args.cache_dir,
        settle=0.5 if args.quick else 1.0,
    )
    if bar is not None:  # a progress bar with an ETA; the lines go above it
        options.on_progress = bar.update
        options.progress = bar.lines or options.progress
    if args.source_dir:
        options.source_dir = args.source_dir.resolve()
    if args.logs_dir:
        args.logs_dir.mkdir(parents=True, exist_ok=True)
        options.log_dir = args.logs_dir
    document: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": procstat.machine(),
        "source_dir": str(options.source_dir),
        "label": args.label,
        "systems": {name: SYSTEMS[name] for name in options.systems},
        "notes": [
            "ours: RTP packet forwarding (lco serve, the default); pack: the same server with "
            "--forwarding frames (aiortc's stock pre-encoded pack() path, baseline b)",
            "pre-encoded publishers answer keyframe requests by jumping to the next keyframe "
            "of their loop; keyframes also every 2 s",
            "figures from a shared 2-core machine; other work ran in parallel",
        ],
        "workloads": {},
    }
    print(f"logs: {options.log_dir}", file=sys.stderr)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    document["ice_host"] = options.host
    exit_code = 0
    for name in names:
        workload = chosen[name]
        if args.subscribers:
            workload = _replace(workload, sizes=tuple(args.subscribers))
        if args.duration:
            workload = _replace(workload, duration=args.duration)
        runs = asyncio.run(run_workload(workload, options))
        if any(run["errors"] for run in runs):
            exit_code = 1
        document["workloads"][name] = {
            "description": workload.description,
            "duration_s": workload.duration,
            "runs": runs,
        }
        report.add_marginal_costs(runs)
        if workload.ramp:
            png = report.plot_ramp(
                runs,
                f"{name}: {workload.description}",
                (args.results_dir or report.RESULTS_DIR) / f"{stamp}-{name}.png",
                cpu_limit=RAMP_CPU_LIMIT,
            )
            document["workloads"][name]["plot"] = str(png) if png else None
            document["workloads"][name]["ramp_stops"] = {
                r["system"]: r["ramp_stop"] for r in runs if "ramp_stop" in r
            }
            print(f"plot: {png or 'not drawn (pip install matplotlib)'}")
        systems = list(options.systems)
        rows = report.table_rows(runs, systems)
        print(f"\n{name}: {workload.description}; {workload.duration:.0f} s windows")
        print(report.text_table(report.table_header(systems), rows))
        for run in runs:
            for error in run["errors"]:
                print(f"  {run['system']} x{run['subscribers']}: {error}")
    path = report.write_json(document, args.results_dir, stamp)
    print(f"\nJSON: {path}")
    return exit_code


def _replace(workload: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(workload, **changes)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks`` and ``lco bench``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "relay-server":
        from .relay import main as relay_main

        return relay_main(argv[1:])
    args = build_parser().parse_args(argv or ["run"])
    if args.command in (None, "run"):
        if args.command is None:
            args = build_parser().parse_args(["run"])
        with StepProgress("lco bench") as bar:
            return _run(args, bar)
    if args.command == "show":
        document = json.loads(args.path.read_text())
        for name, entry in document["workloads"].items():
            report.add_marginal_costs(entry["runs"])
            systems = list(document["systems"])
            rows = report.table_rows(entry["runs"], systems, args.brief)
            header = report.table_header(systems)
            title = f"{name}: {entry['description']}; {entry['duration_s']:.0f} s windows"
            if args.markdown:
                print(f"**{title}**\n\n{report.markdown_table(header, rows)}\n")
                stops = entry.get("ramp_stops")
                if stops:
                    print("Ramp stops: " + "; ".join(f"{k}: {v}" for k, v in stops.items()))
                    print()
            else:
                print(f"{title}\n{report.text_table(header, rows)}\n")
        return 0
    if args.command == "plot":
        document = json.loads(args.path.read_text())
        entry = document["workloads"][args.workload]
        out = args.out or args.path.with_name(f"{args.path.stem}-{args.workload}.png")
        png = report.plot_ramp(entry["runs"], f"{args.workload}: {entry['description']}", out)
        print(png or "matplotlib is not installed")
        return 0 if png else 1
    if args.command == "check":
        from .check import check

        ok = True
        for variant in args.video or sorted(VIDEO_VARIANTS):
            outcome = asyncio.run(check(variant, args.seconds, args.cache_dir))
            print(json.dumps(outcome))
            ok = ok and bool(outcome["ok"])
        return 0 if ok else 1
    if args.command == "media":
        for name in VIDEO_VARIANTS:
            stream = load_video(name, args.cache_dir)
            print(f"{name}: {len(stream.frames)} frames, {stream.bitrate / 1e6:.2f} Mbit/s")
        audio = load_audio(args.cache_dir)
        print(f"opus: {len(audio.frames)} frames, {audio.bitrate / 1e3:.1f} kbit/s")
        return 0
    from . import loadgen

    if args.command == "_publishers":
        return asyncio.run(loadgen.run_publishers(args))
    return asyncio.run(loadgen.run_subscribers(args))
