"""Keyframe requests to a publisher, coalesced: at most one per track per interval.

Subscribers joining, overflowing or sending PLI/FIR all want a keyframe, often at
the same moment; the publisher should get one request per interval. A request
inside the interval is folded into a single one sent when the interval ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

KEYFRAME_REQUEST_INTERVAL = 0.5  # at most one PLI per published track per 500 ms


class KeyframeStats(Protocol):
    """What the requester counts (the forwarders' stats objects have these fields)."""

    keyframe_requests_relayed: int
    keyframe_requests_suppressed: int


class KeyframeRequester:
    """Sends ``send()`` (a PLI to the publisher) at most once per interval."""

    def __init__(
        self,
        send: Callable[[], Awaitable[bool]],
        stats: KeyframeStats,
        on_error: Callable[[BaseException], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._stats = stats
        self._on_error = on_error
        self._clock = clock
        self.last_request = -KEYFRAME_REQUEST_INTERVAL
        self._timer: asyncio.TimerHandle | None = None
        # Only tasks of ``send()`` live here: a cancelled one's traceback must not
        # hold whoever owns this requester.
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closed = False

    def request(self) -> None:
        """Ask now, or fold into the one request due at the end of the interval."""
        if self._closed:
            return
        now = self._clock()
        wait = self.last_request + KEYFRAME_REQUEST_INTERVAL - now
        if wait > 0:
            self._stats.keyframe_requests_suppressed += 1
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(wait, self._deferred)
            return
        self._fire(now)

    async def close(self) -> None:
        """Cancel what is pending or in flight."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = list(self._tasks)
        self._tasks.clear()
        for task in tasks:
            task.remove_done_callback(self._done)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _deferred(self) -> None:
        self._timer = None
        if not self._closed:
            self._fire(self._clock())

    def _fire(self, now: float) -> None:
        self.last_request = now
        task = asyncio.ensure_future(self._send())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._on_error(error)
        elif task.result():
            self._stats.keyframe_requests_relayed += 1
