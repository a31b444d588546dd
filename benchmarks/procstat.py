"""CPU time and memory of a process tree, read from ``/proc`` (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds (user + system) of a process, its live descendants and reaped children."""

    user: float
    system: float
    rss_bytes: int
    processes: int

    @property
    def total(self) -> float:
        """User plus system seconds."""
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


def sample(pid: int) -> CpuSample:
    """CPU seconds and RSS of ``pid``'s process tree now (threads included)."""
    user = system = 0.0
    rss = 0
    count = 0
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
    return CpuSample(user=user, system=system, rss_bytes=rss, processes=count)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine since boot, from ``/proc/stat``."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return (0, 0)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle, total)


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
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_bytes": mem_total,
        "loadavg_at_start": load,
        "kernel": os.uname().release,
    }
