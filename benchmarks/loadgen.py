"""Load-generator processes: pre-encoded publishers and subscribers that do not decode.

Each runs in its own process (never in the server's) and talks to the
orchestrator in JSON lines: it prints ``{"event": "ready", ...}`` once its
participants are up, then reads one command from stdin:

- ``{"start": T1, "end": T2}`` (wall-clock seconds): count what arrives between T1
  and T2, print ``{"event": "result", ...}`` after T2;
- ``{"soak": {"t0": T0, "period": P, "end": T2}}``: print ``{"event": "tick", ...}``
  with cumulative counts per track at T0, T0 + P, ... until T2, then the result;
- ``{"stop": true}``.

It leaves at the next ``{"stop": true}`` (so the server is sampled with everyone
still connected). Every wait is bounded by ``--deadline`` so a process always ends
by itself.

Three ways to carry media (``benchmarks/participants.py``): aiortc end to end (the
default), ``--raw`` (signalling, ICE and DTLS in aiortc, media as pre-packetised SRTP,
``benchmarks/rawmedia.py``), and ``--relay`` (the zero-hop baseline: raw media through
``benchmarks/udprelay.py``, no signalling at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pylibsrtp
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from media import hooks
from media.client import LessonClient
from media.peers import negotiated_media

from . import aiortc_private, participants
from .counting import PacketProbe
from .encoded import EncodedStream, PreEncodedTrack, load_audio, load_video
from .janus import JanusParticipant
from .participants import Client, Peer
from .rawmedia import (
    RELAY_SSRC_BASE,
    SRTP_PROFILES,
    RawSender,
    RawSink,
    StreamSpec,
    packetize,
    positions_of,
    relay_describe,
    relay_profile,
    stream_specs,
)
from .udprelay import REGISTER

logger = logging.getLogger(__name__)


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


async def tick(soak: dict[str, float], sample: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Emit ``tick`` events with ``sample()`` at ``t0 + k * period`` up to ``end``."""
    t0, period, end = float(soak["t0"]), float(soak["period"]), float(soak["end"])
    number = 0
    while t0 + number * period <= end + 1e-6:
        await sleep_until(t0 + number * period)
        emit("tick", k=number, t=time.time(), **(await sample()))
        number += 1


def _window_difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        "frames": {k: after["frames"][k] - before["frames"].get(k, 0) for k in after["frames"]},
        **{k: after[k] - before.get(k, 0) for k in after if k != "frames"},
    }


# -- network impairment in subscriber processes -----------------------------------


def install_impairment(loss: float, delay: float, seed: int) -> None:
    """Drop ``loss`` (a fraction) of incoming datagrams and delay the rest by ``delay`` s.

    Applied in this process only, before aioice hands a datagram to DTLS/SRTP (so
    before aiortc sees it): what ``tc netem`` on the subscriber's ingress would do,
    STUN included, without reordering.
    """
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


# -- set-up shared by both kinds of process -------------------------------------


def _http_client() -> Any:
    import httpx

    # One connection per long poll plus requests; no proxy from the environment.
    return httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=400))


def _prepare(args: Any, video: str | None) -> Path | None:
    """What every load process does first: hooks, counters, probe, mode."""
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    hooks.install_forwarding_hooks()  # receivers never decode in a load process
    hooks.set_host_addresses([args.ice_host])
    hooks.route_rtx_by_ssrc()
    participants.install_receive_counters()
    if args.srtp_profile != "any":
        aiortc_private.offer_only_srtp_profile(SRTP_PROFILES[args.srtp_profile])
    stream = load_video(video, cache_dir) if video else None
    if stream is not None:
        participants.PROBE.append(PacketProbe(stream.frames))
    if args.raw:
        participants.enable_raw_receive(positions_of(stream) if stream else {})
    return cache_dir


def _relay_address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("udp://").rpartition(":")
    return host, int(port)


def _relay_session(args: Any, direction: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=bytes.fromhex(args.srtp_key),
        ssrc_type=direction,
        srtp_profile=SRTP_PROFILES[relay_profile(args.srtp_profile)],
    )
    return pylibsrtp.Session(policy)


class _Endpoint(asyncio.DatagramProtocol):
    """A UDP socket of the relay mode; hands datagrams to a sink."""

    def __init__(self, sink: RawSink | None = None) -> None:
        self.sink = sink

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.sink is not None:
            self.sink(data)


# -- publishers ------------------------------------------------------------------


class SilentTrack(MediaStreamTrack):
    """A track whose sender never gets a frame: in the raw mode it negotiates the
    m-line and its sender keeps sending RTCP, while a :class:`RawSender` sends the RTP."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never = asyncio.Event()

    async def recv(self) -> Any:
        """Never returns (until the sender is stopped and cancels it)."""
        await self._never.wait()
        raise RuntimeError("unreachable")


@dataclass(slots=True)
class _Publisher:
    peer: Peer
    streams: list[EncodedStream]
    tracks: list[PreEncodedTrack] = field(default_factory=list)
    senders: list[RawSender] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    codecs: list[str] = field(default_factory=list)
    error: str | None = None
    participant_id: str | None = None
    # Janus only: the second handle that subscribes to the other publishers.
    listener: Peer | None = None

    def receiving(self) -> Peer:
        """Who receives the other publishers' tracks for this one."""
        return self.listener or self.peer

    def track_stats(self, window: list[float]) -> list[dict[str, Any]]:
        """What each track sent (the send log only around the window: latency)."""
        out = []
        sources: list[PreEncodedTrack | RawSender] = [*self.tracks, *self.senders]
        for source in sources:
            log = source.sent_log if source.kind == "video" else []
            out.append(
                {
                    "kind": source.kind,
                    "frames_sent": source.frames_sent,
                    "bytes_sent": source.bytes_sent,
                    "schedule_resets": source.schedule_resets,
                    "frames_skipped": source.frames_skipped,
                    "keyframe_requests": source.keyframe_requests,
                    "keyframe_jumps": source.keyframe_jumps,
                    "sent": [
                        [round(w, 6), i]
                        for w, i in log
                        if window and window[0] - 3 <= w <= window[1]
                    ],
                }
            )
        return out

    async def packets_sent(self) -> dict[str, dict[str, int]]:
        """Cumulative {packets, frames} sent per ``participant/kind`` (the soak)."""
        out: dict[str, dict[str, int]] = {}
        for sender in self.senders:
            out[f"{self.participant_id}/{sender.kind}"] = {
                "packets": sender.packets_sent,
                "frames": sender.frames_sent,
            }
        client = self.peer.client
        if self.tracks and client is not None and client.publish_pc is not None:
            for transceiver in client.publish_pc.getTransceivers():
                track = transceiver.sender.track
                if not isinstance(track, PreEncodedTrack):
                    continue
                report = await transceiver.sender.getStats()
                packets = sum(s.packetsSent for s in report.values() if s.type == "outbound-rtp")
                out[f"{self.participant_id}/{track.kind}"] = {
                    "packets": packets,
                    "frames": track.frames_sent,
                }
        return out


async def _start_publisher(publisher: _Publisher, raw: bool) -> None:
    """Join and publish the streams (aiortc tracks, or silent tracks for raw senders)."""
    client = publisher.peer.client
    assert client is not None
    await client.connect()
    specs: list[tuple[Any, Any]] = []
    for stream in publisher.streams:
        source = "camera" if stream.kind == "video" else "microphone"
        if raw:
            specs.append((SilentTrack(stream.kind), source))
        else:
            track = PreEncodedTrack(stream)
            publisher.tracks.append(track)
            specs.append((track, source))
    reply = await client.publish(specs)
    publisher.participant_id = client.participant_id
    if reply["type"] != "publish_answer":
        publisher.error = reply.get("message", "publish refused")
        return
    # Keyframe requests relayed by the server make the replay jump to its next keyframe.
    if client.publish_pc is not None and not raw:
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


def _start_raw_senders(publisher: _Publisher) -> None:
    """Once connected: one :class:`RawSender` per published m-line, on the DTLS
    transport's SRTP session and the nominated pair's socket."""
    client = publisher.peer.client
    assert client is not None and client.publish_pc is not None
    pc = client.publish_pc
    ssrcs: dict[str, int] = {}
    senders = {}
    for transceiver in pc.getTransceivers():
        if transceiver.mid is not None:
            ssrcs[transceiver.mid] = hooks.sender_ssrcs(transceiver.sender)[0]
            senders[transceiver.mid] = transceiver.sender
    specs = stream_specs(pc.localDescription.sdp, pc.remoteDescription.sdp, ssrcs)
    streams = {s.kind: s for s in publisher.streams}
    for mid, spec in specs.items():
        stream = streams.get(spec.kind)
        sender = senders[mid]
        session = hooks.tx_srtp(sender)
        pairs = hooks.nominated_pairs(sender)
        if stream is None or session is None or not pairs or 1 not in pairs:
            publisher.error = f"{spec.kind}: not connected, cannot send raw"
            continue
        transport, address = hooks.pair_endpoint(pairs[1])

        def send(data: bytes, transport: Any = transport, address: Any = address) -> None:
            transport.sendto(data, address)

        raw = RawSender(spec, stream, packetize(stream), session.protect, send)
        hooks.on_keyframe_request(sender, raw.request_keyframe)
        publisher.senders.append(raw)
        publisher.tasks.append(asyncio.create_task(raw.run()))


async def _start_relay_publisher(args: Any, publisher: _Publisher, index: int) -> None:
    """The zero-hop baseline: raw senders straight to the relay, a shared key."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        _Endpoint, remote_addr=_relay_address(args.url)
    )
    publisher.peer.relay = transport
    session = _relay_session(args, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    publisher.participant_id = f"relay{index}"
    for stream in publisher.streams:
        offset = 0 if stream.kind == "video" else 1
        # The header extensions aiortc's senders negotiate by default (MID, abs-send-time):
        # the same bytes on the wire as in the other systems.
        spec = StreamSpec(
            ssrc=RELAY_SSRC_BASE + 2 * index + offset,
            payload_type=97 if stream.kind == "video" else 111,
            kind=stream.kind,
            mid=str(offset),
            mid_id=1,
            abs_send_time_id=3 if stream.kind == "video" else None,
        )
        raw = RawSender(spec, stream, packetize(stream), session.protect, transport.sendto)
        publisher.senders.append(raw)
        publisher.tasks.append(asyncio.create_task(raw.run()))


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
    cache_dir = _prepare(args, args.video)
    deadline = time.time() + args.deadline
    publishers: list[_Publisher] = []
    http = _http_client() if args.janus else None
    reports = asyncio.create_task(participants.send_receiver_reports()) if args.raw else None
    streams = [load_video(args.video, cache_dir)] if args.video else []
    streams += [load_audio(cache_dir)] if args.audio else []
    try:
        async with asyncio.timeout(args.ready_timeout):
            for number, token in enumerate(args.token):
                index = args.first_index + number
                client: Client | None = None
                if args.janus:
                    client = JanusParticipant(args.url, f"pub{index}", http)
                elif not args.relay:
                    client = LessonClient(args.url, token)
                publisher = _Publisher(Peer(f"pub{index}", client), list(streams))
                publishers.append(publisher)
                if args.relay:
                    await _start_relay_publisher(args, publisher, index)
                else:
                    await _start_publisher(publisher, args.raw)
            for publisher in publishers:
                client = publisher.peer.client
                if client is not None and client.publish_pc is not None:
                    await _connected(client.publish_pc)
                    if args.raw:
                        _start_raw_senders(publisher)
            if args.janus and args.hear_each_other:
                # A Janus handle publishes or subscribes: each publisher gets a second
                # one that subscribes to the other publishers' feeds.
                for number, publisher in enumerate(publishers):
                    listener = JanusParticipant(args.url, f"pub{number}-listen", http)
                    publisher.listener = Peer(f"pub{number}-listen", listener)
                    await listener.connect()
                    await listener.subscribe(
                        args.hear_each_other - 1,
                        args.ready_timeout,
                        exclude=publisher.participant_id,
                    )
    except Exception as exc:
        emit("ready", ok=False, error=f"publishers did not start: {exc!r}")
        for publisher in publishers:
            await publisher.peer.close()
        return 1
    errors = [p.error for p in publishers if p.error]
    emit(
        "ready",
        ok=not errors,
        errors=errors,
        codecs=[p.codecs for p in publishers],
        srtp_profiles=[p.peer.srtp_profile() for p in publishers],
    )
    commands = Commands()
    command = await commands.next(deadline)
    received: list[dict[str, Any]] = []
    window: list[float] = []
    if "start" in command:
        # What publishers receive (each other's tracks) is forwarded by the server too.
        await sleep_until(command["start"])
        window.append(time.time())
        before = [p.receiving().snapshot() for p in publishers]
        await sleep_until(command["end"])
        window.append(time.time())
        after = [p.receiving().snapshot() for p in publishers]
        received = [_window_difference(b, a) for b, a in zip(before, after, strict=True)]
    elif "soak" in command:

        async def sample() -> dict[str, Any]:
            return {
                "publishers": [
                    {
                        "name": p.peer.name,
                        "participant_id": p.participant_id,
                        "sent": await p.packets_sent(),
                        "tracks": p.receiving().per_track(),
                    }
                    for p in publishers
                ]
            }

        await tick(command["soak"], sample)
    result = [
        {"participant_id": p.participant_id, "tracks": p.track_stats(window)} for p in publishers
    ]
    arrivals = [a for p in publishers for a in p.receiving().arrivals(window)]
    emit("result", publishers=result, received=received, arrivals=arrivals)
    if "start" in command or "soak" in command:
        await commands.next(deadline)  # stay until the orchestrator has sampled the server
    if reports is not None:
        reports.cancel()
    for publisher in publishers:
        for task in publisher.tasks:
            task.cancel()
        for peer in (publisher.listener, publisher.peer):
            if peer is not None:
                await peer.close()
    if http is not None:
        await http.aclose()
    return 0


# -- subscribers -----------------------------------------------------------------


async def _join(args: Any, index: int, token: str, expect: dict[str, int], http: Any) -> Peer:
    client: Client | None = None
    if args.janus:
        client = JanusParticipant(args.url, f"sub{index}", http)
    elif not args.relay:
        client = LessonClient(args.url, token)
    peer = Peer(f"sub{index}", client)
    try:
        async with asyncio.timeout(args.ready_timeout):
            if args.relay:
                await _join_relay(args, peer)
            elif isinstance(client, JanusParticipant):
                await client.connect()
                # Janus: attached; the join is complete once the subscription is started.
                await client.subscribe(max(expect.values()), args.ready_timeout)
            elif client is not None:
                await client.connect()
            peer.joined = time.monotonic()
            while True:
                flowing = peer.tracks_flowing()
                if all(flowing.get(kind, 0) >= n for kind, n in expect.items()):
                    break
                await asyncio.sleep(0.02)
    except Exception as exc:
        peer.error = f"{type(exc).__name__}: {exc}"
    return peer


async def _join_relay(args: Any, peer: Peer) -> None:
    """Register with the relay (again every second, for as long as the peer lives)."""
    loop = asyncio.get_running_loop()
    session = _relay_session(args, pylibsrtp.Policy.SSRC_ANY_INBOUND)
    peer.sink = RawSink(session.unprotect, relay_describe, participants.video_positions())
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Endpoint(peer.sink), local_addr=(args.ice_host, 0)
    )
    peer.relay = transport
    address = _relay_address(args.url)

    async def register() -> None:
        while not transport.is_closing():
            transport.sendto(REGISTER, address)
            await asyncio.sleep(1.0)

    peer.tasks.append(asyncio.create_task(register()))


def _entry(peer: Peer) -> dict[str, Any]:
    return {
        "error": peer.error,
        "join_s": peer.joined - peer.started if peer.joined is not None else None,
        "first_frame_s": peer.first_frames(),
        "tracks": sum(peer.tracks_flowing().values()),
    }


async def _churn(
    args: Any, expect: dict[str, int], http: Any, end: float
) -> tuple[list[Peer], list[dict[str, Any]]]:
    """One join or leave per second until ``end``: returns everyone who joined, and
    the counters of those who left (from their join, so inside the window)."""
    active: list[asyncio.Task[Peer]] = []
    joined: list[Peer] = []
    left: list[dict[str, Any]] = []
    tokens = iter(enumerate(args.token))
    number = 0
    while time.time() + 1.0 <= end:
        if number % 2 == 0 or len(active) < 2:
            following = next(tokens, None)
            if following is not None:
                index, token = following
                active.append(asyncio.create_task(_join(args, 1000 + index, token, expect, http)))
        elif active:
            task = active.pop(0)
            peer = await task if task.done() else None
            if peer is None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            else:
                left.append(peer.snapshot())
                joined.append(peer)
                await peer.close()
        number += 1
        await asyncio.sleep(1.0)
    for task in active:
        with contextlib.suppress(BaseException):
            async with asyncio.timeout(max(0.1, end - time.time() + args.ready_timeout)):
                peer = await task
                left.append(peer.snapshot())
                joined.append(peer)
    return joined, left


async def run_subscribers(args: Any) -> int:
    """A process of ``len(args.token)`` subscribers; see the module docstring."""
    _prepare(args, args.latency_video)
    if args.inject_loss or args.inject_delay:
        install_impairment(args.inject_loss, args.inject_delay, seed=hash(args.token[0]))
    http = _http_client() if args.janus else None
    reports = asyncio.create_task(participants.send_receiver_reports()) if args.raw else None
    deadline = time.time() + args.deadline
    expect = {"video": args.expect_video, "audio": args.expect_audio}
    expect = {k: v for k, v in expect.items() if v}
    peers: list[Peer] = []
    if not args.churn:
        joins = []
        for number, token in enumerate(args.token):
            index = args.first_index + number
            joins.append(asyncio.create_task(_join(args, index, token, expect, http)))
            if number + 1 < len(args.token):
                await asyncio.sleep(args.stagger)
        peers = list(await asyncio.gather(*joins))
    emit(
        "ready",
        ok=all(p.error is None for p in peers),
        errors=[p.error for p in peers if p.error],
        srtp_profiles=sorted({str(p.srtp_profile()) for p in peers}),
    )
    commands = Commands()
    command = await commands.next(deadline)
    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    window: list[float] = []
    churned: list[Peer] = []
    churn_counters: list[dict[str, Any]] = []
    if "start" in command:
        await sleep_until(command["start"])
        window.append(time.time())
        before = [p.snapshot() for p in peers]
        if args.churn:
            churned, churn_counters = await _churn(args, expect, http, command["end"])
        await sleep_until(command["end"])
        window.append(time.time())
        after = [p.snapshot() for p in peers]
    elif "soak" in command:

        async def sample() -> dict[str, Any]:
            return {"subscribers": [{"name": p.name, "tracks": p.per_track()} for p in peers]}

        await tick(command["soak"], sample)
    results = []
    for index, peer in enumerate(peers):
        entry = _entry(peer)
        if before:
            entry["window"] = _window_difference(before[index], after[index])
        results.append(entry)
    emit(
        "result",
        window=window,
        subscribers=results,
        arrivals=[a for p in peers for a in p.arrivals(window)],
        churn=[_entry(p) for p in churned],
        churn_counters=churn_counters,
    )
    if "start" in command or "soak" in command:
        await commands.next(deadline)  # stay until the orchestrator has sampled the server
    if reports is not None:
        reports.cancel()
    for peer in peers:
        await peer.close()
    if http is not None:
        await http.aclose()
    return 0
