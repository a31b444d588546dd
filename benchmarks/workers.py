"""What ``lco serve --workers 2`` forwards against one process (issue 12):
``--workload workers``.

One lesson lives on one worker, so the workload runs several lessons at once: W1
(a teacher's 720p30 camera and microphone to N classrooms) in two lessons, its
classrooms per lesson ramped (30, 60, 90 ...), and W3 (six schools that each
publish a 480p20 camera and a microphone and receive the other five) in two, four,
six ... lessons. Each round measures both variants, in alternating order, at every
step of the ramp, each time on a new server and an empty Redis (one
redis-server for the run), so that the worker count is the only difference:

- **one process**: ``lco serve --redis URL``;
- **workers 2**: ``lco serve --redis URL --workers 2`` (two processes sharing the
  port, lessons placed on them through Redis).

The load is the raw load mode (:mod:`benchmarks.rawmedia`: real WebRTC peers whose
media bypasses aiortc, the cheapest load this machine can make), in load processes
of their own; the figures are the standard runner's (:mod:`benchmarks.runner`),
over every lesson together: packets the subscribers received per second, loss, the
server's CPU summed over its processes (the workers are the parent's children), the
load generator's CPU and the machine's other work. Each lesson's owner is read from
Redis, where placement writes it: with workers the lessons must be spread evenly
over the workers (two lessons: one each), else the round is invalid.

A variant's ramp stops at the first step with more than 1 % loss at the
subscribers, fewer than 90 % of the video frames, an error or a failed placement.
Its capacity in a round is the most it forwarded at a step before that; the
headline is the ratio workers / one process of the capacities, round by round
(the issue's target is 1.7), with the ratio at every step both variants ran.
Needs ``redis-server``. ``tests/test_bench_workers.py`` runs the ``--quick`` size.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from server import redis_keys
from server.redis_nodes import NodeRegistry

from . import procstat, results
from .failover import Redis, redis_on_loopback
from .figures import ramp_stop_reason
from .runner import RunOptions, Stage, load_and_measure, load_deadline
from .stats import significant
from .workers_summary import (
    LABELS,
    VARIANTS,
    WORKERS,
    round_figures,
    round_line,
    step_ratios,
    summarise,
)
from .workloads import Workload, workloads

# The lessons of W1; its classrooms per lesson are ramped.
W1_LESSONS = 2
W1_CLASSROOMS = (30, 60, 90, 120, 150, 180, 240)
# W3 lessons, six schools each: pairs of them, ramped.
W3_LESSONS = (2, 4, 6, 8, 10, 12, 16)
WINDOW = 10.0
QUICK_WINDOW = 3.0
QUICK_CLASSROOMS = 4


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a ramp: lessons at once, subscribers in each."""

    lessons: int
    subscribers: int


def plans(
    quick: bool, window: float, classrooms: Sequence[int] = ()
) -> dict[str, tuple[Workload, tuple[Step, ...]]]:
    """W1 and W3 with their ramps (``classrooms``: W1's classrooms per lesson, if not
    the default), measured in windows of ``window`` seconds."""
    chosen = workloads(quick)
    w1 = dataclasses.replace(chosen["w1"], duration=window)
    w3 = dataclasses.replace(chosen["w3"], duration=window)
    sizes = classrooms or ((QUICK_CLASSROOMS,) if quick else W1_CLASSROOMS)
    lessons = (W3_LESSONS[0],) if quick else W3_LESSONS
    return {
        "w1": (w1, tuple(Step(W1_LESSONS, n) for n in sizes)),
        "w3": (w3, tuple(Step(n, 0) for n in lessons)),
    }


# -- what Redis says about the nodes -------------------------------------------------


async def live_nodes(client: redis.asyncio.Redis) -> dict[str, int]:
    """{node: pid} of every node whose heartbeat has not expired."""
    nodes = await NodeRegistry(client, "lco-bench").live_nodes()
    pids = {}
    for node in nodes:
        pid = await client.hget(redis_keys.node(node.node_id), "pid")
        if pid is not None:
            pids[node.node_id] = int(pid)
    return pids


async def wait_nodes(client: redis.asyncio.Redis, count: int, timeout: float) -> dict[str, int]:
    """{node: pid} once ``count`` nodes beat: the workers of a new server are ready to
    take lessons (a lesson is only placed on a node that has beaten)."""
    async with asyncio.timeout(timeout):
        while True:
            nodes = await live_nodes(client)
            if len(nodes) >= count:
                return nodes
            await asyncio.sleep(0.1)  # other processes' start: nothing to wait on but Redis


async def owners(client: redis.asyncio.Redis, lessons: Sequence[str]) -> dict[str, str | None]:
    """{lesson: the node that owns it} (None: no node does)."""
    found = {}
    for lesson in lessons:
        owner = await client.get(redis_keys.lesson_owner(lesson))
        found[lesson] = None if owner is None else str(owner)
    return found


async def wait_counted(
    client: redis.asyncio.Redis, lessons: Sequence[str], each: int, timeout: float
) -> None:
    """Until every node's heartbeat counts the ``each`` participants of every lesson
    placed on it: the next lesson's placement, which goes by those counts (and by the
    lessons placed, counted at once), then sees this one. Without it a third lesson
    can go to a node whose last beat did not count its first lesson's participants
    yet, and the lessons end up uneven: three on one worker, one on the other."""
    registry = NodeRegistry(client, "lco-bench")
    async with asyncio.timeout(timeout):
        while True:
            placed = await owners(client, lessons)
            counted = {node.node_id: node.participants for node in await registry.live_nodes()}
            wanted = collections.Counter(placed.values())
            if None not in wanted and all(
                counted.get(str(node), 0) >= each * n for node, n in wanted.items()
            ):
                return
            await asyncio.sleep(0.1)  # the heartbeat's next beat: nothing to wait on


def placement_problem(
    variant: str, placed: Mapping[str, str | None], nodes: Sequence[str]
) -> str | None:
    """Why the lessons are not where ``variant`` needs them (None: they are): all on
    the one node, or the same number on each worker."""
    expected = 1 if variant == "one" else WORKERS
    if len(nodes) != expected:
        return f"{len(nodes)} nodes beat ({', '.join(sorted(nodes))}), not {expected}"
    missing = sorted(lesson for lesson, node in placed.items() if node is None)
    if missing:
        return f"no node owns {', '.join(missing)}"
    counts = collections.Counter(placed.values())
    each = len(placed) // expected
    if len(placed) % expected or any(counts.get(node, 0) != each for node in nodes):
        spread = ", ".join(f"{node}: {counts.get(node, 0)}" for node in sorted(nodes))
        return f"lessons per node {spread}: not {each} each"
    return None


# -- one variant at one step ------------------------------------------------------


def stop_reason(result: dict[str, Any], problem: str | None) -> str | None:
    """Why the variant's ramp ends at this step (None: it goes on)."""
    if problem:
        return f"invalid placement: {problem}"
    if result["errors"]:
        return f"{len(result['errors'])} error(s), the first: {result['errors'][0]}"
    if not (result.get("figures") or {}).get("forwarded_packets_per_s"):
        return "nothing forwarded"
    return ramp_stop_reason(result, cpu_limit=None)


async def measure_variant(
    workload: Workload,
    step: Step,
    variant: str,
    number: int,
    redis_server: Redis,
    options: RunOptions,
) -> dict[str, Any]:
    """``variant`` at ``step`` on a new server and an empty Redis: its figures, where
    its lessons were, and why its ramp stops here (``ramp_stop``, None: it goes on)."""
    await redis_server.forget_everything()
    tag = f"{workload.name}-r{number}-{variant}-{step.lessons}x{step.subscribers}"
    lessons = [f"{workload.name}-{k}" for k in range(1, step.lessons + 1)]
    stage = Stage("ours", tag, options, load_deadline(workload, options, step.lessons))
    # Every load process connects from one address: the per-address limit (200 by
    # default) would refuse one process's sockets past it, but not two workers'.
    extra = [
        *("--redis", redis_server.url, "--node-name", tag, "--no-demo"),
        *("--max-connections-per-address", "0"),
    ]
    if variant == "workers":
        extra += ["--workers", str(WORKERS)]
    result: dict[str, Any] = {"system": "ours", "subscribers": step.subscribers, "errors": []}
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    nodes: dict[str, int] = {}
    placed: dict[str, str | None] = {}
    started: list[str] = []

    async def counted(lesson: str) -> None:
        started.append(lesson)
        await wait_counted(client, started, workload.publishers, options.ready_timeout)

    assert redis_server.process is not None
    redis_pid = redis_server.process.pid
    try:
        await stage.start(extra)
        count = WORKERS if variant == "workers" else 1
        nodes = await wait_nodes(client, count, options.ready_timeout)
        await load_and_measure(
            stage,
            workload,
            lessons,
            step.subscribers,
            result,
            counted,
            [*nodes.values(), redis_pid],
        )
        placed = await owners(client, lessons)
    except Exception as exc:  # the step is recorded as failed; the ramp stops there
        result["errors"].append(f"run failed: {type(exc).__name__}: {exc}")
    finally:
        result["server_exit"] = await stage.stop()
        await client.aclose()
    problem = placement_problem(variant, placed, list(nodes)) if placed else None
    figures = result.get("figures") or {}
    cpu = (result.get("raw") or {}).get("pids_cpu_s", {})
    window = figures.get("window_s")
    redis_cpu = cpu.get(str(redis_pid))
    return {
        "variant": variant,
        "lessons": step.lessons,
        "subscribers": step.subscribers,
        "figures": results.compact_run(result).get("figures", {}),
        "owners": placed,
        # Each node's own CPU (the parent of the workers forwards nothing).
        "node_cpu_pct": {
            node: significant(100 * cpu[str(pid)] / window)
            for node, pid in nodes.items()
            if window and str(pid) in cpu
        },
        # Redis carries the signalling relayed between workers (and every node's
        # heartbeat): not the server's CPU, but what serving through Redis costs.
        "redis_cpu_pct": (
            significant(100 * redis_cpu / window) if window and redis_cpu is not None else None
        ),
        "placement_problem": problem,
        "ramp_stop": stop_reason(result, problem),
        "errors": result["errors"][:5],
        "server_exit": result["server_exit"],
    }


# -- rounds --------------------------------------------------------------------------


async def ramp_round(
    name: str,
    workload: Workload,
    steps: Sequence[Step],
    number: int,
    redis_server: Redis,
    options: RunOptions,
) -> dict[str, Any]:
    """One round of one workload: both variants up their ramps, step by step, in the
    round's order; a variant leaves at its first step with a ``ramp_stop``."""
    order = VARIANTS if number % 2 == 1 else VARIANTS[::-1]
    other_work = procstat.ForeignWork()
    stops: dict[str, str] = {}
    measured = []
    for step in steps:
        entry: dict[str, Any] = {"lessons": step.lessons, "subscribers": step.subscribers}
        for variant in order:
            if variant in stops:
                continue
            record = await measure_variant(workload, step, variant, number, redis_server, options)
            entry[variant] = record
            if record["ramp_stop"]:
                stops[variant] = record["ramp_stop"]
        entry.update(step_ratios(entry))
        measured.append(entry)
        print(f"  {name} round {number}: {round_line(entry)}", file=options.progress, flush=True)
        if len(stops) == len(VARIANTS):
            break
    record = {"workload": name, "round": number, "order": list(order), "steps": measured}
    record.update(round_figures(measured))
    record["foreign_cpu_pct"] = other_work.pct()
    return record


def step_errors(record: dict[str, Any]) -> list[str]:
    """A round's errors as the run reports them: its invalid placement, and the first
    error of each variant at each step."""
    where = f"{record['workload']} round {record['round']}"
    errors = [f"{where} is invalid: {record['invalid']}"] if record["invalid"] else []
    for entry in record["steps"]:
        for variant in VARIANTS:
            found = entry.get(variant)
            if found and found["errors"]:
                errors.append(
                    f"{where}, {LABELS[variant]} at {entry['lessons']}x{entry['subscribers']}: "
                    f"{found['errors'][0]}"
                )
    return errors


async def run_workers(
    options: RunOptions,
    rounds: int,
    quick: bool = False,
    window: float = WINDOW,
    classrooms: Sequence[int] = (),
) -> dict[str, Any]:
    """``rounds`` rounds of W1, then of W3 (see the module's docstring) on one
    redis-server; returns the results document's body. A round whose workers variant
    did not spread its lessons over the workers is invalid: it is kept, marked and
    reported as an error, and left out of the summary."""
    options = dataclasses.replace(options, load="raw")
    chosen = plans(quick, window, classrooms)
    measured: list[dict[str, Any]] = []
    errors: list[str] = []
    async with redis_on_loopback("lco-workers-") as (_, redis_server):
        for name, (workload, steps) in chosen.items():
            for number in range(1, rounds + 1):
                record = await ramp_round(name, workload, steps, number, redis_server, options)
                errors += step_errors(record)
                measured.append(record)
    return {
        "system": "ours",
        "workers": WORKERS,
        "load": options.load,
        "window_s": window,
        "workloads": {
            name: {
                "description": workload.description,
                "publishers": workload.publishers,
                "steps": [[s.lessons, s.subscribers] for s in steps],
                "summary": summarise([r for r in measured if r["workload"] == name]),
            }
            for name, (workload, steps) in chosen.items()
        },
        "rounds": measured,
        "errors": errors,
    }
