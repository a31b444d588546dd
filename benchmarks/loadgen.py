"""Load-generator processes: pre-encoded publishers and subscribers that do not decode.

Each runs in its own process (never in the server's) and talks to the
orchestrator in JSON lines: it prints ``{"event": "ready", ...}`` once its
participants are up, reads ``{"start": T1, "end": T2}`` (wall-clock seconds) or
``{"stop": true}`` from stdin, prints ``{"event": "result", ...}`` after T2, and
leaves at the next ``{"stop": true}`` (so the server is sampled with everyone
still connected). Every wait is bounded by ``--deadline`` so a process always ends by
itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiortc.rtcrtpreceiver
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.rtp import RtpPacket

from media import hooks
from media.client import LessonClient
from media.peers import negotiated_media

from .encoded import PreEncodedTrack, load_audio, load_video

logger = logging.getLogger(__name__)

RTP_HEADER_BYTES = 12


def emit(event: str, **fields: Any) -> None:
    """One JSON line to the orchestrator."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Commands:
    """JSON commands from the orchestrator on stdin, one per line."""

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None

    async def next(self, deadline: float) -> dict[str, Any]:
        """The next command, or ``{"stop": true}`` at the deadline or at EOF."""
        if self._reader is None:
            loop = asyncio.get_running_loop()
            self._reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(self._reader)
            await loop.connect_read_pipe(lambda: protocol, sys.stdin)
        try:
            line = await asyncio.wait_for(self._reader.readline(), max(0.0, deadline - time.time()))
        except TimeoutError:
            return {"stop": True, "reason": "deadline"}
        if not line:
            return {"stop": True, "reason": "eof"}
        command: dict[str, Any] = json.loads(line)
        return command


async def sleep_until(wall: float) -> None:
    """Sleep until the wall-clock time ``wall`` (shared by every process on the machine)."""
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


# -- per-packet counting in subscriber processes ---------------------------------


class _SsrcCounter:
    """Extended sequence numbers of one media SSRC, as an RTCP receiver report counts them."""

    __slots__ = ("first", "highest", "received")

    def __init__(self, sequence: int) -> None:
        self.first = sequence
        self.highest = sequence
        self.received = 1

    def add(self, sequence: int) -> None:
        diff = ((sequence - (self.highest & 0xFFFF) + 0x8000) & 0xFFFF) - 0x8000
        extended = self.highest + diff
        if extended > self.highest:
            self.highest = extended
        self.received += 1

    @property
    def expected(self) -> int:
        return self.highest - self.first + 1


class ReceiveCounters:
    """What one subscriber receiver saw: RTP packets, payload bytes, RTX, sequence gaps."""

    __slots__ = ("bytes", "packets", "rtx_packets", "ssrcs")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.rtx_packets = 0
        self.ssrcs: dict[int, _SsrcCounter] = {}

    def add(self, packet: RtpPacket, rtx_ssrcs: dict[int, int]) -> None:
        self.packets += 1
        self.bytes += RTP_HEADER_BYTES + len(packet.payload) + packet.padding_size
        if packet.ssrc in rtx_ssrcs:
            self.rtx_packets += 1
            return
        counter = self.ssrcs.get(packet.ssrc)
        if counter is None:
            self.ssrcs[packet.ssrc] = _SsrcCounter(packet.sequence_number)
        else:
            counter.add(packet.sequence_number)

    def snapshot(self) -> dict[str, int]:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "rtx_packets": self.rtx_packets,
            "expected": sum(c.expected for c in self.ssrcs.values()),
            "media_received": sum(c.received for c in self.ssrcs.values()),
        }


_COUNTERS_ATTR = "_lco_bench_counters"


def install_receive_counters() -> None:
    """Count every RTP packet reaching any receiver in this process (before reassembly)."""
    original = RTCRtpReceiver._handle_rtp_packet

    async def counting(self: RTCRtpReceiver, packet: RtpPacket, arrival_time_ms: int) -> None:
        counters = self.__dict__.get(_COUNTERS_ATTR)
        if counters is None:
            counters = ReceiveCounters()
            setattr(self, _COUNTERS_ATTR, counters)
        try:
            rtx: dict[int, int] = getattr(self, "_RTCRtpReceiver__rtx_ssrc", {})
            counters.add(packet, rtx)
        except Exception:  # counting must never break reception
            pass
        await original(self, packet, arrival_time_ms)

    setattr(RTCRtpReceiver, "_handle_rtp_packet", counting)  # noqa: B010


def receiver_counters(receiver: RTCRtpReceiver) -> ReceiveCounters | None:
    """The counters of one receiver, if it received anything."""
    counters: ReceiveCounters | None = receiver.__dict__.get(_COUNTERS_ATTR)
    return counters


def client_counters(client: LessonClient) -> dict[str, int]:
    """Totals over every receiver of ``client``'s subscribe connection."""
    totals = {"packets": 0, "bytes": 0, "rtx_packets": 0, "expected": 0, "media_received": 0}
    pc = client.subscribe_pc
    if pc is not None:
        for receiver in pc.getReceivers():
            counters = receiver_counters(receiver)
            if counters is not None:
                for key, value in counters.snapshot().items():
                    totals[key] += value
    return totals


def _difference(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after}


class LatencyProbe:
    """Arrival times of replayed VP8 frames, recognised by their bytes.

    The publisher sends frame ``i`` of the loop at ``epoch + i * interval`` (its
    schedule); a subscriber that receives the same bytes knows which frame it is.
    This only works when the server forwards the encoded frames unchanged (ours);
    a transcoding server (``MediaRelay``) produces other bytes, and nothing matches.
    Arrival is taken when aiortc's receiver hands the reassembled frame to its
    decoder, which is one frame interval after the frame's last packet
    (aiortc's jitter buffer releases a frame when the next one starts).
    """

    def __init__(self, frames: list[tuple[bytes, bool]]) -> None:
        self.index = {hash(data): i for i, (data, _) in enumerate(frames)}
        self.arrivals: list[tuple[float, int]] = []

    def install(self) -> None:
        """Wrap the decoder lookup of this process (after the forwarding hooks)."""
        inner = aiortc.rtcrtpreceiver.get_decoder  # type: ignore[attr-defined]
        probe = self

        class _Probing:
            def __init__(self, decoder: Any) -> None:
                self._decoder = decoder

            def decode(self, encoded_frame: Any) -> Any:
                index = probe.index.get(hash(encoded_frame.data))
                if index is not None:
                    probe.arrivals.append((time.time(), index))
                return self._decoder.decode(encoded_frame)

        def get_decoder(codec: Any) -> Any:
            decoder = inner(codec)
            return _Probing(decoder) if codec.name.upper() == "VP8" else decoder

        setattr(aiortc.rtcrtpreceiver, "get_decoder", get_decoder)  # noqa: B010


def frame_latencies(
    arrivals: list[tuple[float, int]],
    epoch: float,
    interval: float,
    loop_frames: int,
    skipped: int = 0,
) -> list[float]:
    """Seconds from each frame's scheduled send time to its arrival.

    Loop frame ``index`` was sent as frame ``index - skipped + k * loop_frames``
    for some ``k``: the latest such send time not after the arrival is the one.
    """
    out = []
    for arrival, index in arrivals:
        first = index - skipped
        n = math.floor(((arrival - epoch) / interval - first) / loop_frames)
        sent = epoch + (n * loop_frames + first) * interval
        out.append(arrival - sent)
    return out


# -- publishers ------------------------------------------------------------------


@dataclass(slots=True)
class _Publisher:
    client: LessonClient
    tracks: list[PreEncodedTrack]
    codecs: list[str] = field(default_factory=list)
    error: str | None = None


async def _start_publisher(
    url: str, token: str, video: str | None, audio: bool, cache_dir: Path | None
) -> _Publisher:
    client = LessonClient(url, token)
    await client.connect()
    tracks: list[PreEncodedTrack] = []
    specs: list[tuple[Any, Any]] = []
    if video:
        track = PreEncodedTrack(load_video(video, cache_dir))
        tracks.append(track)
        specs.append((track, "camera"))
    if audio:
        track = PreEncodedTrack(load_audio(cache_dir))
        tracks.append(track)
        specs.append((track, "microphone"))
    publisher = _Publisher(client, tracks)
    reply = await client.publish(specs)
    if reply["type"] != "publish_answer":
        publisher.error = reply.get("message", "publish refused")
        return publisher
    # Keyframe requests relayed by the server make the replay jump to its next keyframe.
    if client.publish_pc is not None:
        for transceiver in client.publish_pc.getTransceivers():
            sent = transceiver.sender.track
            if isinstance(sent, PreEncodedTrack) and sent.kind == "video":
                hooks.on_keyframe_request(transceiver.sender, sent.request_keyframe)
    # The pre-encoded data is VP8 and Opus: check that this is what was negotiated.
    publisher.codecs = [
        m.codec.mimeType.lower() for m in negotiated_media(reply["sdp"]) if m.codec is not None
    ]
    wrong = [c for c in publisher.codecs if c not in ("video/vp8", "audio/opus")]
    if wrong:
        publisher.error = f"negotiated {wrong}, but the pre-encoded media is VP8/Opus"
    return publisher


async def _connected(pc: RTCPeerConnection) -> None:
    """Wait until ``pc`` is connected (or failed)."""
    done = asyncio.Event()

    def check() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            done.set()

    pc.on("connectionstatechange", check)
    check()
    await done.wait()


async def run_publishers(args: Any) -> int:
    """A process of ``len(args.token)`` publishers; see the module docstring."""
    hooks.install_forwarding_hooks()  # publishers also receive each other: never decode
    hooks.set_host_addresses(["127.0.0.1"])
    install_receive_counters()
    deadline = time.time() + args.deadline
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    publishers: list[_Publisher] = []
    try:
        async with asyncio.timeout(args.ready_timeout):
            for token in args.token:
                publishers.append(
                    await _start_publisher(args.url, token, args.video, args.audio, cache_dir)
                )
            for publisher in publishers:
                if publisher.client.publish_pc is not None:
                    await _connected(publisher.client.publish_pc)
    except (TimeoutError, ConnectionError, OSError) as exc:
        emit("ready", ok=False, error=f"publishers did not start: {exc!r}")
        for publisher in publishers:
            await publisher.client.close()
        return 1
    errors = [p.error for p in publishers if p.error]
    emit("ready", ok=not errors, errors=errors, codecs=[p.codecs for p in publishers])
    commands = Commands()
    command = await commands.next(deadline)
    received: list[dict[str, int]] = []
    at_start: dict[int, tuple[int, int]] = {}
    if "start" in command:
        # What publishers receive (each other's tracks) is forwarded by the server too.
        await sleep_until(command["start"])
        at_start = {
            id(t): (t.frames_skipped, t.schedule_resets) for p in publishers for t in p.tracks
        }
        before = [client_counters(p.client) for p in publishers]
        await sleep_until(command["end"])
        after = [client_counters(p.client) for p in publishers]
        received = [_difference(b, a) for b, a in zip(before, after, strict=True)]
    result = [
        {
            "participant_id": p.client.participant_id,
            "tracks": [
                {
                    "kind": t.kind,
                    "frames_sent": t.frames_sent,
                    "bytes_sent": t.bytes_sent,
                    "schedule_resets": t.schedule_resets,
                    "first_send_wall": t.first_send_wall,
                    "schedule_epoch_wall": t.schedule_epoch_wall,
                    "frames_skipped": t.frames_skipped,
                    "keyframe_requests": t.keyframe_requests,
                    "keyframe_jumps": t.keyframe_jumps,
                    # The latency probe needs a schedule that did not move in the window.
                    "stable_in_window": at_start.get(id(t))
                    == (t.frames_skipped, t.schedule_resets),
                }
                for t in p.tracks
            ],
        }
        for p in publishers
    ]
    emit("result", publishers=result, received=received)
    if "start" in command:
        await commands.next(deadline)  # stay until the orchestrator has sampled the server
    for publisher in publishers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(publisher.client.close(), 5.0)
    return 0


# -- subscribers -----------------------------------------------------------------


@dataclass(slots=True)
class _Subscriber:
    client: LessonClient
    started: float  # monotonic, before the socket opened
    joined: float | None = None
    error: str | None = None

    def first_frames(self) -> dict[str, float]:
        """Seconds from the start of the join to the first frame, per kind."""
        out: dict[str, float] = {}
        for received in self.client.received.values():
            if received.first_frame_at is not None:
                delay = received.first_frame_at - self.started
                out[received.kind] = min(out.get(received.kind, delay), delay)
        return out

    def snapshot(self) -> dict[str, Any]:
        frames: dict[str, int] = {"video": 0, "audio": 0}
        for received in self.client.received.values():
            frames[received.kind] = frames.get(received.kind, 0) + received.frames
        return {"frames": frames, **client_counters(self.client)}


async def _join(url: str, token: str, expect: dict[str, int], timeout: float) -> _Subscriber:
    subscriber = _Subscriber(LessonClient(url, token), time.monotonic())
    try:
        async with asyncio.timeout(timeout):
            await subscriber.client.connect()
            subscriber.joined = time.monotonic()
            while True:
                counts: dict[str, int] = {}
                for received in subscriber.client.received.values():
                    if received.first_frame_at is not None:
                        counts[received.kind] = counts.get(received.kind, 0) + 1
                if all(counts.get(kind, 0) >= n for kind, n in expect.items()):
                    break
                await asyncio.sleep(0.02)
    except (TimeoutError, ConnectionError, OSError) as exc:
        subscriber.error = f"{type(exc).__name__}: {exc}"
    return subscriber


async def run_subscribers(args: Any) -> int:
    """A process of ``len(args.token)`` subscribers; see the module docstring."""
    hooks.install_forwarding_hooks()  # receive encoded frames: this process never decodes
    hooks.set_host_addresses(["127.0.0.1"])
    install_receive_counters()
    probe: LatencyProbe | None = None
    if args.latency_video:
        cache_dir = Path(args.cache_dir) if args.cache_dir else None
        probe = LatencyProbe(load_video(args.latency_video, cache_dir).frames)
        probe.install()
    deadline = time.time() + args.deadline
    expect = {"video": args.expect_video, "audio": args.expect_audio}
    joins = []
    for index, token in enumerate(args.token):
        joins.append(asyncio.create_task(_join(args.url, token, expect, args.ready_timeout)))
        if index + 1 < len(args.token):
            await asyncio.sleep(args.stagger)
    subscribers = list(await asyncio.gather(*joins))
    emit(
        "ready",
        ok=all(s.error is None for s in subscribers),
        errors=[s.error for s in subscribers if s.error],
    )
    commands = Commands()
    command = await commands.next(deadline)
    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    window: list[float] = []
    if "start" in command:
        await sleep_until(command["start"])
        window.append(time.time())
        before = [s.snapshot() for s in subscribers]
        await sleep_until(command["end"])
        window.append(time.time())
        after = [s.snapshot() for s in subscribers]
    results = []
    for index, subscriber in enumerate(subscribers):
        entry: dict[str, Any] = {
            "error": subscriber.error,
            "join_s": (
                subscriber.joined - subscriber.started if subscriber.joined is not None else None
            ),
            "first_frame_s": subscriber.first_frames(),
            "tracks": len(subscriber.client.received),
        }
        if before:
            b, a = before[index], after[index]
            entry["window"] = {
                "frames": {k: a["frames"][k] - b["frames"].get(k, 0) for k in a["frames"]},
                **{k: a[k] - b[k] for k in a if k != "frames"},
            }
        results.append(entry)
    arrivals = []
    if probe is not None and len(window) == 2:
        arrivals = [a for a in probe.arrivals if window[0] <= a[0] <= window[1]]
    emit("result", window=window, subscribers=results, arrivals=arrivals)
    if "start" in command:
        await commands.next(deadline)  # stay until the orchestrator has sampled the server
    for subscriber in subscribers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(subscriber.client.close(), 5.0)
    return 0
