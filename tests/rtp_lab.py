"""A bench for the RTP fast path without peer connections: real SRTP, real UDP.

An :class:`~media.rtp_forward.RtpForwarder` is fed synthetic publisher packets
(VP8 payloads with real keyframe starts) straight into ``_forward``; each
subscriber protects with a real pylibsrtp session and sends on a real loopback
UDP socket; a :class:`Viewer` at the other end unprotects every datagram with its
own libsrtp session and keeps what a receiver would see. Only what aiortc would
have provided (the negotiated header writer, the SRTP session, the ICE pair) is
set up by hand.
"""

from __future__ import annotations

import hashlib
import os
import socket
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pylibsrtp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from media.rtp_forward import RtpForwarder, RtpSubscriber
from media.rtp_rewrite import (
    HeaderWriter,
    extension_value_offsets,
    one_byte_extension,
    vp8_keyframe_start,
)
from media.transport_wide import TransportWide

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=111, channels=2)
PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM
KEY_LENGTH = 16 + 12  # AES-128 key and GCM salt
TRANSPORT_WIDE_ID = 3  # the header extension id a browser's answer might give it


def keyframe_payload(tag: bytes, size: tuple[int, int] = (320, 240)) -> bytes:
    """A VP8 payload that starts a key frame (RFC 7741: S=1, PID=0; RFC 6386 9.1: the
    frame tag, the start code, then width and height)."""
    width, height = size
    return (
        b"\x10"
        + b"\x00\x00\x00\x9d\x01\x2a"
        + width.to_bytes(2, "little")
        + height.to_bytes(2, "little")
        + tag
    )


def delta_start_payload(tag: bytes) -> bytes:
    """A VP8 payload that starts an inter frame (P bit set)."""
    return b"\x10" + b"\x01\x00\x00\x00\x00\x00" + tag


def continuation_payload(tag: bytes) -> bytes:
    """A VP8 payload in the middle of a frame (S=0)."""
    return b"\x00" + tag


class Publisher:
    """Makes the packets a VP8 publisher sends: frames of ``per_frame`` packets, a key
    frame every ``gop`` frames or when asked, a sequence that wraps."""

    def __init__(
        self,
        ssrc: int,
        first_seq: int,
        first_ts: int,
        per_frame: int = 3,
        gop: int = 200,
        rid: str | None = None,
        size: tuple[int, int] = (320, 240),
        payload_size: int = 0,
    ) -> None:
        self.ssrc = ssrc
        self.payload_size = payload_size  # payloads are padded to at least this
        self.rid = rid
        self.size = size
        self.seq = first_seq & 0xFFFF
        self.ts = first_ts & 0xFFFFFFFF
        self.per_frame = per_frame
        self.gop = gop
        self.frames = 0
        self.sent = 0
        self.keyframe_wanted = True

    def frame(self) -> list[RtpPacket]:
        """The packets of the next frame (one frame is 1/30 s: 3000 ticks at 90 kHz)."""
        key = self.keyframe_wanted or self.frames % self.gop == 0
        self.keyframe_wanted = False
        packets = []
        for index in range(self.per_frame):
            tag = b"%d:%d:" % (self.ssrc, self.sent) + os.urandom(8)
            if index == 0:
                payload = keyframe_payload(tag, self.size) if key else delta_start_payload(tag)
            else:
                payload = continuation_payload(tag)
            payload += bytes(max(0, self.payload_size - len(payload)))
            packet = RtpPacket(
                payload_type=96,
                marker=int(index == self.per_frame - 1),
                sequence_number=self.seq,
                timestamp=self.ts,
                ssrc=self.ssrc,
                payload=payload,
            )
            packet.extensions.rtp_stream_id = self.rid
            packets.append(packet)
            self.seq = (self.seq + 1) & 0xFFFF
            self.sent += 1
        self.ts = (self.ts + 3000) & 0xFFFFFFFF
        self.frames += 1
        return packets


class ManualClock:
    """Wall and monotonic time that only move when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class StreamRecord:
    """What a viewer received on one SSRC: plaintext by extended index."""

    highest: int | None = None
    by_index: dict[int, bytes] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # extended indices in arrival order
    timestamps: list[int] = field(default_factory=list)
    first_payload: bytes | None = None
    starts: dict[int, bool] = field(default_factory=dict)  # index -> starts a frame (S bit)
    markers: dict[int, bool] = field(default_factory=dict)  # index -> ends a frame
    tags: dict[int, bytes] = field(default_factory=dict)  # index -> the payload's tag

    def extend(self, seq: int) -> int:
        """RFC 3711 3.3.1: the index a receiver infers for ``seq``."""
        if self.highest is None:
            self.highest = seq
            return seq
        delta = (seq - self.highest) & 0xFFFF
        index = self.highest + delta if delta < 0x8000 else self.highest - (0x10000 - delta)
        self.highest = max(self.highest, index)
        return index


class Viewer:
    """The far end of one subscriber: a UDP socket and a libsrtp receive session."""

    def __init__(self, key: bytes) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        policy = pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=PROFILE
        )
        policy.window_size = 1024  # as aiortc's receivers; replays are still refused
        self.srtp = pylibsrtp.Session(policy)
        self.streams: dict[int, StreamRecord] = {}
        self.undecryptable = 0
        self.reused: list[tuple[int, int]] = []  # (ssrc, index) seen with other bytes
        self.drop_next: set[int] = set()  # output sequence numbers the network loses
        self.rtx: dict[int, int] = {}  # RTX SSRC -> media SSRC
        self.payload_octets: dict[int, int] = {}
        # (transport-wide sequence number, octets) of each packet that carried one.
        self.transport_wide: list[tuple[int, int]] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return host, port

    def drain(self) -> int:
        """Read and check everything waiting on the socket; return how many datagrams."""
        count = 0
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return count
            count += 1
            self.receive(data)

    def receive(self, data: bytes) -> None:
        seq = (data[2] << 8) | data[3]
        if seq in self.drop_next:
            self.drop_next.discard(seq)
            return
        try:
            plain = self.srtp.unprotect(data)
        except pylibsrtp.Error:
            self.undecryptable += 1
            return
        ssrc = int.from_bytes(plain[8:12], "big")
        seq = (plain[2] << 8) | plain[3]
        timestamp = int.from_bytes(plain[4:8], "big")
        offset = 12 + 4 * (plain[0] & 0x0F)
        if plain[0] & 0x10:  # RFC 3550 5.3.1: extension header and its length in words
            words = int.from_bytes(plain[offset + 2 : offset + 4], "big")
            for ext_id, value in one_byte_elements(plain[offset + 4 : offset + 4 + 4 * words]):
                if ext_id == TRANSPORT_WIDE_ID:
                    self.transport_wide.append((int.from_bytes(value, "big"), len(plain)))
            offset += 4 + 4 * words
        payload = plain[offset:]
        record = self.streams.setdefault(ssrc, StreamRecord())
        index = record.extend(seq)
        digest = hashlib.sha256(plain).digest()
        previous = record.by_index.get(index)
        if previous is not None and previous != digest:
            self.reused.append((ssrc, index))
        record.by_index[index] = digest
        media_ssrc = self.rtx.get(ssrc)
        if media_ssrc is not None:
            # RFC 4588 4: the original sequence number, then the original payload.
            record = self.streams.setdefault(media_ssrc, StreamRecord())
            index = record.extend((payload[0] << 8) | payload[1])
            payload = payload[2:]
            ssrc = media_ssrc
        record.order.append(index)
        record.timestamps.append(timestamp)
        record.starts[index] = bool(payload[:1]) and bool(payload[0] & 0x10)
        record.markers[index] = bool(plain[1] & 0x80)
        record.tags[index] = payload[1:]
        self.payload_octets[ssrc] = self.payload_octets.get(ssrc, 0) + len(payload)
        if record.first_payload is None:
            record.first_payload = payload

    def close(self) -> None:
        self.sock.close()
        self.srtp = None  # type: ignore[assignment]


def one_byte_elements(block: bytes) -> list[tuple[int, bytes]]:
    """The (id, value) elements of an RFC 8285 one-byte header extension block."""
    elements = []
    at = 0
    while at < len(block):
        if block[at] == 0:  # padding
            at += 1
            continue
        ext_id, length = block[at] >> 4, (block[at] & 0x0F) + 1
        elements.append((ext_id, block[at + 1 : at + 1 + length]))
        at += 1 + length
    return elements


def fake_pair(sock: socket.socket, remote: tuple[str, int]) -> Any:
    """What aioice's nominated pair offers the fast path: a transport and an address."""
    transport = types.SimpleNamespace(get_extra_info=lambda name: sock, sendto=sock.sendto)
    return types.SimpleNamespace(
        protocol=types.SimpleNamespace(transport=transport),
        remote_addr=remote,
        local_candidate=types.SimpleNamespace(type="host"),
    )


class Bench:
    """A forwarder, its subscribers and their viewers."""

    def __init__(
        self,
        codec: RTCRtpCodecParameters = VP8,
        rids: tuple[str, ...] = (),
        clock: ManualClock | None = None,
    ) -> None:
        self.clock = clock or ManualClock()
        self.keyframe_requests = 0
        self.keyframe_requested_ssrcs: list[int] = []
        self.codec = codec

        async def send_pli(ssrc: int) -> bool:
            self.keyframe_requests += 1
            self.keyframe_requested_ssrcs.append(ssrc)
            return True

        receiver: Any = types.SimpleNamespace()
        self.forwarder = RtpForwarder(
            "track-1",
            receiver,
            codec,
            send_pli=send_pli,
            clock=self.clock,
            wall_clock=self.clock,
            rids=rids,
        )
        self.send_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.send_sock.bind(("127.0.0.1", 0))
        self.viewers: dict[RtpSubscriber, Viewer] = {}

    def subscribe(
        self,
        rtx: bool = False,
        previous: RtpSubscriber | None = None,
        transport_wide: TransportWide | None = None,
    ) -> RtpSubscriber:
        """A subscriber bound as aiortc would after negotiation, with its viewer; with
        ``transport_wide``, its packets carry that connection's numbers."""
        sender = types.SimpleNamespace()
        transceiver: Any = types.SimpleNamespace(sender=sender, mid="0")
        subscriber = self.forwarder.add_subscriber(
            None,  # type: ignore[arg-type]
            transceiver,
            previous.continuation() if previous is not None else None,
        )
        key = os.urandom(KEY_LENGTH)
        policy = pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILE
        )
        # As aiortc sets up every transport's outbound session.
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        srtp = pylibsrtp.Session(policy)
        elements = [(1, b"0")]
        if transport_wide is not None:
            elements.append((TRANSPORT_WIDE_ID, b"\x00\x00"))
            subscriber.twcc_at = 12 + extension_value_offsets(elements)[-1]
            subscriber.transport_wide = transport_wide
        ext = one_byte_extension(elements)
        writer = HeaderWriter(96 if self.codec is VP8 else 111, 0x5EED0000 + len(self.viewers), ext)
        rtx_writer = HeaderWriter(97, 0x5EED1000 + len(self.viewers), ext) if rtx else None
        viewer = Viewer(key)
        if rtx_writer is not None:
            viewer.rtx[rtx_writer.ssrc] = writer.ssrc
        subscriber.prepare(
            writer,
            rtx_writer,
            srtp,
            {1: fake_pair(self.send_sock, viewer.address)},
            nack=self.codec is VP8,
        )
        self.viewers[subscriber] = viewer
        return subscriber

    def forward(self, packets: list[RtpPacket], seconds: float = 1 / 30) -> None:
        """Hand packets to the forwarder as the receiver's tap would, then let the
        viewers read what was sent."""
        for packet in packets:
            self.forwarder._forward(packet)
        self.clock.advance(seconds)
        for viewer in self.viewers.values():
            viewer.drain()

    def close(self) -> None:
        for viewer in self.viewers.values():
            viewer.close()
        self.send_sock.close()


def whole_frames(record: StreamRecord) -> bool:
    """Whether every frame a viewer received is whole: each starts where the one before
    it ended (a start packet right after a marker), none is cut short."""
    previous_ended = True
    for index in sorted(record.starts):
        if record.starts[index] != previous_ended:
            return False
        previous_ended = record.markers[index]
    return True


def contiguous(indices: list[int]) -> bool:
    """Whether a set of extended indices has no hole between its ends."""
    seen = set(indices)
    return not seen or len(seen) == max(seen) - min(seen) + 1


def frames_of(publisher: Publisher, count: int) -> Iterator[list[RtpPacket]]:
    """The next ``count`` frames."""
    for _ in range(count):
        yield publisher.frame()


__all__ = [
    "OPUS",
    "VP8",
    "Bench",
    "Publisher",
    "Viewer",
    "contiguous",
    "frames_of",
    "vp8_keyframe_start",
    "whole_frames",
]
