"""The RTP fast path: forward a published track packet by packet, no frames, no threads.

Where packets are taken
    aiortc's ``RTCRtpReceiver`` of the publisher keeps doing SRTP unprotect, RTX
    unwrapping, NACK generation, REMB and receiver reports; only its jitter buffer
    is replaced by a tap (:mod:`media.hooks`). Each packet the receiver has
    accounted for reaches :meth:`RtpForwarder._forward` at once; the receiver never
    reassembles a frame and its decoder thread stays idle (it only carries the
    end of the track).

What each subscriber gets
    A ``sendonly`` transceiver whose ``RTCRtpSender`` is fed an :class:`IdleTrack`,
    so it negotiates, announces its SSRCs, answers RTCP and sends SR/SDES/BYE but
    never sends RTP. Per packet and subscriber we write a new 12-byte header
    (subscriber's payload type and SSRC, sequence number and timestamp shifted by
    per-subscriber offsets, so a gap stays a gap and the subscriber NACKs it), add
    a constant extension block holding only the subscriber's MID (other extensions
    are dropped: transport-wide sequence numbers and abs-send-time describe the
    publisher's hop), protect it with the subscriber's SRTP session and ``sendto``
    it on the nominated ICE pair's socket.

Cost per packet and subscriber
    Each subscriber owns one packet buffer that libsrtp protects in place: its
    constant header bytes are written once, then per packet 7 header bytes are
    rewritten (:func:`~media.rtp_rewrite.write_varying`), the payload copied in,
    ``srtp_protect`` called through pylibsrtp's cffi ``lib`` and a view of the
    result handed to ``sendto`` on a duplicate of the ICE pair's socket (no asyncio
    transport, no per-packet object besides the view). The history holds one
    shared record per incoming packet, not a copy per subscriber.

NACK, RTX, keyframes, RTCP
    Each video subscriber keeps a ring of the last :data:`HISTORY` packets it was
    sent, by its own sequence number; its NACKs are answered from the ring (as RTX
    if negotiated). Video subscribers start on a keyframe start and ask for one at
    once (PLI coalesced to one per :data:`media.keyframe_requests.KEYFRAME_REQUEST_INTERVAL`); their
    PLI/FIR reach the publisher the same way. aiortc's RTCP task of each sender
    keeps sending SR, with counters and an (NTP, RTP) pair we update every
    :data:`SENDER_REPORT_SYNC` seconds.

Per-packet code never raises into aiortc: a failing packet is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription

from . import hooks
from .counters import Counters
from .keyframe_requests import KeyframeRequester
from .peers import preferences_for
from .rtp_rewrite import (
    HeaderWriter,
    keyframe_detector,
    one_byte_extension,
    rtx_packet,
    write_varying,
)

KEYFRAME_RETRY = 1.0  # ask again while a subscriber still waits for a keyframe
HISTORY = 512  # packets per video subscriber kept for retransmission (power of two)
SENDER_REPORT_SYNC = 0.5  # seconds between updates of what aiortc's SR says
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 to 1970 (RFC 5905)

PACKET_BUFFER = 2048  # bytes per subscriber: header, payload and SRTP trailer
MAX_PAYLOAD = PACKET_BUFFER - hooks.SRTP_MAX_TRAILER - 12 - 4 * 15  # with the largest header
DIRECT_SOCKET = True  # sendto on a duplicate of the pair's socket, not the transport's

_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
_NO_FRAME: tuple[bool, None] = (False, None)
_SRTP_PROTECT = hooks.raw_srtp_protect()
_SRTP_OK = hooks.SRTP_OK

# What the history keeps per packet: (sequence number, timestamp, marker bit (0 or
# 0x80), payload) in the publisher's numbering; a subscriber's offsets turn it into
# what it was sent. One record is shared by every subscriber of a packet.
HistoryRecord = tuple[int, int, int, bytes]


class RtpForwardingStats(Counters):
    """Counters of one forwarded track (summed by the SFU for ``/metrics``)."""

    __slots__ = (
        "errors",
        "keyframe_requests_relayed",
        "keyframe_requests_suppressed",
        "packets_dropped",
        "packets_forwarded",
        "packets_muted",
        "packets_received",
        "retransmissions",
        "retransmissions_missed",
        "subscribers_started",
    )
    errors: int
    keyframe_requests_relayed: int
    keyframe_requests_suppressed: int
    packets_dropped: int
    packets_forwarded: int
    packets_muted: int
    packets_received: int
    retransmissions: int
    retransmissions_missed: int
    subscribers_started: int


class IdleTrack(MediaStreamTrack):
    """Given to a subscriber's sender so that it negotiates and runs RTCP but sends no
    RTP: ``recv()`` waits until the track stops, then ends the sender's RTP task."""

    def __init__(self, kind: str, on_stop: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.kind = kind
        self._stopped = asyncio.Event()
        self._on_stop = on_stop

    async def recv(self) -> Any:
        """Never yields a frame; raises ``MediaStreamError`` once stopped."""
        await self._stopped.wait()
        raise MediaStreamError

    def stop(self) -> None:
        """Called by aiortc when the sender stops, or by us on release."""
        super().stop()
        self._stopped.set()
        on_stop, self._on_stop = self._on_stop, None
        if on_stop is not None:
            on_stop()


class _DiscardTap:
    """The tap left on a receiver after forwarding stopped: drops, holds no reference."""

    capacity = 1

    def add(self, packet: Any) -> tuple[bool, None]:
        return _NO_FRAME


_DISCARD = _DiscardTap()


class _Tap:
    """Stands in for the publisher receiver's jitter buffer."""

    capacity = 1
    __slots__ = ("_forward",)

    def __init__(self, forward: Callable[[Any], None]) -> None:
        self._forward = forward

    def add(self, packet: Any) -> tuple[bool, None]:
        self._forward(packet)
        return _NO_FRAME


class RtpSubscriber:
    """One subscriber of one forwarded track: offsets, header writers, history, socket."""

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
        "forwarder",
        "header_size",
        "length",
        "mask",
        "packets_base",
        "payload_type",
        "pc",
        "resume",
        "ring",
        "rtx_seq",
        "rtx_writer",
        "sender",
        "seq_offset",
        "srtp_ctx",
        "start_seq",
        "started",
        "track",
        "transceiver",
        "ts_offset",
        "waiting",
        "writer",
    )

    def __init__(
        self, forwarder: RtpForwarder, pc: RTCPeerConnection, transceiver: RTCRtpTransceiver
    ) -> None:
        self.forwarder: RtpForwarder | None = forwarder
        self.pc = pc
        self.transceiver = transceiver
        self.sender = transceiver.sender
        self.track: IdleTrack | None = None
        self.writer: HeaderWriter | None = None  # set once negotiated and connected
        self.rtx_writer: HeaderWriter | None = None
        self.rtx_seq = random.getrandbits(16)
        self.ring: list[HistoryRecord | None] | None = None
        self.mask = HISTORY - 1
        self.waiting = True  # until the first packet that can start decoding
        self.started = False
        self.seq_offset = 0
        self.ts_offset = 0
        self.start_seq = 0
        self.packets_base = (0, 0)
        self.resume: tuple[int, int, float] | None = None
        # Bound by resolve() and bind(); the hot path reads these.
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
            payload_type, rtx_payload_type, nack, mid_id = negotiated
            ssrc, rtx_ssrc = hooks.sender_ssrcs(self.sender)
            mid = self.transceiver.mid or ""
            ext = (
                one_byte_extension([(mid_id, mid.encode())])
                if mid_id is not None and 0 < len(mid) <= 16
                else b""
            )
            writer = HeaderWriter(payload_type, ssrc, ext)
            if rtx_payload_type is not None:
                self.rtx_writer = HeaderWriter(rtx_payload_type, rtx_ssrc, ext)
            if nack and codec.name.lower() != "opus":
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
            return True
        except Exception:
            return False

    def begin(self, seq: int, timestamp: int, now: float, clock_rate: int) -> None:
        """Start this subscriber's stream at this packet, or continue it after the
        publisher's source changed (``resume``): the numbering never jumps back."""
        if self.resume is not None:
            base_seq, last_ts, last_wall = self.resume
            base_ts = last_ts + max(1, int((now - last_wall) * clock_rate))
            self.resume = None
        else:
            base_seq = random.getrandbits(15)  # RFC 3550 5.1: random start
            base_ts = random.getrandbits(32)
        seq_offset = (base_seq - seq) & 0xFFFF
        ts_offset = (base_ts - timestamp) & 0xFFFFFFFF
        ring = self.ring
        if ring is not None and self.started:
            # Keep what was sent retransmittable: re-express each record so that the
            # new offsets give the numbers it was sent with.
            seq_shift = (self.seq_offset - seq_offset) & 0xFFFF
            ts_shift = (self.ts_offset - ts_offset) & 0xFFFFFFFF
            for index, record in enumerate(ring):
                if record is not None:
                    old_seq, old_ts, marker, payload = record
                    ring[index] = (
                        (old_seq + seq_shift) & 0xFFFF,
                        (old_ts + ts_shift) & 0xFFFFFFFF,
                        marker,
                        payload,
                    )
        self.seq_offset = seq_offset
        self.ts_offset = ts_offset
        self.start_seq = seq
        self.waiting = False
        self.started = True

    # -- per packet ----------------------------------------------------------

    def bind(self) -> bool:
        """Follow the nominated ICE pair: the socket and address to send on. False (and
        nothing to send on) once the pair is gone. Never raises."""
        pair = self._pairs.get(1)
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
        except OSError:
            return False
        return True

    def packet_for(self, record: HistoryRecord) -> bytes | None:
        """The packet this subscriber was sent for a history record, serialised."""
        writer = self.writer
        if writer is None:
            return None
        seq, ts, marker, payload = record
        header = writer.header(
            marker, (seq + self.seq_offset) & 0xFFFF, (ts + self.ts_offset) & 0xFFFFFFFF
        )
        return header + payload

    async def retransmit(self, sequence_number: int) -> None:
        """Answer one NACKed sequence number from the history (RFC 4588 if RTX)."""
        forwarder = self.forwarder
        ring = self.ring
        if forwarder is None:
            return
        stats = forwarder.stats
        try:
            record = ring[sequence_number & self.mask] if ring is not None else None
            if record is None or (record[0] + self.seq_offset) & 0xFFFF != sequence_number:
                stats.retransmissions_missed += 1
                return
            data = self.packet_for(record)
            if data is None:
                return
            if self.rtx_writer is not None and self.writer is not None:
                data = rtx_packet(self.rtx_writer, self.rtx_seq, data, self.writer.header_size)
                self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            if self.send_protected(data):
                stats.retransmissions += 1
        except Exception:
            stats.errors += 1

    def detach(self) -> None:
        """Stop forwarding to this subscriber and release what it holds."""
        forwarder = self.forwarder
        if forwarder is not None:
            forwarder.remove_subscriber(self)
        else:
            self.close()

    def keyframe_requested(self) -> None:
        """The subscriber sent PLI or FIR."""
        forwarder = self.forwarder
        if forwarder is not None:
            forwarder.request_keyframe()

    def close(self) -> None:
        """Drop every reference this subscriber holds; its sender goes back to aiortc's."""
        self.forwarder = None
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
        track, self.track = self.track, None
        if track is not None:
            track.stop()


def _copying_sendto(sendto: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """A transport's ``sendto`` fed from our reused buffer: a transport may queue what
    it cannot send at once, so it gets a copy."""

    def send(view: Any, addr: Any) -> Any:
        return sendto(bytes(view), addr)

    return send


def _negotiated(
    sdp: str, mid: str | None, codec: RTCRtpCodecParameters
) -> tuple[int, int | None, bool, int | None] | None:
    """(payload type, RTX payload type, NACK, MID extension id) for ``mid`` in ``sdp``."""
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
        return chosen.payloadType, rtx, nack, mid_id
    return None


class RtpForwarder:
    """Forwards one published track's RTP packets to any number of subscribers."""

    def __init__(
        self,
        track_id: str,
        receiver: RTCRtpReceiver,
        codec: RTCRtpCodecParameters,
        on_ended: Callable[[str], None] | None = None,
        send_pli: Callable[[], Awaitable[bool]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.track_id = track_id
        self.kind = "audio" if codec.mimeType.lower().startswith("audio/") else "video"
        self.codec = codec
        self.stats = RtpForwardingStats()
        self.last_in_ts = 0
        self._receiver = receiver
        self._on_ended = on_ended
        self._clock = clock
        self._detector: Any = keyframe_detector(codec.name)
        self._subscribers: tuple[RtpSubscriber, ...] = ()
        self._waiting = 0  # subscribers waiting for a keyframe start
        self._in_ssrc: int | None = None
        self._max_seq = 0
        self._in_packets = 0
        self._in_octets = 0
        self._last_arrival = 0.0  # wall clock of the newest packet, for SR
        self._keyframes = KeyframeRequester(
            send_pli or (lambda: hooks.send_pli(receiver)),
            self.stats,
            self._keyframe_request_failed,
            clock,
        )
        self._tasks: set[asyncio.Future[Any]] = set()
        self._sr_timer: asyncio.TimerHandle | None = None
        self._previous_buffer: Any = None
        self._stopped = False
        self._started = False
        self._paused = False

    @property
    def subscriber_count(self) -> int:
        """How many subscribers receive this track now."""
        return len(self._subscribers)

    def counters(self) -> dict[str, int]:
        """This track's counters, for ``/metrics``."""
        return self.stats.as_dict()

    def start(self) -> None:
        """Tap the receiver and start the two housekeeping tasks (SR, end of track)."""
        if self._started:
            return
        self._started = True
        self._previous_buffer = hooks.install_tap(self._receiver, _Tap(self._safe_forward))
        self._sync_sender_reports()
        self._watch(asyncio.ensure_future(self._receiver.track.recv()), self._track_done)

    # -- subscribers ---------------------------------------------------------

    def attach(self, pc: RTCPeerConnection) -> RtpSubscriber:
        """Add a ``sendonly`` transceiver for this track to ``pc`` and subscribe it.

        Call before creating the offer; the subscriber starts once the answer is
        applied and its transports are connected.
        """
        track = IdleTrack(self.kind)
        transceiver = pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences(preferences_for(self.kind, self.codec))
        subscriber = self.add_subscriber(pc, transceiver)
        subscriber.track = track
        track._on_stop = lambda: self.remove_subscriber(subscriber)
        return subscriber

    def add_subscriber(
        self, pc: RTCPeerConnection, transceiver: RTCRtpTransceiver
    ) -> RtpSubscriber:
        """Subscribe an existing transceiver (its sender should have an :class:`IdleTrack`)."""
        subscriber = RtpSubscriber(self, pc, transceiver)
        if self._stopped:
            subscriber.close()
            return subscriber
        hooks.hook_sender(transceiver.sender, subscriber.retransmit, subscriber.keyframe_requested)
        if self._detector is not None:
            # Video waits for a keyframe (audio starts at once); it is asked for when
            # the subscriber's transport is connected (see _forward).
            self._waiting += 1
        self._subscribers = (*self._subscribers, subscriber)
        return subscriber

    def remove_subscriber(self, subscriber: RtpSubscriber) -> None:
        """Stop forwarding to one subscriber and release what it holds."""
        if subscriber in self._subscribers:
            self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)
            if subscriber.waiting and self._detector is not None:
                self._waiting -= 1
        subscriber.close()

    def set_paused(self, paused: bool) -> None:
        """Stop (or resume) forwarding to everyone at once: a moderator's mute.

        On resume every subscriber's numbering continues without a gap (so nobody
        NACKs what was never sent) and video restarts on a keyframe, asked for now.
        """
        if paused == self._paused:
            return
        self._paused = paused
        if paused:
            # Remember where each subscriber's numbering stands now, before the
            # publisher's packets move on without being sent.
            self._restart_subscribers(ask_for_keyframe=False)
        elif self._waiting:
            self.request_keyframe()

    # -- keyframes -----------------------------------------------------------

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per interval (coalesced)."""
        if self._detector is not None and not self._stopped:
            self._keyframes.request()

    def _keyframe_request_failed(self, error: BaseException) -> None:
        self.stats.errors += 1

    # -- the hot path ----------------------------------------------------------

    def _safe_forward(self, packet: Any) -> None:
        try:
            self._forward(packet)
        except Exception:
            self.stats.errors += 1

    def _forward(self, packet: Any) -> None:
        stats = self.stats
        stats.packets_received += 1
        seq: int = packet.sequence_number
        ts: int = packet.timestamp
        payload: bytes = packet.payload
        self._in_packets += 1
        self._in_octets += len(payload)
        if packet.ssrc != self._in_ssrc:
            self._new_source(packet.ssrc, seq)
        elif ((seq - self._max_seq) & 0xFFFF) < 0x8000:
            self._max_seq = seq
        self.last_in_ts = ts
        self._last_arrival = time.time()
        if self._paused:
            stats.packets_muted += 1
            return
        subscribers = self._subscribers
        if not subscribers:
            return
        size = len(payload)
        if size > MAX_PAYLOAD:
            stats.packets_dropped += len(subscribers)
            return
        marker = 0x80 if packet.marker else 0
        key: bool | None = None
        record: HistoryRecord | None = None
        protect = _SRTP_PROTECT
        forwarded = dropped = errors = 0
        for sub in subscribers:
            if sub.writer is None:
                if not sub.resolve(self.codec):
                    dropped += 1
                    continue
                if sub.waiting and self._detector is not None:
                    # Its transport is up only now: a keyframe sent earlier could not
                    # reach it, so this is when to ask for the one it starts on.
                    self.request_keyframe()
            if sub.waiting:
                if key is None:
                    key = self._detector is None or bool(self._detector(payload))
                if not key:
                    dropped += 1
                    continue
                self._begin(sub, seq, ts, size)
            elif ((seq - sub.start_seq) & 0xFFFF) >= 0x8000:
                dropped += 1  # older than this subscriber's first packet
                continue
            out_seq = (seq + sub.seq_offset) & 0xFFFF
            ring = sub.ring
            if ring is not None:
                if record is None:
                    record = (seq, ts, marker, payload)
                ring[out_seq & sub.mask] = record
            if sub._pairs.get(1) is not sub._pair and not sub.bind():
                dropped += 1
                continue
            buffer = sub.buffer
            length = sub.length
            end = sub.header_size + size
            write_varying(
                buffer, 1, sub.payload_type | marker, out_seq, (ts + sub.ts_offset) & 0xFFFFFFFF
            )
            buffer[sub.header_size : end] = payload
            length[0] = end
            try:
                if protect(sub.srtp_ctx, sub.cbuffer, length) != _SRTP_OK:
                    errors += 1
                    continue
                sub._sendto(buffer[: length[0]], sub._addr)
            except OSError:
                dropped += 1  # socket buffer full, or the socket went away
                continue
            except Exception:
                errors += 1
                continue
            forwarded += 1
        stats.errors += errors
        stats.packets_forwarded += forwarded
        stats.packets_dropped += dropped
        if (
            self._waiting
            and self._clock() - self._keyframes.last_request > KEYFRAME_RETRY
            # Only subscribers that can receive it yet (transport up) need it now.
            and any(s.waiting and s.writer is not None for s in subscribers)
        ):
            self.request_keyframe()

    def _begin(self, sub: RtpSubscriber, seq: int, ts: int, size: int) -> None:
        sub.begin(seq, ts, time.time(), self.codec.clockRate)
        sub.packets_base = (self._in_packets - 1, self._in_octets - size)
        if self._detector is not None:
            self._waiting -= 1
        self.stats.subscribers_started += 1

    def _new_source(self, ssrc: int, seq: int) -> None:
        """The publisher's SSRC changed (or this is the first packet). Subscribers that
        had started continue their numbering after what they were sent; video waits
        for a keyframe of the new source."""
        if self._in_ssrc is not None:
            self._restart_subscribers()
        self._in_ssrc = ssrc
        self._max_seq = seq

    def _restart_subscribers(self, ask_for_keyframe: bool = True) -> None:
        """Started subscribers continue their numbering after what they were sent and
        start again at the next packet that can start decoding (a keyframe for video)."""
        for sub in self._subscribers:
            if not sub.started or sub.resume is not None:
                continue
            sub.resume = (
                (self._max_seq + sub.seq_offset + 1) & 0xFFFF,
                (self.last_in_ts + sub.ts_offset) & 0xFFFFFFFF,
                self._last_arrival,
            )
            if not sub.waiting:
                sub.waiting = True
                if self._detector is not None:
                    self._waiting += 1
        if self._waiting and ask_for_keyframe:
            self.request_keyframe()

    # -- housekeeping ----------------------------------------------------------

    def _sync_sender_reports(self) -> None:
        """Keep what aiortc's RTCP task reports (SR) in line with what we sent."""
        if self._stopped:
            return
        self._sr_timer = asyncio.get_running_loop().call_later(
            SENDER_REPORT_SYNC, self._sync_sender_reports
        )
        arrival = self._last_arrival
        if not arrival:
            return
        ntp = int((arrival + NTP_EPOCH_OFFSET) * (1 << 32))
        for sub in self._subscribers:
            if not sub.started:
                continue
            packets = self._in_packets - sub.packets_base[0]
            octets = self._in_octets - sub.packets_base[1]
            rtp_ts = (self.last_in_ts + sub.ts_offset) & 0xFFFFFFFF
            with contextlib.suppress(Exception):
                hooks.set_sender_report(
                    sub.sender, ntp, rtp_ts, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF
                )

    def _track_done(self, task: asyncio.Future[Any]) -> None:
        """The publisher's track delivered something: with the tap in place that is only
        its end (RTCP BYE or the receiver stopping), or a stray frame from before it."""
        self._tasks.discard(task)
        if self._stopped:
            return
        if not task.cancelled() and task.exception() is None:
            self._watch(asyncio.ensure_future(self._receiver.track.recv()), self._track_done)
            return
        if self._on_ended is not None:
            self._on_ended(self.track_id)

    def _watch(
        self, task: asyncio.Future[Any], done: Callable[[asyncio.Future[Any]], None]
    ) -> None:
        # Our own coroutines are never awaited in these tasks: a cancelled task's
        # traceback must not hold this forwarder.
        self._tasks.add(task)
        task.add_done_callback(done)

    async def stop(self) -> None:
        """Release everything: the tap, every subscriber, timers and tasks."""
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            hooks.remove_tap(self._receiver, _DISCARD)
        self._previous_buffer = None
        subscribers, self._subscribers = self._subscribers, ()
        for sub in subscribers:
            sub.close()
        self._waiting = 0
        if self._sr_timer is not None:
            self._sr_timer.cancel()
        self._sr_timer = None
        await self._keyframes.close()
        tasks = list(self._tasks)
        self._tasks.clear()
        for task in tasks:
            task.remove_done_callback(self._track_done)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
