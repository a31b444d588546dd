"""The places where the SFU reaches into aiortc's and aioice's private surface.

Everything that depends on a private name lives here, so that an aiortc
upgrade has one file to check; ``pyproject.toml`` pins the versions and
``tests/test_hooks.py`` fails if a hook stops working.

1. ``aiortc.rtcrtpreceiver.get_decoder``: every receiver hands each reassembled
   encoded frame to its decoder thread. Our "decoder" returns the encoded frame
   as an ``av.Packet`` (keyframe flag set), which turns a remote track into a
   track of encoded frames while keeping aiortc's SRTP, RTX, NACK, REMB and
   receiver reports.
2. ``aiortc.rtcrtpsender.get_encoder``: wrapped only to count; a sender fed
   ``av.Packet`` objects calls ``pack()`` (packetise) instead of ``encode()``.
3. ``RTCRtpReceiver.__jitter_buffer`` (audio): aiortc holds four Opus packets
   back and discards packets that arrived once loss starts; we release each
   audio packet as it arrives.
4. ``RTCRtpSender._send_keyframe``: in the ``pack()`` path a subscriber's PLI/FIR
   only sets a flag nothing reads; we point it at the publisher's forwarder.
5. ``RTCRtpReceiver._send_rtcp_pli`` sends a PLI to the publisher, whose media
   SSRC we tell from its RTX SSRC with ``RTCRtpReceiver.__rtx_ssrc``.
6. ``aioice.ice.get_host_addresses``: which host addresses ICE announces (aioice
   skips loopback; tests and single-host setups need to choose).

The RTP fast path (``media/rtp_forward.py``) also uses:

7. ``RTCRtpReceiver.__jitter_buffer`` again, for a tap that hands each decrypted,
   RTX-unwrapped, NACK-accounted packet to the forwarder and reports "no frame".
8. ``RTCRtpSender._retransmit`` and ``_send_keyframe`` per instance: a subscriber's
   NACKs are answered from our history; its PLI/FIR reach the publisher.
9. ``RTCRtpSender._ssrc`` / ``_rtx_ssrc``: the SSRCs the subscriber's SDP announced.
10. ``RTCRtpSender.__ntp_timestamp`` / ``__rtp_timestamp`` / ``__packet_count`` /
    ``__octet_count``: what aiortc's RTCP task puts in sender reports.
11. ``RTCDtlsTransport._tx_srtp``: the subscriber's outbound SRTP session.
12. aioice ``Connection._nominated[1]`` and its pair's ``protocol.transport`` and
    ``remote_addr``: the UDP socket and address to send on without a coroutine; its
    ``local_candidate`` and ``remote_candidate`` types (a TURN relay on either side).
13. pylibsrtp's cffi ``lib.srtp_protect``, ``ffi`` and ``Session._srtp``: protect a
    packet in a preallocated buffer (no per-packet ``ffi.new``, type checks, copy
    out), the same libsrtp call ``Session.protect`` makes.
14. A duplicate of the pair's UDP socket (``get_extra_info("socket")``, public,
    but on aioice's private transport): ``sendto`` without the asyncio transport.
15. ``RTCDtlsTransport._register_rtp_receiver`` and its ``_rtp_router.ssrc_table``:
    aiortc registers only a receiver's media SSRC, so an RTX packet finds its receiver
    by payload type alone and is discarded as soon as two video receivers share a
    BUNDLE transport (a camera and a screen share); we also register each RTX SSRC
    (from the SDP's FID group), as browsers route them.
16. ``RTCRtpTransceiver._set_mline_index``: aiortc keeps a stopped transceiver's
    m-line index, so when a browser recycles that m-line for a new transceiver (JSEP
    5.2.2) aiortc gives the old transceiver the new MID too; we forget the index of
    a transceiver whose m-line was rejected.

Simulcast (a browser sends one camera as several layers, each its own SSRC, named
by RID in an RTP header extension, none announced in the SDP) needs:

17. ``RtpRouter.route_rtp``: aiortc routes an unknown SSRC by payload type alone,
    so as soon as two video receivers share a transport every layer is discarded;
    we route it by its MID header extension first (RFC 8843 9.2).
18. ``aiortc.codecs.HEADER_EXTENSIONS``: aiortc negotiates only the extensions in
    this table; we add the RID and repaired-RID extensions (RFC 8852) to video.
19. ``RTCRtpReceiver.__nack_generator``: aiortc's NACK generator keeps one sequence
    space per receiver, and with layers interleaved it NACKs packets that were never
    lost; we give it one generator per SSRC.
20. ``RTCRtpReceiver._handle_rtp_packet`` (per instance) and ``__rtx_ssrc``: a
    layer's retransmissions come on an unannounced RTX SSRC named only by the
    repaired-RID extension; we learn each RTX SSRC's media SSRC from it.

21. ``RTCRtpSender._handle_rtcp_packet`` (per instance): a subscriber's receiver
    reports tell how much of what we send it loses; the layer it gets follows that.

Publishing simulcast from Python (``media/simulcast.py``: tests, benchmarks, ``lco
publish``), which aiortc cannot:

22. ``RTCDtlsTransport._send_rtp`` and ``_rtp_header_extensions_map``: send an RTP
    packet of our own making (a layer's SSRC, its RID) on a negotiated transport.
23. ``RTCDtlsTransport._rtp_router.register_sender``: RTCP about a layer's SSRC
    (its PLI) reaches that layer.
24. ``RTCRtpReceiver.__jitter_buffer`` of a Python *viewer* (``media/client.py``):
    aiortc's video jitter buffer releases frames strictly in order and, past a packet
    that never comes, stalls until 512 packets later (half a minute of a small
    layer); like a browser, ours skips to a keyframe that starts after the hole.
25. ``RTCRtpReceiver.__remote_bitrate_estimator`` and ``__rtcp_ssrc``: a publisher
    sends what the SFU's REMB allows, and aiortc's estimate never allows more than
    1.5 times what arrives, so a browser never turns on its top simulcast layer; as
    Janus does, we send a configured cap instead (and skip aiortc's estimator).

The operator's live view reads:

26. ``RTCRtpReceiver.__remote_streams`` (read only): what aiortc counted per incoming
    SSRC for its receiver reports (packets received and lost), for the operator's
    live view; RTX SSRCs are left out (``__rtx_ssrc``, as in hook 5).

ICE restart (RFC 8445 section 9; aiortc 1.16 has none: ``RTCIceTransport.start``
ignores new remote parameters once started and ``createOffer`` has no
``iceRestart``). :class:`IceConnectionSwap` gathers a new aioice ``Connection`` with
fresh credentials, lets the offer or answer carry them, connects it and swaps it in
under the running DTLS transport, whose session and SRTP keys survive (RFC 8445
section 9: a restart changes ICE only). Media keeps flowing on the old connection
until the new one has a nominated pair (make before break). It uses:

27. ``RTCIceTransport._connection`` and ``RTCIceGatherer._connection``: the aioice
    connection aiortc adds remote candidates to, reads local parameters and
    candidates from (the SDP), and that the RTP fast path's pairs (hook 12) and
    ``remote_candidate_type`` come from; ``RTCIceGatherer._remote_candidates_end``,
    which otherwise keeps the new connection from hearing of trickled candidates.
28. ``RTCIceTransport._recv`` and ``._send``: the DTLS transport reads and writes
    through these, bound once to the first connection's ``recv`` and ``send``. We
    rebind ``_recv`` to a feed that both connections' datagrams reach (aioice
    ``Connection._queue``, replaced by an inlet on each), so the DTLS task, already
    waiting in the old connection's queue, never notices the swap; and ``_send`` to
    the new connection's first valid pair (aioice ``Connection._check_list``, a pair
    in state ``SUCCEEDED``) as soon as there is one, then to the new connection once
    it has a nominated pair. A controlled agent waits for the other side to nominate,
    and Chrome, restarting, took 4 s to do so while a stale candidate was still being
    checked; it sends its media on the valid pair meanwhile, and so do we (our RTCP:
    keyframe requests, receiver reports). Only the connection carrying the transport
    can end the feed (its close then ends the DTLS transport, as before).
29. aioice ``Connection._event_waiter``: aiortc's ``RTCIceTransport._monitor`` waits
    for the old connection's events and would mark the transport failed when the old
    connection closes; we wake it with a plain ``ConnectionEvent`` so that it waits
    for the new connection's instead. ``Connection._transport_policy``: the new
    connection gathers as the old one did.
30. ``RTCIceTransport.stop`` per instance: also closes an old connection still
    waiting for its swap, so that closing the peer connection leaks no socket. A
    restart still connecting when the other side restarts again (it has moved on to
    newer credentials) is overtaken: its new connection is closed and the next one
    swaps in for the same old one, so a transport holds two ICE connections at most.

Whether a peer connection is closing:

31. ``RTCPeerConnection.__isClosed`` (read only): set as soon as ``close()`` begins
    (aiortc closes a connection by itself when its DTLS transport closes). Neither
    public state tells it: the connection state turns "closed" only at the end of
    ``close()``, and the signalling state, "closed" at its start, goes back to
    "stable" when a description being applied meanwhile completes.

Transport-wide feedback from a browser viewer (``media/transport_wide.py``):

32. ``RTCDtlsTransport._handle_rtcp_data`` per instance: aiortc parses a transport-wide
    feedback packet (RTPFB, FMT 15) as if it were a NACK and routes it by a media
    SSRC the browser may take from any stream, and its raw bytes are gone by then;
    we see each decrypted RTCP datagram of a subscribe connection first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol

import aioice
import aioice.ice
import aiortc.codecs
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import av
import pylibsrtp
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcdtlstransport import RTCDtlsTransport, RtpRouter
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters
from aiortc.rtcrtpreceiver import NackGenerator, RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
)

from .keyframes import is_keyframe

logger = logging.getLogger(__name__)

PINNED_AIORTC = "1.16.0"
PINNED_AIOICE = "0.13.0"
PINNED_PYLIBSRTP = "1.0.0"  # hook 13 uses its cffi binding and Session._srtp


class MediaCounters:
    """Process-wide counts that prove media is forwarded, not transcoded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # decoder threads count too
        self.frames_passed_through = 0
        self.frames_decoded = 0
        self.frames_encoded = 0
        self.frames_packed = 0

    def add(self, name: str, amount: int = 1) -> None:
        """Add to one counter (thread-safe)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, int]:
        """All counters as a dict."""
        with self._lock:
            return {
                "frames_passed_through": self.frames_passed_through,
                "frames_decoded": self.frames_decoded,
                "frames_encoded": self.frames_encoded,
                "frames_packed": self.frames_packed,
            }


COUNTERS = MediaCounters()


class PassthroughDecoder:
    """Returns each reassembled encoded frame as an ``av.Packet``; decodes nothing."""

    def __init__(self, codec_name: str, clock_rate: int) -> None:
        self.codec_name = codec_name
        self.time_base = fractions.Fraction(1, clock_rate)

    def decode(self, encoded_frame: JitterFrame) -> list[av.Packet[Any]]:
        """Wrap the frame; runs in aiortc's decoder thread and must never raise."""
        try:
            packet = av.Packet(encoded_frame.data)
            packet.pts = encoded_frame.timestamp
            packet.time_base = self.time_base
            packet.is_keyframe = is_keyframe(self.codec_name, encoded_frame.data)
        except Exception:
            return []
        COUNTERS.add("frames_passed_through")
        return [packet]


class _CountingEncoder:
    """Delegates to aiortc's encoder and counts which path a sender takes."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def encode(self, frame: Any, force_keyframe: bool = False) -> Any:
        COUNTERS.add("frames_encoded")
        return self._inner.encode(frame, force_keyframe)

    def pack(self, packet: av.Packet[Any]) -> Any:
        COUNTERS.add("frames_packed")
        return self._inner.pack(packet)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _ImmediateAudioBuffer:
    """Stands in for aiortc's audio jitter buffer: one packet is one Opus frame."""

    capacity = 1

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        data = getattr(packet, "_data", b"")
        if not data:
            return False, None
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


_original_get_decoder = aiortc.rtcrtpreceiver.get_decoder  # type: ignore[attr-defined]
_original_get_encoder = aiortc.rtcrtpsender.get_encoder  # type: ignore[attr-defined]
_original_get_host_addresses = aioice.ice.get_host_addresses
_original_register_rtp_receiver = RTCDtlsTransport._register_rtp_receiver


def _register_rtp_receiver_with_rtx(self: Any, receiver: Any, parameters: Any) -> None:
    _original_register_rtp_receiver(self, receiver, parameters)
    for encoding in parameters.encodings:
        if encoding.rtx is not None:
            self._rtp_router.ssrc_table[encoding.rtx.ssrc] = receiver


def route_rtx_by_ssrc(enabled: bool = True) -> None:
    """Route retransmissions by their RTX SSRC (hook 15); False restores aiortc's routing."""
    setattr(  # noqa: B010
        RTCDtlsTransport,
        "_register_rtp_receiver",
        _register_rtp_receiver_with_rtx if enabled else _original_register_rtp_receiver,
    )


def _counting_get_decoder(codec: Any) -> Any:
    """Used when passthrough is off (clients that really decode): counts decodes."""
    decoder = _original_get_decoder(codec)

    class _Counting:
        def decode(self, encoded_frame: JitterFrame) -> Any:
            COUNTERS.add("frames_decoded")
            return decoder.decode(encoded_frame)

    return _Counting()


def _passthrough_get_decoder(codec: Any) -> PassthroughDecoder:
    return PassthroughDecoder(codec.name, codec.clockRate)


def _counting_get_encoder(codec: Any) -> _CountingEncoder:
    return _CountingEncoder(_original_get_encoder(codec))


def install_forwarding_hooks() -> None:
    """Make every receiver in this process yield encoded frames (the SFU process)."""
    setattr(aiortc.rtcrtpreceiver, "get_decoder", _passthrough_get_decoder)  # noqa: B010
    setattr(aiortc.rtcrtpsender, "get_encoder", _counting_get_encoder)  # noqa: B010
    route_rtx_by_ssrc()
    understand_simulcast()


def install_counting_hooks() -> None:
    """Decode normally but count it (clients that render or check media)."""
    setattr(aiortc.rtcrtpreceiver, "get_decoder", _counting_get_decoder)  # noqa: B010
    setattr(aiortc.rtcrtpsender, "get_encoder", _counting_get_encoder)  # noqa: B010
    route_rtx_by_ssrc()
    understand_simulcast()


def uninstall_hooks() -> None:
    """Give aiortc back its own decoder and encoder lookup (tests that mix roles)."""
    setattr(aiortc.rtcrtpreceiver, "get_decoder", _original_get_decoder)  # noqa: B010
    setattr(aiortc.rtcrtpsender, "get_encoder", _original_get_encoder)  # noqa: B010
    route_rtx_by_ssrc(False)
    understand_simulcast(False)


# --- simulcast (hooks 17 to 20) ------------------------------------------------

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
_RID_EXTENSIONS = (
    RTCRtpHeaderExtensionParameters(id=10, uri=RID_URI),
    RTCRtpHeaderExtensionParameters(id=11, uri=REPAIRED_RID_URI),
)
_original_route_rtp = RtpRouter.route_rtp


def _route_rtp_by_mid(self: Any, packet: RtpPacket) -> Any:
    if packet.ssrc not in self.ssrc_table:
        receiver = self.mid_table.get(packet.extensions.mid)
        if receiver is not None:
            self.ssrc_table[packet.ssrc] = receiver
            return receiver
    return _original_route_rtp(self, packet)


def understand_simulcast(enabled: bool = True) -> None:
    """Route unannounced SSRCs by MID (hook 17) and negotiate the RID extensions
    (hook 18); False restores aiortc's own behaviour."""
    setattr(RtpRouter, "route_rtp", _route_rtp_by_mid if enabled else _original_route_rtp)  # noqa: B010
    video: list[RTCRtpHeaderExtensionParameters] = aiortc.codecs.HEADER_EXTENSIONS["video"]
    video[:] = [x for x in video if x.uri not in (RID_URI, REPAIRED_RID_URI)]
    if enabled:
        video.extend(_RID_EXTENSIONS)


class _NackPerSsrc:
    """aiortc's NACK generator, one per SSRC; ``missing`` is that of the SSRC of the
    packet last added, which is what the receiver then NACKs."""

    def __init__(self) -> None:
        self._generators: dict[int, NackGenerator] = {}
        self.missing: set[int] = set()

    def add(self, packet: RtpPacket) -> bool:
        generator = self._generators.get(packet.ssrc)
        if generator is None:
            if len(self._generators) >= 16:  # a publisher changing SSRC for ever
                self._generators.clear()
            generator = self._generators[packet.ssrc] = NackGenerator()
        missed = generator.add(packet)
        self.missing = generator.missing
        return bool(missed)


class _KeyframeJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer that drops what a hole left undecodable as soon
    as a keyframe starts after it (hook 24)."""

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        data: bytes = getattr(packet, "_data", b"")
        origin = self._origin
        if origin is not None and data and (is_keyframe("VP8", data) or is_keyframe("H264", data)):
            ahead = (packet.sequence_number - origin) & 0xFFFF
            if 0 < ahead < 0x8000 and any(
                self._packets[(origin + n) % self._capacity] is None
                for n in range(min(ahead, self._capacity))
            ):
                self.remove(min(ahead, self._capacity))
                self._origin = packet.sequence_number
        return super().add(packet)


def cap_publisher(receiver: RTCRtpReceiver) -> None:
    """Stop the receiver's own bandwidth estimate (and its REMB) for a publisher whose
    REMB we send ourselves (:func:`send_remb`, hook 25)."""
    slot = "_RTCRtpReceiver__remote_bitrate_estimator"
    if not hasattr(receiver, slot):
        raise RuntimeError(f"aiortc no longer has {slot}: hook 25 needs updating")
    setattr(receiver, slot, None)


async def send_remb(receiver: RTCRtpReceiver, bitrate: int, ssrcs: list[int]) -> bool:
    """Tell the publisher behind ``receiver`` it may send up to ``bitrate`` bits/s
    (RTCP REMB for ``ssrcs``); False before the receiver has an RTCP SSRC."""
    ssrc = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
    if ssrc is None or not ssrcs:
        return False
    fci = pack_remb_fci(bitrate, ssrcs)
    await receiver._send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=ssrc, media_ssrc=0, fci=fci))
    return True


def skip_to_keyframes(receiver: RTCRtpReceiver) -> None:
    """Give a viewer's video receiver a jitter buffer that recovers at keyframes."""
    setattr(receiver, _JITTER_BUFFER, _KeyframeJitterBuffer(capacity=512, is_video=True))


def receive_layers(receiver: RTCRtpReceiver) -> None:
    """Let one publisher's receiver take simulcast layers: NACKs per SSRC (hook 19),
    RTX SSRCs learnt from the repaired-RID extension (hook 20)."""
    setattr(receiver, "_RTCRtpReceiver__nack_generator", _NackPerSsrc())  # noqa: B010
    rtx_ssrcs: dict[int, int] = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc")  # noqa: B009
    by_rid: dict[str, int] = {}
    handle = receiver._handle_rtp_packet

    async def learning(packet: RtpPacket, arrival_time_ms: int) -> None:
        extensions = packet.extensions
        if extensions.rtp_stream_id is not None and len(by_rid) < 16:
            by_rid[extensions.rtp_stream_id] = packet.ssrc
        repaired = extensions.repaired_rtp_stream_id
        if repaired is not None and packet.ssrc not in rtx_ssrcs and repaired in by_rid:
            rtx_ssrcs[packet.ssrc] = by_rid[repaired]
        await handle(packet, arrival_time_ms)

    setattr(receiver, "_handle_rtp_packet", learning)  # noqa: B010


def set_host_addresses(addresses: Sequence[str] | None) -> None:
    """Announce exactly ``addresses`` as ICE host candidates (``None``: aioice's choice)."""
    if addresses is None:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


async def send_rtp(transport: RTCDtlsTransport, packet: RtpPacket) -> None:
    """Protect and send an RTP packet we made on a connected DTLS transport (hook 22)."""
    await transport._send_rtp(packet.serialize(transport._rtp_header_extensions_map))


def route_rtcp_to(transport: RTCDtlsTransport, ssrc: int, handler: Any) -> None:
    """Give RTCP packets about ``ssrc`` to ``handler._handle_rtcp_packet`` (hook 23)."""
    transport._rtp_router.register_sender(handler, ssrc)


def listen_transport_feedback(
    transport: RTCDtlsTransport, listener: Callable[[bytes], None]
) -> None:
    """Give ``listener`` every decrypted RTCP datagram ``transport`` receives, before
    aiortc handles it (hook 32); a later listener replaces an earlier one."""
    handle = RTCDtlsTransport._handle_rtcp_data.__get__(transport)

    async def handle_rtcp_data(data: bytes) -> None:
        try:
            listener(data)
        except Exception:
            logger.exception("transport-wide feedback failed")
        await handle(data)

    setattr(transport, "_handle_rtcp_data", handle_rtcp_data)  # noqa: B010


def host_addresses() -> list[str]:
    """The host addresses ICE announces now (aioice's choice, or ours: hook 6)."""
    addresses: list[str] = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
    return addresses


def release_audio_immediately(receiver: RTCRtpReceiver) -> None:
    """Forward each Opus packet on arrival instead of through aiortc's jitter buffer."""
    setattr(receiver, "_RTCRtpReceiver__jitter_buffer", _ImmediateAudioBuffer())  # noqa: B010


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` when the remote end of ``sender`` sends PLI or FIR."""
    setattr(sender, "_send_keyframe", callback)  # noqa: B010


async def send_pli_to(receiver: RTCRtpReceiver, ssrc: int) -> bool:
    """Ask the publisher behind ``receiver`` for a keyframe of the stream ``ssrc``."""
    await receiver._send_rtcp_pli(ssrc)
    return True


async def send_pli(receiver: RTCRtpReceiver) -> bool:
    """Ask the publisher behind ``receiver`` for a keyframe; False if its SSRC is unknown."""
    rtx_ssrcs: dict[int, int] = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc")  # noqa: B009
    sources = [s for s in receiver.getSynchronizationSources() if s.source not in rtx_ssrcs]
    if not sources:
        return False
    newest = max(sources, key=lambda s: s.timestamp)
    await receiver._send_rtcp_pli(newest.source)
    return True


def received_streams(receiver: RTCRtpReceiver) -> list[tuple[int, int, int]]:
    """``(ssrc, packets received, packets lost)`` per media SSRC ``receiver`` has heard
    (RFC 3550 counts, as in its receiver reports; RTX streams left out). Read only."""
    streams: dict[int, Any] = getattr(receiver, "_RTCRtpReceiver__remote_streams")  # noqa: B009
    rtx_ssrcs: dict[int, int] = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc")  # noqa: B009
    return [
        (ssrc, int(stream.packets_received), max(0, int(stream.packets_lost)))
        for ssrc, stream in list(streams.items())
        if ssrc not in rtx_ssrcs
    ]


def is_closing(pc: Any) -> bool:
    """Whether ``close()`` has begun on ``pc`` (hook 31): offers can no longer be made."""
    return bool(getattr(pc, "_RTCPeerConnection__isClosed"))  # noqa: B009


# --- the RTP fast path -------------------------------------------------------

_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_SENDER_STATS = (
    "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__packet_count",
    "_RTCRtpSender__octet_count",
)


class PacketTap(Protocol):
    """What replaces a receiver's jitter buffer."""

    capacity: int

    def add(self, packet: Any) -> tuple[bool, None]: ...


def install_tap(receiver: RTCRtpReceiver, tap: PacketTap) -> Any:
    """Put ``tap`` where the receiver's jitter buffer was; return the old buffer."""
    previous = getattr(receiver, _JITTER_BUFFER)
    setattr(receiver, _JITTER_BUFFER, tap)
    return previous


def remove_tap(receiver: RTCRtpReceiver, previous: Any) -> None:
    """Give the receiver its jitter buffer back."""
    setattr(receiver, _JITTER_BUFFER, previous)


def has_tap_slot(receiver: RTCRtpReceiver) -> bool:
    """Whether the private slot still exists (a guard for upgrades)."""
    return hasattr(receiver, _JITTER_BUFFER)


class ReportBlock(NamedTuple):
    """One receiver report block about a sender's SSRC (RFC 3550 6.4.1)."""

    fraction_lost: float  # since the previous report, 0 to 1
    packets_lost: int  # cumulative
    highest_sequence: int  # extended highest sequence number received


def hook_sender(
    sender: RTCRtpSender,
    retransmit: Callable[[int], Awaitable[None]],
    keyframe: Callable[[], None],
    report: Callable[[ReportBlock], None] | None = None,
) -> None:
    """Route a subscriber's NACKs and PLI/FIR to us, and (``report``) each receiver
    report block about the sender's SSRC (hook 21: ``RTCRtpSender._handle_rtcp_packet``
    per instance)."""
    setattr(sender, "_retransmit", retransmit)  # noqa: B010
    setattr(sender, "_send_keyframe", keyframe)  # noqa: B010
    if report is None:
        return
    handle = RTCRtpSender._handle_rtcp_packet.__get__(sender)

    async def reporting(packet: Any) -> None:
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for block in packet.reports:
                if block.ssrc == sender._ssrc:
                    report(
                        ReportBlock(
                            block.fraction_lost / 256, block.packets_lost, block.highest_sequence
                        )
                    )
        await handle(packet)

    setattr(sender, "_handle_rtcp_packet", reporting)  # noqa: B010


def unhook_sender(sender: RTCRtpSender) -> None:
    """Remove our instance overrides: the class methods apply again."""
    for name in ("_retransmit", "_send_keyframe", "_handle_rtcp_packet"):
        sender.__dict__.pop(name, None)


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """(media SSRC, RTX SSRC) of a sender, as announced in its SDP."""
    return int(sender._ssrc), int(sender._rtx_ssrc)


def set_sender_report(
    sender: RTCRtpSender, ntp_timestamp: int, rtp_timestamp: int, packets: int, octets: int
) -> None:
    """Make aiortc's next RTCP SR for ``sender`` describe what we sent."""
    for name, value in zip(
        _SENDER_STATS, (ntp_timestamp, rtp_timestamp, packets, octets), strict=True
    ):
        setattr(sender, name, value)


def tx_srtp(sender: RTCRtpSender) -> Any | None:
    """The outbound SRTP session of the sender's DTLS transport, once connected."""
    transport = sender.transport
    if transport is None or transport.state != "connected":
        return None
    return getattr(transport, "_tx_srtp", None)


def nominated_pairs(sender: RTCRtpSender) -> dict[int, Any] | None:
    """aioice's live ``{component: CandidatePair}`` of the sender's ICE connection."""
    transport = sender.transport
    if transport is None:
        return None
    connection = getattr(transport.transport, "_connection", None)
    pairs = getattr(connection, "_nominated", None)
    return pairs if isinstance(pairs, dict) else None


def forget_mline(transceiver: RTCRtpTransceiver) -> None:
    """Detach a stopped transceiver from its m-line index (hook 16), so that a browser
    recycling the m-line gets a new transceiver of its own, not this one renamed."""
    unplaced: Any = transceiver  # aiortc's own annotation admits an int only
    unplaced._set_mline_index(None)


def pair_endpoint(pair: Any) -> tuple[Any, tuple[str, int]]:
    """(asyncio datagram transport, remote address) of a nominated candidate pair."""
    return pair.protocol.transport, pair.remote_addr


def is_relayed(pair: Any) -> bool:
    """Whether our side of a candidate pair is a TURN allocation: its transport wraps
    each datagram for the TURN server, and its socket is the one to the TURN server."""
    return bool(pair.local_candidate.type == "relay")


def remote_candidate_type(pc: Any) -> str | None:
    """``host``, ``srflx``, ``prflx`` or ``relay``: the far end of the peer connection's
    nominated pair (``relay``: the client comes through a TURN server), if connected."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        pairs = getattr(connection, "_nominated", None)
        if isinstance(pairs, dict) and 1 in pairs:
            return str(pairs[1].remote_candidate.type)
    return None


# pylibsrtp's cffi binding (``from ._binding import ffi, lib`` in its __init__).
_SRTP_FFI: Any = getattr(pylibsrtp, "ffi")  # noqa: B009
_SRTP_LIB: Any = getattr(pylibsrtp, "lib")  # noqa: B009
SRTP_OK: int = int(_SRTP_LIB.srtp_err_status_ok)
SRTP_MAX_TRAILER: int = int(getattr(pylibsrtp, "SRTP_MAX_TRAILER_LEN"))  # noqa: B009


def raw_srtp_protect() -> Callable[[Any, Any, Any], int]:
    """libsrtp's ``srtp_protect(ctx, buffer, length_pointer)``: protects in place, writes
    the new length; returns ``SRTP_OK`` or an error status (never raises)."""
    protect: Callable[[Any, Any, Any], int] = _SRTP_LIB.srtp_protect
    return protect


def srtp_context(session: Any) -> Any:
    """The ``srtp_t`` of a pylibsrtp ``Session``; valid only while ``session`` lives
    (pylibsrtp frees it when the session is collected): keep the session too."""
    return getattr(session, "_srtp")[0]  # noqa: B009


class SrtpBuffer:
    """A packet buffer libsrtp can protect in place: ``data`` (cffi ``unsigned char[]``),
    ``view`` (a writable memoryview of it) and ``length`` (the ``int *`` libsrtp reads
    the packet length from and writes the protected length to)."""

    __slots__ = ("data", "length", "size", "view")

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: Any = _SRTP_FFI.new("unsigned char[]", size)
        self.view = memoryview(_SRTP_FFI.buffer(self.data))
        self.length: Any = _SRTP_FFI.new("int *")

    def release(self) -> None:
        """Release the memoryview (the cffi memory goes with the last reference)."""
        self.view.release()


def pair_socket(pair: Any) -> socket.socket:
    """A non-blocking duplicate of the UDP socket of a nominated candidate pair.

    Sending on it skips the asyncio transport; it is a separate descriptor of the
    same socket, so closing it (the caller must) leaves aioice's socket open."""
    sock = pair.protocol.transport.get_extra_info("socket")
    dup = socket.fromfd(sock.fileno(), sock.family, sock.type)
    dup.setblocking(False)
    return dup


# --- ICE restart (hooks 27 to 30) ---------------------------------------------


class _Feed:
    """What the DTLS transport reads (hook 28): the datagrams of every connection of
    one ICE transport, old and new, in arrival order; ends only with ``current``."""

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self.queue = queue
        self.current: Any = None

    async def recv(self) -> bytes:
        item = await self.queue.get()
        if item is None:
            raise ConnectionError("Connection lost while receiving data")
        data: bytes = item[0]
        return data


class _Inlet:
    """Stands in for one aioice connection's ``_queue``: its datagrams go to the feed;
    its end does too, but only while it carries the transport."""

    def __init__(self, feed: _Feed, connection: Any) -> None:
        self._feed = feed
        self._connection = connection

    def put_nowait(self, item: Any) -> None:
        if item is None and self._feed.current is not self._connection:
            return
        self._feed.queue.put_nowait(item)

    async def get(self) -> Any:  # nobody reads a connection's queue once it is fed
        return await self._feed.queue.get()


_FEED = "_lco_ice_feed"
_PENDING = "_lco_ice_swap"


def ice_transport(pc: Any) -> RTCIceTransport | None:
    """The ICE transport of a max-bundle peer connection (every transceiver's)."""
    for transceiver in pc.getTransceivers():
        return transceiver.receiver.transport.transport  # type: ignore[no-any-return]
    return None


def _feed_of(transport: RTCIceTransport) -> _Feed:
    feed: _Feed | None = getattr(transport, _FEED, None)
    if feed is None:
        connection = transport._connection
        # The DTLS task already waits in this queue: make it the feed's.
        feed = _Feed(connection._queue)
        feed.current = connection
        setattr(connection, "_queue", _Inlet(feed, connection))  # noqa: B010
        transport._recv = feed.recv
        setattr(transport, _FEED, feed)
    return feed


class IceConnectionSwap:
    """One ICE restart of one ``RTCIceTransport`` (hooks 27 to 30).

    :meth:`start` gathers a new connection and puts it where aiortc reads local ICE
    parameters and candidates and adds remote candidates, so the next offer or
    answer carries its credentials; :meth:`complete`, given the remote side's new
    credentials, connects it and swaps it in for sending; the old one is closed."""

    def __init__(self, transport: RTCIceTransport, old: Any, new: Any) -> None:
        self.transport = transport
        self.old = old
        self.new = new
        self.task: asyncio.Task[bool] | None = None
        # Set once the new connection can carry what we send (a valid pair).
        self.usable = asyncio.Event()

    @classmethod
    def pending(cls, transport: RTCIceTransport) -> IceConnectionSwap | None:
        """The restart started on ``transport`` and not yet completed, if any."""
        swap: IceConnectionSwap | None = getattr(transport, _PENDING, None)
        return swap

    @classmethod
    async def start(cls, transport: RTCIceTransport) -> IceConnectionSwap:
        """Gather a new connection (same role, servers and policy) for ``transport``.

        A restart still connecting is overtaken: the other side moved on to newer
        credentials, with which it can never connect. Its new connection is closed and
        the next one is swapped in for the same old one: a transport holds two ICE
        connections at most."""
        pending = cls.pending(transport)
        if pending is not None and pending.task is None:
            return pending  # its credentials were not answered yet: offer them again
        current = transport._connection
        old = pending.old if pending is not None else current
        new = aioice.Connection(
            ice_controlling=old.ice_controlling,
            stun_server=old.stun_server,
            turn_server=old.turn_server,
            turn_username=old.turn_username,
            turn_password=old.turn_password,
            turn_ssl=old.turn_ssl,
            turn_transport=old.turn_transport,
            transport_policy=old._transport_policy,
        )
        await new.gather_candidates()
        if pending is not None:
            await pending._abandon()
        feed = _feed_of(transport)
        setattr(new, "_queue", _Inlet(feed, new))  # noqa: B010
        # From now on, the new connection's end ends the transport; the old one's not.
        feed.current = new
        transport._connection = new
        transport.iceGatherer._connection = new
        transport.iceGatherer._remote_candidates_end = False
        # aiortc's monitor waits for events of the connection it was given last.
        waiter, current._event_waiter = current._event_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(aioice.ice.ConnectionEvent())
        if pending is not None:
            await pending.new.close()
        swap = cls(transport, old, new)
        setattr(transport, _PENDING, swap)
        _close_with_transport(transport)
        return swap

    async def _abandon(self) -> None:
        """Stop connecting (overtaken by a newer restart); the old connection sends
        again. The caller closes the new one once it no longer carries the transport."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.transport._send = self.old.send

    def complete(
        self, username: str, password: str, lite: bool = False, timeout: float = 10.0
    ) -> asyncio.Task[bool]:
        """Connect with the remote side's new credentials; on success send on the new
        connection and close the old. The task's result says whether it connected."""
        if self.task is None:
            self.new.remote_username = username
            self.new.remote_password = password
            self.new.remote_is_lite = lite
            self.task = asyncio.ensure_future(self._connect(timeout))
        return self.task

    async def _connect(self, timeout: float) -> bool:
        transport = self.transport
        connecting = asyncio.ensure_future(self.new.connect())
        # Its failure is ours to report, not a "never retrieved" warning.
        connecting.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            async with asyncio.timeout(timeout):
                while not connecting.done():
                    if not self.usable.is_set() and self._valid_pair() is not None:
                        transport._send = self._send_on_valid_pair
                        self.usable.set()
                    await asyncio.wait({connecting}, timeout=0.02)  # aioice's check pace
                await connecting
        except asyncio.CancelledError:
            connecting.cancel()  # overtaken by a newer restart, or the transport stops
            raise
        except (ConnectionError, TimeoutError) as exc:
            connecting.cancel()
            logger.info("ICE restart failed (%s): the transport fails", type(exc).__name__)
            # The restart failed: the transport fails as it would have without one.
            if getattr(transport, _PENDING, None) is self:
                delattr(transport, _PENDING)
            await self.old.close()
            await self.new.close()
            return False
        transport._send = self.new.send
        self.usable.set()
        logger.info("ICE restart connected")
        if getattr(transport, _PENDING, None) is self:
            delattr(transport, _PENDING)
        await self.old.close()
        return True

    def _valid_pair(self) -> Any:
        """The new connection's nominated pair, else its best pair whose check
        succeeded (the check list is sorted by priority), else None."""
        nominated = self.new._nominated.get(1)
        if nominated is not None:
            return nominated
        for pair in self.new._check_list:
            if pair.component == 1 and pair.state == aioice.ice.CandidatePair.State.SUCCEEDED:
                return pair
        return None

    async def _send_on_valid_pair(self, data: bytes) -> None:
        pair = self._valid_pair()
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        await pair.protocol.send_data(data, pair.remote_addr)


def _close_with_transport(transport: RTCIceTransport) -> None:
    """Make ``transport.stop()`` also close connections still waiting for a swap (20)."""
    if "stop" in transport.__dict__:
        return
    original = transport.stop

    async def stop() -> None:
        swap = IceConnectionSwap.pending(transport)
        await original()
        if swap is not None:
            if swap.task is not None and not swap.task.done():
                swap.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await swap.task
            await swap.old.close()
            await swap.new.close()

    transport.stop = stop  # type: ignore[method-assign]
