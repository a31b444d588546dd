"""The raw load mode's packets: real libsrtp at both ends, no sockets, no server."""

from __future__ import annotations

import asyncio
import os

import pylibsrtp
import pytest
from aiortc.rtp import RtcpPacket, RtcpRrPacket

from benchmarks.counting import SsrcCounter, frame_position_index, vp8_frame_start
from benchmarks.encoded import EncodedStream
from benchmarks.rawmedia import (
    RELAY_SSRC_BASE,
    RawSender,
    RawSink,
    StreamSpec,
    packetize,
    relay_describe,
    sdp_describer,
    stream_specs,
)


def _sessions() -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    key = os.urandom(30)
    profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80

    def session(direction: int) -> pylibsrtp.Session:
        return pylibsrtp.Session(
            pylibsrtp.Policy(key=key, ssrc_type=direction, srtp_profile=profile)
        )

    return (
        session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND),
        session(pylibsrtp.Policy.SSRC_ANY_INBOUND),
    )


def _vp8_stream(frames: int = 12) -> EncodedStream:
    """Frames the packetiser splits (2,500 bytes: more than one packet), keyframe first; each
    starts with distinct bytes so the latency probe can tell them apart."""
    data = []
    for index in range(frames):
        head = bytes([0x10 if index else 0x00]) + index.to_bytes(2, "big")
        data.append((head + os.urandom(2_497), index % 6 == 0))
    return EncodedStream(
        kind="video",
        codec="vp8",
        frames=data,
        frame_interval=0.001,
        pts_step=3000,
        clock_rate=90_000,
        info={},
    )


def test_sequence_numbers_are_extended_across_wraps() -> None:
    counter = SsrcCounter(65_000)
    for number in range(1, 200_000):
        if number % 1000 == 7:  # one in a thousand lost
            continue
        counter.add((65_000 + number) & 0xFFFF)
    assert counter.expected == 200_000
    assert counter.received == 200_000 - 200


def test_late_and_repaired_packets_are_not_lost_and_duplicates_count_once() -> None:
    counter = SsrcCounter(10)
    for sequence in (11, 13, 14, 14, 12):  # 12 late, 14 twice
        counter.add(sequence)
    counter.add(16)
    counter.repair(15)  # an RTX packet filled 15
    assert (counter.expected, counter.received, counter.repaired) == (7, 6, 1)


def test_vp8_frame_starts_are_found_behind_every_descriptor_form() -> None:
    assert vp8_frame_start(b"\x10\xaa") == 1  # S=1, no extension
    assert vp8_frame_start(b"\x90\x80\x05\xaa") == 3  # X, I with a 7-bit picture id
    assert vp8_frame_start(b"\x90\x80\x85\x01\xaa") == 4  # 15-bit picture id
    assert vp8_frame_start(b"\x90\xf0\x85\x01\x02\x03\xaa") == 6  # I, L, T/K
    assert vp8_frame_start(b"\x00\xaa") is None  # not the start of a frame
    assert vp8_frame_start(b"\x11\xaa") is None  # partition 1


def test_frames_sharing_their_first_bytes_are_left_out_of_the_probe() -> None:
    index = frame_position_index([(b"a" * 60, True), (b"b" * 60, False), (b"a" * 60, False)])
    assert index == {b"b" * 48: 1}


def test_packetize_splits_video_and_keeps_audio_whole() -> None:
    stream = _vp8_stream()
    payloads = packetize(stream)
    assert len(payloads) == len(stream.frames)
    assert all(len(p) >= 2 for p in payloads)
    assert all(vp8_frame_start(p[0]) is not None for p in payloads)
    audio = EncodedStream("audio", "opus", [(b"\xfc" * 80, True)] * 3, 0.02, 960, 48_000, {})
    assert packetize(audio) == [[b"\xfc" * 80]] * 3


async def test_a_raw_sender_and_sink_agree_on_every_packet_and_frame() -> None:
    protect, unprotect = _sessions()
    stream = _vp8_stream()
    spec = StreamSpec(
        ssrc=RELAY_SSRC_BASE, payload_type=97, kind="video", mid="0", mid_id=1, abs_send_time_id=3
    )
    payloads = packetize(stream)
    wanted = 2 * sum(len(p) for p in payloads)  # twice round the loop
    wire: list[bytes] = []
    done = asyncio.Event()

    def send(datagram: bytes) -> None:
        wire.append(datagram)
        if len(wire) == wanted:
            done.set()

    sender = RawSender(spec, stream, payloads, protect.protect, send, 10.0)
    task = asyncio.create_task(sender.run())
    async with asyncio.timeout(30):
        await done.wait()
    task.cancel()
    sink = RawSink(unprotect.unprotect, relay_describe, frame_position_index(stream.frames))
    for datagram in wire:
        sink(datagram)
    snapshot = sink.snapshot()
    assert snapshot["packets"] == sender.packets_sent == len(wire)
    assert snapshot["expected"] == snapshot["media_received"] == len(wire)
    assert snapshot["frames"]["video"] == sender.frames_sent
    assert sink.totals.errors == 0
    # Every frame's last packet was recognised, at its loop position, from relay0.
    positions = [position for _, position, _ in sink.arrivals]
    assert positions == [n % len(stream.frames) for n in range(sender.frames_sent)]
    assert {publisher for *_, publisher in sink.arrivals} == {"relay0"}
    assert sink.per_track() == {
        "relay0/video": {"packets": len(wire), "frames": sender.frames_sent, "expected": len(wire)}
    }
    # SRTP leaves the header in the clear: the one-byte extension block (RFC 8285) of
    # two words holds MID "0" (id 1) and abs-send-time (id 3, three bytes).
    header = wire[0]
    assert header[0] == 0x90 and header[12:16] == b"\xbe\xde\x00\x02"
    assert header[16:18] == b"\x10" + b"0" and header[18] == 0x32


async def test_a_keyframe_request_makes_the_replay_jump_to_the_next_keyframe() -> None:
    protect, _ = _sessions()
    stream = _vp8_stream()
    spec = StreamSpec(ssrc=1, payload_type=97, kind="video")
    jumped = asyncio.Event()
    sender: RawSender

    def send(datagram: bytes) -> None:
        if sender.frames_sent == 2 and not sender.keyframe_requests:
            sender.request_keyframe()  # in frame 3: frame 4 is the next to start
        if sender.keyframe_jumps:
            jumped.set()

    sender = RawSender(spec, stream, packetize(stream), protect.protect, send, 10.0)
    task = asyncio.create_task(sender.run())
    async with asyncio.timeout(30):
        await jumped.wait()
    task.cancel()
    assert sender.keyframe_requests == 1 and sender.frames_skipped > 0


def test_a_sink_counts_garbage_and_unknown_sources_without_raising() -> None:
    protect, unprotect = _sessions()
    sink = RawSink(unprotect.unprotect, lambda ssrc: None)
    sink(b"\x80\x60" + os.urandom(40))  # not SRTP of this key
    packet = protect.protect(b"\x80\x60\x00\x01" + bytes(4) + (5).to_bytes(4, "big") + b"x" * 20)
    sink(packet)
    assert sink.totals.errors == 1 and sink.totals.unknown == 1 and sink.totals.packets == 0


def test_receiver_reports_parse_as_rtcp() -> None:
    protect, unprotect = _sessions()
    sink = RawSink(unprotect.unprotect, relay_describe)
    for sequence in (1, 2, 4):
        header = bytes([0x80, 97]) + sequence.to_bytes(2, "big") + bytes(4)
        sink(protect.protect(header + RELAY_SSRC_BASE.to_bytes(4, "big") + b"\x10" + bytes(30)))
    data = sink.receiver_report(0x1234)
    assert data is not None
    (report,) = RtcpPacket.parse(data)
    assert isinstance(report, RtcpRrPacket)
    assert report.ssrc == 0x1234
    (block,) = report.reports
    assert (block.ssrc, block.highest_sequence, block.packets_lost) == (RELAY_SSRC_BASE, 4, 1)


OFFER = """v=0
o=- 1 1 IN IP4 0.0.0.0
s=-
t=0 0
a=group:BUNDLE 0 1
m=video 9 UDP/TLS/RTP/SAVPF 97 98
c=IN IP4 0.0.0.0
a=mid:0
a=sendonly
a=rtpmap:97 VP8/90000
a=rtpmap:98 rtx/90000
a=fmtp:98 apt=97
a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=ssrc-group:FID 1111 2222
a=ssrc:1111 cname:x
a=ssrc:2222 cname:x
m=audio 9 UDP/TLS/RTP/SAVPF 111
c=IN IP4 0.0.0.0
a=mid:1
a=sendonly
a=rtpmap:111 opus/48000/2
a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid
a=ssrc:3333 cname:x
"""
# The answer leaves abs-send-time out: the sender must not write it.
ANSWER = OFFER.replace("a=sendonly", "a=recvonly").replace(
    "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\n", ""
)


def test_stream_specs_take_payload_types_and_extensions_from_the_answer() -> None:
    specs = stream_specs(OFFER, ANSWER, {"0": 1111, "1": 3333})
    assert specs["0"] == StreamSpec(1111, 97, "video", "0", 1, None)
    assert specs["1"] == StreamSpec(3333, 111, "audio", "1", 1, None)


def test_ssrcs_are_named_by_publisher_and_kind_from_the_sdp() -> None:
    describe = sdp_describer(lambda: OFFER, lambda: {"0": "teacher", "1": "teacher"})
    assert describe(1111) == ("teacher", "video", None)
    assert describe(2222) == ("teacher", "video", 1111)  # RTX of 1111
    assert describe(3333) == ("teacher", "audio", None)
    assert describe(4444) is None
    assert relay_describe(RELAY_SSRC_BASE + 5) == ("relay2", "audio", None)
    assert relay_describe(7) is None


@pytest.mark.parametrize("offered", ["any", "aes128-cm-sha1-80", "aead-aes-128-gcm"])
def test_the_relay_key_length_fits_its_profile(offered: str) -> None:
    from benchmarks.rawmedia import SRTP_KEY_BYTES, SRTP_PROFILES, relay_profile

    profile = relay_profile(offered)
    key = os.urandom(SRTP_KEY_BYTES[profile])
    policy = pylibsrtp.Policy(
        key=key,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=SRTP_PROFILES[profile],
    )
    assert pylibsrtp.Session(policy) is not None
