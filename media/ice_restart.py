"""ICE restarts on aiortc peer connections (aiortc 1.16 has none of its own).

A restart gives a running peer connection new ICE credentials and candidates while
its DTLS session, SRTP keys and transceivers stay (RFC 8445 section 9): the offer
side calls :func:`prepare_offer` before ``createOffer``, the answer side
:func:`prepare_answer` before ``setRemoteDescription``, and each side calls
:func:`complete` once it has the other's description. The mechanics are in
:class:`media.hooks.IceConnectionSwap`.
"""

from __future__ import annotations

from aiortc import RTCPeerConnection

from .hooks import IceConnectionSwap, ice_transport
from .peers import ice_parameters


def restartable(pc: RTCPeerConnection) -> bool:
    """Whether ``pc`` has an ICE transport that once connected and still lives: only
    such a transport can be restarted (a failed or closed one cannot)."""
    transport = ice_transport(pc)
    return (
        transport is not None
        and transport.state == "completed"
        and pc.connectionState not in ("failed", "closed")
    )


async def prepare_offer(pc: RTCPeerConnection) -> bool:
    """Before ``createOffer``: the offer will carry new ICE credentials (also when an
    earlier restart offer was never answered: the same ones). False if ``pc`` cannot
    be restarted."""
    transport = ice_transport(pc)
    if transport is None or not restartable(pc):
        return False
    # A restart still connecting is overtaken by this one (IceConnectionSwap.start):
    # a client asking again and again costs at most two ICE connections.
    await IceConnectionSwap.start(transport)
    return True


def remote_restarts(pc: RTCPeerConnection, offer_sdp: str) -> bool:
    """Whether the remote offer ``offer_sdp`` restarts ICE: its credentials differ from
    those of the remote description ``pc`` applied before."""
    current = pc.remoteDescription
    if current is None:
        return False
    before, after = ice_parameters(current.sdp), ice_parameters(offer_sdp)
    return before is not None and after is not None and before[:2] != after[:2]


async def prepare_answer(pc: RTCPeerConnection, offer_sdp: str) -> bool:
    """Before applying a remote offer: if it restarts ICE, gather new credentials for
    the answer. False if it does not restart ICE, or ``pc`` cannot be restarted."""
    if not remote_restarts(pc, offer_sdp):
        return False
    return await prepare_offer(pc)


def complete(pc: RTCPeerConnection, remote_sdp: str) -> IceConnectionSwap | None:
    """After both descriptions are applied: connect the restarted transport with the
    remote side's new credentials. The swap's ``task`` says whether ICE connected
    again, its ``usable`` event when the new path carries what we send; None if no
    restart was waiting for ``remote_sdp``."""
    transport = ice_transport(pc)
    swap = IceConnectionSwap.pending(transport) if transport is not None else None
    parameters = ice_parameters(remote_sdp)
    if swap is None or swap.task is not None or parameters is None:
        return None
    username, password, lite = parameters
    swap.complete(username, password, lite)
    return swap
