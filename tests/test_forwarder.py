"""Fan-out of encoded frames: keyframe gating, coalesced keyframe requests, overflow, end."""

from __future__ import annotations

import asyncio
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.forwarder import VIDEO_QUEUE_FRAMES, TrackForwarder
from media.keyframe_requests import KEYFRAME_REQUEST_INTERVAL


class QueueTrack(MediaStreamTrack):
    """A published track whose frames the test puts in by hand."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.queue: asyncio.Queue[av.Packet[Any] | None] = asyncio.Queue()

    async def recv(self) -> av.Packet[Any]:
        packet = await self.queue.get()
        self.queue.task_done()
        if packet is None:
            raise MediaStreamError
        return packet


def packet(n: int, key: bool) -> av.Packet[Any]:
    result = av.Packet(bytes([n % 256]) * 10)
    result.pts = n
    result.is_keyframe = key
    return result


class Requests:
    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    async def __call__(self) -> bool:
        self.count += 1
        self.event.set()
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(kind: str = "video") -> tuple[QueueTrack, TrackForwarder, Requests, list[str], Clock]:
    source = QueueTrack(kind)
    requests = Requests()
    ended: list[str] = []
    clock = Clock()
    forwarder = TrackForwarder("t1", source, requests, ended.append, clock=clock)
    forwarder.start()
    return source, forwarder, requests, ended, clock


async def settle(source: QueueTrack) -> None:
    """Wait until the forwarder has taken (and so handled) every queued frame."""
    await source.queue.join()


async def test_video_subscribers_start_on_a_keyframe_and_ask_for_one() -> None:
    source, forwarder, requests, _, _ = make()
    subscriber = forwarder.add_subscriber()
    await requests.event.wait()
    assert requests.count == 1
    for n, key in [(1, False), (2, False), (3, True), (4, False)]:
        source.queue.put_nowait(packet(n, key))
    first = await subscriber.recv()
    second = await subscriber.recv()
    assert (first.pts, second.pts) == (3, 4)
    assert forwarder.stats.frames_dropped == 2
    await forwarder.stop()


async def test_audio_subscribers_get_every_frame_from_the_next_one() -> None:
    source, forwarder, requests, _, _ = make("audio")
    subscriber = forwarder.add_subscriber()
    for n in range(3):
        source.queue.put_nowait(packet(n, True))
    assert [(await subscriber.recv()).pts for _ in range(3)] == [0, 1, 2]
    assert requests.count == 0  # audio never asks for keyframes
    await forwarder.stop()


async def test_keyframe_requests_are_coalesced_per_interval() -> None:
    _, forwarder, requests, _, clock = make()
    forwarder.request_keyframe()
    await requests.event.wait()
    requests.event.clear()
    for _ in range(20):
        clock.now += 0.01
        forwarder.request_keyframe()
    assert forwarder.stats.keyframe_requests_suppressed == 20
    # The twenty fold into one request sent at the end of the interval.
    await asyncio.wait_for(requests.event.wait(), KEYFRAME_REQUEST_INTERVAL * 4)
    assert requests.count == 2
    clock.now += KEYFRAME_REQUEST_INTERVAL
    forwarder.request_keyframe()
    await forwarder.stop()


async def test_a_subscriber_that_overflows_skips_to_the_next_keyframe() -> None:
    source, forwarder, requests, _, _ = make()
    slow = forwarder.add_subscriber()
    await requests.event.wait()
    requests.event.clear()
    source.queue.put_nowait(packet(0, True))
    for n in range(1, VIDEO_QUEUE_FRAMES + 1):
        source.queue.put_nowait(packet(n, False))
    await settle(source)
    # The queue overflowed: the backlog was dropped and a keyframe requested.
    assert slow.awaiting_keyframe
    assert requests.count >= 1 or forwarder.stats.keyframe_requests_suppressed >= 1
    source.queue.put_nowait(packet(500, False))
    source.queue.put_nowait(packet(501, True))
    assert (await slow.recv()).pts == 501
    await forwarder.stop()


async def test_the_publisher_ending_is_reported_and_detaches_every_subscriber() -> None:
    source, forwarder, _, ended, _ = make("audio")
    subscribers = [forwarder.add_subscriber() for _ in range(3)]
    source.queue.put_nowait(packet(0, True))
    await settle(source)
    source.queue.put_nowait(None)
    await asyncio.wait_for(forwarder._task, 5)  # type: ignore[arg-type]
    assert ended == ["t1"]
    assert forwarder.subscriber_count == 0
    # Their tracks stay open (their transceivers may carry another track) and hold
    # nothing of the ended one.
    for subscriber in subscribers:
        assert subscriber.readyState == "live" and subscriber._queue.empty()


async def test_stop_detaches_subscribers_without_reporting_an_end() -> None:
    _, forwarder, _, ended, _ = make("audio")
    forwarder.add_subscriber()
    await forwarder.stop()
    assert ended == [] and forwarder.subscriber_count == 0
    forwarder.add_subscriber()
    assert forwarder.subscriber_count == 0  # a stopped forwarder takes nobody


async def test_a_subscriber_track_carries_the_next_forwarder_after_a_rebind() -> None:
    first_source, first, _, _, _ = make()
    track = first.add_subscriber()
    first_source.queue.put_nowait(packet(1, True))
    assert (await track.recv()).pts == 1
    await first.stop()
    second_source, second, second_requests, _, _ = make()
    track.rebind(second)
    second._add(track)
    await second_requests.event.wait()  # the new track is asked for a keyframe
    second_source.queue.put_nowait(packet(7, False))
    second_source.queue.put_nowait(packet(8, True))
    assert (await track.recv()).pts == 8  # it starts on the new track's keyframe
    track.stop()
    assert second.subscriber_count == 0
    await second.stop()


async def test_a_subscriber_that_stops_is_detached() -> None:
    source, forwarder, _, _, _ = make("audio")
    subscriber = forwarder.add_subscriber()
    subscriber.stop()
    assert forwarder.subscriber_count == 0
    source.queue.put_nowait(packet(1, True))
    await settle(source)
    assert forwarder.stats.frames_forwarded == 0
    await forwarder.stop()


async def test_pausing_drops_queued_frames_and_video_resumes_on_a_keyframe() -> None:
    source, forwarder, requests, _, _ = make()
    subscriber = forwarder.add_subscriber()
    await requests.event.wait()
    requests.event.clear()
    source.queue.put_nowait(packet(0, True))
    source.queue.put_nowait(packet(1, False))
    await settle(source)
    forwarder.set_paused(True)
    source.queue.put_nowait(packet(2, True))
    await settle(source)
    assert forwarder.stats.frames_muted == 1
    forwarder.set_paused(False)
    await requests.event.wait()  # resuming video asks for a keyframe at once
    source.queue.put_nowait(packet(3, False))
    source.queue.put_nowait(packet(4, True))
    # Nothing queued before the pause is sent after it; video restarts on a keyframe.
    assert (await subscriber.recv()).pts == 4
    await forwarder.stop()
