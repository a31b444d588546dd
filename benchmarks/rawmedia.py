"""The raw load mode: SRTP packets sent and received without aiortc's media stack.

An aiortc participant costs its process about 100 µs of CPU per RTP packet it
receives (aioice's queue, DTLS transport, RTP parsing, receiver, jitter buffer,
decoder thread, track): on two cores the load generator saturated near 15,000
forwarded packets/s while the server under test used a fifth of a core. In the raw
mode the participants still join through the system's own signalling, and ICE and
DTLS-SRTP still run in aiortc (so the server sees real WebRTC peers, STUN consent
and RTCP included), but media bypasses aiortc:

- a :class:`RawSender` replays a track's pre-packetised loop (VP8 split by aiortc's
  own packetiser once, Opus one packet per frame), writes each RTP header (SSRC and
  payload type as negotiated, MID and abs-send-time extensions as aiortc's sender
  writes them), protects it with the DTLS transport's SRTP session and sends it on
  the nominated ICE pair's socket;
- a :class:`RawSink` gets every SRTP datagram of a connection straight from the
  socket (``aiortc_private.take_srtp_off_the_socket``), unprotects it (so a server
  that sends garbage is caught), counts it per SSRC and sends one RTCP receiver
  report per second. It sends no NACK and no PLI: on this machine's loopback nothing
  is lost, and the servers ask for keyframes themselves.

The zero-hop baseline (``udprelay``) uses the same senders and sinks on plain UDP
sockets with a key shared by everyone, through :mod:`benchmarks.udprelay`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import pylibsrtp
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket
from aiortc.sdp import SessionDescription

from .counting import PROBE_PREFIX, SsrcCounter, frame_position_index, vp8_frame_start
from .encoded import EncodedStream

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
RTP_HEADER = struct.Struct("!BBHII")
# The zero-hop relay: publisher i sends video with SSRC BASE + 2 i, audio with BASE + 2 i + 1.
RELAY_SSRC_BASE = 0x4C430000
RTCP_INTERVAL = 1.0  # seconds between receiver reports, as aiortc's receivers send them
ARRIVALS_KEPT = 200_000  # latency probe records per sink (a 20 s window needs far fewer)
SRTP_PROFILES = {
    "aes128-cm-sha1-80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "aead-aes-128-gcm": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "aead-aes-256-gcm": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}
# Master key + salt lengths of each profile, for the relay's shared key.
SRTP_KEY_BYTES = {"aes128-cm-sha1-80": 30, "aead-aes-128-gcm": 28, "aead-aes-256-gcm": 44}


def relay_profile(profile: str) -> str:
    """The zero-hop relay's SRTP profile: the one the run offers, AES-CM for "any"."""
    return "aes128-cm-sha1-80" if profile == "any" else profile


def packetize(stream: EncodedStream) -> list[list[bytes]]:
    """RTP payloads of every frame of the loop: VP8 by aiortc's packetiser, Opus as is."""
    if stream.kind == "audio":
        return [[data] for data, _ in stream.frames]
    packer = Vp8Encoder()
    out = []
    for index, (data, _) in enumerate(stream.frames):
        packet = av.Packet(data)
        packet.pts = index * stream.pts_step
        packet.time_base = fractions.Fraction(1, stream.clock_rate)
        payloads, _ = packer.pack(packet)
        out.append(payloads)
    return out


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """How one track's packets look on the wire, as negotiated."""

    ssrc: int
    payload_type: int
    kind: str
    mid: str | None = None
    mid_id: int | None = None
    abs_send_time_id: int | None = None


def stream_specs(offer: str, answer: str, ssrcs: dict[str, int]) -> dict[str, StreamSpec]:
    """{mid: spec} of a publisher's m-lines from its offer and the answer.

    ``ssrcs`` maps each mid to the media SSRC our side announced.
    """
    answered = SessionDescription.parse(answer)
    specs: dict[str, StreamSpec] = {}
    for media in answered.media:
        mid = media.rtp.muxId
        if media.kind not in ("audio", "video") or media.port == 0 or mid not in ssrcs:
            continue
        codecs = [c for c in media.rtp.codecs if c.name.lower() != "rtx"]
        if not codecs or codecs[0].payloadType is None:
            continue
        extensions = {e.uri: e.id for e in media.rtp.headerExtensions}
        specs[mid] = StreamSpec(
            ssrc=ssrcs[mid],
            payload_type=codecs[0].payloadType,
            kind=media.kind,
            mid=mid,
            mid_id=extensions.get(MID_URI),
            abs_send_time_id=extensions.get(ABS_SEND_TIME_URI),
        )
    return specs


def _extension_block(spec: StreamSpec) -> tuple[bytes, int | None]:
    """The one-byte-header extension block (RFC 8285) without abs-send-time's value,
    and the offset of that value in it (``None`` if not negotiated)."""
    elements = b""
    offset = None
    if spec.mid_id is not None and spec.mid:
        mid = spec.mid.encode()
        elements += bytes([(spec.mid_id << 4) | (len(mid) - 1)]) + mid
    if spec.abs_send_time_id is not None:
        elements += bytes([(spec.abs_send_time_id << 4) | 2])
        offset = 4 + len(elements)
        elements += b"\x00\x00\x00"
    if not elements:
        return b"", None
    elements += b"\x00" * (-len(elements) % 4)
    return struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements, offset


class RawSender:
    """Replays one track's packetised loop in real time as SRTP, looping.

    ``protect`` turns an RTP packet into SRTP, ``send`` puts a datagram on the wire.
    A keyframe request (:meth:`request_keyframe`) makes the replay jump to the next
    keyframe of the loop, as the aiortc publishers of the other load mode do. The wall
    time of each video frame's last packet is logged with its loop position (the
    latency probe's send times).
    """

    def __init__(
        self,
        spec: StreamSpec,
        stream: EncodedStream,
        payloads: list[list[bytes]],
        protect: Callable[[bytes], bytes],
        send: Callable[[bytes], None],
        max_lag: float = 0.5,
    ) -> None:
        self.spec = spec
        self.kind = stream.kind
        self._stream = stream
        self._payloads = payloads
        self._protect = protect
        self._send = send
        self._max_lag = max_lag
        self._keyframes = [i for i, (_, key) in enumerate(stream.frames) if key]
        self._keyframe_wanted = False
        self._extension, self._abs_offset = _extension_block(spec)
        self._sequence = 0
        self.frames_sent = 0
        self.packets_sent = 0
        self.bytes_sent = 0
        self.errors = 0
        self.schedule_resets = 0
        self.frames_skipped = 0
        self.keyframe_requests = 0
        self.keyframe_jumps = 0
        self.sent_log: collections.deque[tuple[float, int]] = collections.deque(maxlen=20_000)

    def request_keyframe(self) -> None:
        """A receiver asked for a keyframe (PLI/FIR)."""
        self.keyframe_requests += 1
        if self.kind == "video":
            self._keyframe_wanted = True

    def _packet(self, payload: bytes, timestamp: int, marker: bool) -> bytes:
        spec = self.spec
        first = 0x90 if self._extension else 0x80
        header = RTP_HEADER.pack(
            first,
            (0x80 if marker else 0) | spec.payload_type,
            self._sequence & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            spec.ssrc,
        )
        self._sequence += 1
        extension = self._extension
        if self._abs_offset is not None:
            # 6.18 fixed-point seconds, 24 bits (the abs-send-time draft).
            value = int(time.time() * (1 << 18)) & 0xFFFFFF
            at = self._abs_offset
            extension = extension[:at] + value.to_bytes(3, "big") + extension[at + 3 :]
        return header + extension + payload

    async def run(self) -> None:
        """Send until cancelled."""
        stream = self._stream
        count = len(stream.frames)
        position = 0
        index = 0  # frames sent since the start, across loops
        start = time.monotonic()
        scheduled_from = 0
        while True:
            due = start + (index - scheduled_from) * stream.frame_interval
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > self._max_lag:
                start, scheduled_from = now, index
                self.schedule_resets += 1
            if self._keyframe_wanted:
                self._keyframe_wanted = False
                if not stream.frames[position][1]:
                    following = [k for k in self._keyframes if k > position]
                    target = following[0] if following else count
                    self.frames_skipped += target - position
                    position = target % count
                    self.keyframe_jumps += 1
            timestamp = index * stream.pts_step
            payloads = self._payloads[position]
            last = len(payloads) - 1
            for number, payload in enumerate(payloads):
                try:
                    data = self._protect(self._packet(payload, timestamp, number == last))
                    self._send(data)
                except Exception:  # a send that fails is counted, the replay goes on
                    self.errors += 1
                    continue
                self.packets_sent += 1
                self.bytes_sent += len(payload) + 12
            if self.kind == "video":
                self.sent_log.append((time.time(), position))
            self.frames_sent += 1
            position = (position + 1) % count
            index += 1


@dataclass(slots=True)
class _Stream:
    """What a sink knows about one incoming SSRC."""

    kind: str
    publisher: str
    counter: SsrcCounter | None = None
    rtx_of: int | None = None
    frames: int = 0


@dataclass(slots=True)
class SinkTotals:
    """Counts of one sink, cumulative (the same fields the aiortc mode reports)."""

    packets: int = 0
    bytes: int = 0
    rtx_packets: int = 0
    errors: int = 0
    unknown: int = 0
    first_packet: dict[str, float] = field(default_factory=dict)  # kind -> monotonic


class RawSink:
    """Receives one connection's SRTP: unprotect, count per SSRC, probe latency.

    ``unprotect`` is the connection's inbound SRTP (raises ``pylibsrtp.Error``),
    ``describe(ssrc)`` says which publisher and kind an SSRC carries (``None`` if
    unknown yet: such packets are counted as ``unknown`` and looked up again later),
    ``positions`` maps a VP8 frame's first bytes to its loop position (latency).
    """

    def __init__(
        self,
        unprotect: Callable[[bytes], bytes],
        describe: Callable[[int], tuple[str, str, int | None] | None],
        positions: dict[bytes, int] | None = None,
    ) -> None:
        self._unprotect = unprotect
        self._describe = describe
        self._positions = positions or {}
        self.streams: dict[int, _Stream] = {}
        self.totals = SinkTotals()
        self._current: dict[int, tuple[int, int]] = {}  # ssrc -> (timestamp, position)
        # The newest arrivals only: a window needs seconds of them, a soak runs an hour.
        self.arrivals: collections.deque[tuple[float, int, str]] = collections.deque(
            maxlen=ARRIVALS_KEPT
        )

    def __call__(self, data: bytes) -> None:
        """One SRTP datagram from the socket. Never raises."""
        try:
            packet = self._unprotect(data)
        except pylibsrtp.Error:
            self.totals.errors += 1
            return
        try:
            self._count(packet)
        except Exception:  # a malformed packet is counted, never fatal
            self.totals.errors += 1

    def _count(self, packet: bytes) -> None:
        ssrc = int.from_bytes(packet[8:12], "big")
        stream = self.streams.get(ssrc)
        if stream is None:
            described = self._describe(ssrc)
            if described is None:
                self.totals.unknown += 1
                return
            publisher, kind, rtx_of = described
            stream = self.streams[ssrc] = _Stream(kind, publisher, rtx_of=rtx_of)
        totals = self.totals
        totals.packets += 1
        totals.bytes += len(packet)
        sequence = (packet[2] << 8) | packet[3]
        if stream.rtx_of is not None:
            totals.rtx_packets += 1
            repaired = self.streams.get(stream.rtx_of)
            offset = _payload_offset(packet)
            if repaired is not None and repaired.counter is not None:
                repaired.counter.repair(int.from_bytes(packet[offset : offset + 2], "big"))
            return
        if stream.counter is None:
            stream.counter = SsrcCounter(sequence)
            totals.first_packet.setdefault(stream.kind, time.monotonic())
        else:
            stream.counter.add(sequence)
        marker = packet[1] & 0x80
        if stream.kind == "audio":
            stream.frames += 1
            return
        if marker:
            stream.frames += 1
        if not self._positions:
            return
        timestamp = int.from_bytes(packet[4:8], "big")
        offset = _payload_offset(packet)
        start = vp8_frame_start(packet, offset)
        if start is not None:
            position = self._positions.get(bytes(packet[start : start + PROBE_PREFIX]))
            if position is not None:
                self._current[ssrc] = (timestamp, position)
        if marker:
            current = self._current.pop(ssrc, None)
            if current is not None and current[0] == timestamp:
                self.arrivals.append((time.time(), current[1], stream.publisher))

    def snapshot(self) -> dict[str, Any]:
        """Cumulative counts in the form of the aiortc mode's receive counters."""
        frames = {"video": 0, "audio": 0}
        expected = received = repaired = 0
        for stream in self.streams.values():
            frames[stream.kind] = frames.get(stream.kind, 0) + stream.frames
            if stream.counter is not None:
                expected += stream.counter.expected
                received += stream.counter.received
                repaired += stream.counter.repaired
        return {
            "frames": frames,
            "packets": self.totals.packets,
            "bytes": self.totals.bytes,
            "rtx_packets": self.totals.rtx_packets,
            "expected": expected,
            "media_received": received,
            "repaired": repaired,
        }

    def per_track(self) -> dict[str, dict[str, int]]:
        """Cumulative counts per ``publisher/kind`` (the soak's windows)."""
        out: dict[str, dict[str, int]] = {}
        for stream in self.streams.values():
            if stream.counter is None:
                continue
            entry = out.setdefault(
                f"{stream.publisher}/{stream.kind}", {"packets": 0, "frames": 0, "expected": 0}
            )
            entry["packets"] += stream.counter.received + stream.counter.repaired
            entry["frames"] += stream.frames
            entry["expected"] += stream.counter.expected
        return out

    def receiver_report(self, sender_ssrc: int) -> bytes | None:
        """An RTCP receiver report about every media SSRC (RFC 3550 6.4.2)."""
        reports = []
        for ssrc, stream in self.streams.items():
            counter = stream.counter
            if counter is None:
                continue
            lost = max(0, counter.expected - counter.received - counter.repaired)
            reports.append(
                RtcpReceiverInfo(
                    ssrc=ssrc,
                    fraction_lost=0,
                    packets_lost=min(lost, 0x7FFFFF),
                    highest_sequence=counter.highest & 0xFFFFFFFF,
                    jitter=0,
                    lsr=0,
                    dlsr=0,
                )
            )
        if not reports:
            return None
        return bytes(RtcpRrPacket(ssrc=sender_ssrc, reports=reports[:31]))


def _payload_offset(packet: bytes) -> int:
    """Where the payload of a plain RTP packet starts (CSRCs and extension skipped)."""
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    return offset


def relay_describe(ssrc: int) -> tuple[str, str, int | None] | None:
    """Publisher and kind of an SSRC under the relay's numbering (RELAY_SSRC_BASE)."""
    index = ssrc - RELAY_SSRC_BASE
    if not 0 <= index < 2048:
        return None
    return f"relay{index // 2}", "audio" if index % 2 else "video", None


def sdp_describer(
    sdp: Callable[[], str | None], owners: Callable[[], dict[str, str]]
) -> Callable[[int], tuple[str, str, int | None] | None]:
    """Publisher and kind of an SSRC announced in a subscribe connection's remote SDP
    (``sdp()``), with the publisher of each mid from ``owners()``; RTX SSRCs (FID
    groups) name the media SSRC they repair."""

    def describe(ssrc: int) -> tuple[str, str, int | None] | None:
        text = sdp()
        if not text:
            return None
        with contextlib.suppress(ValueError):
            for media in SessionDescription.parse(text).media:
                ssrcs = [s.ssrc for s in media.ssrc]
                if ssrc not in ssrcs:
                    continue
                publisher = owners().get(media.rtp.muxId or "", "?")
                for group in media.ssrc_group:
                    items = [int(item) for item in group.items]
                    if group.semantic == "FID" and len(items) == 2 and items[1] == ssrc:
                        return publisher, media.kind, items[0]
                return publisher, media.kind, None
        return None

    return describe


def positions_of(stream: EncodedStream) -> dict[bytes, int]:
    """The latency probe's index of a VP8 loop (see :func:`counting.frame_position_index`)."""
    return frame_position_index(stream.frames)
