"""A participant of a load process as the measurement sees it, in every load mode.

:class:`Peer` wraps one participant (our ``LessonClient``, a Janus handle, or a
bare UDP socket for the zero-hop relay) and answers the same questions whatever
the mode: what it received so far (cumulative counts, per track too), when its
first frames came, which publisher each received track belongs to, and the
arrivals the latency probe recorded.

- aiortc mode: aiortc receives; every RTP packet is counted on its way into aiortc's
  receiver (:func:`install_receive_counters`), frames are what aiortc delivers.
- raw mode: aiortc does ICE and DTLS only; a :class:`rawmedia.RawSink` per subscribe
  connection takes its SRTP off the socket (:func:`enable_raw_receive`).
- relay mode: no aiortc; a sink on a UDP socket registered with the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import RtpPacket

from media.client import LessonClient

from . import aiortc_private
from .counting import PacketProbe, ReceiveCounters
from .janus import JanusParticipant
from .rawmedia import RTCP_INTERVAL, RawSink, sdp_describer

Client = LessonClient | JanusParticipant

_COUNTERS_ATTR = "_lco_bench_counters"
# The latency probe of this process (set when it measures latency).
PROBE: list[PacketProbe] = []
# Every peer of this process, for the raw mode's "SRTP is ready" callback.
_PEERS: list[Peer] = []
_VIDEO_POSITIONS: dict[bytes, int] = {}


def _observe(receiver: RTCRtpReceiver, packet: RtpPacket) -> None:
    counters: ReceiveCounters | None = receiver.__dict__.get(_COUNTERS_ATTR)
    if counters is None:
        counters = ReceiveCounters()
        setattr(receiver, _COUNTERS_ATTR, counters)
    rtx = aiortc_private.receiver_rtx_ssrcs(receiver)
    kind = aiortc_private.receiver_kind(receiver)
    counters.add(packet, rtx, kind)
    if PROBE and kind == "video" and packet.ssrc not in rtx:
        PROBE[0].add(id(receiver), packet)


def install_receive_counters() -> None:
    """Count every RTP packet reaching an aiortc receiver in this process, and keep the
    receivers' work the same for every system (no receive-side bandwidth estimator)."""
    aiortc_private.wrap_rtp_handler(_observe, neutral=True)


def receiver_counters(receiver: RTCRtpReceiver) -> ReceiveCounters | None:
    """The counters of one receiver, if it received anything."""
    counters: ReceiveCounters | None = receiver.__dict__.get(_COUNTERS_ATTR)
    return counters


class TrackOwners:
    """{mid: (publisher id, kind)} of a ``LessonClient``'s subscribe connection, read
    from the ``subscribe_offer`` messages it receives (public protocol, no client
    internals): the client's message waiters see every message; this one never
    matches, it only looks."""

    def __init__(self) -> None:
        self.by_mid: dict[str, tuple[str, str]] = {}
        self._task: asyncio.Future[dict[str, Any]] | None = None

    def watch(self, client: LessonClient) -> None:
        """Start looking at ``client``'s messages (call before it connects)."""
        self._task = asyncio.ensure_future(client.wait_for(self._see, timeout=10**7))
        # The wait ends with the connection (ConnectionError): nothing to report.
        self._task.add_done_callback(lambda task: task.cancelled() or task.exception())

    def _see(self, message: dict[str, Any]) -> bool:
        if message.get("type") == "subscribe_offer":
            for track in message.get("tracks", []):
                self.by_mid[str(track["mid"])] = (str(track["participant_id"]), track["kind"])
        return False

    def close(self) -> None:
        """Stop looking."""
        if self._task is not None:
            self._task.cancel()


class Peer:
    """One participant of this process and what it received."""

    def __init__(self, name: str, client: Client | None) -> None:
        self.name = name
        self.client = client
        self.owners = TrackOwners() if isinstance(client, LessonClient) else None
        if isinstance(client, LessonClient) and self.owners is not None:
            self.owners.watch(client)
        self.sink: RawSink | None = None
        self.relay: asyncio.DatagramTransport | None = None
        self.tasks: list[asyncio.Task[None]] = []  # e.g. the relay registration
        self.started = time.monotonic()
        self.joined: float | None = None
        self.error: str | None = None
        _PEERS.append(self)

    @property
    def subscribe_pc(self) -> RTCPeerConnection | None:
        """The connection this participant receives on."""
        return self.client.subscribe_pc if self.client is not None else None

    def mid_owners(self) -> dict[str, str]:
        """{mid: publisher id} of what this participant receives."""
        if isinstance(self.client, JanusParticipant):
            return self.client.mid_owners()
        if self.owners is not None:
            return {mid: owner for mid, (owner, _) in self.owners.by_mid.items()}
        return {}

    def _receivers(self) -> list[tuple[RTCRtpReceiver, str]]:
        pc = self.subscribe_pc
        if pc is None:
            return []
        return [(t.receiver, str(t.mid)) for t in pc.getTransceivers() if t.mid is not None]

    def receiver_owners(self) -> dict[int, str]:
        """{id(receiver): publisher id} (the aiortc mode's latency probe)."""
        owners = self.mid_owners()
        return {id(r): owners[mid] for r, mid in self._receivers() if mid in owners}

    def snapshot(self) -> dict[str, Any]:
        """Cumulative frames per kind and packet counts."""
        if self.sink is not None:
            return self.sink.snapshot()
        frames: dict[str, int] = {"video": 0, "audio": 0}
        totals = {
            "packets": 0,
            "bytes": 0,
            "rtx_packets": 0,
            "expected": 0,
            "media_received": 0,
            "repaired": 0,
        }
        if self.client is not None:
            for received in self.client.received.values():
                frames[received.kind] = frames.get(received.kind, 0) + received.frames
        for receiver, _ in self._receivers():
            counters = receiver_counters(receiver)
            if counters is not None:
                for key, value in counters.snapshot().items():
                    totals[key] += value
        return {"frames": frames, **totals}

    def per_track(self) -> dict[str, dict[str, int]]:
        """Cumulative {packets, frames, expected} per ``publisher/kind`` (the soak)."""
        if self.sink is not None:
            return self.sink.per_track()
        out: dict[str, dict[str, int]] = {}
        owners = self.mid_owners()
        for receiver, mid in self._receivers():
            owner = owners.get(mid)
            counters = receiver_counters(receiver)
            if owner is None or counters is None:
                continue
            kind = aiortc_private.receiver_kind(receiver)
            entry = out.setdefault(f"{owner}/{kind}", {"packets": 0, "frames": 0, "expected": 0})
            # Repaired by RTX counts as received: the subscriber got that packet.
            entry["packets"] += sum(c.received + c.repaired for c in counters.ssrcs.values())
            entry["expected"] += sum(c.expected for c in counters.ssrcs.values())
        # Frames are what aiortc delivered (reassembled and passed on), per track.
        if self.client is not None:
            for received in self.client.received.values():
                key = f"{received.participant_id}/{received.kind}"
                if key in out:
                    out[key]["frames"] += received.frames
        return out

    def first_frames(self) -> dict[str, float]:
        """Seconds from the start of the join to the first frame (raw: packet), per kind."""
        out: dict[str, float] = {}
        if self.sink is not None:
            for kind, at in self.sink.totals.first_packet.items():
                out[kind] = at - self.started
            return out
        if self.client is not None:
            for received in self.client.received.values():
                if received.first_frame_at is not None:
                    delay = received.first_frame_at - self.started
                    out[received.kind] = min(out.get(received.kind, delay), delay)
        return out

    def tracks_flowing(self) -> dict[str, int]:
        """How many tracks of each kind delivered something so far."""
        counts: dict[str, int] = {}
        if self.sink is not None:
            for stream in self.sink.streams.values():
                if stream.counter is not None:
                    counts[stream.kind] = counts.get(stream.kind, 0) + 1
            return counts
        if self.client is not None:
            for received in self.client.received.values():
                if received.first_frame_at is not None:
                    counts[received.kind] = counts.get(received.kind, 0) + 1
        return counts

    def arrivals(self, window: list[float]) -> list[list[Any]]:
        """[wall time, loop position, publisher] of frames whose last packet arrived in
        ``window``."""
        if len(window) != 2:
            return []
        if self.sink is not None:
            found = self.sink.arrivals
            return [[round(t, 6), i, p] for t, i, p in found if window[0] <= t <= window[1]]
        if not PROBE:
            return []
        owners = self.receiver_owners()
        return [
            [round(t, 6), i, owners[r]]
            for t, i, r in PROBE[0].arrivals
            if window[0] <= t <= window[1] and r in owners
        ]

    def srtp_profile(self) -> str | None:
        """The SRTP profile DTLS negotiated for what this participant receives or sends."""
        if self.client is None:
            return None
        for pc in (self.client.subscribe_pc, self.client.publish_pc):
            profile = aiortc_private.srtp_profile(pc)
            if profile:
                return profile
        return None

    async def close(self) -> None:
        """Leave (bounded)."""
        if self.owners is not None:
            self.owners.close()
        for task in self.tasks:
            task.cancel()
        if self.relay is not None:
            self.relay.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 5.0)
        with contextlib.suppress(ValueError):
            _PEERS.remove(self)


# -- raw mode --------------------------------------------------------------------


def _srtp_ready(transport: RTCDtlsTransport) -> None:
    """A DTLS transport of this process has its SRTP sessions: if it is a peer's
    subscribe connection, give that connection a sink."""
    for peer in _PEERS:
        pc = peer.subscribe_pc
        if pc is None or peer.sink is not None:
            continue
        if not any(t is transport for t in aiortc_private.dtls_transports(pc)):
            continue
        session = aiortc_private.rx_srtp(transport)
        connection = aiortc_private.ice_connection(transport)
        if session is None or connection is None:
            return

        def remote_sdp(pc: RTCPeerConnection = pc) -> str | None:
            description = pc.remoteDescription
            return description.sdp if description is not None else None

        peer.sink = RawSink(
            session.unprotect,
            sdp_describer(remote_sdp, peer.mid_owners),
            _VIDEO_POSITIONS,
        )
        setattr(connection, aiortc_private.RAW_SINK, peer.sink)
        return


def video_positions() -> dict[bytes, int]:
    """The latency probe's VP8 index of this process (raw and relay modes)."""
    return _VIDEO_POSITIONS


def enable_raw_receive(positions: dict[bytes, int]) -> None:
    """Raw mode in this process: subscribe connections' SRTP goes to sinks (call first,
    before any connection exists). ``positions`` is the latency probe's VP8 index."""
    _VIDEO_POSITIONS.update(positions)
    aiortc_private.take_srtp_off_the_socket()
    aiortc_private.on_srtp_ready(_srtp_ready)


async def send_receiver_reports(sender_ssrc: int = 0x4C434F52) -> None:
    """Every second, an RTCP receiver report from each raw sink's connection, as an
    aiortc receiver sends them (raw sinks bypass aiortc's receivers). Until cancelled."""
    while True:
        await asyncio.sleep(RTCP_INTERVAL)
        for peer in list(_PEERS):
            pc = peer.subscribe_pc
            if peer.sink is None or pc is None:
                continue
            report = peer.sink.receiver_report(sender_ssrc)
            if report is None:
                continue
            for transport in aiortc_private.dtls_transports(pc):
                session = aiortc_private.tx_srtp(transport)
                endpoint = aiortc_private.nominated_endpoint(
                    aiortc_private.ice_connection(transport)
                )
                if session is None or endpoint is None:
                    continue
                with contextlib.suppress(Exception):  # a report lost is not fatal
                    endpoint[0].sendto(session.protect_rtcp(report), endpoint[1])
                break
