"""Simulcast on the RTP fast path: one layer per subscriber, switched at keyframes.

Three layers of one synthetic VP8 camera (``tests/rtp_lab.py``, real libsrtp and UDP):
each subscriber gets the layer its view and its downlink call for; a switch happens
only at a keyframe of the new layer and where the old layer's frame ended, with the
numbering and the clock going on; no index is ever used twice.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import types
from typing import Any

import pytest

from media.downlink import AUDIO_ONLY, HIGH, HOLD, LOW, PROBE_SECONDS
from media.hooks import ReportBlock
from media.rtp_layers import Layer, choose
from media.viewer import DRAINED, MAX_HOLD
from media.viewer import Viewer as Downlink

from .rtp_lab import OPUS, Bench, Publisher, Viewer, contiguous, whole_frames

SIZES = {"l": (320, 180), "m": (640, 360), "h": (1280, 720)}
RIDS = ("l", "m", "h")


class Camera:
    """A browser camera sending three layers of each frame (small first, as paced)."""

    def __init__(
        self, bench: Bench, gop: int = 60, interleave: bool = False, payload_size: int = 0
    ) -> None:
        self.bench = bench
        self.interleave = interleave  # packets of the layers alternate, as a pacer may
        self.layers = {
            rid: Publisher(
                ssrc=0x10 + n,
                first_seq=65_000 - 1000 * n,
                first_ts=4_000_000_000 + n,
                per_frame=1 + 2 * n,
                gop=gop,
                rid=rid,
                size=SIZES[rid],
                payload_size=payload_size,
            )
            for n, rid in enumerate(RIDS)
        }
        self.answered = 0

    async def run(self, frames: int) -> None:
        for _ in range(frames):
            requested = self.bench.keyframe_requested_ssrcs[self.answered :]
            self.answered = len(self.bench.keyframe_requested_ssrcs)
            frames = []
            for publisher in self.layers.values():
                if publisher.ssrc in requested:
                    publisher.keyframe_wanted = True
                frames.append(publisher.frame())
            if self.interleave:  # l1 m1 h1 m2 h2 m3 h3 ...: every layer is mid-frame
                packets = [p for group in itertools.zip_longest(*frames) for p in group if p]
            else:
                packets = [p for frame in frames for p in frame]
            self.bench.forward(packets)
            await asyncio.sleep(0)  # keyframe requests run as tasks
            if self.bench.clock.now - self.bench.forwarder.rated_at >= 0.5:
                self.bench.forwarder.update_layers()


class FixedDownlink:
    """A downlink whose level the test sets."""

    def __init__(self, level: int = HIGH) -> None:
        self.level = level
        self.reports: list[float] = []
        self.nacks: list[int] = []

    def report(self, fraction_lost: float) -> None:
        self.reports.append(fraction_lost)

    def nacked(self, subscriber: Any, index: int) -> None:
        self.nacks.append(index)


async def on_the_large_layer(bench: Bench, camera: Camera) -> tuple[Any, FixedDownlink]:
    """A new subscriber with a downlink the test sets, once it gets the large layer."""
    subscriber = bench.subscribe(rtx=True)
    downlink = FixedDownlink()
    subscriber.downlink = downlink
    await camera.run(60)
    assert subscriber.layer is not None and subscriber.layer.rid == "h"
    return subscriber, downlink


async def watched(bench: Bench, camera: Camera) -> tuple[Any, Downlink]:
    """A new subscriber whose downlink the server judges (a viewer of its own), once it
    gets the large layer."""
    subscriber = bench.subscribe(rtx=True)
    downlink = Downlink(bench.clock)
    downlink.add("track-1", bench.forwarder, subscriber)
    await camera.run(60)
    return subscriber, downlink


def forward_with_gaps(bench: Bench, camera: Camera, frames: int) -> None:
    """``frames`` frames of the large layer, three of each five packets lost before
    the server (a publisher's poor uplink)."""
    for _ in range(frames):
        frame = camera.layers["h"].frame()
        bench.forward(frame[:1] + frame[4:])


def layer_of(viewer: Viewer, ssrc: int) -> tuple[int, int] | None:
    """The size of the last keyframe a viewer received on ``ssrc``."""
    record = viewer.streams[ssrc]
    keyframes = [
        index
        for index in record.tags
        if record.starts[index] and record.tags[index][3:6] == b"\x9d\x01\x2a"
    ]
    if not keyframes:
        return None
    tag = record.tags[max(keyframes)]
    return int.from_bytes(tag[6:8], "little"), int.from_bytes(tag[8:10], "little")


def check_stream(viewer: Viewer, ssrc: int) -> None:
    record = viewer.streams[ssrc]
    assert viewer.undecryptable == 0 and viewer.reused == []
    assert contiguous(record.order)
    assert whole_frames(record)
    timestamps = [ts for _, ts in sorted(zip(record.order, record.timestamps, strict=True))]
    assert all((b - a) % (1 << 32) < (1 << 31) for a, b in itertools.pairwise(timestamps))


@pytest.mark.parametrize("interleave", [False, True])
async def test_each_subscriber_gets_the_layer_its_view_calls_for_and_switches_cleanly(
    interleave: bool,
) -> None:
    bench = Bench(rids=RIDS)
    try:
        camera = Camera(bench, interleave=interleave)
        stage, thumbnail = bench.subscribe(rtx=True), bench.subscribe(rtx=True)
        forwarder = bench.forwarder
        forwarder.prefer(thumbnail, 160, True)
        await camera.run(90)
        assert stage.layer is not None and stage.layer.rid == "h"
        assert thumbnail.layer is not None and thumbnail.layer.rid == "l"
        assert layer_of(bench.viewers[stage], 0x5EED0000) == SIZES["h"]
        assert layer_of(bench.viewers[thumbnail], 0x5EED0001) == SIZES["l"]

        # The thumbnail is shown large now; the stage becomes a thumbnail.
        forwarder.prefer(thumbnail, 1280, True)
        forwarder.prefer(stage, 320, True)
        await camera.run(90)
        assert thumbnail.layer is not None and thumbnail.layer.rid == "h"
        assert stage.layer is not None and stage.layer.rid == "l"
        assert layer_of(bench.viewers[thumbnail], 0x5EED0001) == SIZES["h"]
        # A middle size gets the middle layer.
        forwarder.prefer(stage, 600, True)
        await camera.run(90)
        assert stage.layer is not None and stage.layer.rid == "m"
        for sub, ssrc in ((stage, 0x5EED0000), (thumbnail, 0x5EED0001)):
            check_stream(bench.viewers[sub], ssrc)
        assert forwarder.stats.errors == 0
    finally:
        bench.close()


async def test_the_downlink_caps_the_layer_and_audio_only_stops_video() -> None:
    bench = Bench(rids=RIDS)
    try:
        camera = Camera(bench)
        subscriber = bench.subscribe(rtx=False)
        downlink = FixedDownlink()
        subscriber.downlink = downlink
        forwarder = bench.forwarder
        await camera.run(60)
        assert subscriber.layer is not None and subscriber.layer.rid == "h"
        for level, rid in ((HIGH - 1, "m"), (LOW, "l"), (HIGH, "h")):
            downlink.level = level
            forwarder.retarget(subscriber)
            await camera.run(90)
            assert subscriber.layer is not None and subscriber.layer.rid == rid, level
        viewer = bench.viewers[subscriber]
        downlink.level = AUDIO_ONLY
        forwarder.retarget(subscriber)
        received = len(viewer.streams[0x5EED0000].order)
        await camera.run(60)
        assert subscriber.layer is None
        assert len(viewer.streams[0x5EED0000].order) == received  # nothing more forwarded
        # Back from audio only: the numbering goes on where it stopped.
        downlink.level = HIGH
        forwarder.retarget(subscriber)
        await camera.run(90)
        assert len(viewer.streams[0x5EED0000].order) > received
        check_stream(viewer, 0x5EED0000)
    finally:
        bench.close()


async def test_what_a_viewer_nacks_steps_it_down_before_any_receiver_report() -> None:
    """Half of what went to the viewer in the last half second NACKed: it gets a
    smaller layer at the next look at its downlink, with no receiver report yet."""
    bench = Bench(rids=RIDS)
    try:
        camera = Camera(bench)
        subscriber, downlink = await watched(bench, camera)
        downlink.tick()  # a clean window
        assert downlink.level == HIGH
        assert subscriber.layer is not None and subscriber.layer.rid == "h"
        # Packets lost before the server: the viewer NACKs them as well, but that says
        # nothing about the viewer's own link.
        missed = bench.forwarder.stats.retransmissions_missed
        for _ in range(15):
            forward_with_gaps(bench, camera, 1)
            for gap in range(1, 4):
                await subscriber.retransmit((subscriber.highest - gap) & 0xFFFF)
        assert bench.forwarder.stats.retransmissions_missed == missed + 45
        downlink.tick()
        assert downlink.level == HIGH
        before = subscriber.packets
        await camera.run(15)
        sent = subscriber.packets - before
        for index in range(subscriber.highest - sent // 2 + 1, subscriber.highest + 1):
            for again in range(2):  # asked for again: counts once
                await subscriber.retransmit((index - again) & 0xFFFF)
        downlink.tick()
        assert downlink.level == HIGH - 1
        await camera.run(90)
        assert subscriber.layer is not None and subscriber.layer.rid == "m"
        assert bench.viewers[subscriber].undecryptable == 0
    finally:
        bench.close()


async def test_what_a_publisher_lost_is_not_taken_for_the_viewers_own_loss() -> None:
    """The viewer's receiver reports count the gaps a publisher's network made (the
    fast path keeps them): the downlink hears only what was lost on the way to it."""
    bench = Bench(rids=RIDS)
    try:
        camera = Camera(bench)
        subscriber, downlink = await on_the_large_layer(bench, camera)
        # The viewer's own count (extended highest, cumulative): the first report may
        # count a publisher's gaps, which cannot be told apart yet, so it is no figure.
        seen, lost = 70_000, 3
        subscriber.receiver_report(ReportBlock(0.3, lost, seen))
        assert downlink.reports == []
        top, sent = subscriber.highest, subscriber.packets
        forward_with_gaps(bench, camera, 20)
        spanned, gaps = subscriber.highest - top, 60
        assert subscriber.packets - sent == spanned - gaps
        # The viewer reports the publisher's gaps as lost, and nothing more.
        seen, lost = seen + spanned, lost + gaps
        subscriber.receiver_report(ReportBlock(gaps / spanned, lost, seen))
        # Then it loses ten of the next hundred packets on its own link.
        await camera.run(20)
        seen, lost = seen + 100, lost + 10
        subscriber.receiver_report(ReportBlock(0.1, lost, seen))
        assert downlink.reports == [0.0, 0.1]
    finally:
        bench.close()


async def test_a_viewer_whose_video_went_off_gets_it_back_once_its_link_is_clean() -> None:
    """Heavy loss in its receiver reports takes a viewer to the smallest layer, then
    to audio only. With nothing sent, its reports still count as clean ones, so after
    the hold and a probe the smallest layer comes back, and the rest after it."""
    bench = Bench(rids=RIDS)
    try:
        camera = Camera(bench)
        subscriber, downlink = await watched(bench, camera)
        seen, lost, sent = 70_000, 0, subscriber.packets
        subscriber.receiver_report(ReportBlock(0.0, lost, seen))
        levels = []

        async def live(seconds: int, loss: float) -> None:
            """``seconds`` of media, a look at the downlink every half second and a
            receiver report every second that loses ``loss`` of what was sent."""
            nonlocal seen, lost, sent
            for _ in range(seconds):
                for _ in range(2):
                    await camera.run(15)
                    downlink.tick()
                count, sent = subscriber.packets - sent, subscriber.packets
                seen, lost = seen + count, lost + int(count * loss)
                subscriber.receiver_report(ReportBlock(loss, lost, seen))
                levels.append(downlink.level)

        await live(8, 0.5)
        # Down a step at a time to the smallest layer, then video off.
        assert levels == sorted(levels, reverse=True) and LOW in levels
        assert levels[-1] == AUDIO_ONLY
        assert subscriber.layer is None
        levels.clear()
        await live(30, 0.0)
        # Back a step at a time: the smallest layer first, then up from there.
        assert levels[0] == AUDIO_ONLY and levels == sorted(levels) and LOW in levels
        assert subscriber.layer is not None
        check_stream(bench.viewers[subscriber], 0x5EED0000)
    finally:
        bench.close()


async def test_a_congested_viewer_leaves_its_layer_at_the_frame_end_not_the_keyframe() -> None:
    """Its downlink stepped down: the large layer stops at the end of the frame being
    sent (its packets would fill the bottleneck the small keyframe must pass), and the
    stream goes on at the small layer's keyframe without a gap in its numbering."""
    bench = Bench(rids=RIDS)
    try:
        camera = Camera(bench)
        subscriber, downlink = await on_the_large_layer(bench, camera)
        received = bench.viewers[subscriber].streams[0x5EED0000].order
        large = camera.layers["h"]
        frame = large.frame()
        bench.forward(frame[:2])
        before = len(received)
        downlink.level = LOW
        bench.forwarder.retarget(subscriber, congested=True)
        bench.forward(frame[2:])  # the frame ends: the viewer gets all of it
        assert len(received) == before + 3
        for _ in range(3):  # no keyframe of the small layer yet: nothing at all
            bench.forward(large.frame())
        assert len(received) == before + 3 and subscriber.layer is None
        await camera.run(30)  # the small layer's keyframe comes
        assert subscriber.layer is not None and subscriber.layer.rid == "l"
        check_stream(bench.viewers[subscriber], 0x5EED0000)
        # Without congestion (a smaller tile, say) the large layer goes on until then.
        other = bench.subscribe(rtx=True)
        await camera.run(60)
        seen = bench.viewers[other].streams[0x5EED0001].order
        bench.forwarder.prefer(other, 160, True)
        count = len(seen)
        bench.forward(large.frame())
        assert len(seen) == count + large.per_frame
        # Congested between two frames: not one more packet of the large layer.
        third, third_downlink = await on_the_large_layer(bench, camera)
        assert third.layer is not None and third.layer.boundary
        third_seen = bench.viewers[third].streams[0x5EED0002].order
        count = len(third_seen)
        third_downlink.level = LOW
        bench.forwarder.retarget(third, congested=True)
        bench.forward(large.frame())
        assert len(third_seen) == count and third.layer is None
    finally:
        bench.close()


async def test_a_layer_the_publisher_stops_sending_is_left_for_one_it_sends() -> None:
    bench = Bench(rids=RIDS)
    try:
        camera = Camera(bench)
        subscriber = bench.subscribe(rtx=True)
        await camera.run(60)
        assert subscriber.layer is not None and subscriber.layer.rid == "h"
        del camera.layers["h"]  # the browser dropped its top layer (CPU, bandwidth)
        await camera.run(150)  # five seconds at 30 fps
        assert subscriber.layer is not None and subscriber.layer.rid == "m"
        check_stream(bench.viewers[subscriber], 0x5EED0000)
    finally:
        bench.close()


def test_choosing_a_layer() -> None:
    def layer(width: int, bitrate: float) -> Layer:
        return Layer(ssrc=width, rid=str(width), keyframes=None, width=width, bitrate=bitrate)  # type: ignore[arg-type]

    small, middle, large = layer(320, 150e3), layer(640, 500e3), layer(1280, 1500e3)
    layers = [large, small, middle]
    assert choose(layers, None) is large
    assert choose(layers, 160) is small
    assert choose(layers, 300) is small  # 320 is at least 80 % of 300
    assert choose(layers, 420) is middle
    assert choose(layers, 4000) is large  # nothing is that large: the largest
    assert choose(layers, None, steps_down=1) is middle
    assert choose(layers, None, steps_down=5) is small
    assert choose(layers, 160, steps_down=1) is small
    assert choose([], None) is None


def feedback_datagram(base: int, arrivals: list[float], count: int) -> bytes:
    """A browser's transport-wide feedback (RTPFB, FMT 15) saying that the packets
    numbered ``base`` onwards arrived at ``arrivals`` (each within 64 ms of the one
    before: a run-length chunk of small deltas)."""
    reference = int(arrivals[0] / 0.064)
    deltas = []
    at = reference * 0.064
    for arrival in arrivals:
        ticks = round((arrival - at) / 0.00025)
        assert 0 <= ticks <= 255
        deltas.append(ticks)
        at += ticks * 0.00025
    fci = struct.pack("!HHI", base, len(arrivals), (reference & 0xFFFFFF) << 8 | count & 0xFF)
    fci += struct.pack("!H", 0x2000 | len(arrivals)) + bytes(deltas)
    fci += b"\x00" * (-len(fci) % 4)
    body = struct.pack("!II", 1, 2) + fci
    return struct.pack("!BBH", 0x80 | 15, 205, len(body) // 4) + body


class BrowserLink:
    """A browser viewer's downlink: one FIFO for its video and audio, and the
    transport-wide feedback it sends every ``every`` looks about what has arrived."""

    def __init__(self, numbered: list[list[tuple[int, int]]], rate: float, every: int) -> None:
        self.numbered = numbered  # each far end's (number, octets) as received
        self.told = [len(n) for n in numbered]
        self.rate = rate  # bits per second
        self.every = every
        self.looks = 0
        self.free_at = 0.0
        self.in_flight: list[tuple[int, float]] = []  # (number, arrival)

    def carry(self, sent_at: float, now: float) -> bytes | None:
        """Put what was sent since the last look (at ``sent_at``) into the FIFO, with
        5 ms of path; every ``every`` looks, the feedback about what has arrived."""
        new = []
        for number, (known, told) in enumerate(zip(self.numbered, self.told, strict=True)):
            new += known[told:]
            self.told[number] = len(known)
        for number, octets in sorted(new):
            self.free_at = max(sent_at, self.free_at) + octets * 8 / self.rate
            self.in_flight.append((number, self.free_at + 0.005))
        self.looks += 1
        arrived = [(n, at) for n, at in self.in_flight if at <= now]
        if self.looks % self.every or not arrived:
            return None
        self.in_flight = self.in_flight[len(arrived) :]
        return feedback_datagram(arrived[0][0], [at for _, at in arrived], self.looks)

    def queue(self, now: float) -> float:
        """Seconds of packets waiting in the FIFO at ``now``."""
        return max(0.0, self.free_at - now)


async def test_a_queue_a_browser_reports_steps_it_down_and_waits_for_it_to_drain() -> None:
    """A browser viewer has lost nothing yet, but its transport-wide feedback shows the
    packets queueing behind a link that carries 30 % of the large layer: its downlink
    steps straight down to the small layer (the one that fits), with no NACK and no
    receiver report. The small layer starts only once the audio going on meanwhile
    shows the queue has drained (its keyframe would be lost at the tail of a full
    one). Every packet the server sent carried the next number."""
    bench = Bench(rids=RIDS)
    voice = Bench(OPUS, clock=bench.clock)
    try:
        camera = Camera(bench, payload_size=1000)  # 240 kbit/s per packet a frame
        microphone = Publisher(ssrc=0x99, first_seq=1, first_ts=0, per_frame=1)
        downlink = Downlink(bench.clock)
        handled: list[Any] = []
        transport = types.SimpleNamespace(
            _rtp_router=types.SimpleNamespace(
                route_rtcp=lambda packet: handled.append(packet) or set()
            )
        )
        wide = downlink.transport_wide(transport)
        subscriber = bench.subscribe(rtx=True, transport_wide=wide)
        downlink.add("track-1", bench.forwarder, subscriber)
        listener = voice.subscribe(transport_wide=wide)
        video, audio = bench.viewers[subscriber], voice.viewers[listener]
        # Feedback every 4 frames (133 ms: Chromium sends it every 50 to 250 ms).
        link = BrowserLink([video.transport_wide, audio.transport_wide], rate=1e9, every=4)

        async def step() -> None:
            await camera.run(1)
            voice.forward(microphone.frame(), seconds=0)
            datagram = link.carry(bench.clock.now - 1 / 60, bench.clock.now)
            if datagram is not None:
                await transport._handle_rtcp_data(datagram)

        for _ in range(60):
            await step()
        assert subscriber.layer is not None and subscriber.layer.rid == "h"
        link.rate = 100 * bench.forwarder.bitrate_of(subscriber, 0)
        for _ in range(10):
            await step()
        link.rate = bench.forwarder.bitrate_of(subscriber, 2) / 0.6  # the link drops
        assert bench.forwarder.bitrate_of(subscriber, 1) > 0.7 * link.rate
        dropped_at = bench.clock.now
        while downlink.level == HIGH:
            assert bench.clock.now - dropped_at < 0.5, "the queue was never seen"
            await step()
        assert downlink.level == LOW  # straight down to what fits
        assert not downlink.nacks._nacked and subscriber.last_report is None
        assert link.queue(bench.clock.now) > DRAINED  # too full to take a keyframe yet
        held_at = bench.clock.now
        small = video.streams[0x5EED0000]
        sent_large = len(small.order)
        # What the large layer lost is not sent again: the queue must drain.
        missed = bench.forwarder.stats.retransmissions_missed
        for back in range(3):
            await subscriber.retransmit((subscriber.highest - back) & 0xFFFF)
        assert bench.forwarder.stats.retransmissions_missed == missed + 3
        assert video.drain() == 0
        drained_at = None
        while subscriber.layer is None:
            assert bench.clock.now - held_at < MAX_HOLD, "held until the time ran out"
            queue = link.queue(bench.clock.now)
            if drained_at is None and queue <= DRAINED:
                drained_at = bench.clock.now
            await step()
        # It started once the queue had drained, not before, and not on a timeout: as
        # soon as audio sent then has come through it (DRAINED), the feedback about
        # it (4 frames) and the keyframe (a frame or two).
        assert queue <= DRAINED and drained_at is not None
        assert bench.clock.now - drained_at <= DRAINED + 6 / 30
        assert subscriber.layer.rid == "l"
        assert small.order[sent_large:]  # the small layer goes on in the same stream
        check_stream(video, 0x5EED0000)
        # Retransmissions and padding take the connection's next numbers too.
        numbered_before = len(video.transport_wide)
        await subscriber.retransmit(subscriber.highest & 0xFFFF)
        assert subscriber.probe(bitrate=100e3, seconds=0.01)
        assert video.drain() >= 2 and len(video.transport_wide) >= numbered_before + 2
        numbers = sorted(n for n, _ in video.transport_wide + audio.transport_wide)
        assert numbers == list(range(len(numbers)))
        assert handled  # aiortc still got the datagrams
    finally:
        bench.close()
        voice.close()


def numbered_viewer(bench: Bench) -> tuple[Downlink, Any, Any, Viewer]:
    """A video viewer whose connection numbers every packet: its downlink, the DTLS
    transport its feedback datagrams go in through (where hook 32 listens), its
    subscriber and what it received."""
    downlink = Downlink(bench.clock)
    transport = types.SimpleNamespace(
        _rtp_router=types.SimpleNamespace(route_rtcp=lambda packet: set())
    )
    subscriber = bench.subscribe(rtx=True, transport_wide=downlink.transport_wide(transport))
    downlink.add("track-1", bench.forwarder, subscriber)
    return downlink, transport, subscriber, bench.viewers[subscriber]


async def test_a_probe_that_fills_a_browsers_queue_fails_at_once_and_stops_its_padding() -> None:
    """A student stays on a link that carries the small layer and not the next: each
    probe for the next level fills its queue. The browser's feedback shows it within a
    few frames, with nothing lost yet: the probe fails there, at the smallest layers
    too, and its padding stops at once, before the small layer's frames freeze behind
    it. The level stays."""
    bench = Bench(rids=RIDS)
    try:
        camera = Camera(bench, payload_size=1000)  # 240 kbit/s a packet a frame
        downlink, transport, subscriber, video = numbered_viewer(bench)
        link = BrowserLink([video.transport_wide], rate=1e9, every=4)
        frames = 0

        async def step() -> None:
            nonlocal frames
            await camera.run(1)
            datagram = link.carry(bench.clock.now - 1 / 60, bench.clock.now)
            if datagram is not None:
                await transport._handle_rtcp_data(datagram)
            frames += 1
            if frames % 15 == 0:
                downlink.tick()  # the server looks at each viewer every 0.5 s

        for _ in range(60):
            await step()
        small = bench.forwarder.bitrate_of(subscriber, 2)
        link.rate = small * 1.25  # the small layer fits, the next needs three times it
        while subscriber.layer is None or subscriber.layer.rid != "l":
            assert frames < 300, "never got to the small layer"
            await step()
        low_at = bench.clock.now
        while not downlink.quality.probing:
            assert bench.clock.now - low_at < HOLD + 2, "never probed"
            await step()
        probed_at = bench.clock.now
        assert subscriber.probe_timer is not None  # its padding goes on
        while downlink.quality.probing:
            assert bench.clock.now - probed_at < PROBE_SECONDS / 3, "the probe was let run"
            await step()
        assert downlink.level == LOW and subscriber.layer.rid == "l"
        assert subscriber.probe_timer is None  # no more padding
        assert not downlink.nacks._nacked and subscriber.last_report is None  # no loss
    finally:
        bench.close()


async def test_a_probe_that_loses_stops_its_padding() -> None:
    """Without transport-wide feedback (an aiortc viewer), a loss report during a
    probe fails it; its padding, which only adds to the loss, stops at once."""
    bench = Bench(rids=RIDS)
    try:
        camera = Camera(bench, payload_size=1000)
        subscriber, downlink = await watched(bench, camera)
        downlink.report(1.0)  # far down: the smallest layers
        assert downlink.level == LOW
        while not downlink.quality.probing:
            await camera.run(15)
            downlink.report(0.0)
            downlink.tick()
        assert subscriber.probe_timer is not None
        downlink.report(0.1)
        assert not downlink.quality.probing and downlink.level == LOW
        assert subscriber.probe_timer is None
    finally:
        bench.close()


async def test_a_hold_that_hears_nothing_of_the_queue_ends_after_max_hold() -> None:
    """Stepped down on a queue, and then no feedback comes (no audio, feedback lost):
    the smaller layer starts once :data:`MAX_HOLD` has passed, not never."""
    bench = Bench(rids=RIDS)
    try:
        camera = Camera(bench, payload_size=1000)
        downlink, transport, subscriber, video = numbered_viewer(bench)
        link = BrowserLink([video.transport_wide], rate=1e9, every=1)

        async def step(feedback: bool = True) -> None:
            await camera.run(1)
            datagram = link.carry(bench.clock.now - 1 / 60, bench.clock.now)
            if datagram is not None and feedback:
                await transport._handle_rtcp_data(datagram)

        for _ in range(60):
            await step()
        link.rate = bench.forwarder.bitrate_of(subscriber, 2) / 0.6  # the link drops
        while downlink.level == HIGH:
            assert len(video.transport_wide) < 10_000, "the queue was never seen"
            await step()
        held_at = bench.clock.now
        while subscriber.layer is None:
            downlink.tick()  # the server looks at each viewer every 0.5 s
            assert bench.clock.now - held_at < MAX_HOLD + 0.5, "held for good"
            await step(feedback=False)
        assert bench.clock.now - held_at >= MAX_HOLD
        assert subscriber.layer.rid == "l"
    finally:
        bench.close()
