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

NACK, RTX, keyframes, RTCP
    Each video subscriber keeps a ring of the last :data:`HISTORY` packets it was
    sent, by its own sequence number; its NACKs are answered from the ring (as RTX
    if negotiated). Video subscribers start on a keyframe start and ask for one at
    once (PLI coalesced to one per :data:`KEYFRAME_REQUEST_INTERVAL`); their
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
from .peers import preferences_for
from .rtp_rewrite import HeaderWriter, keyframe_detector, one_byte_extension, rtx_packet

KEYFRAME_REQUEST_INTERVAL = 0.5  # at most one PLI per published track per 500 ms
KEYFRAME_RETRY = 1.0  # ask again while a subscriber still waits for a keyframe
HISTORY = 512  # packets per video subscriber kept for retransmission (power of two)
SENDER_REPORT_SYNC = 0.5  # seconds between updates of what aiortc's SR says
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 to 1970 (RFC 5905)

_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
_NO_FRAME: tuple[bool, None] = (False, None)


class RtpForwardingStats:
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

    def __init__(self) -> None:
        self.packets_received = 0
        self.packets_forwarded = 0
        self.packets_dropped = 0
        self.packets_muted = 0
        self.errors = 0
        self.retransmissions = 0
        self.retransmissions_missed = 0
        self.keyframe_requests_relayed = 0
        self.keyframe_requests_suppressed = 0
        self.subscribers_started = 0

    def as_dict(self) -> dict[str, int]:
        """All counters by name."""
        return {name: getattr(self, name) for name in self.__slots__}


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
        "_description",
        "_pair",
        "_pairs",
        "_protect",
        "_sendto",
        "forwarder",
        "mask",
        "packets_base",
        "pc",
        "resume",
        "ring",
        "rtx_seq",
        "rtx_writer",
        "sender",
        "seq_offset",
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
        self.ring: list[bytes | None] | None = None
        self.mask = HISTORY - 1
        self.waiting = True  # until the first packet that can start decoding
        self.started = False
        self.seq_offset = 0
        self.ts_offset = 0
        self.start_seq = 0
        self.packets_base = (0, 0)
        self.resume: tuple[int, int, float] | None = None
        self._protect: Callable[[bytes], bytes] | None = None
        self._pairs: dict[int, Any] = {}
        self._pair: Any = None
        self._sendto: Callable[[bytes, Any], None] | None = None
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
            self.writer = HeaderWriter(payload_type, ssrc, ext)
            if rtx_payload_type is not None:
                self.rtx_writer = HeaderWriter(rtx_payload_type, rtx_ssrc, ext)
            if nack and codec.name.lower() != "opus":
                self.ring = [None] * HISTORY
            self._protect = srtp.protect
            self._pairs = pairs
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
        self.seq_offset = (base_seq - seq) & 0xFFFF
        self.ts_offset = (base_ts - timestamp) & 0xFFFFFFFF
        self.start_seq = seq
        self.waiting = False
        self.started = True

    # -- per packet ----------------------------------------------------------

    def transmit(self, data: bytes) -> bool:
        """Protect and send one RTP packet; False if the subscriber is not connected."""
        pair = self._pairs.get(1)
        if pair is not self._pair:
            if pair is None:
                return False
            self._pair = pair
            sock, self._addr = hooks.pair_endpoint(pair)
            self._sendto = sock.sendto
        assert self._protect is not None and self._sendto is not None
        self._sendto(self._protect(data), self._addr)
        return True

    async def retransmit(self, sequence_number: int) -> None:
        """Answer one NACKed sequence number from the history (RFC 4588 if RTX)."""
        forwarder = self.forwarder
        ring = self.ring
        if forwarder is None:
            return
        stats = forwarder.stats
        try:
            data = ring[sequence_number & self.mask] if ring is not None else None
            if data is None or ((data[2] << 8) | data[3]) != sequence_number:
                stats.retransmissions_missed += 1
                return
            if self.rtx_writer is not None and self.writer is not None:
                data = rtx_packet(self.rtx_writer, self.rtx_seq, data, self.writer.header_size)
                self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            if self.transmit(data):
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
        self._protect = self._sendto = None
        self._pair = self._addr = self._description = None
        self._pairs = {}
        track, self.track = self.track, None
        if track is not None:
            track.stop()


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
        self._send_pli = send_pli or (lambda: hooks.send_pli(receiver))
        self._clock = clock
        self._detector: Any = keyframe_detector(codec.name)
        self._subscribers: tuple[RtpSubscriber, ...] = ()
        self._waiting = 0  # subscribers waiting for a keyframe start
        self._in_ssrc: int | None = None
        self._max_seq = 0
        self._in_packets = 0
        self._in_octets = 0
        self._last_arrival = 0.0  # wall clock of the newest packet, for SR
        self._last_keyframe_request = -KEYFRAME_REQUEST_INTERVAL
        self._pli_timer: asyncio.TimerHandle | None = None
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
        if self._detector is not None:  # video waits for a keyframe; audio starts at once
            self._waiting += 1
            self.request_keyframe()
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
        if self._detector is None or self._stopped:
            return
        now = self._clock()
        wait = self._last_keyframe_request + KEYFRAME_REQUEST_INTERVAL - now
        if wait > 0:
            self.stats.keyframe_requests_suppressed += 1
            if self._pli_timer is None:
                loop = asyncio.get_running_loop()
                self._pli_timer = loop.call_later(wait, self._deferred_keyframe_request)
            return
        self._send_keyframe_request(now)

    def _deferred_keyframe_request(self) -> None:
        self._pli_timer = None
        if not self._stopped:
            self._send_keyframe_request(self._clock())

    def _send_keyframe_request(self, now: float) -> None:
        self._last_keyframe_request = now
        self._watch(asyncio.ensure_future(self._send_pli()), self._pli_done)

    def _pli_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            self.stats.errors += 1
        elif task.result():
            self.stats.keyframe_requests_relayed += 1

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
        marker: int = packet.marker
        key: bool | None = None
        forwarded = dropped = 0
        for sub in subscribers:
            writer = sub.writer
            if writer is None:
                if not sub.resolve(self.codec):
                    dropped += 1
                    continue
                writer = sub.writer
                assert writer is not None
            if sub.waiting:
                if key is None:
                    key = self._detector is None or bool(self._detector(payload))
                if not key:
                    dropped += 1
                    continue
                self._begin(sub, seq, ts, len(payload))
            elif ((seq - sub.start_seq) & 0xFFFF) >= 0x8000:
                dropped += 1  # older than this subscriber's first packet
                continue
            out_seq = (seq + sub.seq_offset) & 0xFFFF
            data = writer.header(marker, out_seq, (ts + sub.ts_offset) & 0xFFFFFFFF) + payload
            ring = sub.ring
            if ring is not None:
                ring[out_seq & sub.mask] = data
            try:
                if sub.transmit(data):
                    forwarded += 1
                else:
                    dropped += 1
            except Exception:
                stats.errors += 1
        stats.packets_forwarded += forwarded
        stats.packets_dropped += dropped
        if self._waiting and self._clock() - self._last_keyframe_request > KEYFRAME_RETRY:
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
        for timer in (self._pli_timer, self._sr_timer):
            if timer is not None:
                timer.cancel()
        self._pli_timer = self._sr_timer = None
        tasks = list(self._tasks)
        self._tasks.clear()
        for task in tasks:
            task.remove_done_callback(self._pli_done)
            task.remove_done_callback(self._track_done)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
