"""Every place where the load generator reaches into aiortc's or aioice's private names.

The product keeps its own in ``media/hooks.py``; the benchmarks use those public
helpers where they exist and list their own here, so that an aiortc upgrade has
one file to check in each:

1. ``RTCRtpReceiver.__rtx_ssrc`` and ``__kind``: which SSRCs of a receiver carry
   retransmissions, and whether it receives video (the packet counters).
2. ``RTCRtpReceiver._handle_rtp_packet``: wrapped to count every RTP packet before
   reassembly, and to drop the abs-send-time extension before aiortc's receive-side
   bandwidth estimator reads it (see :func:`neutral_receive`).
3. ``RTCDtlsTransport._ssl`` (``get_selected_srtp_profile``): the SRTP profile DTLS
   negotiated, recorded with the figures.
4. ``RTCDtlsTransport._setup_srtp``, ``_rx_srtp``, ``_tx_srtp``, ``.transport``
   (``RTCIceTransport``) and its ``_connection`` (aioice): in the raw load mode the
   SRTP sessions DTLS set up and the ICE connection they run on.
5. ``aioice.ice.StunProtocol.datagram_received`` and its ``receiver`` (the aioice
   ``Connection``): the raw load mode takes SRTP packets off the socket before aioice
   queues them for aiortc (STUN, DTLS and SRTCP still go to aioice and aiortc).
6. ``Connection._nominated``: the candidate pair a raw publisher sends on (through
   ``media.hooks.nominated_pairs``/``pair_endpoint`` where a sender is at hand).
7. ``aiortc.rtcdtlstransport.SRTP_PROFILES``: the SRTP profiles a new DTLS transport
   offers; the load processes offer one, so that every system protects alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import aioice.ice
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

_RTX_SSRC = "_RTCRtpReceiver__rtx_ssrc"
_KIND = "_RTCRtpReceiver__kind"


def receiver_rtx_ssrcs(receiver: RTCRtpReceiver) -> dict[int, int]:
    """{RTX SSRC: media SSRC} of a receiver (hook 1)."""
    value: dict[int, int] = getattr(receiver, _RTX_SSRC, {})
    return value


def receiver_kind(receiver: RTCRtpReceiver) -> str:
    """``audio`` or ``video`` (hook 1)."""
    return str(getattr(receiver, _KIND, ""))


PacketHandler = Callable[[RTCRtpReceiver, RtpPacket], None]


def wrap_rtp_handler(observe: PacketHandler, neutral: bool = True) -> None:
    """Call ``observe(receiver, packet)`` for every RTP packet any receiver of this
    process gets, before aiortc handles it (hook 2).

    With ``neutral``, the abs-send-time extension is then removed: aiortc's receiver
    feeds its bandwidth estimator (and sends REMB) only for packets that carry it,
    and whether they do depends on the server (ours drops the publisher's, aiortc's
    own senders and Janus add theirs). Without it, every system's subscribers do the
    same work: none runs the estimator.
    """
    original = RTCRtpReceiver._handle_rtp_packet

    async def handle(self: RTCRtpReceiver, packet: RtpPacket, arrival_time_ms: int) -> None:
        try:
            observe(self, packet)
        except Exception:  # counting must never break reception
            pass
        if neutral:
            packet.extensions.abs_send_time = None
        await original(self, packet, arrival_time_ms)

    setattr(RTCRtpReceiver, "_handle_rtp_packet", handle)  # noqa: B010


def dtls_transports(pc: RTCPeerConnection) -> list[RTCDtlsTransport]:
    """The distinct DTLS transports of a peer connection (one with max-bundle)."""
    found: dict[int, RTCDtlsTransport] = {}
    for transceiver in pc.getTransceivers():
        for transport in (transceiver.receiver.transport, transceiver.sender.transport):
            if transport is not None:
                found[id(transport)] = transport
    return list(found.values())


def srtp_profile(pc: RTCPeerConnection | None) -> str | None:
    """The SRTP protection profile DTLS negotiated on ``pc`` (hook 3), once connected."""
    if pc is None:
        return None
    for transport in dtls_transports(pc):
        ssl = getattr(transport, "_ssl", None)
        if ssl is not None and transport.state == "connected":
            with contextlib.suppress(Exception):
                profile = ssl.get_selected_srtp_profile()
                if profile:
                    return bytes(profile).decode()
    return None


def ice_connection(transport: RTCDtlsTransport) -> Any:
    """The aioice ``Connection`` under a DTLS transport (hook 4)."""
    return getattr(transport.transport, "_connection", None)


def rx_srtp(transport: RTCDtlsTransport) -> Any:
    """The inbound pylibsrtp ``Session`` of a connected DTLS transport (hook 4)."""
    return getattr(transport, "_rx_srtp", None)


def tx_srtp(transport: RTCDtlsTransport) -> Any:
    """The outbound pylibsrtp ``Session`` of a connected DTLS transport (hook 4)."""
    return getattr(transport, "_tx_srtp", None)


def on_srtp_ready(callback: Callable[[RTCDtlsTransport], None]) -> None:
    """Call ``callback(transport)`` in this process as soon as any DTLS transport has
    its SRTP sessions, before it handles the first SRTP packet (hook 4)."""
    original = RTCDtlsTransport._setup_srtp

    def setup(self: RTCDtlsTransport) -> None:
        original(self)
        if getattr(self, "_rx_srtp", None) is not None:
            callback(self)

    setattr(RTCDtlsTransport, "_setup_srtp", setup)  # noqa: B010


RAW_SINK = "_lco_raw_sink"


def take_srtp_off_the_socket() -> None:
    """Hand SRTP (not SRTCP) datagrams of any ICE connection that has a raw sink
    (``setattr(connection, RAW_SINK, sink)``, ``sink(data)``) to the sink, before
    aioice tries to parse them as STUN and queues them for aiortc (hook 5).

    Patched on the class before any socket exists: uvloop binds a protocol's
    ``datagram_received`` when the transport is made.
    """
    original = aioice.ice.StunProtocol.datagram_received

    def datagram_received(self: Any, data: bytes, addr: tuple[Any, ...]) -> None:
        # RFC 7983: 128-191 is RTP/RTCP; RTCP packet types are 192-223 (RFC 5761).
        if 127 < data[0] < 192 and not 191 < data[1] < 224:
            sink = getattr(self.receiver, RAW_SINK, None)
            if sink is not None:
                sink(data)
                return
        original(self, data, addr)

    setattr(aioice.ice.StunProtocol, "datagram_received", datagram_received)  # noqa: B010


def nominated_endpoint(connection: Any) -> tuple[Any, tuple[str, int]] | None:
    """(asyncio datagram transport, remote address) of a connection's nominated pair
    for component 1 (hook 6), or ``None`` before ICE completes."""
    pairs = getattr(connection, "_nominated", None)
    pair = pairs.get(1) if isinstance(pairs, dict) else None
    if pair is None:
        return None
    return pair.protocol.transport, pair.remote_addr


def offer_only_srtp_profile(libsrtp_profile: int) -> None:
    """Make every DTLS transport created from now on in this process offer only this
    SRTP protection profile (hook 7): the server under test must use it too."""
    import aiortc.rtcdtlstransport as dtls

    chosen = [p for p in dtls.SRTP_PROFILES if p.libsrtp_profile == libsrtp_profile]
    if not chosen:
        raise ValueError(f"libsrtp here cannot do SRTP profile {libsrtp_profile}")
    dtls.SRTP_PROFILES[:] = chosen
