"""Transport-wide congestion control feedback (RTCP RTPFB, PT=205, FMT=15), parsed.

A browser viewing our streams reports, for every packet we stamped with a
transport-wide sequence number, whether it arrived and when, on the browser's
clock (draft-holmer-rmcat-transport-wide-cc-extensions-01, section 3.1). Arrival
times that drift later than our send times mean a queue is building on that
viewer's downlink, before any loss shows up; this module only turns the bytes
into sequence numbers and times, without I/O, so that the estimator using it can
be fed recorded or hand-made packets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTPFB = 205
TRANSPORT_FEEDBACK_FMT = 15

# One tick of the receive deltas is 250 µs; the reference time counts 64 ms, 256 ticks.
TICKS_PER_SECOND = 4000
TICKS_PER_REFERENCE = 256

_RTCP_HEADER = struct.Struct(">BBH")
_FEEDBACK_SSRCS = struct.Struct(">II")  # sender SSRC, media SSRC
_FCI_HEADER = struct.Struct(">HHI")  # base sequence, status count, reference time << 8 | fb count
_CHUNK = struct.Struct(">H")
_SIGNED_DELTA = struct.Struct(">h")

# Status symbols: what a packet's receive delta takes, 0, 1 or 2 bytes.
_LOST, _SMALL, _LARGE, _RESERVED = range(4)


@dataclass(frozen=True, slots=True)
class TransportFeedback:
    """One feedback packet: which transport-wide sequence numbers arrived and when."""

    media_ssrc: int
    base_sequence: int  # 16-bit
    feedback_count: int  # 8-bit
    # (16-bit sequence number, arrival time in seconds on the receiver's clock), in
    # the packet's order. The clock wraps every 2**24 * 64 ms (about 12 days) and has
    # an arbitrary origin: only differences between arrivals mean anything.
    received: tuple[tuple[int, float], ...]
    lost: tuple[int, ...]  # 16-bit sequence numbers reported as not received


def feedback_in(datagram: bytes) -> list[TransportFeedback]:
    """Every transport-wide feedback packet in one (decrypted) RTCP datagram.

    The datagram may be compound; other RTCP packets are skipped, and so is a
    malformed feedback packet, the rest of the compound still being read. A header
    that cannot be walked past (wrong version, length beyond the datagram) ends the
    walk: what follows it has no trustworthy boundaries. Never raises.
    """
    found: list[TransportFeedback] = []
    offset = 0
    while offset + _RTCP_HEADER.size <= len(datagram):
        first, packet_type, words = _RTCP_HEADER.unpack_from(datagram, offset)
        end = offset + (words + 1) * 4
        if first >> 6 != 2 or end > len(datagram):
            break
        if packet_type == RTPFB and first & 0x1F == TRANSPORT_FEEDBACK_FMT:
            feedback = _feedback_packet(datagram[offset:end], padded=bool(first & 0x20))
            if feedback is not None:
                found.append(feedback)
        offset = end
    return found


def _feedback_packet(packet: bytes, padded: bool) -> TransportFeedback | None:
    """One whole RTPFB/15 packet, header included; None if it is malformed."""
    end = len(packet)
    if padded:
        # RFC 3550: the last byte counts the padding, itself included, so never 0.
        if packet[-1] == 0:
            return None
        end -= packet[-1]
    body = _RTCP_HEADER.size + _FEEDBACK_SSRCS.size
    if end < body:
        return None
    _, media_ssrc = _FEEDBACK_SSRCS.unpack_from(packet, _RTCP_HEADER.size)
    try:
        return parse_feedback(media_ssrc, packet[body:end])
    except ValueError:
        return None


def parse_feedback(media_ssrc: int, fci: bytes) -> TransportFeedback:
    """Parse one FCI: what follows the sender and media SSRC fields.

    Bytes after the last receive delta (the zero padding to 32 bits) are ignored.
    Raises ValueError if the FCI is truncated or uses the reserved status symbol.
    """
    if len(fci) < _FCI_HEADER.size:
        raise ValueError(f"feedback of {len(fci)} bytes is shorter than its header")
    base, count, reference_and_count = _FCI_HEADER.unpack_from(fci)
    offset = _FCI_HEADER.size

    symbols: list[int] = []
    while len(symbols) < count:
        if offset + _CHUNK.size > len(fci):
            raise ValueError(f"feedback ends after {len(symbols)} of {count} statuses")
        (chunk,) = _CHUNK.unpack_from(fci, offset)
        offset += _CHUNK.size
        # The last chunk may describe more than the count: the rest is filler.
        symbols.extend(_chunk_symbols(chunk, count - len(symbols)))
    if _RESERVED in symbols:
        raise ValueError("feedback uses the reserved status symbol")

    # Checked once here so that the loop below can index without bounds checks.
    delta_bytes = symbols.count(_SMALL) + 2 * symbols.count(_LARGE)
    if offset + delta_bytes > len(fci):
        raise ValueError(f"feedback has {len(fci) - offset} of {delta_bytes} delta bytes")

    # Integer ticks until the end, so that long runs of deltas add no rounding error.
    # The reference time is unsigned (libwebrtc reads it signed): then arrivals only
    # jump back when the 24 bits wrap, not also halfway.
    ticks = (reference_and_count >> 8) * TICKS_PER_REFERENCE
    received: list[tuple[int, float]] = []
    lost: list[int] = []
    for index, symbol in enumerate(symbols):
        sequence = (base + index) & 0xFFFF
        if symbol == _LOST:
            lost.append(sequence)
            continue
        if symbol == _SMALL:
            ticks += fci[offset]
            offset += 1
        else:
            ticks += _SIGNED_DELTA.unpack_from(fci, offset)[0]
            offset += 2
        received.append((sequence, ticks / TICKS_PER_SECOND))

    return TransportFeedback(
        media_ssrc=media_ssrc,
        base_sequence=base,
        feedback_count=reference_and_count & 0xFF,
        received=tuple(received),
        lost=tuple(lost),
    )


def _chunk_symbols(chunk: int, wanted: int) -> list[int]:
    """The first ``wanted`` (at most) status symbols of one packet status chunk."""
    if not chunk & 0x8000:
        # Run length chunk: a 2-bit symbol repeated up to 8191 times. Capped before
        # the list is made, or a packet of such chunks would cost megabytes.
        return [(chunk >> 13) & 0x3] * min(chunk & 0x1FFF, wanted)
    if not chunk & 0x4000:
        # Status vector of 14 one-bit symbols, first symbol in the highest bit.
        return [(chunk >> shift) & 0x1 for shift in range(13, -1, -1)][:wanted]
    # Status vector of 7 two-bit symbols.
    return [(chunk >> shift) & 0x3 for shift in range(12, -1, -2)][:wanted]
