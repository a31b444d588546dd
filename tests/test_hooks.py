"""The aiortc and aioice private hooks the SFU depends on, exercised on real peers.

If an aiortc upgrade moves any of them, a test here fails before anything else.
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import aiortc
import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription

from media import hooks, ice_restart
from media.peers import configuration, reject_like_offer


class PacketTrack(MediaStreamTrack):
    """Sends pre-encoded frames (``av.Packet``), as a forwarding SFU does."""

    def __init__(self, kind: str, packets: list[av.Packet[Any]]) -> None:
        super().__init__()
        self.kind = kind
        self._packets = packets
        self._index = 0

    async def recv(self) -> av.Packet[Any]:
        await asyncio.sleep(0.02)
        packet = self._packets[self._index % len(self._packets)]
        self._index += 1
        copy = av.Packet(bytes(packet))
        copy.pts = packet.pts + (self._index // len(self._packets)) * 9000 * len(self._packets)
        copy.time_base = packet.time_base
        return copy


def vp8_packets(count: int = 30) -> list[av.Packet[Any]]:
    context = av.CodecContext.create("libvpx", "w")
    context.width, context.height = 160, 120
    context.pix_fmt = "yuv420p"
    context.time_base = fractions.Fraction(1, 30)
    packets: list[av.Packet[Any]] = []
    for i in range(count):
        frame = av.VideoFrame(160, 120, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(i * 8) % 256]) * plane.buffer_size)
        frame.pts = i
        packets += context.encode(frame)
    for packet in packets:
        packet.pts = packet.pts * 3000  # 90 kHz
        packet.time_base = fractions.Fraction(1, 90000)
    return packets


def opus_packets(count: int = 50) -> list[av.Packet[Any]]:
    packets = []
    for i in range(count):
        packet = av.Packet(b"\xfc\xff\xfe")  # an Opus "silence" TOC byte and padding
        packet.pts = i * 960
        packet.time_base = fractions.Fraction(1, 48000)
        packets.append(packet)
    return packets


@pytest.fixture(autouse=True)
def forwarding_process() -> AsyncIterator[None]:
    hooks.install_forwarding_hooks()
    hooks.set_host_addresses(["127.0.0.1"])
    yield
    hooks.uninstall_hooks()
    hooks.set_host_addresses(None)


async def connect(track: MediaStreamTrack) -> tuple[RTCPeerConnection, RTCPeerConnection]:
    sender_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sender_pc.addTransceiver(track, direction="sendonly")
    await sender_pc.setLocalDescription(await sender_pc.createOffer())
    await receiver_pc.setRemoteDescription(sender_pc.localDescription)
    await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
    await sender_pc.setRemoteDescription(receiver_pc.localDescription)
    return sender_pc, receiver_pc


def receiver_of(pc: RTCPeerConnection) -> RTCRtpReceiver:
    (transceiver,) = pc.getTransceivers()
    return transceiver.receiver


def test_the_pinned_versions_are_installed() -> None:
    assert aiortc.__version__ == hooks.PINNED_AIORTC
    assert version("aioice") == hooks.PINNED_AIOICE
    assert version("pylibsrtp") == hooks.PINNED_PYLIBSRTP


async def test_host_addresses_hook_limits_candidates() -> None:
    sender_pc, receiver_pc = await connect(PacketTrack("video", vp8_packets(2)))
    try:
        candidates = [
            line for line in sender_pc.localDescription.sdp.splitlines() if "a=candidate" in line
        ]
        assert candidates
        assert all(" 127.0.0.1 " in line for line in candidates)
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_receivers_yield_encoded_frames_and_senders_pack_them() -> None:
    before = hooks.COUNTERS.snapshot()
    sender_pc, receiver_pc = await connect(PacketTrack("video", vp8_packets()))
    try:
        track = receiver_of(receiver_pc).track
        first = await asyncio.wait_for(track.recv(), 10)
        assert isinstance(first, av.Packet)
        assert first.is_keyframe
        second = await asyncio.wait_for(track.recv(), 10)
        assert isinstance(second, av.Packet) and not second.is_keyframe
        after = hooks.COUNTERS.snapshot()
        assert after["frames_passed_through"] > before["frames_passed_through"]
        assert after["frames_packed"] > before["frames_packed"]
        assert after["frames_decoded"] == before["frames_decoded"]
        assert after["frames_encoded"] == before["frames_encoded"]
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_audio_is_released_packet_by_packet() -> None:
    sender_pc, receiver_pc = await connect(PacketTrack("audio", opus_packets()))
    try:
        receiver = receiver_of(receiver_pc)
        assert hasattr(receiver, "_RTCRtpReceiver__jitter_buffer")
        hooks.release_audio_immediately(receiver)
        frames = [await asyncio.wait_for(receiver.track.recv(), 10) for _ in range(5)]
        pts = [frame.pts for frame in frames]
        # Consecutive 20 ms packets, none held back: each step is one Opus frame.
        assert [b - a for a, b in itertools.pairwise(pts)] == [960] * 4
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_a_pli_reaches_the_senders_keyframe_hook() -> None:
    sender_pc, receiver_pc = await connect(PacketTrack("video", vp8_packets()))
    try:
        requested = asyncio.Event()
        (transceiver,) = sender_pc.getTransceivers()
        hooks.on_keyframe_request(transceiver.sender, requested.set)
        receiver = receiver_of(receiver_pc)
        await asyncio.wait_for(receiver.track.recv(), 10)
        assert hasattr(receiver, "_RTCRtpReceiver__rtx_ssrc")
        assert await hooks.send_pli(receiver)
        await asyncio.wait_for(requested.wait(), 5)
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_the_receivers_stream_statistics_are_readable() -> None:
    """Hook 26: what the live view reads of a publisher's incoming streams."""
    sender_pc, receiver_pc = await connect(PacketTrack("video", vp8_packets()))
    try:
        receiver = receiver_of(receiver_pc)
        for _ in range(3):
            await asyncio.wait_for(receiver.track.recv(), 10)
        streams = hooks.received_streams(receiver)
        (transceiver,) = sender_pc.getTransceivers()
        ssrc, _ = hooks.sender_ssrcs(transceiver.sender)
        assert [s[0] for s in streams] == [ssrc]  # the media SSRC
        assert streams[0][1] >= 3 and streams[0][2] == 0
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_a_retransmission_does_not_hide_the_media_streams_count() -> None:
    """aiortc's ``getStats()`` files a receiver's RTX stream under the media stream's
    id, so after one retransmission it reports the RTX count; ``received_streams``
    keeps the media stream's (what a subscriber's packet count must be read from)."""
    sender_pc, receiver_pc = await connected(PacketTrack("video", vp8_packets()))
    try:
        receiver = receiver_of(receiver_pc)
        (transceiver,) = sender_pc.getTransceivers()
        ssrc, rtx_ssrc = hooks.sender_ssrcs(transceiver.sender)
        heard: dict[int, Any] = getattr(receiver, "_RTCRtpReceiver__remote_streams")  # noqa: B009
        await transceiver.sender._retransmit(heard[ssrc].max_seq)
        while rtx_ssrc not in heard:  # each frame is a chance for the RTX packet to be in
            await asyncio.wait_for(receiver.track.recv(), 10)
        (stream,) = hooks.received_streams(receiver)
        assert stream[0] == ssrc and stream[1] == heard[ssrc].packets_received > 1
        report = await receiver.getStats()
        (inbound,) = [s for s in report.values() if s.type == "inbound-rtp"]
        assert inbound.packetsReceived == 1  # what the long-stream test was misled by
    finally:
        await sender_pc.close()
        await receiver_pc.close()


# --- the RTP fast path's hooks --------------------------------------------------


async def connected(track: MediaStreamTrack) -> tuple[RTCPeerConnection, RTCPeerConnection]:
    """A sending and a receiving peer whose first frame has arrived (all transports up)."""
    sender_pc, receiver_pc = await connect(track)
    await asyncio.wait_for(receiver_of(receiver_pc).track.recv(), 10)
    return sender_pc, receiver_pc


async def test_the_sender_private_state_the_fast_path_uses_is_there() -> None:
    sender_pc, receiver_pc = await connected(PacketTrack("video", vp8_packets()))
    try:
        (transceiver,) = sender_pc.getTransceivers()
        sender = transceiver.sender
        ssrc, rtx_ssrc = hooks.sender_ssrcs(sender)
        offer = sender_pc.localDescription.sdp
        assert f"a=ssrc:{ssrc} " in offer and f"a=ssrc:{rtx_ssrc} " in offer
        assert hooks.tx_srtp(sender) is not None
        pairs = hooks.nominated_pairs(sender)
        assert pairs is not None and 1 in pairs
        transport, address = hooks.pair_endpoint(pairs[1])
        assert hasattr(transport, "sendto") and address[0] == "127.0.0.1"
        hooks.set_sender_report(sender, 1 << 40, 1234, 5, 678)
        stats = await sender.getStats()
        outbound = [s for s in stats.values() if s.type == "outbound-rtp"]
        assert outbound and outbound[0].packetsSent == 5 and outbound[0].bytesSent == 678
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_a_tap_in_the_jitter_buffer_slot_sees_every_packet() -> None:
    sender_pc, receiver_pc = await connected(PacketTrack("video", vp8_packets()))
    try:
        seen = asyncio.Event()
        packets: list[int] = []

        class Tap:
            capacity = 1

            def add(self, packet: Any) -> tuple[bool, None]:
                packets.append(packet.sequence_number)
                seen.set()
                return False, None

        receiver = receiver_of(receiver_pc)
        previous = hooks.install_tap(receiver, Tap())
        await asyncio.wait_for(seen.wait(), 5)
        hooks.remove_tap(receiver, previous)
        assert packets and hooks.has_tap_slot(receiver)
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_nacks_reach_the_senders_retransmit_hook() -> None:
    sender_pc, receiver_pc = await connected(PacketTrack("video", vp8_packets()))
    try:
        (transceiver,) = sender_pc.getTransceivers()
        nacked: asyncio.Queue[int] = asyncio.Queue()

        async def retransmit(sequence_number: int) -> None:
            nacked.put_nowait(sequence_number)

        requested = asyncio.Event()
        hooks.hook_sender(transceiver.sender, retransmit, requested.set)
        receiver = receiver_of(receiver_pc)
        (source,) = [s.source for s in receiver.getSynchronizationSources()][:1]
        await receiver._send_rtcp_nack(source, [4242])
        assert await asyncio.wait_for(nacked.get(), 5) == 4242
        hooks.unhook_sender(transceiver.sender)
        assert "_retransmit" not in transceiver.sender.__dict__
    finally:
        await sender_pc.close()
        await receiver_pc.close()


def test_raw_srtp_protect_in_a_buffer_matches_session_protect() -> None:
    from pylibsrtp import Policy, Session

    key = bytes(range(30))

    def session(direction: int) -> Session:
        policy = Policy(key=key, ssrc_type=direction)
        policy.allow_repeat_tx = True
        return Session(policy)

    packet = bytes([0x80, 96, 0, 1, 0, 0, 0, 9, 0, 0, 0, 7]) + b"payload" * 100
    expected = session(Policy.SSRC_ANY_OUTBOUND).protect(packet)

    outbound = session(Policy.SSRC_ANY_OUTBOUND)
    buffer = hooks.SrtpBuffer(2048)
    buffer.view[: len(packet)] = packet
    buffer.length[0] = len(packet)
    protect = hooks.raw_srtp_protect()
    assert protect(hooks.srtp_context(outbound), buffer.data, buffer.length) == hooks.SRTP_OK
    protected = bytes(buffer.view[: buffer.length[0]])
    assert protected == expected
    assert len(protected) <= len(packet) + hooks.SRTP_MAX_TRAILER
    assert session(Policy.SSRC_ANY_INBOUND).unprotect(protected) == packet
    buffer.release()


async def test_a_duplicate_of_the_pair_socket_sends_and_closes_alone() -> None:
    sender_pc, receiver_pc = await connected(PacketTrack("video", vp8_packets()))
    try:
        (transceiver,) = sender_pc.getTransceivers()
        pairs = hooks.nominated_pairs(transceiver.sender)
        assert pairs is not None and 1 in pairs
        transport, address = hooks.pair_endpoint(pairs[1])
        original = transport.get_extra_info("socket")
        dup = hooks.pair_socket(pairs[1])
        assert dup.fileno() != original.fileno()
        assert dup.getsockname() == original.getsockname()
        assert not dup.getblocking()
        dup.sendto(b"\x00\x01", address)  # not RTP, not STUN: the peer drops it
        dup.close()
        # aioice's own socket is untouched: media keeps flowing.
        await asyncio.wait_for(receiver_of(receiver_pc).track.recv(), 10)
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_retransmissions_find_their_receiver_when_two_videos_share_a_transport() -> None:
    sender_pc = RTCPeerConnection(configuration([]))
    receiver_pc = RTCPeerConnection(configuration([]))
    try:
        for _ in range(2):
            sender_pc.addTransceiver(PacketTrack("video", vp8_packets(4)), direction="sendonly")
        await sender_pc.setLocalDescription(await sender_pc.createOffer())
        await receiver_pc.setRemoteDescription(sender_pc.localDescription)
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        await sender_pc.setRemoteDescription(receiver_pc.localDescription)
        receivers = [t.receiver for t in receiver_pc.getTransceivers()]
        for receiver in receivers:
            await asyncio.wait_for(receiver.track.recv(), 10)
        router = receivers[0].transport._rtp_router
        rtx_type = min(rtx_payload_types(receiver_pc.remoteDescription.sdp))
        senders = [t.sender for t in sender_pc.getTransceivers()]
        for sender, receiver in zip(senders, receivers, strict=True):
            rtx = RtpPacket(payload_type=rtx_type, sequence_number=1, ssrc=sender._rtx_ssrc)
            assert router.route_rtp(rtx) is receiver
    finally:
        await sender_pc.close()
        await receiver_pc.close()


def rtx_payload_types(sdp: str) -> set[int]:
    description = SessionDescription.parse(sdp)
    return {c.payloadType for m in description.media for c in m.rtp.codecs if c.name == "rtx"}


def rewrite_section(sdp: str, index: int, port: str, mid: str, direction: str) -> str:
    """The same offer with one m-section's port, MID and direction changed, and the
    BUNDLE group following (in the text, as a browser writes it)."""
    head, *sections = sdp.split("\r\nm=")
    old_mid = next(
        line[len("a=mid:") :] for line in sections[index].split("\r\n") if line.startswith("a=mid:")
    )
    lines = sections[index].split("\r\n")
    kind, _, rest = lines[0].split(" ", 2)
    lines[0] = f"{kind} {port} {rest}"
    lines = [
        f"a=mid:{mid}"
        if line.startswith("a=mid:")
        else f"a={direction}"
        if line in ("a=sendonly", "a=sendrecv", "a=inactive", "a=recvonly")
        else line
        for line in lines
    ]
    sections[index] = "\r\n".join(lines)
    bundled = [] if port == "0" else [mid]
    head = "\r\n".join(
        " ".join(["a=group:BUNDLE", *(m for m in line.split()[1:] if m != old_mid), *bundled])
        if line.startswith("a=group:BUNDLE")
        else line
        for line in head.split("\r\n")
    )
    return "\r\nm=".join([head, *sections])


async def test_a_recycled_m_line_gets_a_transceiver_of_its_own() -> None:
    """A browser stops a transceiver (its m-line rejected, port 0) and then recycles
    the m-line for a new one (a new MID): aiortc renames the stopped transceiver to the
    new MID as well, unless its m-line index is forgotten (hook 16)."""
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for _ in range(2):
            offerer.addTransceiver("video", direction="sendonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        first = offerer.localDescription.sdp
        await answerer.setRemoteDescription(RTCSessionDescription(first, "offer"))
        await answerer.setLocalDescription(await answerer.createAnswer())

        rejecting = rewrite_section(first, 1, "0", "1", "inactive")
        await answerer.setRemoteDescription(RTCSessionDescription(rejecting, "offer"))
        await answerer.setLocalDescription(await answerer.createAnswer())
        answer = reject_like_offer(rejecting, answerer.localDescription.sdp)
        rejected = SessionDescription.parse(answer)
        assert rejected.media[1].port == 0
        assert rejected.group[0].items == ["0"]  # out of the BUNDLE group
        (stopped,) = [t for t in answerer.getTransceivers() if t.mid == "1"]
        hooks.forget_mline(stopped)
        await stopped.stop()

        recycled = rewrite_section(first, 1, "9", "2", "sendonly")
        await answerer.setRemoteDescription(RTCSessionDescription(recycled, "offer"))
        await answerer.setLocalDescription(await answerer.createAnswer())
        assert sorted(t.mid or "" for t in answerer.getTransceivers()) == ["0", "1", "2"]
    finally:
        await offerer.close()
        await answerer.close()


# -- simulcast (hooks 17 to 24) ---------------------------------------------------


def video_packet(ssrc: int, seq: int, mid: str | None = None, rid: str | None = None) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 3000, ssrc=ssrc)
    packet.extensions.mid = mid
    packet.extensions.rtp_stream_id = rid
    return packet


def test_an_unannounced_ssrc_is_routed_by_its_mid() -> None:
    """Two video receivers share a payload type (a camera and a screen): aiortc alone
    discards every unknown SSRC; by MID (hook 17) it reaches its receiver."""
    from aiortc.rtcdtlstransport import RtpRouter

    router = RtpRouter()
    camera, screen = object(), object()
    router.register_receiver(camera, ssrcs=[], payload_types=[96], mid="0")  # type: ignore[arg-type]
    router.register_receiver(screen, ssrcs=[], payload_types=[96], mid="1")  # type: ignore[arg-type]
    assert router.route_rtp(video_packet(0xAB, 1, mid="1")) is screen
    assert router.route_rtp(video_packet(0xAB, 2)) is screen  # learnt: no MID needed now
    assert router.route_rtp(video_packet(0xCD, 1)) is None  # no MID, ambiguous
    hooks.understand_simulcast(False)
    try:
        assert RtpRouter().route_rtp(video_packet(0xEF, 1, mid="1")) is None
    finally:
        hooks.understand_simulcast()


async def test_the_rid_extensions_are_negotiated() -> None:
    """aiortc offers and answers only its own table of extensions (hook 18)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        assert hooks.RID_URI in pc.localDescription.sdp
        assert hooks.REPAIRED_RID_URI in pc.localDescription.sdp
    finally:
        await pc.close()


def layered_receiver() -> RTCRtpReceiver:
    transport: Any = type("Transport", (), {"state": "new"})()
    receiver = RTCRtpReceiver("video", transport)
    hooks.receive_layers(receiver)
    return receiver


def test_nacks_are_kept_per_ssrc() -> None:
    """Interleaved layers are not losses (hook 19)."""
    generator = layered_receiver()._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
    for seq in range(100, 110):
        for ssrc, base in ((1, 0), (2, 30_000), (3, 60_000)):
            assert not generator.add(video_packet(ssrc, (base + seq) & 0xFFFF))
    assert generator.add(video_packet(2, 30_112))  # 30_110 and 30_111 of layer 2: lost
    assert generator.missing == {30_110, 30_111}


async def test_a_layers_rtx_ssrc_is_learnt_from_its_repaired_rid() -> None:
    """RTX of an unannounced layer names the layer by repaired-RID (hook 20)."""
    receiver = layered_receiver()
    receiver._enabled = False  # what aiortc does next with the packet does not matter here
    await receiver._handle_rtp_packet(video_packet(0x111, 5, rid="h"), arrival_time_ms=0)
    repair = video_packet(0x222, 1)
    repair.extensions.repaired_rtp_stream_id = "h"
    await receiver._handle_rtp_packet(repair, arrival_time_ms=0)
    assert receiver._RTCRtpReceiver__rtx_ssrc == {0x222: 0x111}  # type: ignore[attr-defined]


async def test_receiver_reports_reach_the_senders_report_hook() -> None:
    """A subscriber's losses, as its receiver reports say them (hook 21)."""
    sender_pc, receiver_pc = await connect(PacketTrack("video", vp8_packets()))
    try:
        (transceiver,) = sender_pc.getTransceivers()
        reported: asyncio.Future[hooks.ReportBlock] = asyncio.get_running_loop().create_future()

        async def retransmit(seq: int) -> None:
            return None

        def report(block: hooks.ReportBlock) -> None:
            if not reported.done() and block.highest_sequence > 0:
                reported.set_result(block)

        hooks.hook_sender(transceiver.sender, retransmit, lambda: None, report)
        block = await asyncio.wait_for(reported, 10)
        assert (block.fraction_lost, block.packets_lost) == (0.0, 0)  # loopback loses nothing
        hooks.unhook_sender(transceiver.sender)
        assert "_handle_rtcp_packet" not in transceiver.sender.__dict__
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_rtcp_datagrams_reach_a_transport_feedback_listener_first() -> None:
    """A viewer's transport-wide feedback, as it sent it, before aiortc parses it into
    something else (hook 32); aiortc still handles the datagram afterwards."""
    sender_pc, receiver_pc = await connect(PacketTrack("video", vp8_packets()))
    try:
        (transceiver,) = sender_pc.getTransceivers()
        heard: list[bytes] = []
        arrived = asyncio.Event()

        def listener(datagram: bytes) -> None:
            heard.append(datagram)
            if datagram == FEEDBACK:
                arrived.set()

        hooks.listen_transport_feedback(transceiver.sender.transport, listener)
        reported: asyncio.Future[hooks.ReportBlock] = asyncio.get_running_loop().create_future()

        def report(block: hooks.ReportBlock) -> None:
            if not reported.done() and block.highest_sequence > 0:
                reported.set_result(block)

        async def retransmit(seq: int) -> None:
            return None

        hooks.hook_sender(transceiver.sender, retransmit, lambda: None, report)
        # The viewer's receiver reports come once its transport is up: send then.
        await asyncio.wait_for(reported, 10)
        await receiver_of(receiver_pc).transport._send_rtp(FEEDBACK)
        await asyncio.wait_for(arrived.wait(), 10)
        # Every datagram, and aiortc went on with each: the reports reached hook 21.
        assert any(datagram[1] in (200, 201) for datagram in heard)
    finally:
        await sender_pc.close()
        await receiver_pc.close()


# One transport-wide feedback packet (RTPFB, FMT 15): sequence number 7 arrived 1 ms
# after the reference time (a run of one "small delta", then the delta and padding).
FEEDBACK = bytes.fromhex("8fcd00050000000100000002000700010000000020010400")


# --- ICE restart (hooks 27 to 30) ----------------------------------------------


def silence(connection: Any) -> None:
    """The network under one aioice connection goes quiet: what its sockets receive is
    dropped, as on a path that broke (nothing is closed, nobody is told)."""
    for protocol in connection._protocols:
        protocol.datagram_received = lambda data, addr: None


async def restart_ice(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    """One ICE restart offer and answer, as the SFU and the Python client make them."""
    assert await ice_restart.prepare_offer(offerer)
    await offerer.setLocalDescription(await offerer.createOffer())
    offer = offerer.localDescription.sdp
    assert ice_restart.remote_restarts(answerer, offer)
    assert await ice_restart.prepare_answer(answerer, offer)
    await answerer.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await answerer.setLocalDescription(await answerer.createAnswer())
    answer = answerer.localDescription.sdp
    await offerer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    answered = ice_restart.complete(answerer, offer)
    offered = ice_restart.complete(offerer, answer)
    assert answered is not None and offered is not None
    assert answered.task is not None and offered.task is not None
    assert await asyncio.wait_for(asyncio.gather(answered.task, offered.task), 10) == [True, True]
    assert answered.usable.is_set() and offered.usable.is_set()


async def test_an_ice_restart_brings_media_back_on_the_same_connections() -> None:
    """The path breaks silently; a restart gives both peer connections new ICE
    credentials and candidates, under the same DTLS session (hooks 27 to 29)."""
    sender_pc, receiver_pc = await connected(PacketTrack("video", vp8_packets()))
    try:
        (transceiver,) = sender_pc.getTransceivers()
        sender = transceiver.sender
        dtls, srtp = sender.transport, hooks.tx_srtp(sender)
        transports = [hooks.ice_transport(pc) for pc in (sender_pc, receiver_pc)]
        old = [t._connection for t in transports if t is not None]
        old_pair = (hooks.nominated_pairs(sender) or {})[1]
        for connection in old:
            silence(connection)
        track = receiver_of(receiver_pc).track

        await restart_ice(sender_pc, receiver_pc)
        # Frames now come over the new connections only (the old ones are closed).
        for _ in range(20):
            await asyncio.wait_for(track.recv(), 5)
        assert all(not connection._protocols for connection in old)
        new_pair = (hooks.nominated_pairs(sender) or {})[1]
        assert new_pair is not old_pair
        assert new_pair.local_addr != old_pair.local_addr
        assert sender.transport is dtls and hooks.tx_srtp(sender) is srtp
        # aiortc's monitor followed the new connection: closing the old one failed nothing.
        assert sender_pc.connectionState == receiver_pc.connectionState == "connected"
        assert all(t is not None and t.state == "completed" for t in transports)
        # A second restart works the same way.
        await restart_ice(receiver_pc, sender_pc)
        for _ in range(5):
            await asyncio.wait_for(track.recv(), 5)
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_packets_of_our_own_making_are_sent_and_their_rtcp_comes_back() -> None:
    """A Python publisher's simulcast layer: sent on the transport (hook 22), asked for
    a keyframe by its own SSRC (hook 23)."""
    sender_pc, receiver_pc = await connect(PacketTrack("video", vp8_packets()))
    try:
        (sending,) = sender_pc.getTransceivers()
        (receiving,) = receiver_pc.getTransceivers()
        arrived: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Tap:
            capacity = 1

            def add(self, packet: RtpPacket) -> tuple[bool, None]:
                if packet.ssrc == 0x5107 and not arrived.done():
                    arrived.set_result(packet.sequence_number)
                return False, None

        hooks.install_tap(receiving.receiver, Tap())
        transport = sending.sender.transport
        asked: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Layer:
            async def _handle_rtcp_packet(self, packet: Any) -> None:
                if not asked.done():
                    asked.set_result(packet.media_ssrc)

        hooks.route_rtcp_to(transport, 0x5107, Layer())
        if transport.state != "connected":
            up = asyncio.Event()
            transport.on("statechange", lambda: transport.state == "connected" and up.set())
            await asyncio.wait_for(up.wait(), 10)
        packet = video_packet(0x5107, 42, mid=sending.mid)
        answer = SessionDescription.parse(sender_pc.remoteDescription.sdp)
        packet.payload_type = answer.media[0].rtp.codecs[0].payloadType
        packet.payload = b"\x10\x00\x00\x00"
        await hooks.send_rtp(transport, packet)
        assert await asyncio.wait_for(arrived, 10) == 42
        await hooks.send_pli_to(receiving.receiver, 0x5107)
        assert await asyncio.wait_for(asked, 10) == 0x5107
    finally:
        await sender_pc.close()
        await receiver_pc.close()


def test_a_viewers_jitter_buffer_skips_a_hole_at_the_next_keyframe() -> None:
    """aiortc's would wait 512 packets for the one lost (hook 24)."""
    from aiortc.jitterbuffer import JitterBuffer

    keyframe = b"\x00\x00\x00\x9d\x01\x2a\x40\x01\xf0\x00"  # VP8 key frame header
    receiver = layered_receiver()
    hooks.skip_to_keyframes(receiver)
    buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    plain = JitterBuffer(capacity=512, is_video=True)
    for jitter in (buffer, plain):
        for seq, data, ts in ((10, keyframe, 1), (11, b"\x01" * 8, 2), (13, b"\x01" * 8, 2)):
            packet = video_packet(1, seq)
            packet.timestamp, packet._data = ts, data  # type: ignore[attr-defined]
            jitter.add(packet)
        # 12 is lost for good; a keyframe starts at 14, then its frame ends.
        released = []
        for seq, data, ts in ((14, keyframe, 3), (15, b"\x01" * 8, 4)):
            packet = video_packet(1, seq)
            packet.timestamp, packet._data = ts, data  # type: ignore[attr-defined]
            released.append(jitter.add(packet)[1])
        if jitter is buffer:
            assert released[1] is not None and released[1].timestamp == 3
        else:
            assert released == [None, None]  # aiortc's own: stuck behind the hole


async def test_a_publisher_gets_our_remb_and_not_aiortcs() -> None:
    """aiortc's own estimate is switched off, ours reaches the sender (hook 25)."""
    sender_pc, receiver_pc = await connect(PacketTrack("video", vp8_packets()))
    try:
        (sending,) = sender_pc.getTransceivers()
        (receiving,) = receiver_pc.getTransceivers()
        hooks.cap_publisher(receiving.receiver)
        assert receiving.receiver._RTCRtpReceiver__remote_bitrate_estimator is None  # type: ignore[attr-defined]
        told: asyncio.Future[tuple[int, list[int]]] = asyncio.get_running_loop().create_future()
        handle = sending.sender._handle_rtcp_packet

        async def watching(packet: Any) -> None:
            from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

            if (
                isinstance(packet, RtcpPsfbPacket)
                and packet.fmt == RTCP_PSFB_APP
                and not told.done()
            ):
                told.set_result(unpack_remb_fci(packet.fci))
            await handle(packet)

        sending.sender._handle_rtcp_packet = watching  # type: ignore[method-assign]
        ssrc = sending.sender._ssrc
        transport = receiving.receiver.transport
        if transport.state != "connected":
            up = asyncio.Event()
            transport.on("statechange", lambda: transport.state == "connected" and up.set())
            await asyncio.wait_for(up.wait(), 10)
        assert await hooks.send_remb(receiving.receiver, 2_500_000, [ssrc])
        bitrate, ssrcs = await asyncio.wait_for(told, 10)
        assert ssrcs == [ssrc]
        assert abs(bitrate - 2_500_000) / 2_500_000 < 0.01  # REMB's mantissa rounds
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_closing_during_a_restart_closes_both_ice_connections() -> None:
    """A restart offered and never answered holds two aioice connections: closing the
    peer connection closes both (hook 30)."""
    sender_pc, receiver_pc = await connected(PacketTrack("video", vp8_packets()))
    transport = hooks.ice_transport(sender_pc)
    assert transport is not None
    old = transport._connection
    assert await ice_restart.prepare_offer(sender_pc)
    swap = hooks.IceConnectionSwap.pending(transport)
    assert swap is not None and swap.old is old and transport._connection is swap.new
    await sender_pc.close()
    await receiver_pc.close()
    assert not old._protocols and not swap.new._protocols
    assert old._closed and swap.new._closed


async def test_a_failed_connection_is_not_restarted() -> None:
    sender_pc, receiver_pc = await connected(PacketTrack("video", vp8_packets()))
    await receiver_pc.close()
    await sender_pc.close()
    assert not ice_restart.restartable(sender_pc)
    assert not await ice_restart.prepare_offer(sender_pc)


async def test_a_newer_restart_overtakes_one_still_connecting() -> None:
    """The other side restarted again before the first restart connected: that one can
    never connect (its credentials were dropped). It is overtaken: its connection is
    closed, the newest swaps in for the same old one (two ICE connections at most),
    and the newest restart brings media back (hooks 29 and 30)."""
    sender_pc, receiver_pc = await connected(PacketTrack("video", vp8_packets()))
    try:
        transport = hooks.ice_transport(sender_pc)
        assert transport is not None
        old = transport._connection
        assert await ice_restart.prepare_offer(sender_pc)
        first = hooks.IceConnectionSwap.pending(transport)
        assert first is not None
        # Credentials the other side never uses: this restart stays connecting.
        stuck = first.complete("nobody", "x" * 22)
        for connection in (old,):
            silence(connection)
        await restart_ice(sender_pc, receiver_pc)
        assert stuck.cancelled() and first.new._closed and not first.new._protocols
        assert transport._connection is not first.new and old._closed
        track = receiver_of(receiver_pc).track
        for _ in range(10):
            await asyncio.wait_for(track.recv(), 5)
        assert sender_pc.connectionState == receiver_pc.connectionState == "connected"
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_a_peer_connection_is_closing_from_the_start_of_close() -> None:
    """Hook 31: close() has begun, whatever the public states say meanwhile."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    assert not hooks.is_closing(pc)
    closing = asyncio.ensure_future(pc.close())
    await asyncio.sleep(0)  # one turn of the loop: close() has begun
    assert hooks.is_closing(pc)
    await closing
    assert hooks.is_closing(pc) and pc.connectionState == "closed"
