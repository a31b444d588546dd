"""``lco serve --workers N``: N processes on one machine sharing the port.

Each worker is a whole server and a node of its own (``NODE-w1``, ``NODE-w2``...):
the kernel spreads new connections over the workers' sockets (``SO_REUSEPORT``), and
lessons are placed on, and sockets relayed to, the workers through Redis exactly as
between machines. The parent only starts the workers, passes SIGTERM on to them and
waits; if one dies, the others are stopped too.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
from collections.abc import Iterable
from multiprocessing.process import BaseProcess
from types import FrameType

from .config import Settings
from .logs import LogFormat, configure_logging

logger = logging.getLogger(__name__)


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker ``index`` (from 1): its own node name, the same everything else."""
    return dataclasses.replace(settings, node_name=f"{settings.node_name}-w{index}")


def _worker(
    settings: Settings, log_level: str, log_format: LogFormat, hide: list[str], banner: str | None
) -> None:
    from .serve import run_server

    configure_logging(log_level, log_format, hide=hide)
    run_server(settings, log_level=log_level, banner=banner, reuse_port=True)


def run_workers(
    settings: Settings,
    count: int,
    *,
    log_level: str,
    log_format: LogFormat,
    hide: Iterable[str],
    banner: str | None,
) -> int:
    """Run ``count`` workers until SIGINT or SIGTERM; 1 if a worker failed."""
    context = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                # SIGINT from a terminal reaches the workers by themselves.
                if signum == signal.SIGTERM:
                    worker.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(1, count + 1):
        worker: BaseProcess = context.Process(
            target=_worker,
            args=(
                worker_settings(settings, index),
                log_level,
                log_format,
                list(hide),
                banner if index == 1 else None,
            ),
            name=f"lco-worker-{index}",
        )
        worker.start()
        workers.append(worker)
    logger.info("started %d workers on port %d", count, settings.port)
    failed = False
    while any(worker.is_alive() for worker in workers):
        multiprocessing.connection.wait([w.sentinel for w in workers if w.is_alive()])
        for worker in workers:
            if not worker.is_alive() and worker.exitcode not in (0, None) and not stopping:
                logger.error(
                    "worker %s exited with %s; stopping the others", worker.name, worker.exitcode
                )
                failed = stopping = True
                for other in workers:
                    if other.is_alive():
                        other.terminate()
    return 1 if failed else 0
