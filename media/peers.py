"""Creating peer connections and reading what their SDP negotiated."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
)
from aiortc.rtcicetransport import RTCIceCandidate
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.sdp import SessionDescription, candidate_from_sdp

from .transport_wide import TRANSPORT_WIDE_URI

# Codecs the SFU forwards. Others (G.711, G.722) are refused so that publishers
# and subscribers land on codecs every browser decodes.
FORWARDED_CODECS = frozenset({"vp8", "h264", "opus", "rtx"})


@dataclass(frozen=True, slots=True)
class IceSettings:
    """How this server's peer connections do ICE: STUN servers at most, never TURN.

    The SFU answers from its own addresses (host candidates, ``--public-ip``): a relay
    in front of it would add a hop for every participant, and the RTP fast path sends
    on the nominated pair's socket, which for a relayed pair leads to the TURN server.
    TURN is for clients behind firewalls; they relay to these addresses.
    """

    ice_servers: tuple[RTCIceServer, ...] = ()
    # Announce this address too (1:1 NAT), as a server-reflexive candidate.
    public_ip: str | None = None

    def __post_init__(self) -> None:
        for server in self.ice_servers:
            urls = server.urls if isinstance(server.urls, list) else [server.urls]
            for url in urls:
                if url.startswith(("turn:", "turns:")):
                    raise ValueError(f"the SFU does not relay: {url} is for clients only")


@dataclass(slots=True)
class NegotiatedMedia:
    """One m-line of a negotiated description."""

    mid: str
    kind: str
    direction: str
    codec: RTCRtpCodecParameters | None
    ssrcs: list[int] = field(default_factory=list)
    rejected: bool = False  # port 0: stopped, its m-line free to be recycled


def configuration(ice_servers: list[RTCIceServer]) -> RTCConfiguration:
    """Our peer connections' configuration: these ICE servers only, max-bundle.

    aiortc's default "balanced" bundle policy gives a second transceiver of a kind
    created in the same negotiation the first one's transport, which BUNDLE then
    discards without moving that transceiver: its media never flows. Max-bundle
    puts every transceiver on one transport from the start (browsers bundle anyway).
    """
    return RTCConfiguration(iceServers=ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def new_peer_connection(settings: IceSettings) -> RTCPeerConnection:
    """A peer connection that only uses the configured ICE servers (never a default STUN)."""
    return RTCPeerConnection(configuration(list(settings.ice_servers)))


def negotiated_media(sdp: str) -> list[NegotiatedMedia]:
    """The m-lines of ``sdp`` with their first (chosen) codec. Raises ``ValueError``."""
    description = SessionDescription.parse(sdp)
    result = []
    for media in description.media:
        if media.kind not in ("audio", "video"):
            continue
        codecs = [c for c in media.rtp.codecs if c.name.lower() != "rtx"]
        result.append(
            NegotiatedMedia(
                mid=media.rtp.muxId,
                kind=media.kind,
                direction=media.direction or "sendrecv",
                codec=codecs[0] if codecs and media.port != 0 else None,
                ssrcs=[s.ssrc for s in media.ssrc],
                rejected=media.port == 0,
            )
        )
    return result


def preferences_for(kind: str, codec: RTCRtpCodecParameters) -> list[RTCRtpCodecCapability]:
    """Codec preferences that make a subscriber transceiver carry ``codec`` unchanged.

    Forwarded frames cannot change codec, so a subscriber is offered only the
    publisher's codec (with RTX, so that NACKed packets are resent).
    """
    chosen: list[RTCRtpCodecCapability] = []
    rtx: list[RTCRtpCodecCapability] = []
    profile = codec.parameters.get("profile-level-id")
    for capability in RTCRtpSender.getCapabilities(kind).codecs:
        name = capability.mimeType.lower()
        if name.endswith("/rtx"):
            rtx.append(capability)
        elif name == codec.mimeType.lower() and (
            profile is None or capability.parameters.get("profile-level-id") == profile
        ):
            chosen.append(capability)
    if not chosen:
        raise ValueError(f"codec {codec.mimeType} cannot be forwarded")
    return chosen[:1] + rtx


def parse_description(sdp: str) -> SessionDescription:
    """A client's SDP, parsed and checked so that aiortc can apply it whole: raises
    ``ValueError`` naming the problem, and nothing else.

    aiortc's parser also fails with AssertionError, StopIteration or AttributeError,
    and a description it parses may still break ``setRemoteDescription`` half way
    (a section without a DTLS fingerprint or a MID), leaving the peer connection
    unable even to close.
    """
    if not sdp.lstrip().startswith("v=0"):
        raise ValueError("it does not start with v=0")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:
        raise ValueError(f"it could not be parsed ({type(exc).__name__})") from None
    if not description.media:
        raise ValueError("it has no audio or video section")
    mids: set[str] = set()
    for index, media in enumerate(description.media):
        if media.kind not in ("audio", "video"):
            raise ValueError(f"section {index} is {media.kind!r}: only audio and video")
        mid = media.rtp.muxId
        if not mid or len(mid) > 32 or mid in mids:
            raise ValueError(f"section {index} has no MID of its own")
        mids.add(mid)
        if media.port == 0:
            continue  # rejected: nothing of it is used
        if not media.rtp.codecs:
            raise ValueError(f"section {index} has no codec")
        if media.dtls is None or not media.dtls.fingerprints:
            raise ValueError(f"section {index} has no DTLS fingerprint")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise ValueError(f"section {index} has no ICE username fragment or password")
        if not media.rtcp_mux:
            raise ValueError(f"section {index} does not multiplex RTCP")
    for group in description.group:
        if any(item not in mids for item in group.items):
            raise ValueError(f"the {group.semantic} group names a MID no section has")
    return description


def restrict_offer_codecs(sdp: str) -> tuple[str, int, int]:
    """Check a client offer (:func:`parse_description`) and remove codecs the SFU does
    not forward; return the offer, its number of media sections and how many of them
    send media. Raises ``ValueError``.

    aiortc answers with the offer's codecs in the offer's order, so removing the
    others here makes the publisher send one of ours.
    """
    description = parse_description(sdp)
    sections = sending = 0
    for media in description.media:
        sections += 1
        if media.port != 0 and (media.direction or "sendrecv") in ("sendonly", "sendrecv"):
            sending += 1
        kept = [c for c in media.rtp.codecs if c.name.lower() in FORWARDED_CODECS]
        kept_types = {c.payloadType for c in kept}
        # An RTX codec is kept only if its primary codec is.
        kept = [c for c in kept if c.name.lower() != "rtx" or c.parameters.get("apt") in kept_types]
        if media.port != 0 and not kept:
            raise ValueError(f"section {media.rtp.muxId} has no codec the server forwards")
        media.rtp.codecs = kept
        media.fmt = [c.payloadType for c in kept]
    return str(description), sections, sending


# An RTP stream id as browsers make them (RFC 8851 allows more; nothing needs it).
_RID = re.compile(r"[A-Za-z0-9_-]{1,16}")


def simulcast_rids(sdp: str) -> dict[str, list[str]]:
    """The RIDs of each simulcast m-section a client offers to send (RFC 8853), by MID:
    ``a=simulcast:send h;m;l`` with ``a=rid:h send`` ..., alternatives and paused
    (``~``) streams flattened; at most 4, each of up to 16 letters, digits, ``-`` or
    ``_``. aiortc reads neither attribute."""
    found: dict[str, list[str]] = {}
    for section in sdp.split("\r\nm=")[1:]:
        lines = section.split("\r\n")
        mid = next((x[len("a=mid:") :] for x in lines if x.startswith("a=mid:")), None)
        declared = {x[len("a=rid:") :].split(" ")[0] for x in lines if x.startswith("a=rid:")}
        for line in lines:
            if mid is not None and line.startswith("a=simulcast:send "):
                streams = line[len("a=simulcast:send ") :].split(" ")[0]
                rids = [
                    rid.lstrip("~")
                    for alternative in streams.split(";")
                    for rid in alternative.split(",")
                ]
                found[mid] = [rid for rid in rids if rid in declared and _RID.fullmatch(rid)][:4]
    return {mid: rids for mid, rids in found.items() if rids}


def accept_simulcast(answer: str, rids: dict[str, list[str]]) -> str:
    """Say in ``answer`` that the server receives each offered simulcast stream: a
    browser sends one layer only unless the answer has ``a=rid:X recv`` and
    ``a=simulcast:recv`` (RFC 8853 5.3)."""
    if not rids:
        return answer
    head, *sections = answer.split("\r\nm=")
    for index, section in enumerate(sections):
        lines = section.split("\r\n")
        mid = next((x[len("a=mid:") :] for x in lines if x.startswith("a=mid:")), None)
        if mid not in rids or lines[0].split(" ")[1] == "0":
            continue
        at = next(i for i, x in enumerate(lines) if x.startswith("a=mid:")) + 1
        added = [f"a=rid:{rid} recv" for rid in rids[mid]]
        added.append("a=simulcast:recv " + ";".join(rids[mid]))
        sections[index] = "\r\n".join([*lines[:at], *added, *lines[at:]])
    return "\r\nm=".join([head, *sections])


def reject_like_offer(offer: str, answer: str) -> str:
    """Reject in ``answer`` every m-section the offer rejected (JSEP 5.3.1: port 0, and
    out of the BUNDLE group). aiortc answers a stopped section as if it were live, which
    browsers refuse ("a BUNDLE group in answer contains a MID that was not in the
    offered group"); a browser stops a transceiver so that it can recycle its m-line."""
    rejected = {
        index
        for index, media in enumerate(SessionDescription.parse(offer).media)
        if media.port == 0
    }
    if not rejected:
        return answer
    head, *sections = answer.split("\r\nm=")
    mids: set[str] = set()
    for index in rejected & set(range(len(sections))):
        kind, _port, rest = sections[index].split(" ", 2)
        sections[index] = f"{kind} 0 {rest}"
        mids.update(
            line[len("a=mid:") :]
            for line in sections[index].split("\r\n")
            if line.startswith("a=mid:")
        )
    lines = []
    for line in head.split("\r\n"):
        if line.startswith("a=group:BUNDLE"):
            items = [item for item in line.split(" ")[1:] if item not in mids]
            line = " ".join(["a=group:BUNDLE", *items])
        lines.append(line)
    return "\r\nm=".join(["\r\n".join(lines), *sections])


def announce_public_ip(sdp: str, public_ip: str | None) -> str:
    """Add a server-reflexive candidate on ``public_ip`` for each host candidate (1:1 NAT)."""
    if not public_ip:
        return sdp
    out: list[str] = []
    for line in sdp.splitlines():
        out.append(line)
        if line.startswith("a=candidate:") and " typ host" in line:
            parts = line[len("a=candidate:") :].split()
            if len(parts) >= 8 and parts[2].lower() == "udp":
                foundation, component, transport, priority, address, port = parts[:6]
                out.append(
                    f"a=candidate:{foundation}1 {component} {transport} "
                    f"{int(priority) // 2} {public_ip} {port} typ srflx "
                    f"raddr {address} rport {port}"
                )
    return "\r\n".join(out) + "\r\n"


def offer_transport_wide(sdp: str) -> str:
    """Offer transport-wide congestion control feedback on every audio and video
    section of a subscribe offer: the transport-wide sequence number header
    extension, under one id for the whole BUNDLE group, and ``transport-cc`` feedback
    for each codec but RTX. aiortc offers neither; a browser that accepts tells when
    each packet arrived, and its downlink steps down before its queue overflows
    (:mod:`media.transport_wide`; audio, which goes on meanwhile, shows when the
    queue has drained). A viewer that does not (aiortc) answers without them, and
    nothing changes for it."""
    ids = [int(number) for number in re.findall(r"^a=extmap:(\d+)", sdp, re.MULTILINE)]
    ext_id = max(ids, default=0) + 1
    if ext_id > 14:  # one-byte header extensions only (RFC 8285)
        return sdp
    out: list[str] = []
    media = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            media = line.startswith(("m=audio", "m=video"))
            extmap_added = False
        out.append(line)
        if not media:
            continue
        codec = re.fullmatch(r"a=rtpmap:(\d+) ([^/]+)/.*", line)
        if codec and codec.group(2).lower() != "rtx":
            out.append(f"a=rtcp-fb:{codec.group(1)} transport-cc")
        elif line.startswith("a=mid:") and not extmap_added:
            out.append(f"a=extmap:{ext_id} {TRANSPORT_WIDE_URI}")
            extmap_added = True
    return "\r\n".join(out) + "\r\n"


def parse_candidate(
    candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
) -> RTCIceCandidate:
    """A trickled browser candidate as aiortc's object. Raises ``ValueError``."""
    text = candidate[len("candidate:") :] if candidate.startswith("candidate:") else candidate
    try:
        parsed = candidate_from_sdp(text)
    except Exception:  # aiortc asserts, indexes and converts without checking first
        raise ValueError(f"bad ICE candidate {text[:80]!r}") from None
    parsed.sdpMid = sdp_mid
    parsed.sdpMLineIndex = sdp_mline_index
    return parsed


def ice_parameters(sdp: str) -> tuple[str, str, bool] | None:
    """(username fragment, password, ice-lite) of the first media section of ``sdp``
    (every section shares them under max-bundle); None if absent or unparsable."""
    try:
        media = SessionDescription.parse(sdp).media
    except (ValueError, IndexError, KeyError):
        return None
    if not media:
        return None
    ice = media[0].ice
    if ice is None or not ice.usernameFragment or not ice.password:
        return None
    return ice.usernameFragment, ice.password, bool(ice.iceLite)


def dtls_fingerprint(sdp: str) -> str | None:
    """The first DTLS certificate fingerprint of ``sdp``: it names the peer connection
    that made it (each has its own certificate), across renegotiations and restarts."""
    for line in sdp.splitlines():
        if line.startswith("a=fingerprint:"):
            return line[len("a=fingerprint:") :].strip().lower()
    return None
