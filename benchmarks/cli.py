"""Command line of the benchmarks: ``lco bench`` (the same as ``python -m benchmarks``).

``run`` is the benchmark (``--workload soak`` the hour-long lesson, ``--workload
downlink`` a viewer whose link drops to 300 kbit/s, an aiortc peer or with ``--viewer
browser`` a Chromium page, ``--workload mix`` simulcast
to a mix of viewers, ``--workload failover`` a lesson's node killed, ``--workload
cascade`` what cascading costs per delivered packet, ``--workload workers`` what
``lco serve --workers 2`` forwards against one process), ``report``
fills the generated tables of ``docs/benchmarks.md`` from committed results,
``show`` and ``plot`` read a results file, ``media`` encodes the pre-encoded
streams, ``check`` proves they decode. ``relay-server``, ``udp-relay``,
``_publishers`` and ``_subscribers`` are the processes ``run`` starts; they are not
meant to be started by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from server.progress import StepProgress

from . import environment, report, results
from .encoded import VIDEO_VARIANTS, default_cache_dir, load_audio, load_video
from .processes import REPO_ROOT
from .rawmedia import SRTP_PROFILES
from .runner import LOAD_MODES, RunOptions, rounds_for, run_workload
from .workloads import HEADLINE_ROUNDS, RAMP_CPU_LIMIT, SYSTEMS, Workload, workloads

SOAK = "soak"
DOWNLINK = "downlink"
FAILOVER = "failover"
MIX = "mix"
CASCADE = "cascade"
WORKERS = "workers"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lco bench``."""
    parser = argparse.ArgumentParser(
        prog="lco bench", description="Forwarding benchmarks of LCO Classroom against baselines"
    )
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run workloads and print the side-by-side table")
    run.add_argument(
        "--workload",
        action="append",
        choices=[*sorted(workloads(False)), SOAK, DOWNLINK, FAILOVER, MIX, CASCADE, WORKERS],
        help="core (default), w1 ... w6, soak (the hour-long lesson), downlink (a viewer "
        "whose link drops to 300 kbit/s), mix (simulcast to a mix of viewers against one "
        "layer; these two under scripts/netns-run), failover (a lesson's node killed) or "
        "cascade (students on another node than their lesson's, with and without "
        "--cascade) or workers (W1 and W3 in several lessons on --workers 2 against one "
        "process; these three need redis-server); repeat for several",
    )
    run.add_argument("--quick", action="store_true", help="small sizes, short windows, 1 round")
    run.add_argument(
        "--system",
        action="append",
        choices=sorted(SYSTEMS),
        help="systems to measure (default: all but the zero-hop relay; soak: ours)",
    )
    run.add_argument(
        "--subscribers",
        type=int,
        action="append",
        help="override the workload's subscriber counts; repeat for several (cascade: "
        "one, its students, default 8; workers: W1's classrooms per lesson, its ramp)",
    )
    run.add_argument(
        "--duration",
        type=float,
        help="measurement window per run, seconds (cascade: per variant, default 20, --quick "
        "5; workers: per variant and step, default 10, --quick 3)",
    )
    run.add_argument(
        "--rounds",
        type=int,
        help=f"interleaved rounds per size (default {HEADLINE_ROUNDS} for the headline "
        "workloads core and w2 and for downlink, mix, failover, cascade and workers, else 1; "
        "--quick: 1)",
    )
    run.add_argument(
        "--load",
        help="aiortc (default): full aiortc peers; raw: aiortc for ICE and DTLS, media as "
        "SRTP through pylibsrtp (reaches 40,000 packets/s). Soak: mixed (default: raw "
        "publishers, aiortc students), aiortc or raw",
    )
    run.add_argument("--per-process", type=int, help="subscribers per load process")
    run.add_argument(
        "--srtp-profile",
        choices=["any", *SRTP_PROFILES],
        default="aes128-cm-sha1-80",
        help="the only SRTP profile the load offers, so that every system protects alike "
        "(default aes128-cm-sha1-80, the one every WebRTC stack has; any: aiortc's list)",
    )
    soak = run.add_argument_group("soak")
    soak.add_argument("--minutes", type=float, help="length of the soak (default 60, --quick 5)")
    soak.add_argument("--students", type=int, default=4, help="aiortc students (default 4)")
    soak.add_argument("--classrooms", type=int, default=8, help="classrooms (default 8)")
    soak.add_argument(
        "--browsers", type=int, default=0, help="Chromium students too (under scripts/netns-run)"
    )
    downlink = run.add_argument_group("downlink")
    downlink.add_argument(
        "--viewer",
        choices=["aiortc", "browser"],
        help="the viewer whose link drops: an aiortc peer (default) or a headless Chromium "
        "page (under scripts/netns-run); the results file says which",
    )
    run.add_argument("--cache-dir", type=Path, help=f"media cache (default {default_cache_dir()})")
    run.add_argument("--results-dir", type=Path, help="where to write the compact JSON")
    run.add_argument("--raw-dir", type=Path, help="where to write the raw samples")
    run.add_argument("--logs-dir", type=Path, help="server and load-process logs")
    run.add_argument(
        "--server-dir",
        type=Path,
        help="run the server under test from this tree (e.g. `git worktree add --detach "
        "/tmp/old <commit>`); the load processes stay this checkout's",
    )
    run.add_argument("--label", default="", help="free text stored in the JSON")

    show = commands.add_parser("show", help="print the tables of a results file")
    show.add_argument("path", type=Path)
    show.add_argument("--markdown", action="store_true")
    show.add_argument("--brief", action="store_true", help="the main rows only")

    plot = commands.add_parser("plot", help="draw the ramp of a results file (PNG)")
    plot.add_argument("path", type=Path)
    plot.add_argument("--workload", default="w2")
    plot.add_argument("--out", type=Path, help="PNG path (default: next to the JSON)")

    fill = commands.add_parser(
        "report", help="fill the generated regions of docs/benchmarks.md from committed results"
    )
    fill.add_argument("--doc", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    fill.add_argument(
        "--check", action="store_true", help="only say whether the document is up to date"
    )
    fill.add_argument(
        "--keep-sources",
        action="store_true",
        help="re-render each region from the file it names (do not pick newer results)",
    )

    check = commands.add_parser(
        "check", help="decode the replayed media through the server (proves it is valid)"
    )
    check.add_argument("--video", choices=sorted(VIDEO_VARIANTS), action="append")
    check.add_argument("--seconds", type=float, default=12.0, help="stay past the 10 s loop")
    check.add_argument("--cache-dir", type=Path)

    media = commands.add_parser("media", help="encode the benchmark media into the cache")
    media.add_argument("--cache-dir", type=Path)

    for name in ("relay-server", "udp-relay"):
        commands.add_parser(name, help="(internal) a baseline server", add_help=False)

    for name in ("_publishers", "_subscribers"):
        child = commands.add_parser(name, help="(internal) a load-generator process")
        child.add_argument("--url", required=True)
        child.add_argument("--token", action="append", required=True)
        child.add_argument("--first-index", type=int, default=0)
        child.add_argument("--deadline", type=float, default=120.0)
        child.add_argument("--ready-timeout", type=float, default=30.0)
        child.add_argument("--cache-dir")
        child.add_argument("--ice-host", default="127.0.0.1")
        child.add_argument("--janus", action="store_true", help="--url is Janus's HTTP API")
        child.add_argument("--raw", action="store_true", help="media as SRTP, not through aiortc")
        child.add_argument("--relay", action="store_true", help="--url is the zero-hop relay")
        child.add_argument("--srtp-key", default="", help="(relay) the shared SRTP key, hex")
        child.add_argument("--srtp-profile", default="aes128-cm-sha1-80")
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


def _options(
    args: argparse.Namespace,
    systems: tuple[str, ...],
    load: str,
    bar: StepProgress | None = None,
) -> RunOptions:
    options = RunOptions(
        systems=systems,
        load=load,
        per_process=args.per_process,
        rounds=args.rounds if args.rounds is not None else (1 if args.quick else None),
        cache_dir=args.cache_dir,
        settle=0.5 if args.quick else 1.0,
        srtp_profile=args.srtp_profile,
    )
    if bar is not None:  # a progress bar with an ETA; the lines go above it
        options.on_progress = bar.update
        options.progress = bar.lines or options.progress
    if args.server_dir:
        options.server_dir = args.server_dir.resolve()
    if args.logs_dir:
        args.logs_dir.mkdir(parents=True, exist_ok=True)
        options.log_dir = args.logs_dir
    return options


def _header(args: argparse.Namespace, options: RunOptions, kind: str) -> dict[str, Any]:
    env = environment.describe(options.server_dir, REPO_ROOT)
    return {
        "format": results.FORMAT,
        "kind": kind,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": bool(args.quick),
        "label": args.label,
        "command": ["lco", "bench", *sys.argv[2:]] if sys.argv[1:2] == ["run"] else sys.argv,
        "environment": env,
        "options": {
            "systems": list(options.systems),
            "load": options.load,
            "per_process": options.subscribers_per_process,
            "srtp_profile_offered": options.srtp_profile,
            "ice_host": options.host,
            "neutral_subscribers": "abs-send-time ignored at every aiortc receiver: no "
            "receive-side bandwidth estimator for any system",
        },
    }


def _run(args: argparse.Namespace, bar: StepProgress | None = None) -> int:
    names = args.workload or ["core"]
    if args.viewer and DOWNLINK not in names:
        print("lco bench: --viewer is the downlink workload's", file=sys.stderr)
        return 2
    for alone, run_alone in (
        (SOAK, _soak),
        (DOWNLINK, _downlink),
        (FAILOVER, _failover),
        (MIX, _viewer_mix),
        (CASCADE, _cascade),
        (WORKERS, _workers),
    ):
        if alone in names:
            if len(names) > 1:
                print(f"lco bench: run the {alone} workload on its own", file=sys.stderr)
                return 2
            return run_alone(args)
    load = args.load or "aiortc"
    if load not in LOAD_MODES:
        print(f"lco bench: --load is one of {', '.join(LOAD_MODES)}", file=sys.stderr)
        return 2
    default_systems = tuple(s for s in SYSTEMS if s != "udprelay")
    options = _options(args, tuple(args.system or default_systems), load, bar)
    chosen = workloads(args.quick)
    name = results.stamp()
    document = _header(args, options, "workloads")
    document["workloads"] = {}
    raw: dict[str, Any] = {"workloads": {}}
    print(f"logs: {options.log_dir}", file=sys.stderr)
    exit_code = 0
    all_runs: list[dict[str, Any]] = []
    for workload_name in names:
        workload = chosen[workload_name]
        if args.subscribers:
            workload = dataclasses.replace(workload, sizes=tuple(args.subscribers))
        if args.duration:
            workload = dataclasses.replace(workload, duration=args.duration)
        rounds = rounds_for(workload, options, HEADLINE_ROUNDS)
        runs = asyncio.run(run_workload(workload, options, rounds))
        all_runs += runs
        if any(run["errors"] for run in runs):
            exit_code = 1
        report.add_marginal_costs(runs)
        summary = results.summarise(runs, list(options.systems))
        entry: dict[str, Any] = {
            "description": workload.description,
            "duration_s": workload.duration,
            "sizes": list(workload.sizes),
            "rounds": rounds,
            "headline": workload.headline,
            "runs": [results.compact_run(r) for r in runs],
            "summary": summary,
        }
        for run in runs:
            for profile in run.get("srtp_profiles", []):
                profiles = document["environment"]["srtp_profiles"].setdefault(run["system"], [])
                if profile not in profiles:
                    profiles.append(profile)
        if workload.ramp:
            entry["ramp_stops"] = {r["system"]: r["ramp_stop"] for r in runs if "ramp_stop" in r}
            png = report.plot_ramp(
                summary,
                f"{workload_name}: {workload.description}",
                (args.raw_dir or results.RAW_DIR) / f"{name}-{workload_name}.png",
                cpu_limit=RAMP_CPU_LIMIT,
            )
            print(f"plot: {png or 'not drawn (pip install matplotlib)'}")
        document["workloads"][workload_name] = entry
        raw["workloads"][workload_name] = runs
        _print_tables(workload_name, workload, entry, list(options.systems))
    document["noise"] = results.noise(all_runs)
    document["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path, raw_path = results.write(document, raw, name, args.results_dir, args.raw_dir)
    print(f"\nJSON: {path}\nraw samples: {raw_path}")
    _print_noise(document["noise"])
    return exit_code


def _print_tables(name: str, workload: Workload, entry: dict[str, Any], systems: list[str]) -> None:
    rows = report.table_rows(entry["summary"], systems)
    print(
        f"\n{name}: {workload.description}; {workload.duration:.0f} s windows, "
        f"{entry['rounds']} round(s): median [min-max]"
    )
    print(report.text_table(report.table_header(systems), rows))
    for run in entry["runs"]:
        for error in run["errors"]:
            print(f"  {run['system']} x{run['subscribers']} round {run['round']}: {error}")
        if run.get("skipped"):
            print(f"  {run['system']} x{run['subscribers']}: skipped: {run['skipped']}")


def _print_noise(noise: dict[str, Any]) -> None:
    if noise.get("foreign_cpu_pct_median") is None:
        return
    verdict = "quiet" if noise["quiet"] else "BUSY: not for headline figures"
    print(
        f"machine: other work took {noise['foreign_cpu_pct_median']} % of a core (median, "
        f"max {noise['foreign_cpu_pct_max']}) during the windows: {verdict}"
    )


def _soak(args: argparse.Namespace) -> int:
    from .soak import SOAK_MODES, SoakPlan, run_soak, summary_lines

    load = args.load or "mixed"
    if load not in SOAK_MODES:
        print(f"lco bench: the soak's --load is one of {', '.join(SOAK_MODES)}", file=sys.stderr)
        return 2
    systems = tuple(args.system or ["ours"])
    if len(systems) != 1 or systems[0] not in ("ours", "pack"):
        print("lco bench: the soak runs one system, ours or pack", file=sys.stderr)
        return 2
    minutes = args.minutes if args.minutes is not None else (5.0 if args.quick else 60.0)
    plan = SoakPlan(
        minutes=minutes,
        students=args.students,
        classrooms=args.classrooms,
        browsers=args.browsers,
        load=load,
        warmup_minutes=1.0 if minutes < 20 else 2.0,
    )
    options = _options(args, systems, "raw" if load == "raw" else "aiortc")
    name = results.stamp()
    document = _header(args, options, "soak")
    document["options"]["load"] = load
    print(f"logs: {options.log_dir}", file=sys.stderr)
    print(
        f"soak of {systems[0]} for {minutes:g} minutes: 10 publishers and {plan.students} "
        f"students{f' and {plan.browsers} browsers' if plan.browsers else ''}",
        file=sys.stderr,
    )
    body = asyncio.run(run_soak(systems[0], plan, options))
    raw = {"soak": body.pop("raw", None)}
    document["soak"] = body
    document["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path, raw_path = results.write(document, raw, f"{name}-soak", args.results_dir, args.raw_dir)
    print("\n".join(summary_lines(document)))
    print(f"\nJSON: {path}\nraw samples: {raw_path}")
    summary = body.get("summary")
    return 0 if summary and summary["ok"] and not body["errors"] else 1


def _downlink(args: argparse.Namespace) -> int:
    from .downlink import run_downlink, summary_lines

    viewer = args.viewer or "aiortc"

    async def run(options: RunOptions, rounds: int) -> dict[str, Any]:
        return await run_downlink(options, rounds, viewer)

    # A browser's results file is named apart: the two are different figures.
    tag = DOWNLINK if viewer == "aiortc" else f"{DOWNLINK}-{viewer}"
    return _in_rounds(args, DOWNLINK, run, summary_lines, tag=tag)


def _failover(args: argparse.Namespace) -> int:
    from .failover import run_failover, summary_lines

    return _in_rounds(args, FAILOVER, run_failover, summary_lines)


def _viewer_mix(args: argparse.Namespace) -> int:
    from .viewer_mix import run_viewer_mix, summary_lines

    return _in_rounds(args, MIX, run_viewer_mix, summary_lines)


def _cascade(args: argparse.Namespace) -> int:
    from .cascade import QUICK_WINDOW, STUDENTS, WINDOW, run_cascade, summary_lines

    if args.subscribers and len(args.subscribers) > 1:
        print("lco bench: the cascade workload takes one --subscribers", file=sys.stderr)
        return 2
    students = args.subscribers[0] if args.subscribers else STUDENTS
    window = args.duration or (QUICK_WINDOW if args.quick else WINDOW)

    async def run(options: RunOptions, rounds: int) -> dict[str, Any]:
        return await run_cascade(options, rounds, students, window)

    return _in_rounds(args, CASCADE, run, summary_lines)


def _workers(args: argparse.Namespace) -> int:
    from .workers import QUICK_WINDOW, WINDOW, run_workers
    from .workers_summary import summary_lines

    window = args.duration or (QUICK_WINDOW if args.quick else WINDOW)

    async def run(options: RunOptions, rounds: int) -> dict[str, Any]:
        return await run_workers(options, rounds, args.quick, window, args.subscribers or ())

    return _in_rounds(args, WORKERS, run, summary_lines, load="raw")


def _in_rounds(
    args: argparse.Namespace,
    kind: str,
    run: Callable[[RunOptions, int], Coroutine[Any, Any, dict[str, Any]]],
    summary_lines: Callable[[dict[str, Any]], list[str]],
    load: str = "aiortc",
    tag: str | None = None,
) -> int:
    """A workload of rounds on our server alone (downlink, mix, failover, cascade,
    workers): ``run`` measures them and summarises them, ``summary_lines`` prints the
    summary; ``load``: the load mode the results file names; ``tag``: the end of the
    results file's name (default ``kind``)."""
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else HEADLINE_ROUNDS)
    options = _options(args, ("ours",), load)
    name = results.stamp()
    document = _header(args, options, kind)
    print(f"logs: {options.log_dir}", file=sys.stderr)
    body = asyncio.run(run(options, rounds))
    document[kind] = body
    document["noise"] = results.noise([{"figures": r} for r in body["rounds"]])
    document["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path, _ = results.write(document, None, f"{name}-{tag or kind}", args.results_dir)
    print("\n".join(summary_lines(document)))
    _print_noise(document["noise"])
    print(f"\nJSON: {path}")
    return 0 if body["rounds"] and not body["errors"] else 1


def _show(args: argparse.Namespace) -> int:
    document = results.load(args.path)
    if document.get("kind") == "soak":
        from .soak import summary_lines

        print("\n".join(summary_lines(document)))
        return 0
    if document.get("kind") == DOWNLINK:
        from .downlink import summary_lines as downlink_lines

        print("\n".join(downlink_lines(document)))
        return 0
    if document.get("kind") == FAILOVER:
        from .failover import summary_lines as failover_lines

        print("\n".join(failover_lines(document)))
        return 0
    if document.get("kind") == MIX:
        from .viewer_mix import summary_lines as mix_lines

        print("\n".join(mix_lines(document)))
        return 0
    if document.get("kind") == CASCADE:
        from .cascade import summary_lines as cascade_lines

        print("\n".join(cascade_lines(document)))
        return 0
    if document.get("kind") == WORKERS:
        from .workers_summary import summary_lines as workers_lines

        print("\n".join(workers_lines(document)))
        return 0
    systems = list(document["options"]["systems"])
    for name, entry in document["workloads"].items():
        rows = report.table_rows(entry["summary"], systems, args.brief, args.markdown)
        header = report.table_header(systems)
        title = (
            f"{name}: {entry['description']}; {entry['duration_s']:.0f} s windows, "
            f"{entry['rounds']} round(s)"
        )
        if args.markdown:
            print(f"**{title}**\n\n{report.markdown_table(header, rows)}\n")
        else:
            print(f"{title}\n{report.text_table(header, rows)}\n")
    return 0


def _run_loop(coroutine: Coroutine[Any, Any, int]) -> int:
    """Load processes run on uvloop (cheaper per packet), as the server does."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency on Linux
        return asyncio.run(coroutine)
    return int(uvloop.run(coroutine))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks`` and ``lco bench``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "relay-server":
        from .relay import main as relay_main

        return relay_main(argv[1:])
    if argv and argv[0] == "udp-relay":
        from .udprelay import main as udp_main

        return udp_main(argv[1:])
    args = build_parser().parse_args(argv or ["run"])
    if args.command in (None, "run"):
        if args.command is None:
            args = build_parser().parse_args(["run"])
        # SIGTERM as Ctrl-C: the run unwinds and stops the server and load processes it
        # started (a plain SIGTERM would leave the server under test running).
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with StepProgress("lco bench") as bar:
            return _run(args, bar)
    if args.command == "show":
        return _show(args)
    if args.command == "plot":
        document = results.load(args.path)
        entry = document["workloads"][args.workload]
        out = args.out or args.path.with_name(f"{args.path.stem}-{args.workload}.png")
        png = report.plot_ramp(entry["summary"], f"{args.workload}: {entry['description']}", out)
        print(png or "matplotlib is not installed")
        return 0 if png else 1
    if args.command == "report":
        from .docgen import main as report_main

        return report_main(args.doc, check=args.check, keep_sources=args.keep_sources)
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
        return _run_loop(loadgen.run_publishers(args))
    return _run_loop(loadgen.run_subscribers(args))
