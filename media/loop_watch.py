"""How long this process's event loop was able to run.

A keep-alive timeout measures the other side's silence, but a process whose event loop
stalled (a busy machine, a long garbage collection, a swap storm) heard nothing either,
whatever the other side sent: its pongs wait in the socket buffer. Counting that time
as silence drops every socket of the process at once when the stall ends. A
:class:`LoopWatch` ticks on the loop and remembers when it was late, so that silence
is measured only while the loop could have heard (``awake_since``).
"""

from __future__ import annotations

import asyncio
import collections
import time
import weakref
from collections.abc import Callable

TICK = 0.1  # seconds between the watch's wake-ups
SLACK = 0.25  # a wake-up later than this is a stall (ordinary jitter is not)
REMEMBERED = 256  # stalls kept (older ones are long past any keep-alive timeout)


class LoopWatch:
    """Ticks on the running loop (:meth:`run`, a background task) and answers how much
    of a span of time the loop was awake."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_tick = clock()
        self._stalls: collections.deque[tuple[float, float]] = collections.deque(maxlen=REMEMBERED)
        self._lag_listeners: list[Callable[[float], None]] = []

    def on_lag(self, listener: Callable[[float], None]) -> None:
        """Call ``listener`` with each tick's lateness in seconds (metrics)."""
        self._lag_listeners.append(listener)

    async def run(self) -> None:
        """Tick for ever."""
        while True:
            await asyncio.sleep(TICK)
            self.tick()

    def tick(self) -> None:
        """One wake-up of the watch: a late one records a stall."""
        now = self._clock()
        due = self._last_tick + TICK
        lag = max(0.0, now - due)
        if lag > SLACK:
            self._stalls.append((due, now))
        self._last_tick = now
        for listener in self._lag_listeners:
            listener(lag)

    def awake_since(self, since: float) -> float:
        """Seconds from ``since`` to now during which the loop was not stalled. A stall
        still going on (the watch has not ticked since) counts too: whoever asks may
        run before the watch does when the loop wakes."""
        now = self._clock()
        stalled = sum(max(0.0, min(end, now) - max(start, since)) for start, end in self._stalls)
        due = self._last_tick + TICK
        if now - due > SLACK:
            stalled += max(0.0, now - max(due, since))
        return max(0.0, now - since - stalled)


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[LoopWatch, asyncio.Task[None]]]
_watches = weakref.WeakKeyDictionary()


def loop_watch() -> LoopWatch:
    """The running loop's watch, started on first use (one per loop, however many
    connections ask)."""
    loop = asyncio.get_running_loop()
    found = _watches.get(loop)
    if found is None or found[1].done():
        watch = LoopWatch()
        found = _watches[loop] = (watch, loop.create_task(watch.run(), name="loop-watch"))
    return found[0]
