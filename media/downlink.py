"""How much video one participant's downlink can carry, judged from its reports.

Sans-I/O: loss figures and the time go in; a *level* comes out, which caps the
simulcast layer of every video the participant receives: :data:`HIGH` (no cap), one
step down per level, :data:`LOW` (the lowest layer), :data:`AUDIO_ONLY` (no video).

Two figures of loss come in: each receiver report block (the fraction of packets
lost, RFC 3550 6.4.1, about the last second or so), and, between them, the share of
the packets sent that the viewer NACKed (:class:`NackLoss`, within a round trip of
the loss, a window of about half a second).

- **Down, within a second or two.** When the smoothed loss passes :data:`LOSS_DOWN`
  the level drops one step (two when it passes :data:`LOSS_FAR_DOWN`); the next
  step counts only figures about the new level (that began after the change, or
  :data:`SETTLE` seconds after it for a report, whose span is not known), so that
  each step can take effect before the next; never past the lowest layer at once.
  Loss that receiver reports show at the lowest layer for :data:`VIDEO_OFF_AFTER`
  seconds turns video off; it is tried again after a hold that grows each time it
  has to go off again.
- **Down before the loss, when the viewer tells when packets arrived.** A browser
  with transport-wide feedback (:mod:`media.transport_wide`) shows a queue building
  on its path within a few hundred milliseconds, long before that queue overflows
  and its loss reaches us: the level drops at once to the highest one that fits in
  what reached the viewer meanwhile (:meth:`DownlinkQuality.fits`); never to audio
  only, which waits for the viewer's own account of its loss.
- **Up, slowly and safely.** After :data:`HOLD` seconds without loss at a level
  (:data:`HOLD_AFTER_UP` right after a step up: the probe has just shown that the
  link carries more than it did), the server *probes*: it sends padding (no media)
  for :data:`PROBE_SECONDS` so that the downlink carries what the next level would
  need. The first figure after the probe tells: no loss, one step up. Loss during
  it, or a queue its browser reports building (:meth:`DownlinkQuality.fits`), fails
  it at once and its padding stops there, before the media behind it freezes; the
  next one waits half as long again (up to :data:`MAX_HOLD`).
"""

from __future__ import annotations

from dataclasses import dataclass

HIGH = 2
LOW = 0
AUDIO_ONLY = -1
LOSS_DOWN = 0.08  # smoothed fraction lost above which the level drops
LOSS_FAR_DOWN = 0.35  # ... by two steps at once
LOSS_CLEAR = 0.02  # below this a level (or a probe) counts as clean
SMOOTHING = 0.5  # weight of each new report in the smoothed loss
SETTLE = 1.5  # seconds a receiver report may look back: what it says after a step
NACK_WINDOW_PACKETS = 30  # a NACK figure covers at least this many packets sent
NACK_WINDOW_MAX = 4.0  # seconds: a window still short of packets then starts again
# Seconds of loss at the lowest layers before video goes off: the first reports there
# still count what was lost before the switch (which waits for a keyframe).
VIDEO_OFF_AFTER = 4.0
HOLD = 5.0  # seconds clean at a level before probing the next
HOLD_AFTER_UP = 2.0  # ... after a step up (a step down brings back at least HOLD)
MAX_HOLD = 10.0  # the wait between probes grows to at most this after failures
PROBE_SECONDS = 1.5
VERDICT_WAIT = 3.0  # a probe without a report this long after it counts as failed


@dataclass(frozen=True, slots=True)
class Probe:
    """Send padding at ``bitrate`` (bits per second) for ``seconds``."""

    bitrate: float
    seconds: float


class DownlinkQuality:
    """The video level of one participant's downlink."""

    def __init__(self, now: float, level: int = HIGH) -> None:
        self.level = level
        self.loss = 0.0
        self._changed_at = now
        self._clean_since: float | None = now
        self._hold = HOLD
        self._probe_until: float | None = None
        self._off_hold = HOLD  # the hold after video next goes off

    @property
    def probing(self) -> bool:
        """Whether padding is being sent now."""
        return self._probe_until is not None

    def report(self, fraction_lost: float, now: float, since: float | None = None) -> bool:
        """A figure of loss about the time from ``since`` to ``now``: a NACK window,
        or a receiver report block when ``since`` is None (about the last
        :data:`SETTLE` seconds or so); True if the level changed. Only reports turn
        video off: the drastic step waits for the viewer's own account of its loss."""
        from_nacks = since is not None
        since = now - SETTLE if since is None else since
        self.loss = (1 - SMOOTHING) * self.loss + SMOOTHING * max(0.0, min(1.0, fraction_lost))
        if self._probe_until is not None:
            if fraction_lost > LOSS_CLEAR:
                return self._probe_failed(now)  # the probe, not the media, congested it
            if now >= self._probe_until:  # the first report after it: clean
                return self._probe_passed(now)
            return False
        if self.loss > LOSS_CLEAR:
            self._clean_since = None
        elif self._clean_since is None:
            self._clean_since = now
        # A clean figure never steps down: the smoothed loss lags behind a link that
        # has just recovered (after a step down, the queue's tail was still lost).
        if self.loss <= LOSS_DOWN or fraction_lost <= LOSS_CLEAR or since < self._changed_at:
            return False
        if self.level == AUDIO_ONLY or (
            self.level == LOW and (from_nacks or now - self._changed_at < VIDEO_OFF_AFTER)
        ):
            return False
        steps = 2 if self.loss > LOSS_FAR_DOWN else 1
        # Video goes off only once the smallest layers have had their chance.
        self.level = max(LOW if self.level > LOW else AUDIO_ONLY, self.level - steps)
        self._changed_at = now
        self._clean_since = None
        self._hold = max(self._hold, HOLD)  # the link just got worse: no quick probe
        if self.level == AUDIO_ONLY:
            # Each time video has to go off again, it is tried again later: a link that
            # cannot carry the smallest layers loses its audio too while they are tried.
            self._hold = self._off_hold
            self._off_hold = min(MAX_HOLD, self._off_hold * 1.5)
        self.loss = 0.0  # judge the new level on its own reports
        return True

    def fits(self, level: int, now: float) -> bool:
        """A queue builds up on the downlink and only ``level`` (below this one) fits
        in what gets through: step down to it at once; True if the level changed.
        During a probe, the probe is what filled the queue: it fails, the level stays."""
        if self._probe_until is not None:
            self._probe_failed(now)
            return False
        level = max(LOW, level)
        if level >= self.level:
            return False
        self.level = level
        self._changed_at = now
        self._clean_since = None
        self._hold = max(self._hold, HOLD)  # the link just got worse: no quick probe
        self.loss = 0.0  # judge the new level on its own figures
        return True

    def tick(self, now: float, rate: float, next_rate: float) -> Probe | None:
        """Called a few times a second with the bitrate the participant receives now
        and the one the next level up would need: a probe to send, or None."""
        if self._probe_until is not None:
            if self.level == AUDIO_ONLY and now >= self._probe_until:
                # No video is sent, so nothing can be heard of it (a browser stops
                # reporting a stream it no longer receives): the end of the probe
                # without a report of loss is its verdict.
                self._probe_passed(now)
            elif now > self._probe_until + VERDICT_WAIT:
                self._probe_failed(now)  # no report came: do not believe it carried
            return None
        # At audio only nothing is sent to be lost: the hold since video went off is
        # all it waits for.
        clean = self.level == AUDIO_ONLY or (
            self._clean_since is not None and now - self._clean_since >= self._hold
        )
        if self.level >= HIGH or not clean or now - self._changed_at < self._hold:
            return None
        if next_rate <= rate:  # the next level sends nothing more: nothing to find out
            self._probe_passed(now)
            return None
        self._probe_until = now + PROBE_SECONDS
        return Probe(bitrate=next_rate - rate, seconds=PROBE_SECONDS)

    def _probe_passed(self, now: float) -> bool:
        self._probe_until = None
        if self.level >= LOW:
            self._off_hold = HOLD  # the link carries more than the smallest layers
        self.level += 1
        self._changed_at = now
        self._clean_since = now
        self._hold = HOLD_AFTER_UP
        return True

    def _probe_failed(self, now: float) -> bool:
        self._probe_until = None
        self._hold = min(MAX_HOLD, self._hold * 1.5)
        self._clean_since = None
        self._changed_at = now
        self.loss = 0.0
        return False


class NackLoss:
    """The share of the packets sent to a viewer that it NACKed, window by window.

    A receiver asks again for what is still missing each time it finds a new gap, so
    each packet counts once, at its first NACK: NACKs come in increasing order, so
    only indices past the highest counted are new. A window closes once it covers
    :data:`NACK_WINDOW_PACKETS` packets sent (a small layer sends a few a tenth of a
    second), so that one lost packet does not read as heavy loss."""

    def __init__(self, now: float) -> None:
        self._since = now
        self._sent = 0
        self._nacked = 0
        self._highest: dict[object, int] = {}

    def nacked(self, stream: object, index: int) -> None:
        """``stream`` (one video sent to the viewer) was NACKed for output ``index``."""
        if index > self._highest.get(stream, -1):
            self._highest[stream] = index
            self._nacked += 1

    def forget(self, stream: object) -> None:
        """``stream`` is no longer sent to the viewer."""
        self._highest.pop(stream, None)

    def close(self, sent: int, now: float) -> tuple[float, float] | None:
        """``sent`` more packets went to the viewer since the last call: (fraction
        NACKed, when the window began) if the window is full, else None."""
        self._sent += sent
        if self._sent < NACK_WINDOW_PACKETS:
            if now - self._since > NACK_WINDOW_MAX:
                self._since, self._sent, self._nacked = now, 0, 0
            return None
        figure = (min(1.0, self._nacked / self._sent), self._since)
        self._since, self._sent, self._nacked = now, 0, 0
        return figure
