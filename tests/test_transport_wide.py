"""What a browser's transport-wide feedback tells about a queue on its downlink.

Packets numbered as the forwarder sends them; feedback built from arrival times that
a link of a given rate would give (a FIFO bottleneck: each packet leaves it once the
one before has, at the link's rate).
"""

from __future__ import annotations

import re

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from media.downlink import HIGH, LOW, DownlinkQuality
from media.peers import offer_transport_wide
from media.rtp_subscriber import _negotiated
from media.transport_wide import QUEUE_LIMIT, TRANSPORT_WIDE_URI, TransportWide
from media.twcc import TransportFeedback

VP8_CODEC = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
PACKET = 1200  # octets
SENT_EVERY = 0.008  # 1.2 Mbit/s of 1200-byte packets
FEEDBACK_EVERY = 10  # packets per feedback packet (about 80 ms)


def through_link(sends: list[tuple[int, float]], kbit: float, base: float) -> list[float]:
    """Arrival times (the viewer's clock: ``base`` ahead of ours) of packets sent at
    the given times through a FIFO link of ``kbit`` kbit/s."""
    arrivals: list[float] = []
    free_at = 0.0
    for _, sent_at in sends:
        leaves = max(sent_at, free_at) + PACKET * 8 / (kbit * 1000)
        free_at = leaves
        arrivals.append(leaves + base)
    return arrivals


def feedback(sends: list[tuple[int, float]], arrivals: list[float]) -> list[TransportFeedback]:
    """The feedback packets a receiver sends about those arrivals, in order."""
    packets = []
    for start in range(0, len(sends), FEEDBACK_EVERY):
        chunk = list(zip(sends[start : start + FEEDBACK_EVERY], arrivals[start:], strict=False))
        packets.append(
            TransportFeedback(
                media_ssrc=1,
                base_sequence=chunk[0][0][0],
                feedback_count=start // FEEDBACK_EVERY % 256,
                received=tuple((number, arrival) for (number, _), arrival in chunk),
                lost=(),
            )
        )
    return packets


def send(wide: TransportWide, count: int, start: float) -> list[tuple[int, float]]:
    """Number ``count`` packets sent every :data:`SENT_EVERY` from ``start``."""
    return [
        (wide.stamp(start + n * SENT_EVERY, PACKET), start + n * SENT_EVERY) for n in range(count)
    ]


def test_packets_are_numbered_in_order_and_the_number_wraps_at_16_bits() -> None:
    wide = TransportWide()
    wide.next_index = 65_534
    assert [wide.stamp(0.0, PACKET) for _ in range(4)] == [65_534, 65_535, 0, 1]


def test_a_link_that_carries_everything_shows_no_queue() -> None:
    wide = TransportWide()
    sends = send(wide, 300, 100.0)
    arrivals = through_link(sends, kbit=5000, base=-3.0)
    assert [wide.feedback(packet) for packet in feedback(sends, arrivals)] == [None] * 30
    assert wide.feedback_packets == 30


def test_a_queue_is_seen_once_it_passes_the_limit_with_what_the_link_carries() -> None:
    wide = TransportWide()
    clean = send(wide, 100, 100.0)  # the link was fast: the smallest delay is known
    for packet in feedback(clean, through_link(clean, kbit=5000, base=7.0)):
        assert wide.feedback(packet) is None
    start = 100.0 + 100 * SENT_EVERY
    sends = send(wide, 100, start)
    arrivals = through_link(sends, kbit=300, base=7.0)
    verdicts = [(wide.feedback(packet), packet) for packet in feedback(sends, arrivals)]
    first = next(n for n, (rate, _) in enumerate(verdicts) if rate is not None)
    rate, packet = verdicts[first]
    newest, arrival = packet.received[-1]
    waited = arrival - 7.0 - sends[newest - sends[0][0]][1] - PACKET * 8 / 5e6
    assert waited > QUEUE_LIMIT
    if first > 0:  # the packet before said no: its newest had not waited that long
        _, before = verdicts[first - 1]
        number, arrival = before.received[-1]
        assert arrival - 7.0 - sends[number - sends[0][0]][1] - PACKET * 8 / 5e6 <= QUEUE_LIMIT
    assert rate == pytest.approx(300e3, rel=0.05)
    # Seen within a third of a second of the drop: a 20-packet queue at 300 kbit/s
    # holds 0.64 s, and loss would only show once it is full and drained.
    assert arrival - 7.0 - start < 0.35


def test_feedback_across_the_wrap_and_about_unknown_numbers() -> None:
    wide = TransportWide()
    wide.next_index = 65_500
    sends = send(wide, 100, 50.0)  # numbers 65500 ... 65535, 0 ... 63
    assert sends[40][0] == 4
    arrivals = through_link(sends, kbit=300, base=0.5)
    rates = [wide.feedback(packet) for packet in feedback(sends, arrivals)]
    assert rates[-1] == pytest.approx(300e3, rel=0.05)
    strange = TransportFeedback(1, 30_000, 0, ((30_000, 60.0), (30_001, 60.1)), ())
    assert wide.feedback(strange) is None  # never sent: nothing to say


def test_a_queue_steps_the_downlink_straight_down_but_fails_a_probe_instead() -> None:
    quality = DownlinkQuality(0.0)
    assert quality.fits(LOW - 5, 1.0)  # never below the smallest layers
    assert quality.level == LOW
    assert not quality.fits(HIGH, 2.0)  # only down

    probing = DownlinkQuality(0.0, level=LOW)
    for second in range(1, 8):
        probing.report(0.0, float(second))
    assert probing.tick(8.0, rate=150e3, next_rate=500e3) is not None
    assert probing.probing
    assert not probing.fits(LOW, 8.5)  # the probe filled the queue: it fails
    assert not probing.probing and probing.level == LOW


async def test_subscribe_offers_ask_browsers_for_transport_wide_feedback() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for kind in ("video", "audio", "video"):
            pc.addTransceiver(kind, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = offer_transport_wide(pc.localDescription.sdp)
    finally:
        await pc.close()
    sections = offer.split("m=")[1:]
    assert [s.split()[0] for s in sections] == ["video", "audio", "video"]
    extmaps = [
        line for s in sections for line in s.splitlines() if line.endswith(TRANSPORT_WIDE_URI)
    ]
    assert len(extmaps) == 3 and len(set(extmaps)) == 1  # one id for the BUNDLE group
    (ext_id,) = {int(line.split(":")[1].split()[0]) for line in extmaps}
    others = {int(n) for n in re.findall(r"^a=extmap:(\d+)", pc.localDescription.sdp, re.M)}
    assert ext_id not in others
    video, audio = sections[0], sections[1]
    opus = int(re.search(r"a=rtpmap:(\d+) opus/", audio).group(1))  # type: ignore[union-attr]
    assert f"a=rtcp-fb:{opus} transport-cc" in audio
    vp8 = int(re.search(r"a=rtpmap:(\d+) VP8/90000", video).group(1))  # type: ignore[union-attr]
    rtx = int(re.search(rf"a=fmtp:(\d+) apt={vp8}", video).group(1))  # type: ignore[union-attr]
    assert f"a=rtcp-fb:{vp8} transport-cc" in video
    assert f"a=rtcp-fb:{rtx} transport-cc" not in video
    mid = re.search(r"a=mid:(\S+)", video).group(1)  # type: ignore[union-attr]
    negotiated = _negotiated(offer, mid, VP8_CODEC)
    assert negotiated is not None and negotiated[-1] == ext_id
    # An aiortc viewer answers without it: its packets are not numbered.
    viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await viewer.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await viewer.setLocalDescription(await viewer.createAnswer())
        answer = viewer.localDescription.sdp
    finally:
        await viewer.close()
    assert TRANSPORT_WIDE_URI not in answer and "transport-cc" not in answer
    answered = _negotiated(answer, mid, VP8_CODEC)
    assert answered is not None and answered[-1] is None
