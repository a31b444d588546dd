"""The downlink level of one viewer, from its receiver reports (media/downlink.py)."""

from __future__ import annotations

from media.downlink import (
    AUDIO_ONLY,
    HIGH,
    HOLD,
    HOLD_AFTER_UP,
    LOSS_DOWN,
    LOW,
    MAX_HOLD,
    NACK_WINDOW_MAX,
    NACK_WINDOW_PACKETS,
    PROBE_SECONDS,
    SETTLE,
    VERDICT_WAIT,
    VIDEO_OFF_AFTER,
    DownlinkQuality,
    NackLoss,
    Probe,
)


def reports(quality: DownlinkQuality, loss: float, start: float, seconds: float) -> float:
    """One report a second; returns the time after the last."""
    now = start
    while now < start + seconds:
        quality.report(loss, now)
        now += 1.0
    return now


def test_heavy_loss_steps_down_two_levels_at_once_then_waits_to_settle() -> None:
    quality = DownlinkQuality(now=0.0)
    assert quality.report(0.9, SETTLE + 0.1)  # smoothed, still far past LOSS_FAR_DOWN
    assert quality.level == HIGH - 2 == LOW
    assert not quality.report(0.9, SETTLE + 0.5)  # settling: no second step yet
    # The smallest layers get longer before video goes off.
    assert not quality.report(0.9, 2 * SETTLE + 0.2)
    assert quality.report(0.9, SETTLE + VIDEO_OFF_AFTER + 0.2)
    assert quality.level == AUDIO_ONLY
    assert not quality.report(0.9, 10.0)  # nothing below audio only


def test_heavy_loss_one_level_up_stops_at_the_smallest_layers_first() -> None:
    """From medium, two steps would turn video off: the smallest layers get their
    chance first (a 300 kbit/s link carries them)."""
    quality = DownlinkQuality(now=0.0, level=HIGH - 1)
    assert quality.report(0.9, SETTLE + 0.1)
    assert quality.level == LOW


def test_moderate_loss_steps_down_one_level_and_light_loss_none() -> None:
    quality = DownlinkQuality(now=0.0)
    reports(quality, 0.03, SETTLE, 5)
    assert quality.level == HIGH
    now = reports(quality, 0.2, 10.0, 2)
    assert quality.level == HIGH - 1
    assert now < 13.0


def probe_until_verdict(quality: DownlinkQuality, now: float, loss: float) -> tuple[Probe, float]:
    probe = quality.tick(now, rate=150e3, next_rate=500e3)
    assert probe is not None and probe.bitrate == 350e3 and probe.seconds == PROBE_SECONDS
    assert quality.probing and quality.tick(now + 0.5, 150e3, 500e3) is None
    quality.report(loss, now + PROBE_SECONDS + 0.1)
    return probe, now + PROBE_SECONDS + 0.1


def test_a_clean_level_is_probed_and_a_clean_probe_steps_up() -> None:
    quality = DownlinkQuality(now=0.0, level=LOW)
    assert quality.tick(1.0, 150e3, 500e3) is None  # not clean for long enough yet
    now = reports(quality, 0.0, 1.0, HOLD + 1)
    _, now = probe_until_verdict(quality, now, loss=0.0)
    assert quality.level == LOW + 1 and not quality.probing
    # The next level up waits for its own hold, a shorter one right after a step up.
    assert quality.tick(now + HOLD_AFTER_UP - 0.1, 500e3, 1200e3) is None
    reports(quality, 0.0, now + 0.5, HOLD_AFTER_UP)
    assert quality.tick(now + HOLD_AFTER_UP + 0.1, 500e3, 1200e3) is not None
    assert HOLD_AFTER_UP < HOLD


def test_a_step_down_after_a_step_up_waits_the_full_hold_again() -> None:
    quality = DownlinkQuality(now=0.0, level=LOW)
    now = reports(quality, 0.0, 1.0, HOLD + 1)
    _, now = probe_until_verdict(quality, now, loss=0.0)
    assert quality.level == LOW + 1
    assert quality.report(0.9, now + 2.0, since=now + 0.5)  # the link drops again
    assert quality.level == LOW
    later = reports(quality, 0.0, now + 2.5, HOLD - 1)
    assert quality.tick(later, 150e3, 500e3) is None  # not after HOLD_AFTER_UP
    later = reports(quality, 0.0, later, 2)
    assert quality.tick(later, 150e3, 500e3) is not None


def test_a_probe_that_loses_fails_and_the_next_one_waits_longer() -> None:
    quality = DownlinkQuality(now=0.0, level=LOW)
    now = reports(quality, 0.0, 1.0, HOLD + 1)
    _, now = probe_until_verdict(quality, now, loss=0.3)
    assert quality.level == LOW and not quality.probing
    now = reports(quality, 0.0, now, HOLD + 0.5)
    assert quality.tick(now, 150e3, 500e3) is None  # the wait grew by half
    now = reports(quality, 0.0, now, HOLD)
    assert quality.tick(now, 150e3, 500e3) is not None
    assert HOLD * 1.5 <= MAX_HOLD


def test_a_probe_without_any_report_counts_as_failed() -> None:
    quality = DownlinkQuality(now=0.0, level=LOW)
    now = reports(quality, 0.0, 1.0, HOLD + 1)
    assert quality.tick(now, 150e3, 500e3) is not None
    assert quality.tick(now + PROBE_SECONDS + VERDICT_WAIT + 0.1, 150e3, 500e3) is None
    assert not quality.probing and quality.level == LOW


def test_a_level_that_costs_nothing_more_is_taken_without_a_probe() -> None:
    """Thumbnails only, or one layer only: the next level sends the same, so there is
    nothing to probe, and the level must not stay low (the viewer may enlarge a tile)."""
    quality = DownlinkQuality(now=0.0, level=LOW)
    now = reports(quality, 0.0, 1.0, HOLD + 1)
    assert quality.tick(now, 150e3, 150e3) is None
    assert quality.level == LOW + 1 and not quality.probing
    assert quality.tick(now + 1.0, 150e3, 150e3) is None  # each step waits its hold
    assert quality.level == LOW + 1
    assert quality.tick(now + HOLD_AFTER_UP + 0.1, 150e3, 150e3) is None
    assert quality.level == HIGH
    top = DownlinkQuality(now=0.0)
    assert top.tick(100.0, 1e6, 2e6) is None  # already high


def test_a_figure_about_the_new_level_steps_again_at_once_an_older_one_waits() -> None:
    """A NACK window says which time it covers: the next step needs no settling time,
    only a figure that began after the last step (a report waits SETTLE)."""
    quality = DownlinkQuality(now=0.0)
    assert quality.report(0.3, now=10.0, since=9.5)
    assert quality.level == HIGH - 1
    assert not quality.report(0.6, now=10.3, since=9.8)  # partly about the old level
    assert quality.report(0.6, now=10.6, since=10.1)
    assert quality.level == LOW
    # A receiver report (no ``since``) still waits SETTLE after the step.
    other = DownlinkQuality(now=0.0)
    assert other.report(0.3, now=10.0, since=9.5)
    assert not other.report(0.6, now=10.0 + SETTLE - 0.1)
    assert other.report(0.6, now=10.0 + SETTLE + 0.1)


def test_each_nacked_packet_counts_once_and_a_window_needs_enough_packets() -> None:
    nacks = NackLoss(now=0.0)
    video, other = object(), object()
    for index in (100, 101):
        nacks.nacked(video, index)
    for index in (100, 101, 104):  # the receiver asks again for what is still missing
        nacks.nacked(video, index)
    nacks.nacked(other, 7)  # another video's indices are its own
    assert nacks.close(NACK_WINDOW_PACKETS - 1, now=0.5) is None  # too few packets yet
    assert nacks.close(1, now=0.9) == (4 / NACK_WINDOW_PACKETS, 0.0)
    # The next window starts clean; a packet NACKed again does not count twice.
    nacks.nacked(video, 104)
    assert nacks.close(NACK_WINDOW_PACKETS, now=1.4) == (0.0, 0.9)


def test_a_window_short_of_packets_for_too_long_starts_again() -> None:
    """A viewer of one small layer: the figure is about recent packets, not minutes."""
    nacks = NackLoss(now=0.0)
    nacks.nacked("video", 1)
    assert nacks.close(5, now=NACK_WINDOW_MAX + 0.1) is None
    assert nacks.close(NACK_WINDOW_PACKETS, now=NACK_WINDOW_MAX + 1.0) == (
        0.0,
        NACK_WINDOW_MAX + 0.1,
    )
    # A video no longer sent is forgotten: its indices count from scratch if it returns.
    nacks.nacked("video", 50)
    nacks.forget("video")
    nacks.nacked("video", 3)
    assert nacks.close(NACK_WINDOW_PACKETS, now=NACK_WINDOW_MAX + 2.0) == (
        2 / NACK_WINDOW_PACKETS,
        NACK_WINDOW_MAX + 1.0,
    )


def test_only_receiver_reports_turn_video_off() -> None:
    quality = DownlinkQuality(now=0.0, level=LOW)
    assert not quality.report(0.9, now=VIDEO_OFF_AFTER + 1.0, since=VIDEO_OFF_AFTER + 0.5)
    assert quality.level == LOW
    assert quality.report(0.9, now=VIDEO_OFF_AFTER + 1.5)
    assert quality.level == AUDIO_ONLY


def video_off(quality: DownlinkQuality, now: float) -> float:
    """Loss at the smallest layers until video goes off; when it went off."""
    while quality.level > AUDIO_ONLY:
        quality.report(0.9, now)
        now += 1.0
    return now - 1.0


def back_on(quality: DownlinkQuality, off_at: float) -> float:
    """Ticks every 0.5 s, and no report at all, until video is back; when it was."""
    now = off_at
    while quality.level == AUDIO_ONLY:
        assert now - off_at < 30.0, "video never came back"
        now += 0.5
        quality.tick(now, rate=0.0, next_rate=150e3)
    return now


def test_video_comes_back_without_a_report_about_it() -> None:
    """Chromium stops reporting a stream it has not received for 8 s: at audio only
    nothing is sent to report on, so the smallest layers come back after the hold and
    a probe that hears no loss, not after a report that never comes. Each time they
    have to go off again, they are tried again later, up to MAX_HOLD; a step up from
    them shows the link carries them, and the next time off waits HOLD again."""
    quality = DownlinkQuality(now=0.0, level=LOW)
    off = video_off(quality, VIDEO_OFF_AFTER)
    on = back_on(quality, off)
    assert on - off == HOLD + PROBE_SECONDS
    assert quality.level == LOW
    waits = []
    for _ in range(3):
        off = video_off(quality, on + VIDEO_OFF_AFTER)
        on = back_on(quality, off)
        waits.append(on - off - PROBE_SECONDS)
    assert waits == [HOLD * 1.5, MAX_HOLD, MAX_HOLD]
    # The link carries the smallest layers, and then the next level's probe.
    now = reports(quality, 0.0, on, HOLD + 1)
    probe = quality.tick(now, rate=150e3, next_rate=500e3)
    assert probe is not None
    assert quality.report(0.0, now + PROBE_SECONDS)
    assert quality.level == LOW + 1
    off = video_off(quality, now + PROBE_SECONDS + 1)
    assert back_on(quality, off) - off == HOLD + PROBE_SECONDS


def test_a_clean_figure_never_steps_down() -> None:
    """The smoothed loss lags: right after a step down, the tail of the queue that
    was lost still weighs on it when the link is already clean again. A figure with
    no loss must not turn video off on that lag; the next lossy one may."""
    quality = DownlinkQuality(now=0.0, level=LOW)
    assert not quality.report(0.4, 1.0)  # too soon after the step for video off
    assert not quality.report(0.0, VIDEO_OFF_AFTER + 0.5)
    assert quality.loss > LOSS_DOWN and quality.level == LOW
    assert quality.report(0.2, VIDEO_OFF_AFTER + 1.5)
    assert quality.level == AUDIO_ONLY
