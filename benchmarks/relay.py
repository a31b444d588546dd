"""Baseline server: our app with aiortc's ``MediaRelay`` in place of encoded forwarding.

Benchmark-only. The signalling, lessons and peer connections are ours; only the
forwarding differs: the publisher's receiver really decodes (the passthrough
decoder hook is removed in this process), one ``MediaRelay`` per published track
hands each decoded frame to every subscriber, and each subscriber's
``RTCRtpSender`` encodes it again (decode once, encode per subscriber), as an
aiortc application built on ``MediaRelay`` does. Video relay proxies are
unbuffered (``buffered=False``): a subscriber whose encoder falls behind skips
to the newest frame instead of building a backlog. Audio proxies are buffered
(aiortc's default), since skipping 20 ms audio frames would be heard. A
subscriber's PLI reaches its own encoder (aiortc's default), not the publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import uvicorn
from aiortc import RTCIceServer, RTCPeerConnection, RTCRtpTransceiver
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from media import hooks
from media.forwarder import ForwardingStats
from media.peers import IceSettings, preferences_for
from media.sfu import IncomingTrack, Sfu

logger = logging.getLogger(__name__)


class RelaySubscriberTrack(MediaStreamTrack):
    """One subscriber's view of a relayed track: decoded frames, for its sender to encode."""

    def __init__(self, proxy: Any, forwarder: RelayForwarder) -> None:
        super().__init__()
        self.kind = forwarder.kind
        self._proxy = proxy
        self._forwarder = forwarder

    async def recv(self) -> Any:
        """The newest decoded frame."""
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._proxy.recv()
        self._forwarder.stats.frames_forwarded += 1
        return frame

    def end(self) -> None:
        """End the track for this subscriber (wakes a pending ``recv``)."""
        proxy = self._proxy
        proxy.stop()
        # Wake a pending recv with "no frame" so that it ends.
        event = getattr(proxy, "_new_frame_event", None)
        queue = getattr(proxy, "_queue", None)
        if event is not None:
            proxy._frame = None
            event.set()
        elif queue is not None:
            queue.put_nowait(None)

    def stop(self) -> None:
        """Called by aiortc when the sender stops."""
        super().stop()
        self._forwarder.remove_subscriber(self)
        self._proxy.stop()


class RelaySubscription:
    """One subscriber's transceiver for a relayed track; it carries that track only."""

    def __init__(self, transceiver: RTCRtpTransceiver, track: RelaySubscriberTrack) -> None:
        self.transceiver = transceiver
        self._track = track

    def detach(self) -> None:
        """End the track for this subscriber."""
        self._track.end()


class RelayForwarder:
    """The ``MediaRelay`` counterpart of ``media.forwarder.TrackForwarder``.

    It declines to reuse a freed transceiver (each subscription gets a new one): its
    senders' encoders end with their track, and this baseline is measured on lessons
    whose tracks do not come and go."""

    def __init__(
        self,
        track_id: str,
        source: MediaStreamTrack,
        codec: RTCRtpCodecParameters,
        on_ended: Any,
    ) -> None:
        self.track_id = track_id
        self.codec = codec
        self.kind = source.kind
        self.stats = ForwardingStats()
        self._relay = MediaRelay()
        self._source = source
        self._on_ended = on_ended
        self._subscribers: set[RelaySubscriberTrack] = set()
        # One proxy drains the source from the start: without it MediaRelay only starts
        # reading at the first subscriber and delivers a stale backlog (see SFU-NOTES).
        self._drain = self._relay.subscribe(source, buffered=False)
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def subscriber_count(self) -> int:
        """How many subscribers receive this track now."""
        return len(self._subscribers)

    def request_keyframe(self) -> None:
        """Nothing to ask: each subscriber's own encoder makes its keyframes."""

    def start(self) -> None:
        """Begin reading (and so decoding) the publisher's track."""
        self._task = asyncio.create_task(self._run(), name=f"relay-{self.track_id}")

    def add_subscriber(self) -> RelaySubscriberTrack:
        """A new subscriber: its own relay proxy."""
        buffered = self.kind == "audio"
        track = RelaySubscriberTrack(self._relay.subscribe(self._source, buffered), self)
        if self._stopped:
            track.end()
        else:
            self._subscribers.add(track)
        return track

    def attach(self, pc: RTCPeerConnection, reuse: Any = None) -> RelaySubscription:
        """A new ``sendonly`` transceiver whose sender encodes this subscriber's frames
        (``reuse`` is declined).

        A subscriber's PLI stays with its own encoder (aiortc's default).
        """
        track = self.add_subscriber()
        transceiver = pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences(preferences_for(self.kind, self.codec))
        return RelaySubscription(transceiver, track)

    def remove_subscriber(self, track: RelaySubscriberTrack) -> None:
        """Forget one subscriber."""
        self._subscribers.discard(track)

    def set_paused(self, paused: bool) -> None:
        """Muting is not part of this baseline's measurements."""

    def counters(self) -> dict[str, int]:
        """This track's counters, for ``/metrics``."""
        return self.stats.as_dict()

    async def stop(self) -> None:
        """End every subscriber's track and the draining task."""
        if self._stopped:
            return
        self._stopped = True
        for track in list(self._subscribers):
            track.end()
        self._subscribers.clear()
        self._drain.stop()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self._drain.recv()
                except MediaStreamError:
                    break
                self.stats.frames_received += 1
        finally:
            if not self._stopped:
                self._stopped = True
                for track in list(self._subscribers):
                    track.end()
                self._subscribers.clear()
                self._on_ended(self.track_id)


class RelaySfu(Sfu):
    """Our SFU with ``MediaRelay`` forwarding (decode once, encode per subscriber)."""

    def start_forwarding(self, participant_id: str, track_id: str, incoming: IncomingTrack) -> None:
        """Relay a published track (its receiver decodes: no passthrough hook here)."""
        media = self._media(participant_id)
        media.published[incoming.mid] = track_id
        forwarder = RelayForwarder(
            track_id,
            incoming.track,
            incoming.codec,
            on_ended=lambda tid: self._forwarder_ended(participant_id, tid),
        )
        self._forwarders[track_id] = forwarder
        self._publishers[track_id] = participant_id
        forwarder.start()


class _RelayServer(uvicorn.Server):
    """Uvicorn that tells every participant goodbye on shutdown, as ``lco serve`` does."""

    def __init__(self, config: uvicorn.Config, state: Any) -> None:
        super().__init__(config)
        self._state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._state.shutdown()
        await super().shutdown(sockets)


def main(argv: list[str]) -> int:
    """``python -m benchmarks relay-server``: the arguments of ``lco serve``.

    Public names of the product only, but two: ``ServerState._track_ended`` (how the
    SFU tells the lessons a track ended) and, in :class:`RelaySfu`, the ``Sfu``
    members a forwarder factory needs (``_media``, ``_forwarders``, ``_publishers``,
    ``_forwarder_ended``): the SFU has no public way to plug in another forwarder.
    """
    from server.app import create_app
    from server.cli import build_parser, settings_from_args

    args = build_parser().parse_args(["serve", *argv])
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    settings = settings_from_args(args)
    app = create_app(settings)
    state = app.state.lco
    # Receivers in this process really decode (counted); never the passthrough decoder.
    hooks.install_counting_hooks()
    hooks.set_host_addresses(settings.ice_host_addresses)
    ice = IceSettings(
        ice_servers=tuple(
            RTCIceServer(urls=s.url, username=s.username, credential=s.credential)
            for s in settings.ice_servers
            if not s.is_turn
        ),
        public_ip=settings.public_ip,
    )
    state.sfu = RelaySfu(ice, on_track_ended=state._track_ended)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level.lower(),
        ws_max_size=1 << 20,
        ws_per_message_deflate=False,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    _RelayServer(config, state).run()
    return 0
