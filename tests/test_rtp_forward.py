"""The RTP fast path: sans-I/O rules, then real aiortc peers over loopback.

A publisher peer connection sends VP8 (encoded by aiortc) and Opus to an
in-process "SFU" connection; :class:`media.rtp_forward.RtpForwarder` forwards the
packets to subscriber connections that decode with aiortc's normal decoders.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import types
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import av
import pytest
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpSender,
)
from aiortc.codecs import get_encoder
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket, is_rtcp

from media import hooks, rtp_subscriber
from media import hooks as private
from media.peers import negotiated_media
from media.rtp_forward import RtpForwarder
from media.rtp_rewrite import (
    HeaderWriter,
    h264_keyframe_start,
    one_byte_extension,
    rtx_packet,
    sequence_of,
    vp8_keyframe_start,
    write_varying,
)
from media.rtp_subscriber import IdleTrack, RtpSubscriber
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling.turn import turn_credential

from .coturn import Coturn
from .test_hooks import vp8_packets

# -- sans-I/O --------------------------------------------------------------------


def test_vp8_keyframe_start_is_found_in_packetised_frames() -> None:
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    encoder = get_encoder(codec)
    frames = vp8_packets(4)
    assert frames[0].is_keyframe and not frames[1].is_keyframe
    key_payloads, _ = encoder.pack(frames[0])
    delta_payloads, _ = encoder.pack(frames[1])
    assert vp8_keyframe_start(key_payloads[0])
    assert not any(vp8_keyframe_start(p) for p in key_payloads[1:])
    assert not any(vp8_keyframe_start(p) for p in delta_payloads)
    assert not vp8_keyframe_start(b"") and not vp8_keyframe_start(b"\x90\x80")


def test_h264_keyframe_start_covers_single_stap_a_and_fu_a() -> None:
    assert h264_keyframe_start(b"\x65\x88")  # IDR
    assert h264_keyframe_start(b"\x67\x42")  # SPS
    assert not h264_keyframe_start(b"\x41\x9a")  # non-IDR slice
    stap = b"\x78" + b"\x00\x02\x67\x42" + b"\x00\x02\x68\xce"
    assert h264_keyframe_start(stap)
    assert not h264_keyframe_start(b"\x78" + b"\x00\x02\x41\x9a")
    assert h264_keyframe_start(b"\x7c\x85")  # FU-A, S=1, IDR
    assert not h264_keyframe_start(b"\x7c\x05")  # FU-A continuation
    assert not h264_keyframe_start(b"")


def test_header_writer_and_rtx_wrap_round_trip_through_aiortcs_parser() -> None:
    ext = one_byte_extension([(4, b"12")])
    assert len(ext) % 4 == 0
    writer = HeaderWriter(98, 0x11223344, ext)
    data = writer.header(1, 65535, 0xFFFFFFFF) + b"payload"
    packet = RtpPacket.parse(data)
    assert (packet.payload_type, packet.marker, packet.ssrc) == (98, 1, 0x11223344)
    assert (packet.sequence_number, packet.timestamp) == (65535, 0xFFFFFFFF)
    assert packet.payload == b"payload" and sequence_of(data) == 65535
    rtx = RtpPacket.parse(rtx_packet(HeaderWriter(99, 7, ext), 3, data, writer.header_size))
    assert (rtx.payload_type, rtx.ssrc, rtx.sequence_number, rtx.marker) == (99, 7, 3, 1)
    assert rtx.timestamp == 0xFFFFFFFF
    assert rtx.payload == b"\xff\xff" + b"payload"  # OSN, then the original payload
    with pytest.raises(ValueError):
        one_byte_extension([(15, b"x")])


def test_write_varying_rewrites_marker_sequence_and_timestamp_in_place() -> None:
    ext = one_byte_extension([(4, b"1")])
    writer = HeaderWriter(98, 0x11223344, ext)
    buffer = bytearray(writer.header(0, 0, 0) + b"payload")
    write_varying(buffer, 1, writer.payload_type | 0x80, 65535, 0xFFFFFFFF)
    assert bytes(buffer) == writer.header(1, 65535, 0xFFFFFFFF) + b"payload"
    write_varying(buffer, 1, writer.payload_type, 7, 9)
    assert bytes(buffer) == writer.header(0, 7, 9) + b"payload"


def test_history_records_survive_a_restart_of_the_numbering() -> None:
    """After the publisher's source changes (or a mute ends) a subscriber's offsets
    change; what it was sent before must still be retransmitted as it was sent."""
    sub = RtpSubscriber.__new__(RtpSubscriber)
    RtpSubscriber.__init__(sub, None, None, types.SimpleNamespace(sender=None))  # type: ignore[arg-type]
    sub.writer = HeaderWriter(96, 1234)
    sub.ring = [None] * rtp_subscriber.HISTORY
    sub.begin(1000, 50_000, 10.0, 90000)
    sent = {}
    for i in range(5):
        index, ts = 1000 + i, 50_000 + 3000 * i
        out = index + sub.ext_offset
        sub.highest = out
        record = (index & 0xFFFF, ts, 0x80 if i == 4 else 0, b"p%d" % i)
        sub.ring[out & sub.mask] = record
        sent[out & 0xFFFF] = sub.packet_for(record)
    # The source changes: new numbers, and the subscriber resumes after what it had.
    sub.resume = sub.state(62_000, 10.2)
    assert sub.resume is not None and sub.resume.next_index == sub.highest + 1
    sub.begin(7 + (1 << 20), 123, 10.3, 90000)
    assert 7 + (1 << 20) + sub.ext_offset == sub.highest + 1  # no jump back
    assert sub.floor == sub.highest + 1
    for out_seq, data in sent.items():
        record = sub.ring[out_seq & sub.mask]
        assert record is not None and (record[0] + sub.ext_offset) & 0xFFFF == out_seq
        assert sub.packet_for(record) == data


# -- real peers ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def decoding_process() -> Iterator[None]:
    hooks.install_counting_hooks()  # subscribers decode for real
    hooks.set_host_addresses(["127.0.0.1"])
    yield
    hooks.uninstall_hooks()
    hooks.set_host_addresses(None)


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


class Lab:
    """A publisher, the SFU's two sides and subscribers, all in this process."""

    def __init__(self) -> None:
        self.pcs: list[RTCPeerConnection] = []
        self.forwarders: dict[str, RtpForwarder] = {}

    def pc(self) -> RTCPeerConnection:
        pc = new_pc()
        self.pcs.append(pc)
        return pc

    async def publish(self, tracks: list[MediaStreamTrack]) -> None:
        publisher, sfu_in = self.pc(), self.pc()
        for track in tracks:
            transceiver = publisher.addTransceiver(track, direction="sendonly")
            if track.kind == "video":
                vp8 = [
                    c
                    for c in RTCRtpSender.getCapabilities("video").codecs
                    if c.mimeType.lower() in ("video/vp8", "video/rtx")
                ]
                transceiver.setCodecPreferences(vp8)
        await publisher.setLocalDescription(await publisher.createOffer())
        await sfu_in.setRemoteDescription(publisher.localDescription)
        await sfu_in.setLocalDescription(await sfu_in.createAnswer())
        negotiated = {m.mid: m for m in negotiated_media(sfu_in.localDescription.sdp)}
        for transceiver in sfu_in.getTransceivers():
            media = negotiated[transceiver.mid or ""]
            assert media.codec is not None
            # Tap before the publisher's first packet can arrive.
            forwarder = RtpForwarder(media.kind, transceiver.receiver, media.codec)
            forwarder.start()
            self.forwarders[media.kind] = forwarder
        await publisher.setRemoteDescription(sfu_in.localDescription)

    async def subscribe(
        self, kinds: tuple[str, ...] = ("video", "audio"), sfu_out: RTCPeerConnection | None = None
    ) -> Subscriber:
        if sfu_out is not None:
            self.pcs.append(sfu_out)
        sfu_out, viewer = sfu_out or self.pc(), self.pc()
        attached = {kind: self.forwarders[kind].attach(sfu_out) for kind in kinds}
        await negotiate(sfu_out, viewer)
        return Subscriber(viewer, attached)

    async def close(self) -> None:
        for forwarder in self.forwarders.values():
            await forwarder.stop()
        for pc in self.pcs:
            await pc.close()


class Subscriber:
    def __init__(self, pc: RTCPeerConnection, attached: dict[str, RtpSubscriber]) -> None:
        self.pc = pc
        self.attached = attached

    def track(self, kind: str) -> MediaStreamTrack:
        (transceiver,) = [t for t in self.pc.getTransceivers() if t.kind == kind]
        return transceiver.receiver.track

    def transport(self) -> Any:
        return self.pc.getTransceivers()[0].receiver.transport


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    lab = Lab()
    yield lab
    await lab.close()


async def frames(track: MediaStreamTrack, count: int, timeout: float = 20) -> list[Any]:
    async def take() -> list[Any]:
        return [await track.recv() for _ in range(count)]

    return await asyncio.wait_for(take(), timeout)


async def test_two_subscribers_decode_forwarded_vp8_and_opus(lab: Lab) -> None:
    await lab.publish([PatternVideoTrack(), ToneAudioTrack()])
    viewers = [await lab.subscribe(), await lab.subscribe()]
    for viewer in viewers:
        video = await frames(viewer.track("video"), 10)
        assert all(isinstance(f, av.VideoFrame) for f in video)
        assert (video[-1].width, video[-1].height) == (320, 240)
        audio = await frames(viewer.track("audio"), 10)
        assert all(isinstance(f, av.AudioFrame) for f in audio)
    video_stats = lab.forwarders["video"].stats
    assert video_stats.packets_forwarded > 0 and video_stats.errors == 0
    assert video_stats.subscribers_started == 2
    assert lab.forwarders["audio"].stats.errors == 0


async def test_a_late_subscriber_starts_on_a_requested_keyframe(lab: Lab) -> None:
    await lab.publish([PatternVideoTrack()])
    early = await lab.subscribe(("video",))
    await frames(early.track("video"), 5)
    forwarder = lab.forwarders["video"]
    relayed_before = forwarder.stats.keyframe_requests_relayed

    sfu_out, viewer = lab.pc(), lab.pc()
    forwarder.attach(sfu_out)
    await negotiate(sfu_out, viewer)
    first_payload: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    transport = viewer.getTransceivers()[0].receiver.transport
    handle_rtp = transport._handle_rtp_data

    async def spy(data: bytes, arrival_time_ms: int) -> None:
        if not first_payload.done():
            first_payload.set_result(RtpPacket.parse(data).payload)
        await handle_rtp(data, arrival_time_ms)

    transport._handle_rtp_data = spy
    late_track = viewer.getTransceivers()[0].receiver.track
    decoded = await frames(late_track, 3)
    assert isinstance(decoded[0], av.VideoFrame)
    # aiortc's VP8 encoder makes keyframes only when asked: this one was relayed.
    assert vp8_keyframe_start(await first_payload)
    assert forwarder.stats.keyframe_requests_relayed > relayed_before


async def test_subscriber_nacks_are_answered_with_rtx(lab: Lab) -> None:
    await lab.publish([PatternVideoTrack()])
    viewer = await lab.subscribe(("video",))
    track = viewer.track("video")
    await frames(track, 3)
    transport = viewer.transport()
    sdp = viewer.pc.localDescription.sdp
    rtx_types = {c.payloadType for m in negotiated_media_all(sdp) for c in m if c.name == "rtx"}
    assert rtx_types
    counts = {"media": 0, "rtx": 0}
    handle_rtp = transport._handle_rtp_data

    async def lossy(data: bytes, arrival_time_ms: int) -> None:
        if not is_rtcp(data):
            if (data[1] & 0x7F) in rtx_types:
                counts["rtx"] += 1
            else:
                counts["media"] += 1
                if counts["media"] % 15 == 0:
                    return  # lost: the subscriber must NACK it
        await handle_rtp(data, arrival_time_ms)

    transport._handle_rtp_data = lossy
    await frames(track, 45, timeout=30)
    stats = lab.forwarders["video"].stats
    assert counts["rtx"] > 0 and stats.retransmissions > 0


def negotiated_media_all(sdp: str) -> list[list[Any]]:
    from aiortc.sdp import SessionDescription

    return [m.rtp.codecs for m in SessionDescription.parse(sdp).media]


async def test_stop_releases_subscribers_hooks_and_tasks(lab: Lab) -> None:
    await lab.publish([PatternVideoTrack()])
    viewer = await lab.subscribe(("video",))
    await frames(viewer.track("video"), 3)
    forwarder = lab.forwarders["video"]
    subscriber = viewer.attached["video"]
    sender = subscriber.sender
    idle = subscriber.track
    assert isinstance(idle, IdleTrack)
    assert "_retransmit" in sender.__dict__
    sock = subscriber._socket
    assert sock is not None and sock.fileno() >= 0
    tasks_before = set(forwarder._tasks)
    assert tasks_before
    receiver = lab.pcs[1].getTransceivers()[0].receiver

    await forwarder.stop()

    assert forwarder.subscriber_count == 0
    assert subscriber._socket is None and sock.fileno() == -1  # our duplicate is closed
    assert "_retransmit" not in sender.__dict__ and "_send_keyframe" not in sender.__dict__
    # The idle track stays with the transceiver, for the next track it may carry.
    assert idle.readyState == "live" and idle.on_stop is None
    assert all(t.done() for t in tasks_before) and not forwarder._tasks
    assert private.has_tap_slot(receiver)
    ref = weakref.ref(forwarder)
    subscriber_ref = weakref.ref(subscriber)
    del lab.forwarders["video"], forwarder, subscriber, viewer
    gc.collect()
    assert ref() is None
    assert subscriber_ref() is None


async def test_unsubscribing_one_viewer_leaves_the_other_running(lab: Lab) -> None:
    await lab.publish([PatternVideoTrack()])
    first, second = await lab.subscribe(("video",)), await lab.subscribe(("video",))
    await frames(first.track("video"), 2)
    forwarder = lab.forwarders["video"]
    forwarder.remove_subscriber(first.attached["video"])
    assert forwarder.subscriber_count == 1
    assert first.attached["video"].forwarder is None
    await frames(second.track("video"), 5)


async def test_forwarding_through_the_asyncio_transport_also_works(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rtp_subscriber, "DIRECT_SOCKET", False)
    await lab.publish([PatternVideoTrack()])
    viewer = await lab.subscribe(("video",))
    video = await frames(viewer.track("video"), 5)
    assert all(isinstance(f, av.VideoFrame) for f in video)
    assert viewer.attached["video"]._socket is None
    assert lab.forwarders["video"].stats.errors == 0


async def test_a_subscriber_behind_a_relayed_pair_receives_through_the_turn_server(
    lab: Lab, coturn: Coturn
) -> None:
    """The SFU never relays (media/peers.py), but a forwarder may be attached to any
    connection: on a relayed pair it must send through the allocation, not around it."""
    sfu_address = os.environ["LCO_TEST_HOST_ADDRESS"]  # the one private peer coturn allows
    hooks.set_host_addresses([sfu_address])
    credential = turn_credential(coturn.secret, "sfu-out", time.time(), 600)
    relayed_out = RTCPeerConnection(
        RTCConfiguration(
            iceServers=[RTCIceServer(coturn.urls[0], credential.username, credential.password)],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        )
    )
    await lab.publish([PatternVideoTrack()])
    viewer = await lab.subscribe(("video",), sfu_out=relayed_out)
    video = await frames(viewer.track("video"), 5)
    assert all(isinstance(f, av.VideoFrame) for f in video)
    pairs = hooks.nominated_pairs(viewer.attached["video"].sender)
    assert pairs is not None and hooks.is_relayed(pairs[1])
    assert viewer.attached["video"]._socket is None  # no duplicate of the TURN socket
