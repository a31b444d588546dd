"""Transport-wide congestion control feedback: packets built byte by byte, then parsed."""

from __future__ import annotations

import struct
from typing import Literal

import pytest

from media.twcc import TransportFeedback, feedback_in, parse_feedback

SENDER_SSRC = 0x0BADCAFE
MEDIA_SSRC = 0x12345678

Chunks = Literal["run", "one_bit", "two_bit"]


def fci(
    base: int,
    arrivals: list[int | None],
    chunks: Chunks = "run",
    reference: int = 0,
    fb_count: int = 0,
) -> bytes:
    """An FCI about ``base``, ``base + 1``, ...: each arrival in 250 µs ticks, None if lost.

    Statuses are written with one kind of chunk only; no padding is added.
    """
    symbols: list[int] = []
    deltas = b""
    previous = reference * 256
    for arrival in arrivals:
        if arrival is None:
            symbols.append(0)
            continue
        delta, previous = arrival - previous, arrival
        if 0 <= delta <= 255:
            symbols.append(1)
            deltas += bytes([delta])
        else:
            symbols.append(2)
            deltas += struct.pack(">h", delta)

    words: list[int] = []
    if chunks == "run":
        start = 0
        while start < len(symbols):
            end = start
            while end < len(symbols) and symbols[end] == symbols[start] and end - start < 8191:
                end += 1
            words.append(symbols[start] << 13 | (end - start))
            start = end
    elif chunks == "one_bit":
        assert 2 not in symbols, "a one-bit vector has no large deltas"
        for start in range(0, len(symbols), 14):
            group = symbols[start : start + 14]
            words.append(0x8000 | sum(s << (13 - i) for i, s in enumerate(group)))
    else:
        for start in range(0, len(symbols), 7):
            group = symbols[start : start + 7]
            words.append(0xC000 | sum(s << (12 - 2 * i) for i, s in enumerate(group)))

    header = struct.pack(">HHI", base, len(symbols), reference << 8 | fb_count)
    return header + struct.pack(f">{len(words)}H", *words) + deltas


def rtcp(fmt: int, packet_type: int, body: bytes, padding: int = 0) -> bytes:
    """One RTCP packet; ``padding`` bytes (P bit) end with their count."""
    if padding:
        body += bytes(padding - 1) + bytes([padding])
    assert len(body) % 4 == 0
    first = 0x80 | (0x20 if padding else 0) | fmt
    return struct.pack(">BBH", first, packet_type, len(body) // 4) + body


def feedback(payload: bytes, p_bit: bool = False, media_ssrc: int = MEDIA_SSRC) -> bytes:
    """An RTPFB/15 packet padded to 32 bits: with zeros, or with the P bit (always some)."""
    body = struct.pack(">II", SENDER_SSRC, media_ssrc) + payload
    if p_bit:
        return rtcp(15, 205, body, padding=4 - len(body) % 4)
    return rtcp(15, 205, body + bytes(-len(body) % 4))


def receiver_report() -> bytes:
    block = struct.pack(">IIIIII", 0x11111111, 0, 1000, 20, 0, 0)
    return rtcp(1, 201, struct.pack(">I", SENDER_SSRC) + block)


def nack() -> bytes:
    """A generic NACK: same packet type as the feedback (RTPFB), FMT 1.

    Its FCI (3 lost, then 20, then 40) would read as a feedback about packet 3,
    lost, if the FMT were not looked at.
    """
    fci = struct.pack(">6H", 3, 0x0001, 20, 0, 40, 0)
    return rtcp(1, 205, struct.pack(">II", SENDER_SSRC, MEDIA_SSRC) + fci)


def application_feedback() -> bytes:
    """Same FMT as the feedback (15) in a PSFB packet, holding a valid feedback FCI."""
    fci = struct.pack(">HHIHB", 77, 1, 0, 1 << 13 | 1, 4) + bytes(1)
    return rtcp(15, 206, struct.pack(">II", SENDER_SSRC, MEDIA_SSRC) + fci)


def parsed(payload: bytes) -> TransportFeedback:
    return parse_feedback(MEDIA_SSRC, payload)


def assert_received(packet: TransportFeedback, expected: list[tuple[int, float]]) -> None:
    """Same sequence numbers, same arrival times to a nanosecond (seconds can be large)."""
    assert [seq for seq, _ in packet.received] == [seq for seq, _ in expected]
    times = [t for _, t in expected]
    assert [t for _, t in packet.received] == pytest.approx(times, rel=0, abs=1e-9)


def test_hand_written_packet_from_the_draft_layout() -> None:
    datagram = bytes.fromhex(
        "8fcd0006"  # V=2 P=0 FMT=15, PT=205, length 6: 7 words, 28 bytes
        "00000001"  # sender SSRC
        "12345678"  # media SSRC
        "fffe0005"  # base sequence 65534, 5 statuses: 65534, 65535, 0, 1, 2
        "00001007"  # reference time 16 (16 x 64 ms = 1.024 s), feedback count 7
        # 1101 0010 0101 0000: status vector, two-bit symbols 01 00 10 01 01 00 00:
        # 65534 small, 65535 lost, 0 large, 1 small, 2 small; the last two are filler.
        "d250"
        "04"  # 65534: +4 x 250 µs -> 1.025 s
        "fffc"  # 0: -4 x 250 µs -> 1.024 s
        "28"  # 1: +40 x 250 µs -> 1.034 s
        "00"  # 2: +0 -> 1.034 s
        "00"  # zero padding to 32 bits
    )
    (packet,) = feedback_in(datagram)
    assert packet.media_ssrc == 0x12345678
    assert packet.base_sequence == 65534
    assert packet.feedback_count == 7
    assert_received(packet, [(65534, 1.025), (0, 1.024), (1, 1.034), (2, 1.034)])
    assert packet.lost == (65535,)


def test_run_length_chunks() -> None:
    # 3 received, 10000 lost (two runs: 8191 + 1809), a large delta, a small one.
    reference = 100  # 6.4 s
    start = reference * 256
    arrivals = [start + 4, start + 8, start + 12, *[None] * 10000, start + 400, start + 401]
    payload = fci(1000, arrivals, "run", reference=reference, fb_count=42)
    chunks = struct.unpack_from(">5H", payload, 8)
    assert chunks == (1 << 13 | 3, 8191, 1809, 2 << 13 | 1, 1 << 13 | 1)

    packet = parsed(payload)
    assert packet.base_sequence == 1000
    assert packet.feedback_count == 42
    assert_received(
        packet, [(1000, 6.401), (1001, 6.402), (1002, 6.403), (11003, 6.5), (11004, 6.50025)]
    )
    assert packet.lost == tuple(range(1003, 11003))


def test_one_bit_status_vector() -> None:
    # 20 statuses: one full chunk of 14, then 6 in a chunk whose last 8 bits are filler.
    arrivals: list[int | None] = [None if i % 3 == 1 else 40 * i for i in range(20)]
    payload = fci(7, arrivals, "one_bit")
    chunks = struct.unpack_from(">2H", payload, 8)
    assert chunks == (0b1010_1101_1011_0110, 0b1011_0110_0000_0000)

    packet = parsed(payload)
    assert packet.lost == (8, 11, 14, 17, 20, 23, 26)
    assert_received(packet, [(7 + i, i * 0.01) for i in range(20) if i % 3 != 1])


def test_two_bit_status_vector() -> None:
    # Small, lost, large, small, lost, small, small | lost, small: two chunks.
    arrivals = [10, None, 10 + 1000, 10 + 1001, None, 10 + 1001, 10 + 1255, None, 10 + 1256]
    payload = fci(500, arrivals, "two_bit")
    chunks = struct.unpack_from(">2H", payload, 8)
    assert chunks == (0b11_01_00_10_01_00_01_01, 0b11_00_01_00_00_00_00_00)

    packet = parsed(payload)
    assert packet.lost == (501, 504, 507)
    assert_received(
        packet,
        [
            (500, 0.0025),
            (502, 0.2525),
            (503, 0.25275),
            (505, 0.25275),
            (506, 0.31625),
            (508, 0.3165),
        ],
    )


def test_large_and_negative_deltas() -> None:
    # Reference time 0x800000 must count forward (unsigned): 8388608 x 64 ms.
    reference = 0x800000
    start = reference * 256
    # +32767 ticks (the largest), then -32768 (the smallest), then -1 and +256.
    arrivals = [start + 32767, start - 1, start - 2, start + 254]
    payload = fci(0, arrivals, "run", reference=reference)
    # One run of four large deltas; each 2 bytes, signed.
    assert struct.unpack_from(">H4h", payload, 8) == (2 << 13 | 4, 32767, -32768, -1, 256)

    base = 536870.912
    packet = parsed(payload)
    assert_received(
        packet,
        [(0, base + 8.19175), (1, base - 0.00025), (2, base - 0.0005), (3, base + 0.0635)],
    )
    assert packet.lost == ()


def test_sequence_numbers_wrap_at_16_bits() -> None:
    payload = fci(65533, [4, None, 8, None, 12], "one_bit")
    packet = parsed(payload)
    assert [seq for seq, _ in packet.received] == [65533, 65535, 1]
    assert packet.lost == (65534, 0)
    assert packet.base_sequence == 65533


def test_compound_datagram_yields_only_the_feedback() -> None:
    payload = fci(42, [4, None, 8], "two_bit", fb_count=9)
    datagram = (
        receiver_report()
        + application_feedback()
        + feedback(payload, media_ssrc=0xABCDEF01)
        + nack()
    )
    (packet,) = feedback_in(datagram)
    assert packet.media_ssrc == 0xABCDEF01
    assert packet.feedback_count == 9
    assert_received(packet, [(42, 0.001), (44, 0.002)])
    assert packet.lost == (43,)


def test_two_feedback_packets_in_one_datagram_come_out_in_order() -> None:
    first = feedback(fci(10, [4], fb_count=1))
    second = feedback(fci(11, [None, 8], fb_count=2))
    packets = feedback_in(first + nack() + second)
    assert [(p.feedback_count, p.base_sequence, p.lost) for p in packets] == [
        (1, 10, ()),
        (2, 11, (11,)),
    ]


def test_padding_with_the_p_bit() -> None:
    payload = fci(3, [4, 8, None, 12, 16], "run")  # 8 + 3 chunks x 2 + 4 deltas = 18 bytes
    padded = feedback(payload, p_bit=True)
    assert padded[0] & 0x20 and padded[-1] == 2
    (packet,) = feedback_in(padded + nack())
    assert_received(packet, [(3, 0.001), (4, 0.002), (6, 0.003), (7, 0.004)])
    assert packet.lost == (5,)

    # Already aligned (8 + 2 + 6 bytes): the P bit adds a whole word.
    aligned = feedback(fci(3, [4, 8, 12, 16, 20, 24]), p_bit=True)
    assert aligned[-4:] == b"\x00\x00\x00\x04"
    (packet,) = feedback_in(aligned)
    assert_received(packet, [(3 + i, 0.001 * (i + 1)) for i in range(6)])


def test_padding_is_not_taken_for_receive_deltas() -> None:
    # The last delta is missing; the padding's count byte stands where it would be.
    payload = fci(3, [4, 8, 12])[:-1]  # 12 bytes, 20 with the SSRCs
    packet = feedback(payload, p_bit=True)
    assert packet[-4:] == b"\x00\x00\x00\x04"
    assert feedback_in(packet) == []


@pytest.mark.parametrize("count", [0, 200])
def test_impossible_padding_count_skips_the_packet(count: int) -> None:
    packet = bytearray(feedback(fci(3, [4]), p_bit=True))
    packet[-1] = count
    assert feedback_in(bytes(packet) + feedback(fci(9, [None]))) == [
        TransportFeedback(MEDIA_SSRC, 9, 0, (), (9,))
    ]


# Where the FCI below (8 header bytes, one chunk, deltas 04 04 0f98 01) is cut.
TRUNCATIONS = {
    "in the header": 7,
    "no chunk": 8,
    "in the chunk": 9,
    "no delta": 10,
    "in the large delta": 13,
    "before the last delta": 14,
}


@pytest.mark.parametrize("cut", TRUNCATIONS.values(), ids=TRUNCATIONS.keys())
def test_truncated_feedback(cut: int) -> None:
    whole = fci(0, [4, None, 8, 4000, 4001], "two_bit")  # small, lost, small, large, small
    assert whole[8:] == bytes.fromhex("d190 04 04 0f98 01")
    assert len(parsed(whole).received) == 4
    with pytest.raises(ValueError):
        parsed(whole[:cut])
    # With P-bit padding the packet ends exactly where the FCI was cut; zero padding
    # could have stood in for a missing small delta.
    truncated = feedback(whole[:cut], p_bit=True)
    (packet,) = feedback_in(truncated + feedback(fci(9, [4])))
    assert packet.base_sequence == 9


def test_reserved_symbol() -> None:
    run = struct.pack(">HHIH", 0, 2, 0, 3 << 13 | 2) + b"\x01\x01"
    vector = struct.pack(">HHIH", 0, 2, 0, 0b11_01_11_00_00_00_00_00) + b"\x01"
    for payload in (run, vector):
        with pytest.raises(ValueError, match="reserved"):
            parsed(payload)
        (packet,) = feedback_in(feedback(payload) + feedback(fci(9, [4])))
        assert packet.base_sequence == 9


def test_reserved_symbol_past_the_status_count_is_filler() -> None:
    # Two real statuses (small, lost); the five symbols after them are not real.
    payload = struct.pack(">HHIH", 0, 2, 0, 0b11_01_00_11_11_11_11_11) + b"\x04"
    packet = parsed(payload)
    assert_received(packet, [(0, 0.001)])
    assert packet.lost == (1,)


def test_empty_status_count() -> None:
    packet = parsed(struct.pack(">HHI", 5, 0, 1 << 8 | 3))
    assert (packet.base_sequence, packet.feedback_count) == (5, 3)
    assert packet.received == packet.lost == ()


def test_feedback_in_never_raises() -> None:
    datagram = receiver_report() + feedback(fci(65530, [4, None, 3000, 2990], "two_bit"))
    assert len(feedback_in(datagram)) == 1
    # Cut anywhere, the feedback is missing or its length overruns what is left.
    for cut in range(len(datagram)):
        assert feedback_in(datagram[:cut]) == []
    for index in range(len(datagram)):
        for value in (0x00, 0x7F, 0x80, 0xFF):
            corrupt = bytearray(datagram)
            corrupt[index] = value
            assert isinstance(feedback_in(bytes(corrupt)), list)  # and did not raise
    assert feedback_in(b"") == []
