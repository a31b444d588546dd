"""One subscriber of one forwarded track on the RTP fast path, and the outgoing
stream it writes to.

A subscriber's outgoing stream (one SSRC of its subscribe connection) can carry
several tracks over a lesson: a transceiver freed when a track ends is given to the
next track of the same kind. What that SSRC has already used (its sequence numbers
and timestamps, the SRTP indices behind them, the counts its sender reports give)
therefore outlives any one track: :class:`StreamState` carries it from one
:class:`RtpSubscriber` to the next, so that numbering never goes back and no SRTP
index is ever protected twice (RFC 3711 section 9.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription

from . import hooks
from .rtp_rewrite import (
    HeaderWriter,
    abs_send_time,
    extension_value_offsets,
    one_byte_extension,
    rtx_packet,
)
from .transport_wide import TRANSPORT_WIDE_URI

if TYPE_CHECKING:
    from .rtp_forward import RtpForwarder
    from .rtp_layers import Layer
    from .transport_wide import TransportWide


class Downlink(Protocol):
    """The participant-wide view of a subscriber's downlink (:mod:`media.downlink`)."""

    @property
    def level(self) -> int: ...

    def report(self, fraction_lost: float) -> None:
        """One receiver report block about one of its videos."""

    def nacked(self, subscriber: RtpSubscriber, index: int) -> None:
        """``subscriber`` (one of its videos) was NACKed for output ``index``."""


class Numbering(Protocol):
    """Who numbers a subscribe connection's packets transport-wide
    (:class:`media.viewer.Viewer`)."""

    def transport_wide(self, transport: Any) -> TransportWide:
        """The transport-wide numbering of the subscribe connection ``transport``
        (its DTLS transport), whose feedback the downlink listens to."""


def _signed24(value: int) -> int:
    """A difference of two 24-bit cumulative loss counts (RFC 3550), as a signed number."""
    value &= 0xFFFFFF
    return value - 0x1000000 if value & 0x800000 else value


HISTORY = 512  # packets per video subscriber kept for retransmission (power of two)
PROBE_BURST = 0.05  # seconds between two bursts of probe padding
PACKET_BUFFER = 2048  # bytes per subscriber: header, payload and SRTP trailer
MAX_PAYLOAD = PACKET_BUFFER - hooks.SRTP_MAX_TRAILER - 12 - 4 * 15  # with the largest header
DIRECT_SOCKET = True  # sendto on a duplicate of the pair's socket, not the transport's

_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

# What the history keeps per packet: (sequence number, timestamp, marker bit (0 or
# 0x80), payload) in the publisher's numbering; a subscriber's offsets turn it into
# what it was sent. One record is shared by every subscriber of a packet.
HistoryRecord = tuple[int, int, int, bytes]


@dataclass(frozen=True, slots=True)
class StreamState:
    """Where an outgoing stream stands: the next extended sequence number it may use,
    the RTP timestamp it last reached and when (wall clock), what it has sent so far
    (the sender report's cumulative counts) and the next RTX sequence number."""

    next_index: int
    last_timestamp: int
    last_wall: float
    packets: int
    octets: int
    rtx_sequence: int


class IdleTrack(MediaStreamTrack):
    """Given to a subscriber's sender so that it negotiates and runs RTCP but sends no
    RTP: ``recv()`` waits until the track stops, then ends the sender's RTP task.

    It stays with its transceiver when the transceiver is reused for another track;
    ``on_stop`` names whoever uses it now."""

    def __init__(self, kind: str, on_stop: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.kind = kind
        self._stopped = asyncio.Event()
        self.on_stop = on_stop

    async def recv(self) -> Any:
        """Never yields a frame; raises ``MediaStreamError`` once stopped."""
        await self._stopped.wait()
        raise MediaStreamError

    def stop(self) -> None:
        """Called by aiortc when the sender stops (its connection closes)."""
        super().stop()
        self._stopped.set()
        on_stop, self.on_stop = self.on_stop, None
        if on_stop is not None:
            on_stop()


class RtpSubscriber:
    """One subscriber of one forwarded track: offsets, header writers, history, socket.

    Numbering: the forwarder extends each publisher sequence number to an unbounded
    index; this subscriber sends it as ``index + ext_offset`` (its low 16 bits on the
    wire). ``highest`` is the highest output index protected so far and ``floor`` the
    first of the current run (after a start, a resume or a change of source): an
    output index is used only above ``highest``, or, for a packet that arrives late,
    between ``floor`` and ``highest`` if the history shows it was never sent.
    """

    __slots__ = (
        "__weakref__",
        "_addr",
        "_buffer",
        "_description",
        "_pair",
        "_pairs",
        "_sendto",
        "_socket",
        "_srtp",
        "buffer",
        "cbuffer",
        "downlink",
        "ext_offset",
        "final_state",
        "floor",
        "forwarder",
        "header_size",
        "held",
        "highest",
        "joined_at",
        "last_report",
        "layer",
        "length",
        "mask",
        "max_width",
        "numbering",
        "octets",
        "packets",
        "payload_type",
        "pc",
        "pending",
        "probe_timer",
        "resume",
        "ring",
        "rtx_seq",
        "rtx_writer",
        "send_time_at",
        "sender",
        "srtp_ctx",
        "started",
        "target",
        "track",
        "transceiver",
        "transport_wide",
        "ts_offset",
        "twcc_at",
        "video_off",
        "writer",
    )

    def __init__(
        self,
        forwarder: RtpForwarder,
        pc: RTCPeerConnection,
        transceiver: RTCRtpTransceiver,
        continuation: StreamState | None = None,
    ) -> None:
        self.forwarder: RtpForwarder | None = forwarder
        self.pc = pc
        self.transceiver = transceiver
        self.sender = transceiver.sender
        self.track: IdleTrack | None = None
        self.writer: HeaderWriter | None = None  # set once negotiated and connected
        self.rtx_writer: HeaderWriter | None = None
        self.ring: list[HistoryRecord | None] | None = None
        self.mask = HISTORY - 1
        self.started = False
        # The layer forwarded to it now, the one it waits to start on (at a keyframe)
        # and since when, what it shows the track at, and its participant's downlink.
        self.layer: Layer | None = None
        self.target: Layer | None = None
        self.joined_at = 0.0
        # Packets of ``target`` kept (extended index, sequence number, timestamp,
        # marker, payload) while ``layer`` ends its frame, during a switch.
        self.pending: list[tuple[int, int, int, int, bytes]] | None = None
        self.max_width: int | None = None
        self.video_off = False
        self.downlink: Downlink | None = None
        # Its connection's transport-wide numbering comes from here (audio and video).
        self.numbering: Numbering | None = None
        # Its downlink stepped down on a queue: the next layer waits until the queue
        # has drained (its keyframe would be lost at the tail of a full one).
        self.held = False
        self.send_time_at = 0  # where abs-send-time's 3 bytes go in its header (0: none)
        # Where the transport-wide sequence number's 2 bytes go, and the connection's
        # numbering (None: the viewer did not negotiate transport-wide feedback).
        self.twcc_at = 0
        self.transport_wide: TransportWide | None = None
        self.probe_timer: asyncio.TimerHandle | None = None
        self.ext_offset = 0
        self.ts_offset = 0
        self.floor = 0
        self.highest = -1
        # Where this stream continues from at its next start (a transceiver reused, a
        # resume after a mute or a change of source); None: a fresh stream.
        self.resume: StreamState | None = continuation
        self.packets = continuation.packets if continuation else 0
        self.octets = continuation.octets if continuation else 0
        # At its last receiver report: (its extended highest sequence, its cumulative
        # loss, our highest output index, our packets sent).
        self.last_report: tuple[int, int, int, int] | None = None
        self.rtx_seq = continuation.rtx_sequence if continuation else random.getrandbits(16)
        self.final_state: StreamState | None = None  # set when it stops forwarding
        # Bound by resolve() / prepare() and bind(); the hot path reads these.
        self._srtp: Any = None  # the pylibsrtp Session: keeps srtp_ctx alive
        self.srtp_ctx: Any = None
        self._buffer: hooks.SrtpBuffer | None = None
        self.buffer: Any = None  # memoryview of the buffer
        self.cbuffer: Any = None
        self.length: Any = None
        self.payload_type = 0
        self.header_size = 0
        self._pairs: dict[int, Any] = {}
        self._pair: Any = None
        self._socket: Any = None
        self._sendto: Any = None
        self._addr: Any = None
        self._description: Any = None

    # -- set-up, once ---------------------------------------------------------

    def resolve(self, codec: RTCRtpCodecParameters) -> bool:
        """Bind to the negotiated payload types, SRTP session and socket. Never raises."""
        try:
            srtp = hooks.tx_srtp(self.sender)
            pairs = hooks.nominated_pairs(self.sender)
            description = self.pc.remoteDescription
            if srtp is None or not pairs or description is None:
                return False
            if description is self._description:
                return False  # this answer was already found unusable
            self._description = description
            negotiated = _negotiated(description.sdp, self.transceiver.mid, codec)
            if negotiated is None:
                return False
            payload_type, rtx_payload_type, nack, mid_id, send_time_id, twcc_id = negotiated
            ssrc, rtx_ssrc = hooks.sender_ssrcs(self.sender)
            mid = self.transceiver.mid or ""
            elements = []
            if mid_id is not None and 0 < len(mid) <= 16:
                elements.append((mid_id, mid.encode()))
            if send_time_id is not None:
                elements.append((send_time_id, b"\x00\x00\x00"))  # written per packet
            wide = None
            if twcc_id is not None and self.numbering is not None:
                wide = self.numbering.transport_wide(self.sender.transport)
                elements.append((twcc_id, b"\x00\x00"))  # written per packet
            ext = one_byte_extension(elements)
            offsets = extension_value_offsets(elements)
            if send_time_id is not None:
                self.send_time_at = 12 + offsets[-2 if wide is not None else -1]
            if wide is not None:
                self.twcc_at = 12 + offsets[-1]
                self.transport_wide = wide
            rtx_writer = (
                HeaderWriter(rtx_payload_type, rtx_ssrc, ext)
                if rtx_payload_type is not None
                else None
            )
            self.prepare(
                HeaderWriter(payload_type, ssrc, ext),
                rtx_writer,
                srtp,
                pairs,
                nack=nack and codec.name.lower() != "opus",
            )
            return True
        except Exception:
            return False

    def prepare(
        self,
        writer: HeaderWriter,
        rtx_writer: HeaderWriter | None,
        srtp: Any,
        pairs: dict[int, Any],
        nack: bool,
    ) -> None:
        """Take what negotiation decided: header writers, the outbound SRTP session
        (pylibsrtp), aioice's live nominated pairs, and whether NACKs are answered."""
        self.rtx_writer = rtx_writer
        if nack:
            self.ring = [None] * HISTORY
        buffer = hooks.SrtpBuffer(PACKET_BUFFER)
        buffer.view[: writer.header_size] = writer.header(0, 0, 0)  # the constant bytes
        self._buffer = buffer
        self.buffer, self.cbuffer, self.length = buffer.view, buffer.data, buffer.length
        self.payload_type = writer.payload_type
        self.header_size = writer.header_size
        self._srtp = srtp
        self.srtp_ctx = hooks.srtp_context(srtp)
        self._pairs = pairs
        self.writer = writer  # last: the hot path takes a writer as "resolved"

    def begin(
        self, index: int, timestamp: int, now: float, clock_rate: int, min_step: int = 1
    ) -> None:
        """Start this subscriber's stream at the packet with extended ``index``, or
        continue it (``resume``): the numbering goes on after everything used before,
        and the RTP clock after where it stood, advanced by the time that passed (at
        least ``min_step``: one frame, when another layer takes over at once)."""
        resume = self.resume
        if resume is not None:
            next_index = resume.next_index
            elapsed = int((now - resume.last_wall) * clock_rate)
            base_ts = resume.last_timestamp + max(min_step, elapsed)
            self.resume = None
        else:
            next_index = random.getrandbits(15)  # RFC 3550 5.1: a random start
            base_ts = random.getrandbits(32)
        ext_offset = next_index - index
        ts_offset = (base_ts - timestamp) & 0xFFFFFFFF
        ring = self.ring
        if ring is not None and self.started:
            # Keep what was sent retransmittable: re-express each record so that the
            # new offsets give the numbers it was sent with.
            seq_shift = (self.ext_offset - ext_offset) & 0xFFFF
            ts_shift = (self.ts_offset - ts_offset) & 0xFFFFFFFF
            for slot, record in enumerate(ring):
                if record is not None:
                    old_seq, old_ts, marker, payload = record
                    ring[slot] = (
                        (old_seq + seq_shift) & 0xFFFF,
                        (old_ts + ts_shift) & 0xFFFFFFFF,
                        marker,
                        payload,
                    )
        self.ext_offset = ext_offset
        self.ts_offset = ts_offset
        self.floor = next_index
        self.highest = next_index - 1
        self.started = True

    def state(self, newest_timestamp: int, newest_wall: float) -> StreamState | None:
        """Where this stream stands, given the publisher's newest packet (timestamp and
        arrival); None if it never sent anything and has nothing to continue."""
        if self.resume is not None:
            return StreamState(
                self.resume.next_index,
                self.resume.last_timestamp,
                self.resume.last_wall,
                self.packets,
                self.octets,
                self.rtx_seq,
            )
        if not self.started:
            return None
        return StreamState(
            self.highest + 1,
            (newest_timestamp + self.ts_offset) & 0xFFFFFFFF,
            newest_wall,
            self.packets,
            self.octets,
            self.rtx_seq,
        )

    def unsent(self, index: int) -> bool:
        """Whether an output index inside the history window was never used (a packet
        that arrives late may then fill its gap)."""
        ring = self.ring
        if ring is None:
            return False  # without a history we cannot tell: never risk a reuse
        record = ring[index & self.mask]
        return record is None or ((record[0] + self.ext_offset) & 0xFFFF) != (index & 0xFFFF)

    # -- per packet ----------------------------------------------------------

    def bind(self) -> bool:
        """Follow the nominated ICE pair: the socket and address to send on. False (and
        nothing to send on) once the pair is gone. Never raises.

        After an ICE restart the transport sends on a new aioice connection, whose
        nominated pairs are another dict: a pair gone from the dict we hold sends us
        to look for the transport's current one."""
        pair = self._pairs.get(1)
        if pair is None:
            try:
                current = hooks.nominated_pairs(self.sender)
            except Exception:
                current = None
            if current is not None and current is not self._pairs:
                self._pairs = current
                pair = current.get(1)
        self._unbind()
        if pair is None:
            return False
        try:
            sock, addr = hooks.pair_endpoint(pair)
            # A relayed pair's socket leads to the TURN server, unwrapped: only its
            # transport sends through the allocation. The SFU's own connections never
            # relay (media/peers.py), but a forwarder may be attached to any connection.
            if DIRECT_SOCKET and not hooks.is_relayed(pair):
                self._socket = hooks.pair_socket(pair)
                self._sendto = self._socket.sendto
            else:
                self._sendto = _copying_sendto(sock.sendto)
            self._addr = addr
            self._pair = pair
            return True
        except Exception:
            self._unbind()
            return False

    def _unbind(self) -> None:
        sock, self._socket = self._socket, None
        self._pair = self._sendto = self._addr = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def send_protected(self, data: bytes) -> bool:
        """Protect and send one serialised RTP packet (retransmissions: not the hot path)."""
        if self._pairs.get(1) is not self._pair and not self.bind():
            return False
        srtp, sendto = self._srtp, self._sendto
        if srtp is None or sendto is None:
            return False
        try:
            sendto(srtp.protect(data), self._addr)
        except (OSError, ValueError):
            return False
        return True

    def packet_for(self, record: HistoryRecord) -> bytes | None:
        """The packet this subscriber was sent for a history record, serialised."""
        writer = self.writer
        if writer is None:
            return None
        seq, ts, marker, payload = record
        header = writer.header(
            marker, (seq + self.ext_offset) & 0xFFFF, (ts + self.ts_offset) & 0xFFFFFFFF
        )
        return header + payload

    async def retransmit(self, sequence_number: int) -> None:
        """Answer one NACKed sequence number from the history: as RTX (RFC 4588) when
        negotiated, else the identical packet again under its own index."""
        forwarder = self.forwarder
        ring = self.ring
        if forwarder is None:
            return
        stats = forwarder.stats
        try:
            record = ring[sequence_number & self.mask] if ring is not None else None
            index = self._index_of(sequence_number)
            if (
                record is None
                or (record[0] + self.ext_offset) & 0xFFFF != sequence_number
                or not 0 <= self.highest - index < HISTORY
                # Before this run (a layer switch, a mute, a new source) decoding starts
                # again at a keyframe: resending the old run only loads the downlink.
                or index < self.floor
                # Nothing forwarded now (a step down waits for the next layer's keyframe,
                # video is off): the same, and the queue it waits on must drain.
                or self.layer is None
            ):
                stats.retransmissions_missed += 1
                return
            # Sent and lost on the way to it (not lost before the server, which every
            # subscriber would NACK): a loss figure well before its next report.
            downlink = self.downlink
            if downlink is not None:
                downlink.nacked(self, index)
            data = self.packet_for(record)
            if data is None:
                return
            if self.rtx_writer is not None and self.writer is not None:
                data = rtx_packet(self.rtx_writer, self.rtx_seq, data, self.writer.header_size)
                self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            if self.send_protected(self._stamped(data)):
                stats.retransmissions += 1
        except Exception:
            stats.errors += 1

    def _stamped(self, data: bytes) -> bytes:
        """A packet off the hot path (a retransmission, padding) with its send time
        and transport-wide number written as it goes out."""
        now = time.time()
        if self.send_time_at:
            at = self.send_time_at
            data = data[:at] + abs_send_time(now) + data[at + 3 :]
        wide = self.transport_wide
        if wide is not None:
            at = self.twcc_at
            data = data[:at] + wide.stamp(now, len(data)).to_bytes(2, "big") + data[at + 2 :]
        return data

    def _index_of(self, sequence_number: int) -> int:
        """The output index nearest ``highest`` whose low 16 bits are ``sequence_number``."""
        delta = (sequence_number - self.highest) & 0xFFFF
        return self.highest + delta if delta < 0x8000 else self.highest - (0x10000 - delta)

    def probe(self, bitrate: float, seconds: float) -> bool:
        """Send padding at about ``bitrate`` for ``seconds``, to find out whether the
        downlink carries that much more: copies of recently sent packets as RTX (the
        subscriber drops them as duplicates, its network carried them all the same).
        False when it cannot (no RTX negotiated, nothing sent yet)."""
        if self.rtx_writer is None or self.ring is None or self.forwarder is None:
            return False
        self.stop_probe()
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        share = bitrate / 8 * PROBE_BURST  # octets per burst

        def burst() -> None:
            self.probe_timer = None
            if self.forwarder is None or loop.time() >= until:
                return
            self._pad(int(share))
            self.probe_timer = loop.call_later(PROBE_BURST, burst)

        burst()
        return True

    def stop_probe(self) -> None:
        """Stop the padding of a probe now (the downlink has shown it does not carry it)."""
        if self.probe_timer is not None:
            self.probe_timer.cancel()
            self.probe_timer = None

    def _pad(self, octets: int) -> None:
        ring, writer, rtx = self.ring, self.writer, self.rtx_writer
        if ring is None or writer is None or rtx is None:
            return
        sent = 0
        for back in range(HISTORY):
            if sent >= octets:
                return
            index = self.highest - back
            record = ring[index & self.mask]
            if record is None or (record[0] + self.ext_offset) & 0xFFFF != index & 0xFFFF:
                continue
            data = self.packet_for(record)
            if data is None:
                return
            data = rtx_packet(rtx, self.rtx_seq, data, writer.header_size)
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            if not self.send_protected(self._stamped(data)):
                return
            sent += len(data)

    def detach(self) -> None:
        """Stop forwarding to this subscriber and release what it holds; its transceiver
        and :attr:`final_state` may serve the next track of the same kind."""
        forwarder = self.forwarder
        if forwarder is not None:
            forwarder.remove_subscriber(self)
        else:
            self.close()

    def continuation(self) -> StreamState | None:
        """What the next subscriber on this transceiver continues from (after detach)."""
        return self.final_state

    def keyframe_requested(self) -> None:
        """The subscriber sent PLI or FIR."""
        forwarder = self.forwarder
        layer = self.layer
        if forwarder is not None and layer is not None:
            layer.keyframes.request()

    def receiver_report(self, block: hooks.ReportBlock) -> None:
        """A receiver report block about this stream: what its downlink loses.

        The fast path keeps a publisher's gaps as gaps, and the viewer counts them as
        lost: a publisher on a bad uplink would step every viewer down. So the
        numbers this subscriber skipped since the last report (output indices it
        spanned less the packets sent) are taken off what the viewer says it lost; the
        first report, with nothing to take them off, only sets where counting starts."""
        downlink = self.downlink
        if downlink is None:
            return
        now = (block.highest_sequence, block.packets_lost, self.highest, self.packets)
        last, self.last_report = self.last_report, now
        if last is None:
            return  # the first: what it says may be a publisher's gaps, nothing to subtract
        expected = (now[0] - last[0]) & 0xFFFFFFFF
        if expected == 0 and now[3] == last[3]:
            # Nothing sent, nothing lost (its video is off): a clean figure, which the
            # way back from audio only waits for.
            downlink.report(0.0)
            return
        if not 0 < expected < 0x80000000:
            return  # sent but nothing new reached it yet (or its count went back)
        lost = _signed24(now[1] - last[1])
        skipped = (now[2] - last[2]) - (now[3] - last[3])
        downlink.report(max(0.0, min(1.0, (lost - skipped) / expected)))

    def close(self) -> None:
        """Drop every reference this subscriber holds; its sender goes back to aiortc's.
        The idle track stays with the transceiver (it ends when the sender stops)."""
        self.forwarder = None
        self.stop_probe()
        hooks.unhook_sender(self.sender)
        self.ring = None
        self._unbind()
        self._description = None
        self._pairs = {}
        self._srtp = self.srtp_ctx = None
        self.buffer = self.cbuffer = self.length = None
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            buffer.release()
        if self.track is not None:
            self.track.on_stop = None  # the transceiver keeps it for its next track


def _copying_sendto(sendto: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """A transport's ``sendto`` fed from our reused buffer: a transport may queue what
    it cannot send at once, so it gets a copy."""

    def send(view: Any, addr: Any) -> Any:
        return sendto(bytes(view), addr)

    return send


def _negotiated(
    sdp: str, mid: str | None, codec: RTCRtpCodecParameters
) -> tuple[int, int | None, bool, int | None, int | None, int | None] | None:
    """(payload type, RTX payload type, NACK, MID, abs-send-time and transport-wide
    sequence number extension ids) for ``mid`` in ``sdp``."""
    for media in SessionDescription.parse(sdp).media:
        if media.rtp.muxId != mid:
            continue
        chosen = None
        for candidate in media.rtp.codecs:
            if (
                candidate.name.lower() == codec.name.lower()
                and candidate.clockRate == codec.clockRate
            ):
                chosen = candidate
                break
        if chosen is None or chosen.payloadType is None:
            return None
        rtx = next(
            (
                c.payloadType
                for c in media.rtp.codecs
                if c.name.lower() == "rtx" and c.parameters.get("apt") == chosen.payloadType
            ),
            None,
        )
        nack = any(fb.type == "nack" and not fb.parameter for fb in chosen.rtcpFeedback)
        mid_id = next((x.id for x in media.rtp.headerExtensions if x.uri == _MID_URI), None)
        send_time_id = next(
            (x.id for x in media.rtp.headerExtensions if x.uri == _SEND_TIME_URI), None
        )
        twcc_id = next(
            (x.id for x in media.rtp.headerExtensions if x.uri == TRANSPORT_WIDE_URI), None
        )
        return chosen.payloadType, rtx, nack, mid_id, send_time_id, twcc_id
    return None
