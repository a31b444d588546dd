"""What one participant receives of each video, and at which quality.

Three things decide the layer of each video a viewer gets (RTP path only; the
frame path forwards what the publisher sends):

- what it shows: the size it renders each track at (a thumbnail gets a small
  layer, the stage a large one), or that it does not show it (no layer at all);
- what it asks for: ``auto``, ``low_data`` (the smallest layer of everything) or
  ``audio_only`` (no video);
- what its downlink carries (:class:`media.downlink.DownlinkQuality`, from the
  receiver reports of its videos, what it NACKs and, from a browser, the queue its
  transport-wide feedback shows building (:mod:`media.transport_wide`); probed with
  padding before going up).

Every few tenths of a second :meth:`Viewer.tick` probes when it is time, and returns
a notice for the participant when what it receives changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from . import hooks
from .downlink import AUDIO_ONLY, HIGH, LOW, DownlinkQuality, NackLoss
from .rtp_forward import RtpForwarder
from .rtp_subscriber import RtpSubscriber
from .transport_wide import TransportWide
from .twcc import feedback_in

Mode = Literal["auto", "low_data", "audio_only"]
LevelName = Literal["high", "medium", "low", "audio_only"]
# Seconds of queue left when a layer held back by a step down may start: its keyframe
# comes about a tenth of a second after we ask, the queue drains meanwhile.
DRAINED = 0.15
# A hold that hears nothing of the queue (no audio numbered, feedback lost) ends
# after this many seconds: the queue that was full has drained by then.
MAX_HOLD = 2.0
# A level fits what reached the viewer through a queue if it needs at most this share
# of it: the rest drains the queue (a level that fills the link leaves it full), and
# the figure, from a few packets, is rough.
FIT_SHARE = 0.7
LEVEL_NAMES: dict[int, LevelName] = {
    HIGH: "high",
    HIGH - 1: "medium",
    LOW: "low",
    AUDIO_ONLY: "audio_only",
}


@dataclass(frozen=True, slots=True)
class ReceivedVideo:
    """One video as the viewer gets it now: the size of the layer forwarded (0 when
    not known), or nothing forwarded."""

    track_id: str
    forwarded: bool
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class QualityNotice:
    """What the viewer receives, when it changed: its level, what limits it, and
    each video."""

    level: LevelName
    limited_by: Literal["network", "settings"] | None
    videos: tuple[ReceivedVideo, ...]


class Viewer:
    """One participant's side of every video it receives (the downlink protocol of
    :class:`media.rtp_subscriber.RtpSubscriber`)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.quality = DownlinkQuality(clock())
        self.nacks = NackLoss(clock())
        self._sent: dict[str, int] = {}  # track id -> packets sent, at the last tick
        self.mode: Mode = "auto"
        self._widths: dict[str, int] = {}  # track id -> rendered width (0: hidden)
        self._videos: dict[str, tuple[RtpForwarder, RtpSubscriber]] = {}
        self._last: QualityNotice | None = None
        # The subscribe connection's DTLS transport and its transport-wide numbering.
        self._wide: tuple[Any, TransportWide] | None = None
        # Since when its videos wait for the queue to drain, and the first number sent
        # after the wait began: only packets from then on show what is left of it.
        self._held: tuple[float, int] | None = None

    @property
    def level(self) -> int:
        """The level every video is capped at: the downlink's, or the viewer's choice."""
        if self.mode == "audio_only":
            return AUDIO_ONLY
        if self.mode == "low_data":
            return min(LOW, self.quality.level)
        return self.quality.level

    def report(self, fraction_lost: float) -> None:
        """A receiver report block about one of its videos."""
        self._judge(fraction_lost, self._clock())

    def nacked(self, subscriber: RtpSubscriber, index: int) -> None:
        """One of its videos was NACKed for output ``index``."""
        self.nacks.nacked(subscriber, index)

    def transport_wide(self, transport: Any) -> TransportWide:
        """The transport-wide numbering of the subscribe connection whose DTLS
        transport is ``transport``; a new connection starts a new one, and its
        feedback is listened to from then on."""
        if self._wide is not None and self._wide[0] is transport:
            return self._wide[1]
        wide = TransportWide()
        self._wide = (transport, wide)

        def heard(datagram: bytes) -> None:
            if self._wide is None or self._wide[1] is not wide:
                return  # an old connection's late feedback
            for packet in feedback_in(datagram):
                delivered = wide.feedback(packet)
                if delivered is not None:
                    self.queue_building(delivered)
            self._release(wide)

        hooks.listen_transport_feedback(transport, heard)
        return wide

    @property
    def transport_feedback(self) -> bool:
        """Whether its subscribe connection's transport-wide feedback reaches us."""
        return self._wide is not None and self._wide[1].feedback_packets > 0

    def queue_building(self, delivered: float) -> None:
        """A queue builds up on the downlink and ``delivered`` bits per second reach
        the viewer: if its level sends more than that, step down at once to the
        highest level that fits."""
        level = self.quality.level
        if self.quality.probing:
            # The probe's padding is what fills the queue: it fails, and stops now,
            # before the media behind it freezes.
            self.quality.fits(level, self._clock())
            self._padding_follows_probe()
            return
        if self.mode != "auto" or level <= LOW:
            return

        def needs(level: int) -> float:
            return sum(
                forwarder.bitrate_of(subscriber, HIGH - level)
                for forwarder, subscriber in self._videos.values()
            )

        if needs(level) <= delivered:
            return  # what it sends gets through: the queue is someone else's
        budget = delivered * FIT_SHARE
        fitting = next((n for n in range(level - 1, LOW, -1) if needs(n) <= budget), LOW)
        now = self._clock()
        if self.quality.fits(fitting, now):
            # The queue is full: the smaller layers wait until it has drained, or
            # their keyframe would be lost at its tail and the picture stay frozen.
            wide = self._wide[1] if self._wide is not None else None
            self._held = (now, wide.next_index if wide is not None else 0)
            self._retarget(congested=True, hold=True)

    def _release(self, wide: TransportWide | None) -> None:
        """Let held videos start their next layer once a packet sent after the wait
        began found at most :data:`DRAINED` of queue (or nothing was heard of it for
        :data:`MAX_HOLD`)."""
        held = self._held
        if held is None:
            return
        since, first = held
        drained = (
            wide is not None
            and wide.queue_delay is not None
            and wide.queue_delay <= DRAINED
            and wide.queue_delay_of >= first
        )
        if not drained and self._clock() - since < MAX_HOLD:
            return
        self._held = None
        for forwarder, subscriber in self._videos.values():
            forwarder.release(subscriber)

    def add(self, track_id: str, forwarder: RtpForwarder, subscriber: RtpSubscriber) -> None:
        """A video it now receives."""
        subscriber.downlink = self
        subscriber.numbering = self
        self._videos[track_id] = (forwarder, subscriber)
        self._sent[track_id] = subscriber.packets
        self._apply(track_id)

    def remove(self, track_id: str) -> None:
        """A video it no longer receives."""
        video = self._videos.pop(track_id, None)
        self._sent.pop(track_id, None)
        if video is not None:
            self.nacks.forget(video[1])

    def configure(self, mode: Mode, widths: dict[str, int]) -> None:
        """What the viewer asks for: a mode, and the width it renders each track at
        (0: hidden; tracks it does not name: as large as there is)."""
        self.mode = mode
        self._widths = dict(widths)
        for track_id in self._videos:
            self._apply(track_id)

    def tick(self) -> QualityNotice | None:
        """Probe the downlink when it is time; a notice when what it receives changed."""
        now = self._clock()
        self._release(None)
        self._judge_nacks(now)
        if self.mode == "auto" and self._videos:
            level = self.quality.level
            rate = next_rate = 0.0
            for forwarder, subscriber in self._videos.values():
                if level == AUDIO_ONLY:  # the next level up is the smallest layers
                    next_rate += forwarder.bitrate_of(subscriber, HIGH)
                else:
                    rate += forwarder.bitrate_of(subscriber, HIGH - level)
                    next_rate += forwarder.bitrate_of(subscriber, HIGH - level - 1)
            probe = self.quality.tick(now, rate, next_rate)
            self._padding_follows_probe()  # no verdict in time: a failure
            if probe is not None:
                for _, subscriber in self._videos.values():
                    if subscriber.layer is not None and subscriber.probe(
                        probe.bitrate, probe.seconds
                    ):
                        break
            if self.quality.level != level:
                self._retarget()
        notice = self._notice()
        if notice == self._last:
            return None
        self._last = notice
        return notice

    def _judge_nacks(self, now: float) -> None:
        """Close the NACK window when it covers enough packets: one more figure."""
        sent = 0
        for track_id, (_, subscriber) in self._videos.items():
            sent += subscriber.packets - self._sent[track_id]
            self._sent[track_id] = subscriber.packets
        figure = self.nacks.close(sent, now)
        if figure is not None:
            self._judge(figure[0], now, since=figure[1])

    def _judge(self, fraction_lost: float, now: float, since: float | None = None) -> None:
        """One figure of loss for the downlink; every video follows a level it changed."""
        level = self.quality.level
        if self.quality.report(fraction_lost, now, since=since):
            self._retarget(congested=self.quality.level < level)
        self._padding_follows_probe()  # a failed probe's padding only adds to the loss

    def _padding_follows_probe(self) -> None:
        """No padding once the probe is over: a failed one stops at once."""
        if not self.quality.probing:
            for _, subscriber in self._videos.values():
                subscriber.stop_probe()

    def _apply(self, track_id: str) -> None:
        forwarder, subscriber = self._videos[track_id]
        width = self._widths.get(track_id)
        forwarder.prefer(subscriber, width or None, width != 0)

    def _retarget(self, congested: bool = False, hold: bool = False) -> None:
        """Choose every video's layer again; ``congested``: the downlink stepped down;
        ``hold``: ... on a queue, which the next layers wait to drain."""
        for forwarder, subscriber in self._videos.values():
            forwarder.retarget(subscriber, congested, hold)

    def _notice(self) -> QualityNotice:
        videos = tuple(
            ReceivedVideo(
                track_id,
                subscriber.layer is not None,
                subscriber.layer.width if subscriber.layer is not None else 0,
                subscriber.layer.height if subscriber.layer is not None else 0,
            )
            for track_id, (_, subscriber) in sorted(self._videos.items())
        )
        limited_by: Literal["network", "settings"] | None = None
        if self.mode != "auto":
            limited_by = "settings"
        elif self.quality.level < HIGH:
            limited_by = "network"
        return QualityNotice(LEVEL_NAMES[self.level], limited_by, videos)
