"""The streams a publisher sends for one track, and which one a subscriber gets.

A camera published with simulcast arrives as up to four *layers* (RFC 8853): the
same picture at several sizes and bitrates, each its own SSRC, named by a RID. A
track without simulcast is one layer, replaced by a new one when the publisher's
source changes. Each subscriber is forwarded exactly one layer of a track; which one
follows what it shows (the size a viewer renders the track at), what it asks for
(low data, audio only) and what its downlink carries (:mod:`media.downlink`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .keyframe_requests import KeyframeRequester

if TYPE_CHECKING:
    from .rtp_subscriber import RtpSubscriber

FIT = 0.8  # a layer fits a rendered size when it is at least this part of it
RATE_WINDOW = 1.0  # seconds over which a layer's bitrate is measured
INACTIVE_AFTER = 2.0  # seconds without a packet after which a layer is not chosen


@dataclass(eq=False, slots=True)
class Layer:
    """One SSRC of a published track: its numbering, its size, its subscribers."""

    ssrc: int
    rid: str | None
    keyframes: KeyframeRequester
    # The extended index of the newest packet in sequence order, its RTP timestamp
    # and arrival (wall clock), and a jump of the numbering awaiting proof.
    newest: int = 0
    newest_ts: int = 0
    newest_wall: float = 0.0
    bad_seq: int | None = None
    boundary: bool = True  # the newest packet ended a frame (marker bit)
    frame_step: int = 0  # RTP ticks between its last two frames
    width: int = 0  # from its keyframes (VP8); 0 until one is seen
    height: int = 0
    octets: int = 0  # payload octets since the last rate update
    bitrate: float = 0.0  # bits per second over the last window
    last_wall: float = 0.0  # arrival of its last packet
    subscribers: tuple[RtpSubscriber, ...] = ()  # forwarded this layer now
    joiners: tuple[RtpSubscriber, ...] = field(default=())  # starting on it at a keyframe
    leaving: tuple[RtpSubscriber, ...] = field(default=())  # switching away at its frame end

    def active(self, now: float) -> bool:
        """Whether the publisher still sends this layer."""
        return now - self.last_wall < INACTIVE_AFTER

    def rank(self) -> tuple[int, float]:
        """Orders layers from the smallest to the largest picture."""
        return (self.width * self.height, self.bitrate)


def choose(layers: Sequence[Layer], max_width: int | None, steps_down: int = 0) -> Layer | None:
    """The layer a subscriber should get, among ``layers`` (the active ones).

    ``max_width``: the width it renders the track at (None: as large as there is):
    the smallest layer at least :data:`FIT` of it, else the largest. ``steps_down``:
    its downlink's cap, in layers below the largest (0: no cap).
    """
    if not layers:
        return None
    ordered = sorted(layers, key=Layer.rank)
    chosen = len(ordered) - 1
    if max_width is not None:
        fitting = [i for i, layer in enumerate(ordered) if layer.width >= max_width * FIT]
        if fitting:
            chosen = fitting[0]
    chosen = min(chosen, len(ordered) - 1 - steps_down)
    return ordered[max(0, chosen)]
