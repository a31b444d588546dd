"""Per-packet counting at the receiving end, shared by both load modes (no I/O).

:class:`SsrcCounter` counts one SSRC's extended sequence numbers as an RTCP
receiver report does, telling late and repaired packets from lost ones.
:class:`ReceiveCounters` totals one aiortc receiver. The latency probe recognises
a replayed VP8 frame by its first bytes (:func:`frame_position_index`,
:func:`vp8_frame_start`).
"""

from __future__ import annotations

import collections
import time
from typing import Any

from aiortc.rtp import RtpPacket

RTP_HEADER_BYTES = 12
PROBE_PREFIX = 48  # bytes of a frame that identify its position in the loop


class SsrcCounter:
    """Extended sequence numbers of one media SSRC, as an RTCP receiver report counts them.

    Also remembers the most recent missing sequence numbers, so that a packet that
    arrives late or is repaired by RTX is told apart from a loss.
    """

    __slots__ = ("first", "highest", "missing", "received", "repaired")

    def __init__(self, sequence: int) -> None:
        self.first = sequence
        self.highest = sequence
        self.received = 1
        self.repaired = 0
        self.missing: dict[int, None] = {}

    def _extend(self, sequence: int) -> int:
        diff = ((sequence - (self.highest & 0xFFFF) + 0x8000) & 0xFFFF) - 0x8000
        return self.highest + diff

    def add(self, sequence: int) -> None:
        """A media packet with this (16-bit) sequence number arrived."""
        extended = self._extend(sequence)
        if extended > self.highest:
            if extended - self.highest <= 512:
                for gap in range(self.highest + 1, extended):
                    self.missing[gap] = None
                while len(self.missing) > 4096:
                    del self.missing[next(iter(self.missing))]
            self.highest = extended
            self.received += 1
        elif extended in self.missing:  # late, not lost
            del self.missing[extended]
            self.received += 1
        # else: a duplicate, not counted

    def repair(self, sequence: int) -> None:
        """An RTX packet carrying ``sequence`` arrived."""
        extended = self._extend(sequence)
        if extended in self.missing:
            del self.missing[extended]
            self.repaired += 1

    @property
    def expected(self) -> int:
        """Packets from the first to the highest sequence number seen."""
        return self.highest - self.first + 1


class ReceiveCounters:
    """What one aiortc receiver saw: RTP packets, payload bytes, RTX, sequence gaps."""

    __slots__ = ("bytes", "frames", "packets", "rtx_packets", "ssrcs")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.rtx_packets = 0
        self.frames = 0  # video: packets with the marker bit; audio: packets
        self.ssrcs: dict[int, SsrcCounter] = {}

    def add(self, packet: RtpPacket, rtx_ssrcs: dict[int, int], kind: str) -> None:
        """Count one packet (``rtx_ssrcs``: {RTX SSRC: media SSRC} of the receiver)."""
        self.packets += 1
        self.bytes += RTP_HEADER_BYTES + len(packet.payload) + packet.padding_size
        media_ssrc = rtx_ssrcs.get(packet.ssrc)
        if media_ssrc is not None:
            self.rtx_packets += 1
            repaired = self.ssrcs.get(media_ssrc)
            if repaired is not None and len(packet.payload) >= 2:
                repaired.repair(int.from_bytes(packet.payload[:2], "big"))
            return
        if kind == "audio" or packet.marker:
            self.frames += 1
        counter = self.ssrcs.get(packet.ssrc)
        if counter is None:
            self.ssrcs[packet.ssrc] = SsrcCounter(packet.sequence_number)
        else:
            counter.add(packet.sequence_number)

    def snapshot(self) -> dict[str, int]:
        """Cumulative counts."""
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "rtx_packets": self.rtx_packets,
            "expected": sum(c.expected for c in self.ssrcs.values()),
            "media_received": sum(c.received for c in self.ssrcs.values()),
            "repaired": sum(c.repaired for c in self.ssrcs.values()),
        }


def frame_position_index(frames: list[tuple[bytes, bool]]) -> dict[bytes, int]:
    """{first bytes of a frame: its position in the loop}, without prefixes two frames
    share (those frames cannot be told apart and are left out of the latency)."""
    index: dict[bytes, int] = {}
    clashes: set[bytes] = set()
    for position, (data, _) in enumerate(frames):
        key = data[:PROBE_PREFIX]
        if key in index:
            clashes.add(key)
        index[key] = position
    for key in clashes:
        del index[key]
    return index


def vp8_frame_start(payload: Any, offset: int = 0) -> int | None:
    """Where the frame's bytes begin in a VP8 RTP payload (starting at ``offset``) if
    the packet starts partition 0 of a frame (S bit, PID 0; RFC 7741 4.2), else ``None``."""
    if len(payload) < offset + 2:
        return None
    first = payload[offset]
    if not first & 0x10 or first & 0x07:
        return None
    position = offset + 1
    if first & 0x80:  # X: extension byte follows
        extension = payload[offset + 1]
        position = offset + 2
        if extension & 0x80:  # I: picture ID, 7 or 15 bits
            position += 2 if payload[position] & 0x80 else 1
        if extension & 0x40:  # L: TL0PICIDX
            position += 1
        if extension & 0x30:  # T or K: TID/KEYIDX byte
            position += 1
    return position


class PacketProbe:
    """Arrival of each replayed VP8 frame's last RTP packet, recognised by its bytes.

    The first packet of a frame carries the frame's first bytes, which identify its
    position in the loop; the packet with the marker bit and the same RTP timestamp
    ends it. Its arrival (after SRTP, before aiortc's jitter buffer, so without the
    subscriber's one-frame wait) is recorded as ``(wall time, loop position,
    receiver id)``. This works for servers that forward the encoded bytes (ours,
    pack(), Janus), not for MediaRelay.
    """

    def __init__(self, frames: list[tuple[bytes, bool]]) -> None:
        self.index = frame_position_index(frames)
        self.current: dict[int, tuple[int, int]] = {}
        # The newest arrivals only: a window needs seconds of them, a soak runs an hour.
        self.arrivals: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=200_000)

    def add(self, receiver_id: int, packet: RtpPacket) -> None:
        """Look at one video packet of receiver ``receiver_id``."""
        payload = packet.payload
        start = vp8_frame_start(payload)
        if start is not None:
            position = self.index.get(bytes(payload[start : start + PROBE_PREFIX]))
            if position is not None:
                self.current[packet.ssrc] = (packet.timestamp, position)
        if packet.marker:
            current = self.current.pop(packet.ssrc, None)
            if current is not None and current[0] == packet.timestamp:
                self.arrivals.append((time.time(), current[1], receiver_id))
