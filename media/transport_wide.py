"""A queue on one viewer's downlink, seen from transport-wide feedback.

Loss shows on a congested link only once its bottleneck queue is full, and only
after that whole queue has drained to the viewer: on a home router holding 20
packets of a 300 kbit/s link, about 0.7 s after the link dropped. A browser viewer
tells more, and sooner: with transport-wide congestion control negotiated
(draft-holmer-rmcat-transport-wide-cc-extensions-01) it reports, every 50 to 250 ms,
when each packet we numbered arrived. A queue that builds up shows at once as a
growing delay between sending and arrival, and what arrives per second is what the
link carries.

Sans-I/O: the forwarder numbers each packet it sends on the connection
(:meth:`TransportWide.stamp`); each feedback packet goes in
(:meth:`TransportWide.feedback`), and when the newest packets waited more than
:data:`QUEUE_LIMIT` in a queue, out comes the bitrate that reached the viewer
meanwhile: the downlink then steps down to what fits in it
(:meth:`media.viewer.Viewer.queue_building`).

The two clocks (ours, the viewer's) are unrelated: the delay of a packet is its
arrival minus its sending, up to a constant; the smallest delay of the last
:data:`BASE_WINDOW` seconds stands for an empty queue, and what a packet waited is
its delay above that.
"""

from __future__ import annotations

from array import array
from collections import deque

from .twcc import TransportFeedback

TRANSPORT_WIDE_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
# Packets whose send time is kept (a power of two): seconds of a viewer's packets,
# and feedback tells of each within a few tenths of a second.
LOG_SIZE = 4096
BASE_WINDOW = 10.0  # seconds over which the smallest delay stands for an empty queue
# Seconds the newest packets waited in a queue before we call it congestion: above the
# jitter of most home networks (and a queue alone steps nothing down: less must also
# arrive than the level sends), far below what a full 20-packet queue of a slow link
# holds (0.64 s at 300 kbit/s).
QUEUE_LIMIT = 0.06
# A packet that waited longer than this found the link busy. While every packet does,
# the link sends all the time: what arrives per second is what it carries.
BUSY = 0.02
DELIVERY_WINDOW = 0.5  # seconds of arrivals over which the delivered bitrate is measured
MIN_DELIVERY_SPAN = 0.06  # ... at least this long, or the figure says nothing yet


class TransportWide:
    """The transport-wide numbering of one subscribe connection, and what its
    feedback says about the viewer's downlink."""

    def __init__(self) -> None:
        self.next_index = 0  # the next packet's unwrapped transport-wide number
        self.feedback_packets = 0
        # Each logged packet's number, send time and size, by number modulo LOG_SIZE:
        # fixed memory, nothing allocated per packet.
        self._numbers = array("q", [-1]) * LOG_SIZE
        self._sent_at = array("d", [0.0]) * LOG_SIZE
        self._octets = array("l", [0]) * LOG_SIZE
        self._mask = LOG_SIZE - 1
        # Increasing (send time, delay) pairs: the smallest delay of the window first.
        self._base: deque[tuple[float, float]] = deque()
        # (arrival, octets) of the packets that found the link busy, since it has been.
        self._arrivals: deque[tuple[float, int]] = deque()
        self._delivered = 0  # octets in _arrivals
        self._newest_arrival: float | None = None
        # How long the newest packet reported waited in a queue (None: none yet), and
        # its unwrapped number.
        self.queue_delay: float | None = None
        self.queue_delay_of = -1

    def stamp(self, now: float, octets: int) -> int:
        """Number one packet of ``octets`` sent at ``now``: its 16-bit transport-wide
        sequence number, for the header extension."""
        index = self.next_index
        self.next_index = index + 1
        slot = index & self._mask
        self._numbers[slot] = index
        self._sent_at[slot] = now
        self._octets[slot] = octets
        return index & 0xFFFF

    def feedback(self, packet: TransportFeedback) -> float | None:
        """One feedback packet: the bitrate (bits per second) that reached the viewer
        lately if its newest packets waited in a queue longer than
        :data:`QUEUE_LIMIT`, else None."""
        self.feedback_packets += 1
        waited: float | None = None
        index = -1
        for sequence, arrival in packet.received:
            number = self._index_of(sequence)
            slot = number & self._mask
            if self._numbers[slot] != number:
                continue  # older than the log, or never ours
            index, sent_at, octets = number, self._sent_at[slot], self._octets[slot]
            delay = arrival - sent_at
            base = self._base
            while base and base[-1][1] >= delay:
                base.pop()
            base.append((sent_at, delay))
            while base[0][0] < sent_at - BASE_WINDOW:
                base.popleft()
            waited = delay - base[0][1]
            self._arrived(arrival, octets, busy=waited > BUSY)
        if waited is None:
            return None
        self.queue_delay, self.queue_delay_of = waited, index
        if waited <= QUEUE_LIMIT:
            return None
        return self.delivered()

    def delivered(self) -> float | None:
        """Bits per second that reached the viewer over the last
        :data:`DELIVERY_WINDOW` of arrivals while its link was busy (what the link
        carries); None before there is enough to tell."""
        arrivals = self._arrivals
        if len(arrivals) < 2:
            return None
        span = arrivals[-1][0] - arrivals[0][0]
        if span < MIN_DELIVERY_SPAN:
            return None
        # The first arrival opens the span: what it brought came before it.
        return (self._delivered - arrivals[0][1]) * 8 / span

    def _arrived(self, arrival: float, octets: int, busy: bool) -> None:
        # Feedback may report a packet that arrived before one already counted
        # (reordering): it counts at the newest arrival, the window stays in order.
        newest = self._newest_arrival
        at = arrival if newest is None or arrival > newest else newest
        self._newest_arrival = at
        if not busy:  # the link had time to spare: its rate is not what arrived
            self._arrivals.clear()
            self._delivered = 0
            return
        self._arrivals.append((at, octets))
        self._delivered += octets
        while self._arrivals[0][0] < at - DELIVERY_WINDOW:
            self._delivered -= self._arrivals.popleft()[1]

    def _index_of(self, sequence: int) -> int:
        """The unwrapped number nearest the newest one sent whose low 16 bits are
        ``sequence``."""
        newest = self.next_index - 1
        delta = (sequence - newest) & 0xFFFF
        return newest + delta if delta < 0x8000 else newest - (0x10000 - delta)
