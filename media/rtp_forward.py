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
    offsets, so a gap stays a gap and the subscriber NACKs it), add an extension
    block holding the subscriber's MID and abs-send-time written as we send (the
    publisher's extensions describe its own hop and are dropped), protect it with
    the subscriber's SRTP session and ``sendto`` it on the nominated ICE pair's
    socket.

Simulcast layers
    Each SSRC of the track is a :class:`~media.rtp_layers.Layer` with its own
    extended numbering; each subscriber gets one layer (:meth:`RtpForwarder.prefer`,
    its downlink's level) and changes layer at the new layer's keyframe, once the
    old layer's frame has ended, its numbering and RTP time going on unbroken.

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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from . import hooks
from .counters import Counters
from .downlink import AUDIO_ONLY, HIGH
from .keyframe_requests import KeyframeRequester
from .peers import preferences_for
from .rtp_layers import RATE_WINDOW, Layer, choose
from .rtp_rewrite import (
    NTP_EPOCH_OFFSET,
    abs_send_time,
    keyframe_detector,
    vp8_keyframe_size,
    write_transport_sequence,
    write_varying,
)
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
# RFC 3550 appendix A.1: a forward jump up to MAX_DROPOUT is loss; a packet up to
# MAX_MISORDER behind the newest is late; anything else is a jump that only the next
# packet can confirm (the publisher restarted its numbering).
MAX_DROPOUT = 3000
MAX_MISORDER = HISTORY
SEQ_MOD = 1 << 16
RETIRED_SSRCS = 4  # earlier sources of a publisher whose late packets are ignored
SWITCH_BUFFER = 256  # packets of a new layer kept while the old one ends its frame
# What a video publisher is told it may send (REMB, RFC draft-alvestrand-rmcat-remb),
# every REMB_INTERVAL s: a camera's three simulcast layers and some room.
PUBLISH_BITRATE = 2_500_000
REMB_INTERVAL = 1.0
_FIRST_INDEX = 1 << 20  # where a source's extended indices start (room for late ones)

_NO_FRAME: tuple[bool, None] = (False, None)
# (extended sequence number, RTP timestamp, marker, payload) of one in-order packet.
PacketListener = Callable[[int, int, bool, bytes], None]
_SRTP_PROTECT = hooks.raw_srtp_protect()
_SRTP_OK = hooks.SRTP_OK


class RtpForwardingStats(Counters):
    """Counters of one forwarded track (summed by the SFU for ``/metrics``)."""

    __slots__ = (
        "bytes_forwarded",
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
    bytes_forwarded: int  # payload bytes, summed over subscribers
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
    """Forwards one published track's RTP packets to any number of subscribers: each
    gets one layer of it (the only one, without simulcast)."""

    def __init__(
        self,
        track_id: str,
        receiver: RTCRtpReceiver,
        codec: RTCRtpCodecParameters,
        on_ended: Callable[[str], None] | None = None,
        send_pli: Callable[[int], Awaitable[bool]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rids: Sequence[str] = (),
        publish_bitrate: int = PUBLISH_BITRATE,
    ) -> None:
        self.track_id = track_id
        self.kind = "audio" if codec.mimeType.lower().startswith("audio/") else "video"
        self.codec = codec
        self.stats = RtpForwardingStats()
        self.rids = tuple(rids)  # the simulcast layers offered, by RID (none: one stream)
        self.publish_bitrate = publish_bitrate  # the REMB its publisher is sent (video)
        self._remb_at = 0.0
        self._receiver = receiver
        self._on_ended = on_ended
        self._send_pli = send_pli or (lambda ssrc: hooks.send_pli_to(receiver, ssrc))
        self._clock = clock
        self._wall = wall_clock
        self._detector: Any = keyframe_detector(codec.name)
        self._sizes = codec.name.upper() == "VP8" and bool(self.rids)  # learn layer sizes
        self._subscribers: tuple[RtpSubscriber, ...] = ()
        # Subscribers whose downlink dropped: they leave their layer at its next frame
        # end, not at the smaller layer's keyframe (see :meth:`retarget`).
        self._draining: set[RtpSubscriber] = set()
        self._layers: dict[int, Layer] = {}  # by SSRC
        self._current: Layer | None = None  # without simulcast: the one stream
        self._retired_ssrcs: tuple[int, ...] = ()  # sources the publisher moved away from
        self._tasks: set[asyncio.Future[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.rated_at = clock()  # when layer bitrates were last measured
        self._stopped = False
        self._started = False
        self._paused = False
        self._listeners: tuple[PacketListener, ...] = ()
        # The layer listeners hear (with simulcast the largest, kept while it is sent).
        self._heard_layer: Layer | None = None
        # What the listeners were given: indices by slot (duplicates are not given
        # twice), the highest, and the offset that keeps indices rising.
        self._heard_at = [-1] * MAX_MISORDER
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
        if self._heard_layer is None and self._layers:
            # Recording starts on a running track: the largest layer sent now.
            self._heard_layer = max(self.layers() or self._layers.values(), key=Layer.rank)

        def remove() -> None:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

        return remove

    def counters(self) -> dict[str, int]:
        """This track's counters, for ``/metrics``."""
        return self.stats.as_dict()

    def layers(self) -> list[Layer]:
        """The layers the publisher sends now, smallest first."""
        now = self._wall()
        return sorted((x for x in self._layers.values() if x.active(now)), key=Layer.rank)

    def start(self) -> None:
        """Tap the receiver and start housekeeping (layers, sender reports, end of track)."""
        if self._started:
            return
        self._started = True
        if self.rids:
            hooks.receive_layers(self._receiver)
        if self.kind == "video":
            hooks.cap_publisher(self._receiver)
        hooks.install_tap(self._receiver, _Tap(self._safe_forward))
        self._housekeeping()
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
        hooks.hook_sender(
            transceiver.sender,
            subscriber.retransmit,
            subscriber.keyframe_requested,
            subscriber.receiver_report,
        )
        self._subscribers = (*self._subscribers, subscriber)
        self.retarget(subscriber)
        return subscriber

    def remove_subscriber(self, subscriber: RtpSubscriber) -> None:
        """Stop forwarding to one subscriber and release what it holds; what its stream
        has used stays in ``subscriber.final_state`` for the next track on it."""
        if subscriber in self._subscribers:
            self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)
            subscriber.final_state = self._state_of(subscriber)
            self._leave(subscriber)
        subscriber.close()

    def prefer(self, subscriber: RtpSubscriber, max_width: int | None, video: bool) -> None:
        """What a subscriber shows this track at: ``max_width`` (None: as large as
        there is), or not at all (``video`` False: hidden, or audio only)."""
        subscriber.max_width = max_width
        subscriber.video_off = not video and self.kind == "video"
        self.retarget(subscriber)

    def retarget(
        self, subscriber: RtpSubscriber, congested: bool = False, hold: bool = False
    ) -> None:
        """Choose the layer for a subscriber again (its preference, its downlink or the
        layers changed); a change happens at that layer's next keyframe.

        ``congested``: its downlink just stepped down. Then a smaller layer's keyframe
        would queue behind the larger layer's packets in a full bottleneck and be
        lost there: the larger layer stops at its next frame end instead (the viewer
        could not decode it any more anyway), and the stream goes on, without a gap
        in its numbering, at the smaller layer's keyframe. ``hold`` (its downlink
        sees the queue): that keyframe is asked for only once the queue has drained
        (:meth:`release`), and none starts the smaller layer before."""
        if subscriber not in self._subscribers:
            return
        downlink = subscriber.downlink
        if subscriber.video_off or (
            self.kind == "video" and downlink is not None and downlink.level == AUDIO_ONLY
        ):
            self._leave(subscriber)
            return
        if self.rids:
            steps = HIGH - downlink.level if downlink is not None and self.kind == "video" else 0
            target = choose(self.layers(), subscriber.max_width, steps)
        else:
            target = self._current
        if target is None or target is subscriber.layer:
            self._unjoin(subscriber)
            self._stop_draining(subscriber)
            subscriber.target = subscriber.layer
            subscriber.held = False
            return
        if target is not subscriber.target:
            self._unjoin(subscriber)
            subscriber.target = target
            target.joiners = (*target.joiners, subscriber)
        current = subscriber.layer
        if congested and current is not None and target.rank() < current.rank():
            if current.boundary and subscriber.pending is None:
                self._drop_layer(subscriber, current)  # between two frames: at once
            else:
                self._draining.add(subscriber)
                if subscriber not in current.leaving:
                    current.leaving = (*current.leaving, subscriber)
        if hold:
            subscriber.held = True
            return
        self._ask_keyframe(target)

    def release(self, subscriber: RtpSubscriber) -> None:
        """The queue ahead of a held subscriber has drained (or was heard of no more):
        its next layer may start, at a keyframe asked for now."""
        if not subscriber.held:
            return
        subscriber.held = False
        target = subscriber.target
        if (
            subscriber in self._subscribers
            and target is not None
            and target is not subscriber.layer
        ):
            self._ask_keyframe(target)

    def bitrate_of(self, subscriber: RtpSubscriber, steps_down: int) -> float:
        """The bitrate a subscriber would receive with its downlink ``steps_down``
        below the top (for probing): that of the layer it would get."""
        if subscriber.video_off:
            return 0.0
        if not self.rids:
            return self._current.bitrate if self._current is not None else 0.0
        layer = choose(self.layers(), subscriber.max_width, max(0, steps_down))
        return layer.bitrate if layer is not None else 0.0

    def set_paused(self, paused: bool) -> None:
        """Stop (or resume) forwarding to everyone at once: a moderator's mute.

        On resume every subscriber's numbering continues without a gap (so nobody
        NACKs what was never sent) and video restarts on a keyframe, asked for now.
        """
        if paused == self._paused:
            return
        self._paused = paused
        for sub in self._subscribers:
            if paused:
                # Where each subscriber's numbering stands now, before the publisher's
                # packets move on without being sent.
                layer = sub.layer
                self._leave(sub)
                sub.target = None
                if layer is not None:
                    self._join(sub, layer, ask=False)
            else:
                self.retarget(sub)

    # -- keyframes -----------------------------------------------------------

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe of every layer someone receives, waits for
        or (a recorder) listens to, at most once per interval per layer (coalesced)."""
        heard = self._heard_layer if self._listeners else None
        for layer in self._layers.values():
            if layer.subscribers or layer.joiners or layer is heard:
                self._ask_keyframe(layer)

    def _ask_keyframe(self, layer: Layer) -> None:
        if self._detector is not None and not self._stopped:
            layer.keyframes.request()

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
        """Give a packet of the heard layer that is not muted to the listeners, once:
        the newest, or a late one (a repair) within the history. Their index never goes
        back: a restarted numbering (a new source, another layer) continues above what
        they were given, after a gap (so a recorder waits for a keyframe there)."""
        layer = self._layers.get(packet.ssrc)
        if self._paused or layer is None or not self._heard(layer, packet.payload):
            return
        newest = layer.newest
        delta = (packet.sequence_number - newest) & 0xFFFF
        if delta == 0:
            if layer.newest_ts != packet.timestamp:
                return
            index = newest + self._heard_offset
            if index <= self._heard_high - MAX_MISORDER or (
                index <= self._heard_high and self._heard_at[index % MAX_MISORDER] != index
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
        if self._heard_at[slot] == index:
            return  # given already (a duplicate)
        self._heard_at[slot] = index
        for listener in self._listeners:
            listener(index, packet.timestamp, bool(packet.marker), packet.payload)

    def _heard(self, layer: Layer, payload: bytes) -> bool:
        """Whether listeners hear ``layer``'s packets: the layer they heard while the
        publisher sends it, unless a larger one starts a keyframe (where a recorder can
        switch). Without simulcast: the one stream."""
        heard = self._heard_layer
        if layer is heard:
            return True
        if (
            heard is not None
            and self._layers.get(heard.ssrc) is heard
            and heard.active(layer.last_wall)
            and not (
                layer.rank() > heard.rank() and (self._detector is None or self._detector(payload))
            )
        ):
            return False
        self._heard_layer = layer
        return True

    def _forward(self, packet: Any) -> None:
        stats = self.stats
        stats.packets_received += 1
        layer = self._layers.get(packet.ssrc)
        if layer is None:
            layer = self._new_ssrc(packet)
            if layer is None:
                stats.packets_dropped += 1
                return
        seq: int = packet.sequence_number
        ts: int = packet.timestamp
        payload: bytes = packet.payload
        size = len(payload)
        newest = layer.newest
        delta = (seq - newest) & 0xFFFF
        if delta < MAX_DROPOUT:
            index = newest + delta
            in_order = delta != 0
        elif delta > SEQ_MOD - MAX_MISORDER:
            index = newest - (SEQ_MOD - delta)
            in_order = False
        elif seq == layer.bad_seq:
            # Two packets in a row after a jump: the publisher restarted its numbering,
            # which counts as a new source.
            self._restart(layer)
            index = layer.newest = _FIRST_INDEX + seq
            in_order = True
        else:
            layer.bad_seq = (seq + 1) & 0xFFFF
            stats.packets_dropped += 1
            return
        now = self._wall()
        layer.last_wall = now
        if in_order:
            if ts != layer.newest_ts and layer.newest_wall:
                step = (ts - layer.newest_ts) & 0xFFFFFFFF
                if step < 0x8000_0000:
                    layer.frame_step = step
            layer.newest = index
            layer.newest_ts = ts
            layer.newest_wall = now
            layer.boundary = bool(packet.marker)
            layer.octets += size
            if self._sizes and size > 10 and payload[0] & 0x17 == 0x10:
                self._learn_size(layer, payload)
        if self._paused:
            stats.packets_muted += 1
            return
        if layer.joiners and in_order:
            self._start_joiners(layer, index, ts, payload, now)
            self._capture(layer, index, seq, ts, packet.marker, payload)
        if layer.subscribers:
            self._send(layer.subscribers, index, seq, ts, packet.marker, payload, now)
        if layer.leaving and packet.marker and in_order:
            self._complete_switches(layer)

    def _send(
        self,
        subscribers: tuple[RtpSubscriber, ...],
        index: int,
        seq: int,
        ts: int,
        marker_bit: int,
        payload: bytes,
        now: float,
    ) -> None:
        """Send one packet (extended ``index`` of its layer) to ``subscribers``."""
        stats = self.stats
        size = len(payload)
        if size > MAX_PAYLOAD:
            stats.packets_dropped += len(subscribers)
            return
        marker = 0x80 if marker_bit else 0
        send_time = abs_send_time(now)
        record: HistoryRecord | None = None
        protect = _SRTP_PROTECT
        forwarded = dropped = errors = 0
        for sub in subscribers:
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
            if sub.send_time_at:
                buffer[sub.send_time_at : sub.send_time_at + 3] = send_time
            wide = sub.transport_wide
            if wide is not None:
                write_transport_sequence(buffer, sub.twcc_at, wide.stamp(now, end))
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
        stats.bytes_forwarded += forwarded * size
        stats.packets_dropped += dropped

    def _start_joiners(self, layer: Layer, index: int, ts: int, payload: bytes, now: float) -> None:
        """Subscribers waiting to start on ``layer`` do so at a packet that can start
        decoding (a keyframe start; any packet for audio). One coming from another
        layer never gets half a frame: when that layer is in the middle of one, the new
        layer's packets wait (:data:`SWITCH_BUFFER`) until its frame has ended."""
        key: bool | None = None
        started: list[RtpSubscriber] = []
        retry = False
        for sub in layer.joiners:
            if sub.pending is not None:
                continue  # capturing: _capture keeps its packets
            if sub.held:
                continue  # the queue ahead of it has not drained yet
            if sub.writer is None:
                if sub.resolve(self.codec):
                    # Its transport is up only now: a keyframe sent earlier could not
                    # reach it, so this is when to ask for the one it starts on.
                    self._ask_keyframe(layer)
                continue
            if key is None:
                key = self._detector is None or bool(self._detector(payload))
            if not key:
                retry = retry or now - sub.joined_at > KEYFRAME_RETRY
                continue
            old = sub.layer
            if old is not None and not old.boundary:
                sub.pending = []  # from this packet on, until ``old``'s frame ends
                old.leaving = (*old.leaving, sub)
                continue
            self._switch(sub, layer, index, ts, now)
            started.append(sub)
        if started:
            layer.joiners = tuple(s for s in layer.joiners if s not in started)
            layer.subscribers = (*layer.subscribers, *started)
            self.stats.subscribers_started += len(started)
        if retry:
            self._ask_keyframe(layer)

    def _switch(self, sub: RtpSubscriber, layer: Layer, index: int, ts: int, now: float) -> None:
        """Begin ``sub``'s stream on ``layer`` at this packet, leaving its old layer."""
        old = sub.layer
        min_step = 1
        self._draining.discard(sub)
        if old is not None:
            sub.resume = sub.state(old.newest_ts, old.newest_wall)
            min_step = max(1, old.frame_step)
            old.subscribers = tuple(s for s in old.subscribers if s is not sub)
            old.leaving = tuple(s for s in old.leaving if s is not sub)
        sub.begin(index, ts, now, self.codec.clockRate, min_step)
        sub.layer = layer

    def _capture(
        self, layer: Layer, index: int, seq: int, ts: int, marker: int, payload: bytes
    ) -> None:
        """Keep a packet of ``layer`` for subscribers that switch to it once their old
        layer's frame has ended; give up on a switch that waits too long."""
        for sub in layer.joiners:
            pending = sub.pending
            if pending is None:
                continue
            if len(pending) >= SWITCH_BUFFER:
                self._abandon_switch(sub)
                continue
            pending.append((index, seq, ts, marker, payload))

    def _abandon_switch(self, sub: RtpSubscriber, ask: bool = True) -> None:
        sub.pending = None
        old = sub.layer
        if old is not None:
            old.leaving = tuple(s for s in old.leaving if s is not sub)
        if ask and sub.target is not None:
            self._ask_keyframe(sub.target)  # start again at its next keyframe

    def _complete_switches(self, old: Layer) -> None:
        """``old`` just ended a frame: subscribers leaving it start on their new layer
        with the packets kept since its keyframe."""
        now = self._wall()
        for sub in old.leaving:
            layer, pending = sub.target, sub.pending
            sub.pending = None
            if not pending and sub in self._draining and sub.layer is old:
                self._drop_layer(sub, old)
                continue
            if layer is None or not pending:
                continue
            first_index, _, first_ts, _, _ = pending[0]
            self._switch(sub, layer, first_index, first_ts, now)
            layer.joiners = tuple(s for s in layer.joiners if s is not sub)
            layer.subscribers = (*layer.subscribers, sub)
            self.stats.subscribers_started += 1
            for index, seq, ts, marker, payload in pending:
                self._send((sub,), index, seq, ts, marker, payload, now)
        old.leaving = ()

    def _learn_size(self, layer: Layer, payload: bytes) -> None:
        size = vp8_keyframe_size(payload)
        if size is not None and size != (layer.width, layer.height):
            layer.width, layer.height = size
            for sub in self._subscribers:
                self.retarget(sub)

    # -- layers and sources ------------------------------------------------------

    def _new_ssrc(self, packet: Any) -> Layer | None:
        """A packet of an SSRC not seen yet: a simulcast layer (named by its RID), or
        the publisher's new source. None: it cannot be placed (yet)."""
        ssrc: int = packet.ssrc
        if ssrc in self._retired_ssrcs:
            # A late packet (a repair) of a source the publisher left: sending it
            # would restart everyone's stream for nothing.
            return None
        if self.rids:
            rid = packet.extensions.rtp_stream_id
            if rid is None or rid not in self.rids:
                return None  # the RID comes with a layer's first packets
            replaced = next((x for x in self._layers.values() if x.rid == rid), None)
            layer = self._add_layer(ssrc, rid, packet.sequence_number)
            if replaced is not None:
                self._replace(replaced, layer)
            return layer
        layer = self._add_layer(ssrc, None, packet.sequence_number)
        old, self._current = self._current, layer
        if old is not None:
            self._replace(old, layer)
        else:
            for sub in self._subscribers:
                self.retarget(sub)
        return layer

    def _add_layer(self, ssrc: int, rid: str | None, seq: int) -> Layer:
        layer = Layer(
            ssrc,
            rid,
            KeyframeRequester(
                lambda: self._send_pli(ssrc),
                self.stats,
                self._keyframe_request_failed,
                self._clock,
            ),
        )
        # Extended indices of the new source start just before its first packet, which
        # thus counts as in order.
        layer.newest = _FIRST_INDEX + ((seq - 1) & 0xFFFF)
        layer.last_wall = self._wall()
        self._layers[ssrc] = layer
        return layer

    def _replace(self, old: Layer, new: Layer) -> None:
        """The publisher's source changed: every subscriber of ``old`` continues its
        numbering after what it was sent and starts again at ``new``'s next keyframe."""
        self._retired_ssrcs = (*self._retired_ssrcs[-(RETIRED_SSRCS - 1) :], old.ssrc)
        self._layers.pop(old.ssrc, None)
        for sub in self._subscribers:
            if sub.layer is old or sub.target is old:
                self._leave(sub)
                self._join(sub, new)
        self._watch(asyncio.ensure_future(old.keyframes.close()), self._settle)

    def _restart(self, layer: Layer) -> None:
        """A layer's numbering restarted: its subscribers continue as after a mute."""
        for sub in layer.subscribers:
            self._leave(sub)
            self._join(sub, layer)

    def _join(self, sub: RtpSubscriber, layer: Layer, ask: bool = True) -> None:
        sub.target = layer
        sub.joined_at = self._wall()
        if sub not in layer.joiners:
            layer.joiners = (*layer.joiners, sub)
        if ask:
            self._ask_keyframe(layer)

    def _unjoin(self, sub: RtpSubscriber) -> None:
        if sub.pending is not None:
            self._abandon_switch(sub, ask=False)
        target = sub.target
        if target is not None and sub in target.joiners:
            target.joiners = tuple(s for s in target.joiners if s is not sub)

    def _drop_layer(self, sub: RtpSubscriber, old: Layer) -> None:
        """Congested: nothing more of ``old`` for ``sub``; its target's keyframe starts
        it again, numbered on from here."""
        self._draining.discard(sub)
        sub.resume = sub.state(old.newest_ts, old.newest_wall)
        old.subscribers = tuple(s for s in old.subscribers if s is not sub)
        sub.layer = None

    def _stop_draining(self, sub: RtpSubscriber) -> None:
        """``sub`` stays on its layer after all (its downlink went back up before
        the layer's frame ended)."""
        if sub in self._draining:
            self._draining.discard(sub)
            layer = sub.layer
            if layer is not None and sub.pending is None:
                layer.leaving = tuple(s for s in layer.leaving if s is not sub)

    def _leave(self, sub: RtpSubscriber) -> None:
        """Stop forwarding any layer to ``sub``; its stream waits to continue."""
        self._unjoin(sub)
        self._stop_draining(sub)
        sub.target = None
        layer = sub.layer
        if layer is not None:
            sub.resume = sub.state(layer.newest_ts, layer.newest_wall)
            layer.subscribers = tuple(s for s in layer.subscribers if s is not sub)
            sub.layer = None

    def _state_of(self, sub: RtpSubscriber) -> StreamState | None:
        layer = sub.layer
        if layer is None:
            return sub.state(0, 0.0)
        return sub.state(layer.newest_ts, layer.newest_wall)

    # -- housekeeping ----------------------------------------------------------

    def _housekeeping(self) -> None:
        """Every :data:`SENDER_REPORT_SYNC` s: layer bitrates and activity, choices
        that they change, and what each sender's reports say."""
        if self._stopped:
            return
        self._timer = asyncio.get_running_loop().call_later(SENDER_REPORT_SYNC, self._housekeeping)
        self.update_layers()
        self.refresh_sender_reports()
        now = self._clock()
        if self.kind == "video" and self._layers and now - self._remb_at >= REMB_INTERVAL:
            self._remb_at = now
            remb = hooks.send_remb(self._receiver, self.publish_bitrate, list(self._layers))
            self._watch(asyncio.ensure_future(remb), self._settle)

    def update_layers(self) -> None:
        """Measure each layer's bitrate; move subscribers off layers no longer sent."""
        now = self._clock()
        elapsed = now - self.rated_at
        if elapsed >= RATE_WINDOW / 2:
            self.rated_at = now
            for layer in self._layers.values():
                layer.bitrate = 0.5 * layer.bitrate + 0.5 * layer.octets * 8 / elapsed
                layer.octets = 0
        if self.rids:
            wall = self._wall()
            for sub in self._subscribers:
                current = sub.layer
                if current is not None and not current.active(wall):
                    self.retarget(sub)

    def refresh_sender_reports(self) -> None:
        """Make what each subscriber's sender reports (RFC 3550 6.4.1) true now: the
        packets and payload octets sent to it, and an (NTP, RTP) pair on its clock:
        its layer's newest packet's, or while it waits to continue, its last time
        carried forward to now."""
        clock_rate = self.codec.clockRate
        for sub in self._subscribers:
            resume = sub.resume
            layer = sub.layer
            if layer is not None:
                wall = layer.newest_wall
                rtp_ts = layer.newest_ts + sub.ts_offset
            elif resume is not None:
                wall = self._wall()
                rtp_ts = resume.last_timestamp + int((wall - resume.last_wall) * clock_rate)
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

    def _settle(self, task: asyncio.Future[Any]) -> None:
        """A housekeeping task ended; a failure (the connection went) is not news."""
        self._tasks.discard(task)
        if not task.cancelled():
            # Retrieved so that asyncio does not log it: RTCP to a closing peer fails.
            task.exception()

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
            sub.final_state = self._state_of(sub)
            sub.close()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        layers = list(self._layers.values())
        self._layers.clear()
        self._current = None
        for layer in layers:
            layer.subscribers = layer.joiners = ()
            await layer.keyframes.close()
        tasks = list(self._tasks)
        self._tasks.clear()
        for task in tasks:
            task.remove_done_callback(self._track_done)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
