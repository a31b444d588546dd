"""The RTP fast path: forward a published track packet by packet, no frames, no threads.

Where packets are taken
    aiortc's ``RTCRtpReceiver`` of the publisher keeps doing SRTP unprotect, RTX
    unwrapping, NACK generation, REMB and receiver reports; only its jitter buffer
    is replaced by a tap (:mod:`media.hooks`). Each packet the receiver has
    accounted for reaches :meth:`RtpForwarder._forward` at once; the receiver never
    reassembles a frame and its decoder thread stays idle (it only carries the
    end of the track).

What each subscriber gets (:mod:`media.rtp_subscriber`)
    A ``sendonly`` transceiver whose ``RTCRtpSender`` is fed an ``IdleTrack``, so it
    negotiates, announces its SSRCs, answers RTCP and sends SR/SDES/BYE but never
    sends RTP. Per packet and subscriber we write a new 12-byte header (subscriber's
    payload type and SSRC, sequence number and timestamp shifted by per-subscriber
    offsets, so a gap stays a gap and the subscriber NACKs it), add a constant
    extension block holding only the subscriber's MID (other extensions are
    dropped: transport-wide sequence numbers and abs-send-time describe the
    publisher's hop), protect it with the subscriber's SRTP session and ``sendto``
    it on the nominated ICE pair's socket.

Sequence numbers over a whole lesson
    Each publisher sequence number is extended to an unbounded index as RFC 3550
    appendix A.1 does (a large jump is believed only when the next packet confirms
    it, and then counts as a new source). A subscriber sends index + offset, so its
    numbering wraps with the publisher's; it only ever moves forward over a mute,
    a keyframe wait, a change of source or a reused transceiver; and a packet that
    arrives late is sent only into a gap it left (never onto an index already used,
    which would reuse an SRTP keystream).

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
    once (PLI coalesced to one per
    :data:`media.keyframe_requests.KEYFRAME_REQUEST_INTERVAL`); their PLI/FIR reach
    the publisher the same way. aiortc's RTCP task of each sender keeps sending SR,
    with the counts of what that subscriber was sent and an (NTP, RTP) pair of the
    newest packet in sequence order, updated every :data:`SENDER_REPORT_SYNC` s.

Other consumers (recording)
    :meth:`RtpForwarder.add_listener` registers a callable that is given every
    packet that is not muted, once, after the subscribers were served, as
    ``(index, timestamp, marker, payload)``: in order, or late (a repair) within
    the history; ``index`` is the extended sequence number, continued upwards
    after a new source. It must return at once (a recorder only queues the
    packet); without a listener the fast path pays one attribute test per packet.

Per-packet code never raises into aiortc: a failing packet is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from . import hooks
from .counters import Counters
from .keyframe_requests import KeyframeRequester
from .peers import preferences_for
from .rtp_rewrite import keyframe_detector, write_varying
from .rtp_subscriber import (
    HISTORY,
    MAX_PAYLOAD,
    HistoryRecord,
    IdleTrack,
    RtpSubscriber,
    StreamState,
)

KEYFRAME_RETRY = 1.0  # ask again while a subscriber still waits for a keyframe
SENDER_REPORT_SYNC = 0.5  # seconds between updates of what aiortc's SR says
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 to 1970 (RFC 5905)
# RFC 3550 appendix A.1: a forward jump up to MAX_DROPOUT is loss; a packet up to
# MAX_MISORDER behind the newest is late; anything else is a jump that only the next
# packet can confirm (the publisher restarted its numbering).
MAX_DROPOUT = 3000
MAX_MISORDER = HISTORY
SEQ_MOD = 1 << 16
RETIRED_SSRCS = 4  # earlier sources of a publisher whose late packets are ignored
_FIRST_INDEX = 1 << 20  # where a source's extended indices start (room for late ones)

_NO_FRAME: tuple[bool, None] = (False, None)
# (extended sequence number, RTP timestamp, marker, payload) of one in-order packet.
PacketListener = Callable[[int, int, bool, bytes], None]
_SRTP_PROTECT = hooks.raw_srtp_protect()
_SRTP_OK = hooks.SRTP_OK


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
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.track_id = track_id
        self.kind = "audio" if codec.mimeType.lower().startswith("audio/") else "video"
        self.codec = codec
        self.stats = RtpForwardingStats()
        self._receiver = receiver
        self._on_ended = on_ended
        self._clock = clock
        self._wall = wall_clock
        self._detector: Any = keyframe_detector(codec.name)
        self._subscribers: tuple[RtpSubscriber, ...] = ()
        self._waiting = 0  # subscribers waiting for a keyframe start
        self._in_ssrc: int | None = None
        self._retired_ssrcs: tuple[int, ...] = ()  # sources the publisher moved away from
        # The publisher's numbering: the extended index of its newest packet, that
        # packet's RTP timestamp and arrival (wall clock), and a jump awaiting proof.
        self._newest = 0
        self._newest_ts = 0
        self._newest_wall = 0.0
        self._bad_seq: int | None = None
        self._keyframes = KeyframeRequester(
            send_pli or (lambda: hooks.send_pli(receiver)),
            self.stats,
            self._keyframe_request_failed,
            clock,
        )
        self._tasks: set[asyncio.Future[Any]] = set()
        self._sr_timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self._started = False
        self._paused = False
        self._listeners: tuple[PacketListener, ...] = ()
        # What the listeners were given: indices by slot (duplicates are not given
        # twice), the highest, and the offset that keeps indices rising.
        self._heard = [-1] * MAX_MISORDER
        self._heard_high = 0
        self._heard_offset = 0

    @property
    def subscriber_count(self) -> int:
        """How many subscribers receive this track now."""
        return len(self._subscribers)

    def add_listener(self, listener: PacketListener) -> Callable[[], None]:
        """Also give every unmuted packet (in order, or a late repair) to ``listener``
        (a recorder), once, after the subscribers; returns the function that removes
        it. The listener must not block and must not raise (a raise counts as an
        error, nothing more)."""
        self._listeners = (*self._listeners, listener)

        def remove() -> None:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

        return remove

    def counters(self) -> dict[str, int]:
        """This track's counters, for ``/metrics``."""
        return self.stats.as_dict()

    def start(self) -> None:
        """Tap the receiver and start the two housekeeping tasks (SR, end of track)."""
        if self._started:
            return
        self._started = True
        hooks.install_tap(self._receiver, _Tap(self._safe_forward))
        self._schedule_sender_reports()
        track = self._receiver.track
        # A receiver reused for a new track (its m-line sent again) may carry the
        # previous track's end already: its end then comes from renegotiation or the
        # peer connection closing.
        if track is not None and track.readyState == "live":
            self._watch(asyncio.ensure_future(track.recv()), self._track_done)

    # -- subscribers ---------------------------------------------------------

    def attach(self, pc: RTCPeerConnection, reuse: RtpSubscriber | None = None) -> RtpSubscriber:
        """Subscribe ``pc``: on a new ``sendonly`` transceiver, or on the transceiver of
        a detached subscriber (``reuse``), whose stream then continues.

        Call before creating the offer; the subscriber starts once the answer is
        applied and its transports are connected.
        """
        if reuse is not None:
            transceiver = reuse.transceiver
            track = reuse.track
            continuation = reuse.continuation()
        else:
            track = IdleTrack(self.kind)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            continuation = None
        transceiver.setCodecPreferences(preferences_for(self.kind, self.codec))
        subscriber = self.add_subscriber(pc, transceiver, continuation)
        subscriber.track = track
        if track is not None:
            track.on_stop = lambda: self.remove_subscriber(subscriber)
        return subscriber

    def add_subscriber(
        self,
        pc: RTCPeerConnection,
        transceiver: RTCRtpTransceiver,
        continuation: StreamState | None = None,
    ) -> RtpSubscriber:
        """Subscribe an existing transceiver (its sender should have an ``IdleTrack``);
        ``continuation`` is where its outgoing stream stands if it carried a track."""
        subscriber = RtpSubscriber(self, pc, transceiver, continuation)
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
        """Stop forwarding to one subscriber and release what it holds; what its stream
        has used stays in ``subscriber.final_state`` for the next track on it."""
        if subscriber in self._subscribers:
            self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)
            if subscriber.waiting and self._detector is not None:
                self._waiting -= 1
            subscriber.final_state = subscriber.state(self._newest_ts, self._newest_wall)
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
            if self._listeners:
                self._tell_listeners(packet)
        except Exception:
            self.stats.errors += 1

    def _tell_listeners(self, packet: Any) -> None:
        """Give a packet that is not muted to the listeners, once: the newest, or a late
        one (a repair) within the history. Their index never goes back: a restarted
        numbering (a new source) continues above what they were given, after a gap."""
        if self._paused or packet.ssrc != self._in_ssrc:
            return
        newest = self._newest
        delta = (packet.sequence_number - newest) & 0xFFFF
        if delta == 0:
            if self._newest_ts != packet.timestamp:
                return
            index = newest + self._heard_offset
            if index <= self._heard_high - MAX_MISORDER or (
                index <= self._heard_high and self._heard[index % MAX_MISORDER] != index
            ):
                # The numbering restarted below what was given: continue above it.
                self._heard_offset += self._heard_high + 2 - index
                index = self._heard_high + 2
            self._heard_high = max(self._heard_high, index)
        elif delta > SEQ_MOD - MAX_MISORDER:
            index = newest - (SEQ_MOD - delta) + self._heard_offset
            if index <= self._heard_high - MAX_MISORDER:
                return
        else:
            return
        slot = index % MAX_MISORDER
        if self._heard[slot] == index:
            return  # given already (a duplicate)
        self._heard[slot] = index
        for listener in self._listeners:
            listener(index, packet.timestamp, bool(packet.marker), packet.payload)

    def _forward(self, packet: Any) -> None:
        stats = self.stats
        stats.packets_received += 1
        seq: int = packet.sequence_number
        ts: int = packet.timestamp
        payload: bytes = packet.payload
        if packet.ssrc != self._in_ssrc:
            if packet.ssrc in self._retired_ssrcs:
                # A late packet (a repair) of the source the publisher left: sending
                # it would restart everyone's stream for nothing.
                stats.packets_dropped += 1
                return
            self._new_source(packet.ssrc, seq)
        newest = self._newest
        delta = (seq - newest) & 0xFFFF
        if delta < MAX_DROPOUT:
            index = newest + delta
            in_order = delta != 0
        elif delta > SEQ_MOD - MAX_MISORDER:
            index = newest - (SEQ_MOD - delta)
            in_order = False
        elif seq == self._bad_seq:
            # Two packets in a row after a jump: the publisher restarted its numbering,
            # which counts as a new source.
            self._restart_subscribers()
            index = self._newest = _FIRST_INDEX + seq
            in_order = True
        else:
            self._bad_seq = (seq + 1) & 0xFFFF
            stats.packets_dropped += 1
            return
        if in_order:
            self._newest = index
            self._newest_ts = ts
            self._newest_wall = self._wall()
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
                if not in_order:
                    dropped += 1
                    continue
                if key is None:
                    key = self._detector is None or bool(self._detector(payload))
                if not key:
                    dropped += 1
                    continue
                self._begin(sub, index, ts)
            out = index + sub.ext_offset
            if out > sub.highest:
                sub.highest = out
            elif out < sub.floor or sub.highest - out >= HISTORY or not sub.unsent(out):
                dropped += 1  # a duplicate, or late for a place already used
                continue
            out_seq = out & 0xFFFF
            ring = sub.ring
            if ring is not None:
                if record is None:
                    record = (seq, ts, marker, payload)
                ring[out & sub.mask] = record
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
            sub.packets += 1
            sub.octets += size
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

    def _begin(self, sub: RtpSubscriber, index: int, ts: int) -> None:
        sub.begin(index, ts, self._wall(), self.codec.clockRate)
        if self._detector is not None:
            self._waiting -= 1
        self.stats.subscribers_started += 1

    def _new_source(self, ssrc: int, seq: int) -> None:
        """The publisher's SSRC changed (or this is the first packet). Subscribers that
        had started continue their numbering after what they were sent; video waits
        for a keyframe of the new source."""
        if self._in_ssrc is not None:
            self._restart_subscribers()
            self._retired_ssrcs = (*self._retired_ssrcs[-(RETIRED_SSRCS - 1) :], self._in_ssrc)
        self._in_ssrc = ssrc
        # Extended indices of the new source start just before its first packet, which
        # thus counts as in order.
        self._newest = _FIRST_INDEX + ((seq - 1) & 0xFFFF)
        self._bad_seq = None

    def _restart_subscribers(self, ask_for_keyframe: bool = True) -> None:
        """Started subscribers continue their numbering after what they were sent and
        start again at the next packet that can start decoding (a keyframe for video)."""
        for sub in self._subscribers:
            if not sub.started or sub.resume is not None:
                continue
            sub.resume = sub.state(self._newest_ts, self._newest_wall)
            if not sub.waiting:
                sub.waiting = True
                if self._detector is not None:
                    self._waiting += 1
        if self._waiting and ask_for_keyframe:
            self.request_keyframe()

    # -- sender reports --------------------------------------------------------

    def _schedule_sender_reports(self) -> None:
        if self._stopped:
            return
        self._sr_timer = asyncio.get_running_loop().call_later(
            SENDER_REPORT_SYNC, self._schedule_sender_reports
        )
        self.refresh_sender_reports()

    def refresh_sender_reports(self) -> None:
        """Make what each subscriber's sender reports (RFC 3550 6.4.1) true now: the
        packets and payload octets sent to it, and an (NTP, RTP) pair on its clock:
        the newest packet's, or while it waits to continue, its last time carried
        forward to now."""
        clock_rate = self.codec.clockRate
        for sub in self._subscribers:
            resume = sub.resume
            if resume is not None:
                wall = self._wall()
                rtp_ts = resume.last_timestamp + int((wall - resume.last_wall) * clock_rate)
            elif sub.started:
                wall = self._newest_wall
                rtp_ts = self._newest_ts + sub.ts_offset
            else:
                continue
            ntp = int((wall + NTP_EPOCH_OFFSET) * (1 << 32))
            with contextlib.suppress(Exception):
                hooks.set_sender_report(
                    sub.sender,
                    ntp,
                    rtp_ts & 0xFFFFFFFF,
                    sub.packets & 0xFFFFFFFF,
                    sub.octets & 0xFFFFFFFF,
                )

    # -- housekeeping ----------------------------------------------------------

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
        subscribers, self._subscribers = self._subscribers, ()
        for sub in subscribers:
            sub.final_state = sub.state(self._newest_ts, self._newest_wall)
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
