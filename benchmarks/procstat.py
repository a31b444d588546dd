"""CPU time, memory and descriptors of a process tree, read from ``/proc`` (Linux).

CPU comes from ``/proc/<pid>/task/<tid>/schedstat``: nanoseconds on a CPU per
thread, where ``/proc/<pid>/stat`` counts 10 ms clock ticks (a 10 s window of a
server at 5 % of a core is 50 ticks: 2 % of the figure in rounding alone). A
thread that ends inside a window takes its schedstat with it, while ``stat``
keeps the time of ended threads and reaped children: both are sampled, and a
window whose tick count exceeds its nanosecond count by more than the rounding
falls back to ticks (``cpu_seconds`` says which it used).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU of a process, its live descendants and reaped children, at one moment."""

    user: float  # seconds, from clock ticks (ended threads and reaped children included)
    system: float
    rss_bytes: int
    processes: int
    cpu_ns: int = 0  # nanoseconds on a CPU of every live thread (schedstat)
    threads: int = 0
    fds: int = 0  # open file descriptors of the tree

    @property
    def total(self) -> float:
        """User plus system seconds (clock ticks)."""
        return self.user + self.system


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        children.extend(int(child) for child in text.split())
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    found: list[int] = []
    pending = [pid]
    while pending and len(found) < 10_000:
        current = pending.pop()
        found.append(current)
        pending.extend(_children(current))
    return found


def _threads_ns(pid: int) -> tuple[int, int]:
    """(nanoseconds on a CPU summed over the live threads of ``pid``, thread count)."""
    total = count = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for task in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        count += 1
    return total, count


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def sample(pid: int) -> CpuSample:
    """CPU, RSS and descriptors of ``pid``'s process tree now (threads included)."""
    user = system = 0.0
    rss = count = cpu_ns = threads = fds = 0
    for member in process_tree(pid):
        fields = _stat_fields(member)
        if fields is None:
            continue
        # After the name: state is index 0, so utime (field 14) is index 11.
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        user += (utime + cutime) / CLOCK_TICKS
        system += (stime + cstime) / CLOCK_TICKS
        rss += int(fields[21]) * PAGE_SIZE
        count += 1
        ns, live = _threads_ns(member)
        cpu_ns += ns
        threads += live
        fds += _fd_count(member)
    return CpuSample(
        user=user,
        system=system,
        rss_bytes=rss,
        processes=count,
        cpu_ns=cpu_ns,
        threads=threads,
        fds=fds,
    )


def cpu_seconds(start: dict[str, float], end: dict[str, float]) -> tuple[float, str]:
    """CPU seconds between two samples (as dicts, from JSON) and where they came from.

    Nanoseconds unless the tick count shows time the live threads no longer hold
    (a thread or child ended in between): more than two ticks per process plus 2 %.
    """
    ticks = (end["user"] + end["system"]) - (start["user"] + start["system"])
    if "cpu_ns" not in start or not end.get("cpu_ns"):
        return ticks, "ticks"
    nanoseconds = (end["cpu_ns"] - start["cpu_ns"]) / 1e9
    processes = max(1, int(end.get("processes", 1)))
    if ticks - nanoseconds > 2 * processes / CLOCK_TICKS + 0.02 * ticks:
        return ticks, "ticks"
    return nanoseconds, "schedstat"


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine since boot, from ``/proc/stat``."""
    fields = _cpu_line()
    if not fields:
        return (0, 0)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle, total)


def task_ticks() -> int:
    """Clock ticks the machine spent running tasks (user, nice, system): not interrupts.

    The kernel's network processing of our own packets is softirq time, which is
    not charged to any process: "other work" (below) must not count it.
    """
    fields = _cpu_line()
    return sum(fields[:3]) if fields else 0


def _cpu_line() -> list[int]:
    try:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return []


def foreign_cpu_pct(
    task_ticks_delta: int, total_ticks_delta: int, ours_ticks_seconds: float, seconds: float
) -> float | None:
    """Other work on the machine in % of one core: the machine's task time minus the
    task time of this benchmark's own process tree (both in clock ticks)."""
    if total_ticks_delta <= 0 or seconds <= 0:
        return None
    cores = os.cpu_count() or 1
    machine = 100.0 * cores * task_ticks_delta / total_ticks_delta
    return max(0.0, machine - 100.0 * ours_ticks_seconds / seconds)


class ForeignWork:
    """The machine's other work while something runs (a round), from when it is made:
    :meth:`pct` is :func:`foreign_cpu_pct` over that time, for this process's tree."""

    def __init__(self) -> None:
        self._tasks = task_ticks()
        self._total = machine_ticks()[1]
        self._ours = sample(os.getpid()).total
        self._wall = time.time()

    def pct(self) -> float | None:
        """Other work so far, % of one core."""
        return foreign_cpu_pct(
            task_ticks() - self._tasks,
            machine_ticks()[1] - self._total,
            sample(os.getpid()).total - self._ours,
            time.time() - self._wall,
        )


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    mem_total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "hostname": os.uname().nodename,
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_bytes": mem_total,
        "loadavg_at_start": load,
        "kernel": os.uname().release,
    }
