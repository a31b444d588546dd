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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from media import hooks
from media.client import LessonClient, ReceivedTrack
from media.peers import configuration, negotiated_media

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
    """Extended sequence numbers of one media SSRC, as an RTCP receiver report counts them.

    Also remembers the most recent missing sequence numbers, so that a packet that
    arrives late or is repaired by RTX is told apart from a loss.
    """

    __slots__ = ("first", "highest", "missing", "received", "repaired")

    def __init__(self, sequence: int) -> None:
        self.first = sequence
        self.highest = sequence
        self.received = 1
        self.repaired = 0
        self.missing: dict[int, None] = {}

    def _extend(self, sequence: int) -> int:
        diff = ((sequence - (self.highest & 0xFFFF) + 0x8000) & 0xFFFF) - 0x8000
        return self.highest + diff

    def add(self, sequence: int) -> None:
        extended = self._extend(sequence)
        if extended > self.highest:
            if extended - self.highest <= 512:
                for gap in range(self.highest + 1, extended):
                    self.missing[gap] = None
                while len(self.missing) > 4096:
                    del self.missing[next(iter(self.missing))]
            self.highest = extended
            self.received += 1
        elif extended in self.missing:  # late, not lost
            del self.missing[extended]
            self.received += 1
        # else: a duplicate, not counted

    def repair(self, sequence: int) -> None:
        """An RTX packet carrying ``sequence`` arrived."""
        extended = self._extend(sequence)
        if extended in self.missing:
            del self.missing[extended]
            self.repaired += 1

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
        media_ssrc = rtx_ssrcs.get(packet.ssrc)
        if media_ssrc is not None:
            self.rtx_packets += 1
            repaired = self.ssrcs.get(media_ssrc)
            if repaired is not None and len(packet.payload) >= 2:
                repaired.repair(int.from_bytes(packet.payload[:2], "big"))
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
            "repaired": sum(c.repaired for c in self.ssrcs.values()),
        }


class PacketProbe:
    """Arrival of each replayed VP8 frame's last RTP packet, recognised by its bytes.

    The first packet of a frame (VP8 descriptor S=1, partition 0) carries the
    frame's first bytes, which identify its position in the loop; the packet with
    the marker bit and the same RTP timestamp ends it. Its arrival (after SRTP,
    before aiortc's jitter buffer, so without the subscriber's one-frame wait) is
    recorded as ``(wall time, loop position, receiver id)``. This works for
    servers that forward the encoded bytes (ours, pack(), Janus), not for MediaRelay.
    """

    PREFIX = 48

    def __init__(self, frames: list[tuple[bytes, bool]]) -> None:
        index: dict[bytes, int] = {}
        clashes: set[bytes] = set()
        for position, (data, _) in enumerate(frames):
            key = data[: self.PREFIX]
            if key in index:
                clashes.add(key)
            index[key] = position
        for key in clashes:
            del index[key]
        self.index = index
        self.current: dict[int, tuple[int, int]] = {}
        self.arrivals: list[tuple[float, int, int]] = []

    def add(self, receiver_id: int, packet: RtpPacket) -> None:
        payload = packet.payload
        if len(payload) < 2:
            return
        first = payload[0]
        if first & 0x10 and not first & 0x07:  # start of partition 0: a new frame
            offset = 1
            if first & 0x80:
                extension = payload[1]
                offset = 2
                if extension & 0x80:
                    offset += 2 if payload[offset] & 0x80 else 1
                if extension & 0x40:
                    offset += 1
                if extension & 0x30:
                    offset += 1
            position = self.index.get(bytes(payload[offset : offset + self.PREFIX]))
            if position is not None:
                self.current[packet.ssrc] = (packet.timestamp, position)
        if packet.marker:
            current = self.current.pop(packet.ssrc, None)
            if current is not None and current[0] == packet.timestamp:
                if len(self.arrivals) < 500_000:
                    self.arrivals.append((time.time(), current[1], receiver_id))


_PROBE: PacketProbe | None = None


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
            if _PROBE is not None and packet.ssrc not in rtx:
                if getattr(self, "_RTCRtpReceiver__kind", "") == "video":
                    _PROBE.add(id(self), packet)
        except Exception:  # counting must never break reception
            pass
        await original(self, packet, arrival_time_ms)

    setattr(RTCRtpReceiver, "_handle_rtp_packet", counting)  # noqa: B010


def receiver_counters(receiver: RTCRtpReceiver) -> ReceiveCounters | None:
    """The counters of one receiver, if it received anything."""
    counters: ReceiveCounters | None = receiver.__dict__.get(_COUNTERS_ATTR)
    return counters


def client_counters(client: Participant) -> dict[str, int]:
    """Totals over every receiver of ``client``'s subscribe connection."""
    totals = {
        "packets": 0,
        "bytes": 0,
        "rtx_packets": 0,
        "expected": 0,
        "media_received": 0,
        "repaired": 0,
    }
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


# -- network impairment in subscriber processes -----------------------------------


def install_impairment(loss: float, delay: float, seed: int) -> None:
    """Drop ``loss`` (a fraction) of incoming datagrams and delay the rest by ``delay`` s.

    Applied in this process only, before aioice hands a datagram to DTLS/SRTP (so
    before aiortc sees it): what ``tc netem`` on the subscriber's ingress would do,
    STUN included, without reordering.
    """
    import random

    import aioice.ice

    rng = random.Random(seed)
    original = aioice.ice.StunProtocol.datagram_received

    def impaired(self: Any, data: bytes | str, addr: tuple[Any, ...]) -> None:
        if rng.random() < loss:
            return
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, original, self, data, addr)
        else:
            original(self, data, addr)

    setattr(aioice.ice.StunProtocol, "datagram_received", impaired)  # noqa: B010


# -- Janus participants (baseline c) -------------------------------------------------


class JanusParticipant:
    """A publisher or subscriber of Janus VideoRoom with the attributes the counters read."""

    def __init__(self, base: str, name: str, http: Any) -> None:
        from .janus import JanusSession

        self.name = name
        self.session = JanusSession(base, http)
        self.participant_id: str | None = None
        self.received: dict[str, ReceivedTrack] = {}
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc: RTCPeerConnection | None = None
        self.mid_feed: dict[str, str] = {}
        self._consumers: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        await self.session.open()

    async def publish(self, tracks: list[tuple[Any, Any]]) -> dict[str, Any]:
        from .janus import ROOM

        joined = await self.session.message(
            {"request": "join", "ptype": "publisher", "room": ROOM, "display": self.name}
        )
        self.participant_id = str(joined["plugindata"]["data"]["id"])
        pc = RTCPeerConnection(configuration([]))
        self.publish_pc = pc
        for track, _ in tracks:
            pc.addTransceiver(track, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        reply = await self.session.message(
            {"request": "publish"}, jsep={"type": "offer", "sdp": pc.localDescription.sdp}
        )
        jsep = reply.get("jsep")
        if not jsep:
            return {"type": "error", "message": f"no answer from Janus: {reply}"}
        await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], "answer"))
        return {"type": "publish_answer", "sdp": jsep["sdp"]}

    async def subscribe(self, publishers: int, timeout: float, exclude: str | None = None) -> None:
        """Subscribe to every publisher's streams (but ``exclude``'s) once ``publishers``
        of them are in the room."""
        from .janus import ROOM

        async with asyncio.timeout(timeout):
            while True:
                listed = await self.session.message({"request": "listparticipants", "room": ROOM})
                feeds = [
                    p["id"]
                    for p in listed["plugindata"]["data"].get("participants", [])
                    if p.get("publisher") and str(p["id"]) != exclude
                ]
                if len(feeds) >= publishers:
                    break
                await asyncio.sleep(0.1)
        attached = await self.session.message(
            {
                "request": "join",
                "ptype": "subscriber",
                "room": ROOM,
                "streams": [{"feed": feed} for feed in feeds],
            }
        )
        for stream in attached["plugindata"]["data"].get("streams", []):
            self.mid_feed[str(stream.get("mid"))] = str(stream.get("feed_id"))
        pc = RTCPeerConnection(configuration([]))
        self.subscribe_pc = pc
        pc.on("track", self._on_track)
        await pc.setRemoteDescription(RTCSessionDescription(attached["jsep"]["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.session.message(
            {"request": "start"}, jsep={"type": "answer", "sdp": pc.localDescription.sdp}
        )

    def _on_track(self, track: Any) -> None:
        assert self.subscribe_pc is not None
        mid = next(
            (t.mid for t in self.subscribe_pc.getTransceivers() if t.receiver.track is track),
            None,
        )
        feed = self.mid_feed.get(str(mid), "?")
        received = ReceivedTrack(f"{feed}/{mid}", feed, track.kind, "janus")
        self.received[received.track_id] = received
        self._consumers.append(asyncio.create_task(_consume(track, received)))

    def receiver_owners(self) -> dict[int, str]:
        out: dict[int, str] = {}
        if self.subscribe_pc is not None:
            for transceiver in self.subscribe_pc.getTransceivers():
                feed = self.mid_feed.get(str(transceiver.mid))
                if feed is not None:
                    out[id(transceiver.receiver)] = feed
        return out

    async def close(self) -> None:
        for pc in (self.publish_pc, self.subscribe_pc):
            if pc is not None:
                await pc.close()
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        await self.session.close()


async def _consume(track: Any, received: ReceivedTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
            received.frames += 1
            if received.first_frame_at is None:
                received.first_frame_at = time.monotonic()


Participant = LessonClient | JanusParticipant


def receiver_owners(client: Participant) -> dict[int, str]:
    """id(receiver) -> the publisher's participant id, for the subscribe connection."""
    if isinstance(client, JanusParticipant):
        return client.receiver_owners()
    out: dict[int, str] = {}
    pending: dict[str, Any] = getattr(client, "_pending_tracks", {})
    if client.subscribe_pc is not None:
        for transceiver in client.subscribe_pc.getTransceivers():
            info = pending.get(str(transceiver.mid))
            if info is not None:
                out[id(transceiver.receiver)] = info.participant_id
    return out


def _http_client() -> Any:
    import httpx

    # One connection per long poll plus requests; no proxy from the environment.
    return httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=200))


# -- publishers ------------------------------------------------------------------


@dataclass(slots=True)
class _Publisher:
    client: Participant
    tracks: list[PreEncodedTrack]
    codecs: list[str] = field(default_factory=list)
    error: str | None = None
    # Janus only: the second handle that subscribes to the other publishers.
    listener: JanusParticipant | None = None


async def _start_publisher(
    client: Participant, video: str | None, audio: bool, cache_dir: Path | None
) -> _Publisher:
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


def _received_snapshot(client: Participant) -> dict[str, Any]:
    frames: dict[str, int] = {"video": 0, "audio": 0}
    for track in client.received.values():
        frames[track.kind] = frames.get(track.kind, 0) + track.frames
    return {"frames": frames, **client_counters(client)}


async def run_publishers(args: Any) -> int:
    """A process of ``len(args.token)`` publishers; see the module docstring."""
    global _PROBE
    if args.video:  # publishers that hear each other measure latency too (W3)
        cache = Path(args.cache_dir) if args.cache_dir else None
        _PROBE = PacketProbe(load_video(args.video, cache).frames)
    hooks.install_forwarding_hooks()  # publishers also receive each other: never decode
    hooks.set_host_addresses([args.ice_host])
    install_receive_counters()
    hooks.route_rtx_by_ssrc()
    deadline = time.time() + args.deadline
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    publishers: list[_Publisher] = []
    http = _http_client() if args.janus else None
    try:
        async with asyncio.timeout(args.ready_timeout):
            for index, token in enumerate(args.token):
                client: Participant = (
                    JanusParticipant(args.url, f"pub{index}", http)
                    if args.janus
                    else LessonClient(args.url, token)
                )
                publishers.append(await _start_publisher(client, args.video, args.audio, cache_dir))
            for publisher in publishers:
                if publisher.client.publish_pc is not None:
                    await _connected(publisher.client.publish_pc)
            if args.janus and args.hear_each_other:
                # A Janus handle publishes or subscribes: each publisher gets a second
                # one that subscribes to the other publishers' feeds.
                for index, publisher in enumerate(publishers):
                    listener = JanusParticipant(args.url, f"pub{index}-listen", http)
                    await listener.connect()
                    await listener.subscribe(
                        args.hear_each_other - 1,
                        args.ready_timeout,
                        exclude=publisher.client.participant_id,
                    )
                    publisher.listener = listener
    except Exception as exc:
        emit("ready", ok=False, error=f"publishers did not start: {exc!r}")
        for publisher in publishers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(publisher.client.close(), 5.0)
        return 1
    errors = [p.error for p in publishers if p.error]
    emit("ready", ok=not errors, errors=errors, codecs=[p.codecs for p in publishers])
    commands = Commands()
    command = await commands.next(deadline)
    received: list[dict[str, Any]] = []
    window: list[float] = []
    if "start" in command:
        # What publishers receive (each other's tracks) is forwarded by the server too.
        await sleep_until(command["start"])
        window.append(time.time())
        before = [_received_snapshot(p.listener or p.client) for p in publishers]
        await sleep_until(command["end"])
        window.append(time.time())
        after = [_received_snapshot(p.listener or p.client) for p in publishers]
        received = [
            {
                "frames": {k: a["frames"][k] - b["frames"].get(k, 0) for k in a["frames"]},
                **{k: a[k] - b.get(k, 0) for k in a if k != "frames"},
            }
            for b, a in zip(before, after, strict=True)
        ]
    result = [
        {
            "participant_id": p.client.participant_id,
            "tracks": [
                {
                    "kind": t.kind,
                    "frames_sent": t.frames_sent,
                    "bytes_sent": t.bytes_sent,
                    "schedule_resets": t.schedule_resets,
                    "frames_skipped": t.frames_skipped,
                    "keyframe_requests": t.keyframe_requests,
                    "keyframe_jumps": t.keyframe_jumps,
                    # Send times of the video frames around the window (latency probe).
                    "sent": [
                        [round(w, 6), i]
                        for w, i in t.sent_log
                        if window and window[0] - 3 <= w <= window[1]
                    ]
                    if t.kind == "video"
                    else [],
                }
                for t in p.tracks
            ],
        }
        for p in publishers
    ]
    arrivals: list[list[Any]] = []
    if _PROBE is not None and len(window) == 2:
        owners: dict[int, str] = {}
        for publisher in publishers:
            owners.update(receiver_owners(publisher.listener or publisher.client))
        arrivals = [
            [round(t, 6), i, owners[r]]
            for t, i, r in _PROBE.arrivals
            if window[0] <= t <= window[1] and r in owners
        ]
    emit("result", publishers=result, received=received, arrivals=arrivals)
    if "start" in command:
        await commands.next(deadline)  # stay until the orchestrator has sampled the server
    for publisher in publishers:
        for closing in (publisher.listener, publisher.client):
            if closing is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closing.close(), 5.0)
    if http is not None:
        await http.aclose()
    return 0


# -- subscribers -----------------------------------------------------------------


@dataclass(slots=True)
class _Subscriber:
    client: Participant
    started: float  # monotonic, before the socket opened
    joined: float | None = None
    error: str | None = None
    left: dict[str, Any] | None = None  # counters when a churning subscriber left

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


async def _join(
    args: Any, index: int, token: str, expect: dict[str, int], http: Any
) -> _Subscriber:
    client: Participant = (
        JanusParticipant(args.url, f"sub{index}", http)
        if args.janus
        else LessonClient(args.url, token)
    )
    subscriber = _Subscriber(client, time.monotonic())
    try:
        async with asyncio.timeout(args.ready_timeout):
            await client.connect()
            if isinstance(client, JanusParticipant):
                # Janus: attached; the join is complete once the subscription is started.
                await client.subscribe(max(expect.values()), args.ready_timeout)
            subscriber.joined = time.monotonic()
            while True:
                counts: dict[str, int] = {}
                for received in client.received.values():
                    if received.first_frame_at is not None:
                        counts[received.kind] = counts.get(received.kind, 0) + 1
                if all(counts.get(kind, 0) >= n for kind, n in expect.items()):
                    break
                await asyncio.sleep(0.02)
    except Exception as exc:
        subscriber.error = f"{type(exc).__name__}: {exc}"
    return subscriber


def _entry(subscriber: _Subscriber) -> dict[str, Any]:
    return {
        "error": subscriber.error,
        "join_s": (
            subscriber.joined - subscriber.started if subscriber.joined is not None else None
        ),
        "first_frame_s": subscriber.first_frames(),
        "tracks": len(subscriber.client.received),
    }


async def _churn(
    args: Any, expect: dict[str, int], http: Any, end: float
) -> tuple[list[_Subscriber], list[dict[str, Any]]]:
    """One join or leave per second until ``end``: returns everyone who joined, and
    the counters of those who left (from their join, so inside the window)."""
    active: list[asyncio.Task[_Subscriber]] = []
    joined: list[_Subscriber] = []
    left: list[dict[str, Any]] = []
    tokens = iter(enumerate(args.token))
    tick = 0
    while time.time() + 1.0 <= end:
        if tick % 2 == 0 or len(active) < 2:
            following = next(tokens, None)
            if following is not None:
                index, token = following
                active.append(asyncio.create_task(_join(args, 1000 + index, token, expect, http)))
        elif active:
            task = active.pop(0)
            subscriber = await task if task.done() else None
            if subscriber is None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            else:
                left.append(subscriber.snapshot())
                joined.append(subscriber)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(subscriber.client.close(), 5.0)
        tick += 1
        await asyncio.sleep(1.0)
    for task in active:
        with contextlib.suppress(BaseException):
            async with asyncio.timeout(max(0.1, end - time.time() + args.ready_timeout)):
                subscriber = await task
                left.append(subscriber.snapshot())
                joined.append(subscriber)
    return joined, left


async def run_subscribers(args: Any) -> int:
    """A process of ``len(args.token)`` subscribers; see the module docstring."""
    global _PROBE
    hooks.install_forwarding_hooks()  # receive encoded frames: this process never decode
    hooks.set_host_addresses([args.ice_host])
    install_receive_counters()
    hooks.route_rtx_by_ssrc()
    if args.latency_video:
        cache_dir = Path(args.cache_dir) if args.cache_dir else None
        _PROBE = PacketProbe(load_video(args.latency_video, cache_dir).frames)
    if args.inject_loss or args.inject_delay:
        install_impairment(args.inject_loss, args.inject_delay, seed=hash(args.token[0]))
    http = _http_client() if args.janus else None
    deadline = time.time() + args.deadline
    expect = {"video": args.expect_video, "audio": args.expect_audio}
    expect = {k: v for k, v in expect.items() if v}
    subscribers: list[_Subscriber] = []
    if not args.churn:
        joins = []
        for index, token in enumerate(args.token):
            joins.append(asyncio.create_task(_join(args, index, token, expect, http)))
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
    churned: list[_Subscriber] = []
    churn_counters: list[dict[str, Any]] = []
    if "start" in command:
        await sleep_until(command["start"])
        window.append(time.time())
        before = [s.snapshot() for s in subscribers]
        if args.churn:
            churned, churn_counters = await _churn(args, expect, http, command["end"])
        await sleep_until(command["end"])
        window.append(time.time())
        after = [s.snapshot() for s in subscribers]
    results = []
    for index, subscriber in enumerate(subscribers):
        entry = _entry(subscriber)
        if before:
            b, a = before[index], after[index]
            entry["window"] = {
                "frames": {k: a["frames"][k] - b["frames"].get(k, 0) for k in a["frames"]},
                **{k: a[k] - b.get(k, 0) for k in a if k != "frames"},
            }
        results.append(entry)
    arrivals: list[list[Any]] = []
    if _PROBE is not None and len(window) == 2:
        owners: dict[int, str] = {}
        for subscriber in subscribers:
            owners.update(receiver_owners(subscriber.client))
        arrivals = [
            [round(t, 6), i, owners[r]]
            for t, i, r in _PROBE.arrivals
            if window[0] <= t <= window[1] and r in owners
        ]
    emit(
        "result",
        window=window,
        subscribers=results,
        arrivals=arrivals,
        churn=[_entry(s) for s in churned],
        churn_counters=churn_counters,
    )
    if "start" in command:
        await commands.next(deadline)  # stay until the orchestrator has sampled the server
    for subscriber in subscribers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(subscriber.client.close(), 5.0)
    if http is not None:
        await http.aclose()
    return 0
