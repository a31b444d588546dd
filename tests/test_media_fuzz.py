"""Fuzz the media side (Hypothesis): the RTP fast path and the SDP and ICE input paths.

- Random packet streams through :class:`media.rtp_forward.RtpForwarder` (jumps,
  duplicates, late and reordered packets, changes of source, mutes, empty and
  oversized payloads, subscribers coming and going), with real libsrtp at both ends
  (``tests/rtp_lab.py``): nothing escapes, and every datagram a subscriber gets
  decrypts, with no SRTP index ever used twice for different bytes.
- Random bytes through the keyframe detectors.
- Mutated publish offers and ICE candidates through :class:`media.sfu.Sfu`: each is
  applied or refused with a ``MediaError``, and the participant still closes cleanly.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.peers import IceSettings, configuration
from media.rtp_rewrite import h264_keyframe_start, vp8_keyframe_start
from media.rtp_subscriber import MAX_PAYLOAD
from media.sfu import MediaError, MediaNotice, Sfu
from media.testsource import PatternVideoTrack, ToneAudioTrack

from .rtp_lab import (
    Bench,
    Publisher,
    continuation_payload,
    delta_start_payload,
    keyframe_payload,
    whole_frames,
)

pytestmark = pytest.mark.usefixtures("decoding_clients")


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for every example (Hypothesis calls the test synchronously)."""
    running = asyncio.new_event_loop()
    yield running
    running.close()


# -- the RTP fast path --------------------------------------------------------------

EVENTS = st.one_of(
    st.tuples(st.just("frames"), st.integers(1, 40)),
    st.tuples(st.just("jump"), st.integers(0, 0xFFFF)),
    st.tuples(st.just("source"), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("late"), st.integers(1, 700)),
    st.tuples(st.just("duplicate"), st.integers(1, 5)),
    st.tuples(st.just("pause"), st.booleans()),
    st.tuples(st.just("payload"), st.binary(max_size=64) | st.just(b"\x10" * (MAX_PAYLOAD + 1))),
    st.tuples(st.just("subscribe"), st.booleans()),
    st.tuples(st.just("unsubscribe"), st.integers(0, 3)),
)


class Stream:
    """A publisher whose numbering the fuzzer can break."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.ssrc = 1
        self.seq = rng.getrandbits(16)
        self.ts = rng.getrandbits(32)
        self.sent: list[RtpPacket] = []

    def packet(self, payload: bytes, marker: int = 0) -> RtpPacket:
        packet = RtpPacket(
            payload_type=96,
            marker=marker,
            sequence_number=self.seq,
            timestamp=self.ts,
            ssrc=self.ssrc,
            payload=payload,
        )
        self.seq = (self.seq + 1) & 0xFFFF
        self.sent.append(packet)
        return packet

    def frame(self, index: int) -> list[RtpPacket]:
        tag = b"%d" % index
        first = keyframe_payload(tag) if index % 30 == 0 else delta_start_payload(tag)
        packets = [self.packet(first), self.packet(continuation_payload(tag), marker=1)]
        self.ts = (self.ts + 3000) & 0xFFFFFFFF
        return packets


async def drive(events: list[tuple[str, Any]]) -> Bench:
    bench = Bench()
    stream = Stream(random.Random(len(events)))
    subscribers = [bench.subscribe(rtx=True), bench.subscribe(rtx=False)]
    frame = 0
    for event, value in events:
        if event == "frames":
            for _ in range(value):
                bench.forward(stream.frame(frame))
                frame += 1
        elif event == "jump":
            stream.seq = (stream.seq + value) & 0xFFFF
        elif event == "source":
            stream.ssrc, stream.seq = value, stream.rng.getrandbits(16)
        elif event == "late" and len(stream.sent) >= value:
            bench.forward([stream.sent[-value]])
        elif event == "duplicate" and stream.sent:
            bench.forward(stream.sent[-1:] * value)
        elif event == "pause":
            bench.forwarder.set_paused(value)
        elif event == "payload":
            bench.forward([stream.packet(value, marker=1)])
        elif event == "subscribe":
            subscribers.append(bench.subscribe(rtx=value))
        elif event == "unsubscribe" and subscribers:
            bench.forwarder.remove_subscriber(subscribers.pop(value % len(subscribers)))
        await asyncio.sleep(0)  # keyframe requests run as tasks
    await bench.forwarder.stop()
    return bench


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(EVENTS, min_size=1, max_size=25))
def test_no_packet_stream_breaks_forwarding_or_reuses_an_srtp_index(
    loop: asyncio.AbstractEventLoop, events: list[tuple[str, Any]]
) -> None:
    bench = loop.run_until_complete(drive(events))
    try:
        assert bench.forwarder.stats.errors == 0
        for viewer in bench.viewers.values():
            viewer.drain()
            assert viewer.undecryptable == 0
            assert viewer.reused == []
    finally:
        bench.close()


SIMULCAST_EVENTS = st.one_of(
    st.tuples(st.just("frames"), st.integers(1, 30), st.sampled_from(["all", "l", "h"])),
    st.tuples(st.just("prefer"), st.integers(0, 3), st.sampled_from([0, 160, 640, 1280, None])),
    st.tuples(st.just("interleave"), st.booleans(), st.just(None)),
    st.tuples(st.just("pause"), st.booleans(), st.just(None)),
    st.tuples(st.just("drop"), st.integers(1, 20), st.just(None)),
)


async def drive_layers(events: list[tuple[str, Any, Any]]) -> Bench:
    bench = Bench(rids=("l", "h"))
    rng = random.Random(len(events))
    layers = {
        rid: Publisher(
            ssrc=0x20 + n,
            first_seq=rng.getrandbits(16),
            first_ts=rng.getrandbits(32),
            per_frame=2 + 3 * n,
            gop=40,
            rid=rid,
            size=size,
        )
        for n, (rid, size) in enumerate((("l", (320, 180)), ("h", (1280, 720))))
    }
    subscribers = [bench.subscribe(rtx=n % 2 == 0) for n in range(4)]
    interleave = False
    answered = 0
    for event, first, second in events:
        if event == "frames":
            for _ in range(first):
                asked = bench.keyframe_requested_ssrcs[answered:]
                answered = len(bench.keyframe_requested_ssrcs)
                frames = []
                for rid, publisher in layers.items():
                    publisher.keyframe_wanted |= publisher.ssrc in asked
                    if second in ("all", rid):
                        frames.append(publisher.frame())
                if interleave:
                    packets = [p for group in itertools.zip_longest(*frames) for p in group if p]
                else:
                    packets = [p for frame in frames for p in frame]
                bench.forward(packets)
                if bench.clock.now - bench.forwarder.rated_at >= 0.5:
                    bench.forwarder.update_layers()
                await asyncio.sleep(0)
        elif event == "prefer":
            bench.forwarder.prefer(subscribers[first], second or None, second != 0)
        elif event == "interleave":
            interleave = first
        elif event == "pause":
            bench.forwarder.set_paused(first)
        elif event == "drop":  # the publisher's network loses some of the next packets
            for publisher in layers.values():
                publisher.seq = (publisher.seq + first) & 0xFFFF
    await bench.forwarder.stop()
    return bench


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(SIMULCAST_EVENTS, min_size=1, max_size=20))
def test_layer_switches_never_cut_a_frame_or_reuse_an_srtp_index(
    loop: asyncio.AbstractEventLoop, events: list[tuple[str, Any, Any]]
) -> None:
    bench = loop.run_until_complete(drive_layers(events))
    try:
        assert bench.forwarder.stats.errors == 0
        for viewer in bench.viewers.values():
            viewer.drain()
            assert viewer.undecryptable == 0
            assert viewer.reused == []
            if not any(event == "drop" for event, _, _ in events):
                # Without loss on the publisher's side, every frame arrives whole.
                for ssrc, record in viewer.streams.items():
                    if ssrc not in viewer.rtx:
                        assert whole_frames(record)
    finally:
        bench.close()


@settings(max_examples=500, deadline=None)
@given(payload=st.binary(max_size=40))
def test_keyframe_detectors_take_any_bytes(payload: bytes) -> None:
    assert isinstance(vp8_keyframe_start(payload), bool)
    assert isinstance(h264_keyframe_start(payload), bool)


# -- SDP and ICE input ----------------------------------------------------------------


async def valid_offer() -> str:
    pc = RTCPeerConnection(configuration([]))
    pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
    pc.addTransceiver(ToneAudioTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


LINE_NOISE = st.sampled_from(
    ["", " ", ":", "x", "0", "-1", "99999999999", "a=", "m=", "/", "\x00", "é", "*"]
)
EXTRA_LINES = st.sampled_from(
    [
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "m=audio 0 RTP/AVP 0",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=rtpmap:96",
        "a=fmtp:96",
        "a=fmtp:200 apt=96",
        "a=ssrc-group:FID 1",
        "a=rtcp-fb:96",
        "a=extmap:1",
        "a=candidate:1 1 udp",
        "a=candidate:1 1 udp 1 127.0.0.1 53 typ host",
        "a=fingerprint:sha-256",
        "a=setup:",
        "a=group:BUNDLE 0 1 7",
        "c=IN IP4",
        "a=msid:",
        "a=mid:0",
        "a=sendrecv",
        "a=ice-ufrag:",
    ]
)
MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["delete", "duplicate", "garble", "insert"]),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
        LINE_NOISE,
        EXTRA_LINES,
    ),
    min_size=1,
    max_size=5,
)


def mutate(sdp: str, mutations: list[tuple[str, int, int, str, str]]) -> str:
    lines = sdp.split("\r\n")
    for operation, where, at, noise, extra in mutations:
        index = where % len(lines)
        if operation == "delete" and len(lines) > 1:
            del lines[index]
        elif operation == "duplicate":
            lines.insert(index, lines[at % len(lines)])
        elif operation == "garble" and lines[index]:
            cut = at % len(lines[index])
            lines[index] = lines[index][:cut] + noise + lines[index][cut + 1 :]
        elif operation == "insert":
            lines.insert(index, extra)
    return "\r\n".join(lines)


@pytest.fixture(scope="module")
def offer(loop: asyncio.AbstractEventLoop) -> str:
    return loop.run_until_complete(valid_offer())


async def offer_to_sfu(sdp: str, candidates: list[str]) -> None:
    sfu = Sfu(IceSettings(), on_track_ended=lambda publisher, track: None)

    async def send(notice: MediaNotice) -> None:
        return None

    sfu.open("fuzz", send, "127.0.0.1")
    try:
        try:
            await sfu.accept_publish_offer("fuzz", sdp)
        except MediaError:
            pass
        for text in candidates:
            try:
                await sfu.add_candidate("fuzz", "publish", text, "0")
            except MediaError:
                pass
    finally:
        await sfu.close("fuzz")


CANDIDATES = st.lists(
    st.text(max_size=120).map(lambda s: "candidate:" + s)
    | st.builds(
        "candidate:{} {} {} {} {} {} typ {}".format,
        st.text(max_size=4),
        st.integers(-1, 3),
        st.sampled_from(["udp", "tcp", "UDP", "x"]),
        st.integers(-5, 2**40),
        st.sampled_from(["127.0.0.1", "::1", "10.0.0.1", "0.0.0.0", "a.local", "", "999.1.1.1"]),
        st.integers(-5, 70_000),
        st.sampled_from(["host", "srflx", "relay", "prflx", ""]),
    ),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=MUTATIONS, candidates=CANDIDATES)
def test_mutated_offers_and_candidates_are_applied_or_refused_never_raised(
    loop: asyncio.AbstractEventLoop,
    offer: str,
    mutations: list[tuple[str, int, int, str, str]],
    candidates: list[str],
) -> None:
    loop.run_until_complete(offer_to_sfu(mutate(offer, mutations), candidates))
