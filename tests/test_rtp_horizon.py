"""The RTP fast path over a lesson's horizon: past every 16-bit wrap, through mute and
resume, late joiners, a change of the publisher's source, loss and repair.

Real libsrtp sessions at both ends and real loopback UDP (``tests/rtp_lab.py``): what a
subscriber's browser would decrypt is what is checked.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

from aiortc.rtp import RtpPacket

from media import hooks
from media.rtp_rewrite import vp8_keyframe_start
from media.transport_wide import TransportWide
from media.twcc import TransportFeedback

from .rtp_lab import Bench, Publisher, Viewer, contiguous

SENDER_REPORT_FIELDS = (
    "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__packet_count",
    "_RTCRtpSender__octet_count",
)


def serial_non_decreasing(values: list[int], modulus: int) -> bool:
    """Each value is the previous one or later, in serial-number arithmetic."""
    half = modulus // 2
    return all((b - a) % modulus < half for a, b in itertools.pairwise(values))


def in_index_order(viewer: Viewer, ssrc: int) -> list[int]:
    """The timestamps a viewer received on ``ssrc``, sorted by extended index."""
    record = viewer.streams[ssrc]
    return [ts for _, ts in sorted(zip(record.order, record.timestamps, strict=True))]


class Feed:
    """Drives one publisher through the bench and answers keyframe requests as a
    browser does (a key frame soon after a PLI)."""

    def __init__(self, bench: Bench, publisher: Publisher) -> None:
        self.bench = bench
        self.publisher = publisher
        self.answered_requests = 0
        self.late: list[tuple[int, RtpPacket]] = []  # (frame due, packet) delivered late
        self.rng = random.Random(7)

    async def frame(self, reorder: bool = False) -> None:
        if self.bench.keyframe_requests > self.answered_requests:
            self.answered_requests = self.bench.keyframe_requests
            self.publisher.keyframe_wanted = True
        packets = self.publisher.frame()
        due = self.publisher.frames
        if reorder and len(packets) == 3:
            # One packet lost on the publisher's hop and repaired a few frames later
            # (NACK and RTX, unwrapped by aiortc's receiver), plus a duplicate.
            self.late.append((due + self.rng.randint(1, 6), packets.pop(1)))
            packets.append(packets[0])
        arriving = [p for d, p in self.late if d <= due]
        self.late = [(d, p) for d, p in self.late if d > due]
        self.bench.forward(packets + arriving)
        await asyncio.sleep(0)  # let keyframe requests (tasks) reach the publisher

    async def run(self, frames: int, reorder_every: int = 0) -> None:
        for number in range(frames):
            await self.frame(reorder=bool(reorder_every) and number % reorder_every == 5)


async def test_every_packet_decrypts_past_three_wraps_through_mute_rejoin_and_a_new_source() -> (
    None
):
    bench = Bench()
    try:
        publisher = Publisher(ssrc=0x1111, first_seq=65_000, first_ts=4_294_900_000)
        feed = Feed(bench, publisher)
        wide = TransportWide()  # as a browser's connection numbers every packet
        first = bench.subscribe(rtx=True, transport_wide=wide)
        first_viewer = bench.viewers[first]
        await feed.run(15_000, reorder_every=97)  # 45,000 packets: past the first wrap

        # Loss towards the subscriber, repaired from the history as RTX.
        lost = [first_viewer.streams[0x5EED0000].highest + n for n in (2, 5)]
        first_viewer.drop_next.update(index & 0xFFFF for index in lost)
        await feed.run(3)
        for index in lost:
            await first.retransmit(index & 0xFFFF)
        first_viewer.drain()

        # A moderator's mute for 1,000 frames, then resume: video restarts on a key frame.
        bench.forwarder.set_paused(True)
        await feed.run(1_000)
        bench.forwarder.set_paused(False)
        before_resume = len(first_viewer.streams[0x5EED0000].order)
        await feed.run(10)
        assert len(first_viewer.streams[0x5EED0000].order) > before_resume

        # A short mute while repairs are on their way: the late packets from before the
        # mute must not land on the indices used before it.
        bench.forwarder.set_paused(True)
        await feed.run(2)
        bench.forwarder.set_paused(False)
        await feed.run(300, reorder_every=3)

        # A late joiner starts on a key frame, without RTX (retransmissions on its SSRC).
        second = bench.subscribe(rtx=False)
        second_viewer = bench.viewers[second]
        await feed.run(20_000, reorder_every=89)
        lost = second_viewer.streams[0x5EED0001].highest + 3
        second_viewer.drop_next.add(lost & 0xFFFF)
        await feed.run(3)
        await second.retransmit(lost & 0xFFFF)
        second_viewer.drain()

        # The publisher's source changes (a new SSRC, numbering and clock).
        feed.publisher = Publisher(ssrc=0x2222, first_seq=10, first_ts=5)
        await feed.run(35_000, reorder_every=101)

        forwarded = bench.forwarder.stats
        assert forwarded.errors == 0
        # Starts: each subscriber once, the first after each mute, both after the new
        # source; late repairs of the old source restarted nobody.
        assert forwarded.subscribers_started == 1 + 2 + 1 + 2
        assert forwarded.packets_received > 200_000
        for viewer, ssrc in ((first_viewer, 0x5EED0000), (second_viewer, 0x5EED0001)):
            assert viewer.undecryptable == 0
            assert viewer.reused == []
            media = viewer.streams[ssrc]
            assert contiguous(media.order)
            assert vp8_keyframe_start(media.first_payload or b"")
            assert serial_non_decreasing(in_index_order(viewer, ssrc), 1 << 32)
        span = max(first_viewer.streams[0x5EED0000].order) - min(
            first_viewer.streams[0x5EED0000].order
        )
        assert span > 3 * 65_536
        # Everything the first subscriber was sent reached it (muted frames were not sent).
        assert len(set(first_viewer.streams[0x5EED0000].order)) > 200_000 - 3_000 - 100
        assert 0x5EED1000 in first_viewer.streams  # its repairs came as RTX
        # Transport-wide numbers: one per packet sent, RTX included, past several
        # 16-bit wraps; only the two the network dropped are missing.
        numbers = [number for number, _ in first_viewer.transport_wide]
        assert wide.next_index > 3 * 65_536
        steps = [(b - a) % 65_536 for a, b in itertools.pairwise(numbers)]
        assert set(steps) <= {1, 2} and len(numbers) == wide.next_index - 2
        # Feedback about the newest of them still finds when each was sent.
        newest = wide.next_index - 1
        sent_at = bench.clock.now
        report = tuple(((newest - n) & 0xFFFF, sent_at + 0.01) for n in (2, 1, 0))
        assert wide.feedback(TransportFeedback(1, report[0][0], 0, report, ())) is None
        assert wide.queue_delay_of == newest and wide.queue_delay is not None
    finally:
        bench.close()


def sender_report(subscriber: Any) -> tuple[int, int, int, int]:
    ntp, rtp, packets, octets = (getattr(subscriber.sender, name) for name in SENDER_REPORT_FIELDS)
    return ntp, rtp, packets, octets


async def test_sender_reports_count_what_was_sent_and_never_go_back() -> None:
    bench = Bench()
    try:
        feed = Feed(bench, Publisher(ssrc=0x3333, first_seq=65_400, first_ts=100))
        subscriber = bench.subscribe(rtx=False)
        viewer = bench.viewers[subscriber]
        reports = []

        async def sample(frames: int) -> None:
            for _ in range(frames // 15):
                await feed.run(15)  # half a second
                bench.forwarder.refresh_sender_reports()
                reports.append(sender_report(subscriber))

        await sample(300)
        bench.forwarder.set_paused(True)
        await sample(300)
        bench.forwarder.set_paused(False)
        await sample(300)
        # A retransmission on the media SSRC is not a new packet.
        highest = viewer.streams[0x5EED0000].highest
        await subscriber.retransmit(highest & 0xFFFF)
        await sample(150)
        feed.publisher = Publisher(ssrc=0x4444, first_seq=7, first_ts=7)
        await sample(300)

        ntps = [r[0] for r in reports]
        assert ntps == sorted(ntps)
        assert serial_non_decreasing([r[1] for r in reports], 1 << 32)
        assert [r[2] for r in reports] == sorted(r[2] for r in reports)
        assert [r[3] for r in reports] == sorted(r[3] for r in reports)
        # The last report counts exactly what the subscriber received, payload octets only.
        bench.forwarder.refresh_sender_reports()
        _, _, packets, octets = sender_report(subscriber)
        media = viewer.streams[0x5EED0000]
        assert packets == len(set(media.order))
        assert octets == viewer.payload_octets[0x5EED0000]
        # The RTP time of the last report is that of the newest packet sent.
        newest = max(zip(media.order, media.timestamps, strict=True))
        assert sender_report(subscriber)[1] == newest[1]
    finally:
        bench.close()


def test_the_sender_report_hook_is_where_aiortc_reads_it() -> None:
    """The fields the test reads are the ones aiortc's RTCP task reports (hook 10)."""
    assert tuple(hooks._SENDER_STATS) == SENDER_REPORT_FIELDS


async def test_a_late_packet_never_fills_a_gap_left_before_a_mute() -> None:
    """A packet that arrives late, after a mute ended, belongs to no place the
    subscriber's stream has: it is dropped, whatever gap the numbering has there."""
    bench = Bench()
    try:
        publisher = Publisher(ssrc=0x5555, first_seq=100, first_ts=0, per_frame=5, gop=1000)
        subscriber = bench.subscribe(rtx=True)
        viewer = bench.viewers[subscriber]
        first = publisher.frame()  # a key frame: indices 0-4
        bench.forward(first)
        second = publisher.frame()
        bench.forward(second[:2] + second[3:])  # index 7 lost on the publisher's hop
        bench.forwarder.set_paused(True)
        during = publisher.frame()  # indices 10-14, not forwarded
        bench.forward(during)
        bench.forwarder.set_paused(False)
        publisher.keyframe_wanted = True
        bench.forward(publisher.frame())  # indices 15-19 resume the stream at 10
        # The repair of a packet sent during the mute arrives now: mapped with the new
        # offsets it would land on output index 7, the gap.
        bench.forward([during[2]])
        media = viewer.streams[0x5EED0000]
        received = sorted(media.order)
        assert len(received) == 5 + 4 + 5
        assert received[-1] - received[0] == 14  # one hole (index 7) and nothing in it
        assert bench.forwarder.stats.packets_dropped >= 1
    finally:
        bench.close()
