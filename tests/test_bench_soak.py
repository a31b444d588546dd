"""The soak's verdicts from its ticks: stalls, loss against what was sent, server trends."""

from __future__ import annotations

from benchmarks.soak_analysis import Receiver, analyse, per_minute, stall_summary, trends

PERIOD = 10.0
TRACKS = ("teacher/video", "teacher/audio", "room1/video")
RATES = {"teacher/video": 1800, "teacher/audio": 500, "room1/video": 450}  # per window


def _sent(windows: int) -> dict[int, dict[str, int]]:
    return {k: {t: RATES[t] * k for t in TRACKS} for k in range(windows + 1)}


def _receiver(
    name: str,
    windows: int,
    *,
    own: str | None = None,
    frozen: dict[str, range] | None = None,
    decodes: bool = True,
    missing: set[int] | None = None,
    kind: str = "aiortc",
) -> Receiver:
    """Cumulative counts that follow the senders except on ``frozen`` windows per track."""
    receiver = Receiver(name, kind, own=own)
    totals = {t: {"packets": 0, "frames": 0} for t in TRACKS}
    for k in range(windows + 1):
        if k:
            for track in TRACKS:
                if track.split("/")[0] == own:
                    continue
                if frozen and k in frozen.get(track, range(0)):
                    continue
                totals[track]["packets"] += RATES[track]
                totals[track]["frames"] += 300 if decodes else 0
        if missing and k in missing:
            continue
        receiver.ticks[k] = {t: dict(v) for t, v in totals.items() if t.split("/")[0] != own}
    return receiver


def test_a_healthy_lesson_has_no_stall_and_no_loss() -> None:
    result = analyse(_sent(30), [_receiver("s1", 30), _receiver("room1", 30, own="room1")], PERIOD)
    assert result["stalls"] == []
    assert result["loss"]["aiortc"]["loss_pct"] == 0
    # room1 does not receive its own video: 3 + 2 track windows of 30.
    assert result["loss"]["aiortc"]["windows"] == 5 * 30


def test_a_stream_that_stops_for_good_is_one_stall_until_the_end_and_counts_as_loss() -> None:
    # The old fast path: the teacher's video stops after window 18 and never returns.
    frozen = {"teacher/video": range(19, 31)}
    result = analyse(_sent(30), [_receiver("s1", 30, frozen=frozen)], PERIOD)
    (stall,) = result["stalls"]
    assert (stall.receiver, stall.track, stall.reason) == ("s1", "teacher/video", "no packets")
    assert (stall.start_s, stall.duration_s) == (180.0, 120.0)
    loss = result["loss"]["aiortc"]
    assert loss["packets_sent"] - loss["packets_received"] == 12 * 1800
    assert loss["worst_window_loss_pct"] == 100
    assert loss["windows_with_loss"] == 12
    summary = stall_summary(result["stalls"])
    assert summary["count"] == 1 and summary["first_start_s"] == 180.0
    assert summary["longest_s"] == 120.0 and summary["by_reason"] == {"no packets": 1}


def test_freezes_apart_are_separate_stalls() -> None:
    first = _receiver("s1", 20, frozen={"room1/video": range(3, 5)})
    second = _receiver("s2", 20, frozen={"room1/video": range(12, 13)})
    result = analyse(_sent(20), [first, second], PERIOD)
    assert [(s.receiver, s.start_s, s.duration_s) for s in result["stalls"]] == [
        ("s1", 20.0, 20.0),
        ("s2", 110.0, 10.0),
    ]


def test_packets_without_frames_stall_only_where_frames_come_at_other_times() -> None:
    receiver = _receiver("s1", 10)
    for k in range(6, 11):  # packets go on, frames stop from window 6: a frozen decoder
        receiver.ticks[k]["teacher/video"]["frames"] = receiver.ticks[5]["teacher/video"]["frames"]
    hidden = _receiver("browser0", 10, decodes=False, kind="browser")  # never decodes: fine
    result = analyse(_sent(10), [receiver, hidden], PERIOD)
    (stall,) = result["stalls"]
    assert (stall.receiver, stall.reason, stall.start_s, stall.duration_s) == (
        "s1",
        "no frames",
        50.0,
        50.0,
    )


def test_a_receiver_that_did_not_report_has_no_media_for_those_windows() -> None:
    result = analyse(_sent(10), [_receiver("s1", 10, missing={4})], PERIOD)
    assert {(s.track, s.start_s, s.duration_s, s.reason) for s in result["stalls"]} == {
        (track, 30.0, 20.0, "no report") for track in TRACKS
    }


def test_a_packet_late_across_a_tick_is_not_loss_over_the_run() -> None:
    receiver = _receiver("s1", 4)
    # One packet sent before tick 2 arrived after it: window 2 short by one, window 3 over.
    receiver.ticks[2]["teacher/audio"]["packets"] -= 1
    result = analyse(_sent(4), [receiver], PERIOD)
    assert result["stalls"] == []
    assert result["loss"]["aiortc"]["loss_pct"] == 0
    assert result["loss"]["aiortc"]["windows_with_loss"] == 0  # 1 of 500 is under 5 %


def _samples(minutes: int, rss: list[float], fds: list[int]) -> list[dict[str, float]]:
    return [
        {
            "t": 1000.0 + 60 * m,
            "t_rel": 60.0 * m,
            "cpu_ns": int(m * 60 * 0.15e9),  # 15 % of a core, steady
            "rss_bytes": rss[m] * 2**20,
            "fds": fds[m],
            "threads": 6,
            "load_cpu_ns": m * 60 * 10**9,
            "machine_busy_pct": 60.0,
            "foreign_cpu_pct": 2.0,
        }
        for m in range(minutes + 1)
    ]


def test_server_minutes_and_their_trends() -> None:
    minutes = 40
    rss = [80.0 + (0.3 if m % 2 else -0.3) for m in range(minutes + 1)]  # flat, noisy
    fds = [150 + m // 4 for m in range(minutes + 1)]  # a descriptor every 4 minutes
    rows = per_minute(_samples(minutes, rss, fds))
    assert len(rows) == minutes
    assert rows[0]["cpu_pct"] == 15 and rows[0]["load_cpu_pct"] == 100
    assert rows[0]["foreign_cpu_pct"] == 2
    found = trends(rows, warmup_minutes=2)
    assert found["cpu_pct"]["verdict"] == "flat"
    assert found["rss_mib"]["verdict"] == "flat"
    assert found["threads"]["verdict"] == "flat"
    assert found["fds"]["verdict"] == "growing"
    assert 14 < found["fds"]["slope_per_hour"] < 16  # 15 descriptors an hour
    assert found["fds"]["points"] == minutes - 2


def test_a_run_shorter_than_the_warm_up_has_no_trend() -> None:
    rows = per_minute(_samples(2, [80.0] * 3, [10] * 3))
    assert trends(rows, warmup_minutes=2)["rss_mib"]["verdict"] == "too short"


def test_a_few_minutes_give_a_slope_but_no_verdict() -> None:
    rss = [100.0 + m for m in range(7)]  # growing, but only 5 minutes after the warm-up
    found = trends(per_minute(_samples(6, rss, [10] * 7)), warmup_minutes=1)
    assert found["rss_mib"]["verdict"] == "too short"
    assert 59 < found["rss_mib"]["slope_per_hour"] < 61


def test_a_receiver_whose_counters_restart_does_not_lose_more_than_was_sent() -> None:
    receiver = _receiver("browser0", 6, kind="browser")
    for k in range(4, 7):  # the page reconnected: its counters start again from zero
        for counts in receiver.ticks[k].values():
            counts["packets"] -= receiver.ticks[3][next(iter(receiver.ticks[3]))]["packets"]
    result = analyse(_sent(6), [receiver], PERIOD)
    assert result["loss"]["browser"]["worst_window_loss_pct"] <= 100
