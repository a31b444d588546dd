"""Fan-out of one published track's encoded frames to its subscribers.

A :class:`TrackForwarder` drains the publisher's remote track from the moment
it is published (so nothing piles up in aiortc's unbounded queue) and puts each
encoded frame into every subscriber's bounded queue. A subscriber's video starts
on a keyframe; when its queue overflows it drops to the next keyframe. Keyframe
requests from subscribers reach the publisher coalesced. Another consumer (a
recorder) may listen to every unmuted frame (:meth:`TrackForwarder.add_listener`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from . import hooks
from .counters import Counters
from .keyframe_requests import KeyframeRequester
from .peers import preferences_for

logger = logging.getLogger(__name__)

# (RTP timestamp, keyframe, encoded frame) of one forwarded frame.
FrameListener = Callable[[int, bool, bytes], None]

VIDEO_QUEUE_FRAMES = 60
AUDIO_QUEUE_FRAMES = 50


class ForwardingStats(Counters):
    """Counters of one forwarder (and, summed, of the SFU)."""

    __slots__ = (
        "bytes_forwarded",
        "frames_dropped",
        "frames_forwarded",
        "frames_muted",
        "frames_received",
        "keyframe_requests_relayed",
        "keyframe_requests_suppressed",
    )
    bytes_forwarded: int  # encoded frame bytes, summed over subscribers
    frames_dropped: int
    frames_forwarded: int
    frames_muted: int
    frames_received: int
    keyframe_requests_relayed: int
    keyframe_requests_suppressed: int


class SubscriberTrack(MediaStreamTrack):
    """What a subscriber's ``RTCRtpSender`` reads: encoded frames as ``av.Packet``.

    It lives as long as its transceiver: when the track it carries ends it waits,
    empty, and may be given another forwarder's frames (:meth:`rebind`)."""

    def __init__(self, kind: str, track_id: str, forwarder: TrackForwarder) -> None:
        super().__init__()
        self.kind = kind
        self._id = f"{track_id}"
        self._forwarder = forwarder
        self._queue: asyncio.Queue[av.Packet[Any]] = asyncio.Queue(
            VIDEO_QUEUE_FRAMES if kind == "video" else AUDIO_QUEUE_FRAMES
        )
        # Video must start on a keyframe, and restart on one after a drop.
        self.awaiting_keyframe = kind == "video"

    async def recv(self) -> av.Packet[Any]:
        """Next encoded frame; raises ``MediaStreamError`` once stopped."""
        if self.readyState != "live":
            raise MediaStreamError
        return await self._queue.get()

    def offer(self, packet: av.Packet[Any], stats: ForwardingStats) -> bool:
        """Queue one frame; return True if a keyframe is now needed. Never raises."""
        if self.readyState != "live":
            return False
        if self.awaiting_keyframe:
            if not packet.is_keyframe:
                stats.frames_dropped += 1
                return False
            self.awaiting_keyframe = False
        try:
            self._queue.put_nowait(packet)
        except asyncio.QueueFull:
            # This subscriber cannot keep up: skip to the next keyframe rather
            # than deliver a growing backlog late.
            self._drain()
            stats.frames_dropped += 1
            if self.kind == "video":
                self.awaiting_keyframe = True
                return True
            return False
        stats.frames_forwarded += 1
        stats.bytes_forwarded += packet.size
        return False

    def drop_queued(self) -> None:
        """Forget frames not yet taken by the sender."""
        self._drain()

    def rebind(self, forwarder: TrackForwarder) -> None:
        """Carry another forwarder's frames from now on (its transceiver was reused);
        video waits for that track's next keyframe."""
        self._drain()
        self._forwarder = forwarder
        self.awaiting_keyframe = self.kind == "video"

    def stop(self) -> None:
        """Called by aiortc when the sender stops: detach from the forwarder."""
        super().stop()
        self._forwarder.remove_subscriber(self)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()


class FrameSubscription:
    """One subscriber's transceiver for a frame-forwarded track."""

    def __init__(self, transceiver: RTCRtpTransceiver, track: SubscriberTrack) -> None:
        self.transceiver = transceiver
        self.track = track

    def detach(self) -> None:
        """Stop feeding this subscriber. Its sender stays (waiting on an empty queue)
        so that the transceiver can carry the next track of its kind."""
        self.track._forwarder.remove_subscriber(self.track)
        self.track.drop_queued()


class TrackForwarder:
    """Forwards one published track to any number of subscribers."""

    def __init__(
        self,
        track_id: str,
        source: MediaStreamTrack,
        request_keyframe: Callable[[], Awaitable[bool]],
        on_ended: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        codec: RTCRtpCodecParameters | None = None,
    ) -> None:
        self.track_id = track_id
        self.codec = codec
        self.kind = source.kind
        self.stats = ForwardingStats()
        self._source = source
        self._on_ended = on_ended
        self._subscribers: set[SubscriberTrack] = set()
        self._keyframes = KeyframeRequester(
            request_keyframe, self.stats, self._keyframe_request_failed, clock
        )
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._paused = False
        self._listeners: tuple[FrameListener, ...] = ()

    @property
    def subscriber_count(self) -> int:
        """How many subscribers receive this track now."""
        return len(self._subscribers)

    def counters(self) -> dict[str, int]:
        """This track's counters, for ``/metrics``."""
        return self.stats.as_dict()

    def start(self) -> None:
        """Begin draining the publisher's track."""
        self._task = asyncio.create_task(self._run(), name=f"forward-{self.track_id}")

    def add_subscriber(self) -> SubscriberTrack:
        """A new subscriber; its video waits for a keyframe, which we ask for now."""
        track = SubscriberTrack(self.kind, self.track_id, self)
        self._add(track)
        return track

    def _add(self, track: SubscriberTrack) -> None:
        if self._stopped:
            return  # it carries nothing; its transceiver goes inactive with the track
        self._subscribers.add(track)
        if self.kind == "video":
            self.request_keyframe()

    def set_paused(self, paused: bool) -> None:
        """Stop (or resume) forwarding to everyone at once: a moderator's mute.

        Resumed video restarts on a keyframe, which is asked for at once.
        """
        if paused == self._paused:
            return
        self._paused = paused
        if paused:
            # Frames already queued for subscribers are not sent either.
            for track in self._subscribers:
                track.drop_queued()
        elif self.kind == "video":
            for track in self._subscribers:
                track.awaiting_keyframe = True
            self.request_keyframe()

    def attach(
        self, pc: RTCPeerConnection, reuse: FrameSubscription | None = None
    ) -> FrameSubscription:
        """Carry this track to ``pc`` on a new ``sendonly`` transceiver, or on the
        transceiver of a detached subscription (``reuse``).

        Its sender packetises our encoded frames; the subscriber's PLI/FIR come
        back here. Call before creating the offer.
        """
        if self.codec is None:
            raise ValueError("a forwarder needs its codec to offer it to subscribers")
        if reuse is not None:
            track = reuse.track
            track.rebind(self)
            self._add(track)
            transceiver = reuse.transceiver
        else:
            track = self.add_subscriber()
            transceiver = pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences(preferences_for(self.kind, self.codec))
        hooks.on_keyframe_request(transceiver.sender, self.request_keyframe)
        return FrameSubscription(transceiver, track)

    def add_listener(self, listener: FrameListener) -> Callable[[], None]:
        """Also give every unmuted frame to ``listener`` (a recorder), after the
        subscribers, as ``(timestamp, keyframe, data)``; returns the function that
        removes it. The listener must not block."""
        self._listeners = (*self._listeners, listener)

        def remove() -> None:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

        return remove

    def remove_subscriber(self, track: SubscriberTrack) -> None:
        """Stop forwarding to one subscriber (it left or unsubscribed)."""
        self._subscribers.discard(track)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per interval (coalesced)."""
        if self.kind == "video" and not self._stopped:
            self._keyframes.request()

    async def stop(self) -> None:
        """End the track for every subscriber and release the forwarding task."""
        if self._stopped:
            return
        self._stopped = True
        # Subscribers' tracks stay open: their transceivers go inactive and may carry
        # another track later (the SFU decides).
        for track in list(self._subscribers):
            track.drop_queued()
        self._subscribers.clear()
        await self._keyframes.close()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _tell_listeners(self, packet: av.Packet[Any]) -> None:
        timestamp, keyframe, data = int(packet.pts or 0), bool(packet.is_keyframe), bytes(packet)
        for listener in self._listeners:
            try:
                listener(timestamp, keyframe, data)
            except Exception:
                self.stats.frames_dropped += 1

    def _keyframe_request_failed(self, error: BaseException) -> None:
        # A failed RTCP send must not end forwarding.
        logger.debug("keyframe request for %s failed: %r", self.track_id, error)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    packet = await self._source.recv()
                except MediaStreamError:
                    break
                self.stats.frames_received += 1
                if self._paused:
                    self.stats.frames_muted += 1
                    continue
                if not isinstance(packet, av.Packet):
                    # Only encoded frames are forwarded; anything else is a bug upstream.
                    self.stats.frames_dropped += 1
                    continue
                need_keyframe = False
                for subscriber in self._subscribers:
                    if subscriber.offer(packet, self.stats):
                        need_keyframe = True
                if need_keyframe:
                    self.request_keyframe()
                if self._listeners:
                    self._tell_listeners(packet)
        finally:
            if not self._stopped:
                self._stopped = True
                for track in list(self._subscribers):
                    track.drop_queued()
                self._subscribers.clear()
                self._on_ended(self.track_id)
