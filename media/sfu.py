"""The selective forwarding unit: peer connections per participant, forwarders per track.

Each participant has up to two peer connections: a publish connection that the
client offers (the server only answers) and a subscribe connection that the
server offers (the client only answers). One side always offers, so there is no
glare. The lesson logic drives this class through a few calls; it never sees
aiortc objects, and this module never sees the signalling protocol: what a
participant must be told goes out as a :data:`MediaNotice` (a subscribe offer, a
change of what it receives), which the server turns into its messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpTransceiver, RTCSessionDescription
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from . import hooks, ice_restart
from .candidate_policy import CandidateGate, CandidatePolicy
from .forwarder import TrackForwarder
from .peers import (
    IceSettings,
    accept_simulcast,
    announce_public_ip,
    dtls_fingerprint,
    negotiated_media,
    new_peer_connection,
    offer_transport_wide,
    parse_candidate,
    parse_description,
    reject_like_offer,
    restrict_offer_codecs,
    simulcast_rids,
)
from .rtp_forward import RtpForwarder
from .rtp_subscriber import RtpSubscriber
from .viewer import Mode, QualityNotice, Viewer

VIEWER_TICK = 0.5  # seconds between two looks at each viewer's downlink

logger = logging.getLogger(__name__)

Kind = Literal["audio", "video"]
PeerConnectionName = Literal["publish", "subscribe"]
# "rtp": forward RTP packets (the fast path, default); "frames": reassembled frames
# re-packetised by aiortc's senders (the stock path, kept as a benchmark baseline).
ForwardingMode = Literal["rtp", "frames"]
TrackEnded = Callable[[str, str], None]  # (publisher id, track id)


NEGOTIATION_TIMEOUT = 15.0  # seconds a subscribe offer waits for its answer


class MediaError(Exception):
    """Input that could not be applied (SDP, an ICE candidate, a participant who has
    no media here); ``code`` says which, for the client."""

    def __init__(self, message: str, code: str = "bad_sdp") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class PublishLimits:
    """How much one publish connection may carry: sending tracks, and media sections
    (m-lines) in its offer, sending or not."""

    tracks: int
    sections: int


@dataclass(frozen=True, slots=True)
class OfferedTrack:
    """Which published track one m-line of a subscribe offer carries."""

    mid: str
    track_id: str
    publisher_id: str
    kind: Kind
    source: str


@dataclass(frozen=True, slots=True)
class SubscribeOffer:
    """An offer of the participant's subscribe connection, to be answered with
    ``offer_id``; ``new_connection``: on a new connection (close the old one)."""

    sdp: str
    tracks: tuple[OfferedTrack, ...]
    offer_id: int
    new_connection: bool


# What the SFU tells one participant: an offer to answer, or what it receives now.
MediaNotice = SubscribeOffer | QualityNotice
SendNotice = Callable[[MediaNotice], Awaitable[None]]


@dataclass(slots=True)
class IncomingTrack:
    """A track a publish offer started sending, before the lesson has named it."""

    mid: str
    kind: Kind
    track: MediaStreamTrack
    receiver: RTCRtpReceiver
    codec: RTCRtpCodecParameters
    rids: list[str] = field(default_factory=list)  # simulcast layers offered, by RID


@dataclass(slots=True)
class PublishResult:
    """What applying a publish offer changed."""

    answer_sdp: str
    started: list[IncomingTrack]
    stopped_track_ids: list[str]


class Attachment(Protocol):
    """One subscriber's transceiver for one forwarded track."""

    transceiver: RTCRtpTransceiver

    def detach(self) -> None:
        """Stop forwarding to this subscriber; the transceiver may carry another track."""


class Forwarder(Protocol):
    """Forwards one published track to its subscribers (RTP packets or frames)."""

    track_id: str
    kind: str

    @property
    def codec(self) -> RTCRtpCodecParameters | None: ...

    @property
    def subscriber_count(self) -> int: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def set_paused(self, paused: bool) -> None: ...

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (coalesced; nothing for audio)."""
        ...

    def attach(self, pc: RTCPeerConnection, reuse: Any = None) -> Attachment:
        """Subscribe ``pc``, on a new transceiver or on a detached one (``reuse``, which
        a forwarder may decline by returning a new transceiver)."""
        ...

    def counters(self) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class ReceivedTrackStats:
    """One track a participant publishes, as the server receives it (RFC 3550 counts)."""

    track_id: str
    kind: str
    packets_received: int
    packets_lost: int


@dataclass(frozen=True, slots=True)
class ParticipantMediaStats:
    """A participant's media as the server sees it now: cumulative counts to sample."""

    # Everything its publish connection received (media and RTCP, as on the wire).
    bytes_received: int
    # Payload bytes and packets forwarded to it (what its sender reports say).
    bytes_sent: int
    packets_sent: int
    # What it reports losing of the media it receives (its receiver reports).
    reported_lost: int
    tracks: tuple[ReceivedTrackStats, ...]


@dataclass(slots=True)
class _Subscription:
    info: OfferedTrack  # its mid is set when it is offered
    attachment: Attachment
    reuse_key: str


@dataclass(slots=True)
class ParticipantMedia:
    """The media side of one participant (of its seat: it outlives a socket). All SDP
    work on it runs under ``lock``. ``send`` is None while no socket holds the seat:
    offers wait for the next one."""

    participant_id: str
    send: SendNotice | None
    client_address: str | None = None  # where its signalling comes from
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gates: dict[str, CandidateGate] = field(default_factory=dict)  # per peer connection
    publish_pc: RTCPeerConnection | None = None
    subscribe_pc: RTCPeerConnection | None = None
    published: dict[str, str] = field(default_factory=dict)  # mid -> track id
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)  # track id ->
    offer_in_flight: bool = False
    renegotiate: bool = False
    negotiation_task: asyncio.Task[None] | None = None
    answer_timer: asyncio.TimerHandle | None = None
    # Transceivers of ended subscriptions: inactive in the next offer (retiring), in
    # the offer waiting for its answer (offered_inactive), then free for the next
    # track with the same codec (aiortc never reuses an m-line by itself, so without
    # this the subscribe SDP would grow with every track that ever came and went).
    retiring: list[tuple[str, Attachment]] = field(default_factory=list)
    offered_inactive: list[tuple[str, Attachment]] = field(default_factory=list)
    free: dict[str, list[Attachment]] = field(default_factory=dict)
    viewer: Viewer = field(default_factory=lambda: Viewer(time.monotonic))
    closed: bool = False
    # The client's publish connection the server's one serves (its DTLS fingerprint),
    # and client connections whose server side is gone: their offers are refused.
    publish_fingerprint: str | None = None
    dropped_fingerprints: set[str] = field(default_factory=set)
    # Each subscribe offer's number (answers to older ones are stale), whether the
    # next one is on a new connection, and whether it restarts ICE.
    offer_id: int = 0
    new_connection: bool = False
    restart_ice: bool = False
    # An offer went unanswered for the negotiation timeout: the next socket gets a new
    # subscribe connection rather than the same offer again.
    subscribe_stuck: bool = False


class Sfu:
    """Forwards every published track to its subscribers, encoded (RTP packets or frames)."""

    def __init__(
        self,
        settings: IceSettings,
        on_track_ended: TrackEnded,
        forwarding: ForwardingMode = "rtp",
        on_negotiation_timeout: Callable[[str], None] | None = None,
        negotiation_timeout: float = NEGOTIATION_TIMEOUT,
        candidate_policy: CandidatePolicy | None = None,
        limits: PublishLimits = PublishLimits(tracks=4, sections=16),
    ) -> None:
        self._settings = settings
        self._limits = limits
        self._candidates = candidate_policy or CandidatePolicy(hooks.host_addresses())
        self._refused_by_departed = 0  # candidates refused on closed participants' gates
        self._viewer_timer: asyncio.TimerHandle | None = None
        self._notices: set[asyncio.Future[None]] = set()
        self._on_track_ended = on_track_ended
        self._on_negotiation_timeout = on_negotiation_timeout
        self._negotiation_timeout = negotiation_timeout
        self._forwarding = forwarding
        self._participants: dict[str, ParticipantMedia] = {}
        self._forwarders: dict[str, Forwarder] = {}
        self._publishers: dict[str, str] = {}  # track id -> participant id
        # Counters of forwarders that stopped, by kind: totals never go back.
        self._retired: dict[str, dict[str, int]] = {}
        self._closing: set[asyncio.Future[None]] = set()  # peer connections being closed

    # -- participants --------------------------------------------------------

    def open(
        self, participant_id: str, send: SendNotice, client_address: str | None = None
    ) -> None:
        """Prepare media for a participant who joined (signalling from ``client_address``)."""
        self._participants[participant_id] = ParticipantMedia(participant_id, send, client_address)
        if self._viewer_timer is None:
            self._viewer_timer = asyncio.get_running_loop().call_later(
                VIEWER_TICK, self._look_at_viewers
            )

    def _look_at_viewers(self) -> None:
        """Probe downlinks and tell each viewer when what it receives changed."""
        self._viewer_timer = None
        if not self._participants:
            return
        for media in list(self._participants.values()):
            notice = media.viewer.tick()
            if notice is not None and not media.closed and media.send is not None:
                task = asyncio.ensure_future(media.send(notice))
                self._notices.add(task)
                task.add_done_callback(self._notices.discard)
        self._viewer_timer = asyncio.get_running_loop().call_later(
            VIEWER_TICK, self._look_at_viewers
        )

    def attach(
        self, participant_id: str, send: SendNotice, client_address: str | None = None
    ) -> bool:
        """A socket took the participant's seat: its media's messages go there now. An
        offer that no socket answered (or none received) is made again. False if the
        participant has no media here."""
        media = self._participants.get(participant_id)
        if media is None or media.closed:
            return False
        media.send = send
        if client_address != media.client_address:
            # Another network (Wi-Fi to mobile data): candidates are judged against it.
            media.client_address = client_address
            media.gates.clear()
        if media.subscribe_stuck:
            media.subscribe_stuck = False
            task = asyncio.ensure_future(self._new_subscribe_connection(media))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            return True
        if media.offer_in_flight:
            # Sent to a socket that went: the new one may never have seen it.
            media.offer_in_flight = False
            media.renegotiate = True
        if media.renegotiate:
            self._schedule_offer(media)
        return True

    def detach(self, participant_id: str) -> None:
        """The participant's socket went: hold its offers until :meth:`attach`."""
        media = self._participants.get(participant_id)
        if media is None:
            return
        media.send = None
        if media.answer_timer is not None:
            media.answer_timer.cancel()
            media.answer_timer = None

    async def reset(self, participant_id: str) -> None:
        """Start the participant's media over (a new page took its seat): close its
        publish connection (its tracks were stopped already) and move its
        subscriptions to a new subscribe connection, offered as such."""
        media = self._participants.get(participant_id)
        if media is None or media.closed:
            return
        async with media.lock:
            self._drop_publish_pc(media)
        await self._new_subscribe_connection(media)

    async def restart_ice(self, participant_id: str) -> None:
        """Restart ICE on the subscribe connection (the client asked): the next offer
        carries new credentials. A connection that cannot be restarted (it failed, or
        never connected) is replaced by a new one."""
        media = self._media(participant_id)
        pc = media.subscribe_pc
        if pc is None:
            return
        if not ice_restart.restartable(pc):
            await self._new_subscribe_connection(media)
            return
        media.restart_ice = True
        self._schedule_offer(media)

    async def new_subscribe_connection(self, participant_id: str) -> None:
        """Offer the participant's subscriptions on a new subscribe connection (the one
        its client has ends: another node served it, say)."""
        media = self._participants.get(participant_id)
        if media is not None and not media.closed:
            await self._new_subscribe_connection(media)

    async def close(self, participant_id: str) -> None:
        """Release everything a participant held: peer connections, forwarders, tasks."""
        media = self._participants.pop(participant_id, None)
        if media is None:
            return
        media.closed = True
        self._refused_by_departed += sum(gate.refused for gate in media.gates.values())
        if media.answer_timer is not None:
            media.answer_timer.cancel()
        for track_id in list(media.published.values()):
            await self.stop_track(track_id)
        for subscription in media.subscriptions.values():
            subscription.attachment.detach()
        media.subscriptions.clear()
        task = media.negotiation_task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for pc in (media.publish_pc, media.subscribe_pc):
            if pc is not None:
                await close_quietly(pc)
        media.publish_pc = media.subscribe_pc = None

    async def close_all(self) -> None:
        """Close every participant's media (server shutdown)."""
        for participant_id in list(self._participants):
            await self.close(participant_id)
        if self._viewer_timer is not None:
            self._viewer_timer.cancel()
            self._viewer_timer = None
        await asyncio.gather(*self._closing, return_exceptions=True)

    # -- publishing ----------------------------------------------------------

    async def accept_publish_offer(self, participant_id: str, offer_sdp: str) -> PublishResult:
        """Apply a client's publish offer and answer it. Raises :class:`MediaError`."""
        media = self._media(participant_id)
        limits = self._limits
        async with media.lock:
            try:
                sdp, sections, sending = restrict_offer_codecs(offer_sdp)
            except (ValueError, IndexError, KeyError) as exc:
                raise MediaError(f"the publish offer is not valid SDP ({exc})") from None
            fingerprint = dtls_fingerprint(sdp)
            stopped: list[str] = []
            pc = media.publish_pc
            if pc is not None and pc.connectionState in ("failed", "closed"):
                stopped += self._drop_publish_pc(media)
            if fingerprint is not None and fingerprint in media.dropped_fingerprints:
                raise MediaError(
                    "the server no longer has this publish connection (it failed or was "
                    "replaced); offer again on a new one",
                    code="connection_gone",
                )
            if media.publish_pc is not None and media.publish_fingerprint != fingerprint:
                # A new connection of the client: the old one's tracks end with it.
                stopped += self._drop_publish_pc(media)
            if sections > limits.sections or sending > limits.tracks:
                raise MediaError(
                    f"the publish offer has {sending} sending of {sections} media sections; "
                    f"at most {limits.tracks} tracks in {limits.sections} "
                    "sections (reuse or stop unused transceivers)",
                    code="too_many_tracks",
                )
            if media.publish_pc is None:
                media.publish_pc = self._new_publish_pc(media)
                media.publish_fingerprint = fingerprint
            pc = media.publish_pc
            sdp = self._gate(media, "publish").filter_sdp(sdp)
            # Simulcast layers reach subscribers one by one on the RTP path only. (Read
            # from the client's own text: aiortc's parser drops these attributes.)
            rids = simulcast_rids(offer_sdp) if self._forwarding == "rtp" else {}
            try:
                # An offer with new ICE credentials restarts ICE on this connection.
                restarting = await ice_restart.prepare_answer(pc, sdp)
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as exc:  # aiortc raises many types on bad SDP
                if pc.remoteDescription is None or pc.signalingState != "stable":
                    # Refused half applied: a connection never used starts afresh.
                    media.publish_pc = None
                    await close_quietly(pc)
                raise MediaError(f"the publish offer was refused: {exc}") from None
            if restarting:
                swap = ice_restart.complete(pc, sdp)
                if swap is not None:
                    # Packets were lost while the path was down: once the new one
                    # carries media, everyone needs a keyframe of this publisher.
                    self._keyframes_after(swap, lambda: list(media.published.values()))
            answer = announce_public_ip(
                accept_simulcast(reject_like_offer(sdp, pc.localDescription.sdp), rids),
                self._settings.public_ip,
            )
            negotiated = {m.mid: m for m in negotiated_media(answer)}
            started: list[IncomingTrack] = []
            for transceiver in pc.getTransceivers():
                mid = transceiver.mid
                m = negotiated.get(mid or "")
                if m is not None and m.rejected and not transceiver.stopped:
                    # The client stopped it; its m-line may serve a new track next time.
                    hooks.forget_mline(transceiver)
                    await transceiver.stop()
                receiving = (
                    m is not None
                    and m.codec is not None
                    and m.direction
                    in (
                        "recvonly",
                        "sendrecv",
                    )
                )
                if mid in media.published and not receiving:
                    stopped.append(media.published.pop(mid))
                elif mid is not None and mid not in media.published and receiving:
                    assert m is not None and m.codec is not None
                    started.append(
                        IncomingTrack(
                            mid=mid,
                            kind="audio" if transceiver.kind == "audio" else "video",
                            track=transceiver.receiver.track,
                            receiver=transceiver.receiver,
                            codec=m.codec,
                            rids=rids.get(mid, []),
                        )
                    )
            return PublishResult(answer, started, stopped)

    def start_forwarding(self, participant_id: str, track_id: str, incoming: IncomingTrack) -> None:
        """Begin forwarding a track the lesson accepted under ``track_id``."""
        media = self._media(participant_id)
        media.published[incoming.mid] = track_id
        receiver = incoming.receiver

        def ended(tid: str) -> None:
            self._forwarder_ended(participant_id, tid)

        forwarder: Forwarder
        if self._forwarding == "rtp":
            forwarder = RtpForwarder(
                track_id, receiver, incoming.codec, on_ended=ended, rids=incoming.rids
            )
        else:
            if incoming.kind == "audio":
                hooks.release_audio_immediately(receiver)
            forwarder = TrackForwarder(
                track_id,
                incoming.track,
                request_keyframe=lambda: hooks.send_pli(receiver),
                on_ended=ended,
                codec=incoming.codec,
            )
        self._forwarders[track_id] = forwarder
        self._publishers[track_id] = participant_id
        forwarder.start()

    async def stop_track(self, track_id: str) -> None:
        """Stop forwarding a track: it ends for every subscriber, who renegotiates."""
        forwarder = self._forwarders.pop(track_id, None)
        publisher_id = self._publishers.pop(track_id, None)
        if publisher_id is not None and publisher_id in self._participants:
            published = self._participants[publisher_id].published
            for mid, tid in list(published.items()):
                if tid == track_id:
                    del published[mid]
        if forwarder is not None:
            await forwarder.stop()
            retired = self._retired.setdefault(forwarder.kind, {})
            for name, value in forwarder.counters().items():
                retired[name] = retired.get(name, 0) + value
        for media in list(self._participants.values()):
            subscription = media.subscriptions.pop(track_id, None)
            if subscription is not None:
                await self._remove_subscription(media, subscription)

    def receive_settings(self, participant_id: str, mode: Mode, widths: dict[str, int]) -> None:
        """What a viewer asks for: ``auto``, ``low_data`` or ``audio_only``, and the
        width it renders each track at (0: hidden, not forwarded; RTP path only)."""
        self._media(participant_id).viewer.configure(mode, widths)

    def forwarder(self, track_id: str) -> Forwarder | None:
        """The forwarder of a published track (a recorder listens to it)."""
        return self._forwarders.get(track_id)

    def set_paused(self, track_id: str, paused: bool) -> None:
        """Stop or resume forwarding a track to everyone (a moderator's mute)."""
        forwarder = self._forwarders.get(track_id)
        if forwarder is not None:
            forwarder.set_paused(paused)

    # -- subscribing ---------------------------------------------------------

    async def subscribe(
        self, subscriber_id: str, publisher_id: str, track_id: str, kind: Kind, source: str
    ) -> None:
        """Forward a track (of ``kind``, from ``source``: the subscriber is told) to
        ``subscriber_id`` and offer it on the subscribe connection."""
        media = self._participants.get(subscriber_id)
        forwarder = self._forwarders.get(track_id)
        if media is None or media.closed or forwarder is None:
            return
        if track_id in media.subscriptions:
            return
        async with media.lock:
            if (
                media.closed
                or self._forwarders.get(track_id) is not forwarder
                or track_id in media.subscriptions
            ):
                return  # the track stopped (or was subscribed) while we waited
            if media.subscribe_pc is None:
                media.subscribe_pc = self._new_subscribe_pc(media)
            key = _reuse_key(forwarder.codec)
            free = media.free.setdefault(key, [])
            reuse = free.pop() if free else None
            attachment = forwarder.attach(media.subscribe_pc, reuse)
            if reuse is not None and attachment.transceiver is not reuse.transceiver:
                free.append(reuse)  # declined
            attachment.transceiver.direction = "sendonly"
            _follow_downlink(media, track_id, forwarder, attachment)
            media.subscriptions[track_id] = _Subscription(
                reuse_key=key,
                info=OfferedTrack("", track_id, publisher_id, kind, source),
                attachment=attachment,
            )
        self._schedule_offer(media)

    async def unsubscribe(self, subscriber_id: str, track_id: str) -> None:
        """Stop forwarding one track to one subscriber; the track goes on for others."""
        media = self._participants.get(subscriber_id)
        if media is None:
            return
        subscription = media.subscriptions.pop(track_id, None)
        if subscription is None:
            return
        await self._remove_subscription(media, subscription)

    async def accept_subscribe_answer(
        self, participant_id: str, sdp: str, offer_id: int | None = None
    ) -> None:
        """Apply the client's answer to our subscribe offer. Raises :class:`MediaError`
        (code ``stale_answer`` for an answer to an earlier offer, which is ignored)."""
        media = self._media(participant_id)
        async with media.lock:
            pc = media.subscribe_pc
            if offer_id is not None and offer_id != media.offer_id:
                raise MediaError(
                    f"this answers offer {offer_id}; offer {media.offer_id} is the latest",
                    code="stale_answer",
                )
            if pc is None or not media.offer_in_flight:
                raise MediaError("no subscribe offer is waiting for an answer")
            try:
                parse_description(sdp)
            except ValueError as exc:
                raise MediaError(f"the subscribe answer is not valid SDP ({exc})") from None
            sdp = self._gate(media, "subscribe").filter_sdp(sdp)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            except Exception as exc:  # aiortc raises many types on bad SDP
                raise MediaError(f"the subscribe answer was refused: {exc}") from None
            # An offer that restarted ICE: connect with the answer's new credentials;
            # then this subscriber needs a keyframe of everything it receives.
            swap = ice_restart.complete(pc, sdp)
            if swap is not None:
                self._keyframes_after(swap, lambda: list(media.subscriptions))
            media.offer_in_flight = False
            if media.answer_timer is not None:
                media.answer_timer.cancel()
                media.answer_timer = None
            for key, attachment in media.offered_inactive:
                media.free.setdefault(key, []).append(attachment)
            media.offered_inactive.clear()
            again = media.renegotiate
            media.renegotiate = False
        if again:
            self._schedule_offer(media)

    async def add_candidate(
        self,
        participant_id: str,
        pc_name: PeerConnectionName,
        candidate: str | None,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None:
        """Add a client's trickled ICE candidate for one of its connections (None: the
        end of its candidates). Raises :class:`MediaError`."""
        media = self._media(participant_id)
        pc = media.publish_pc if pc_name == "publish" else media.subscribe_pc
        if pc is None or pc.remoteDescription is None:
            raise MediaError(f"no {pc_name} connection is being negotiated")
        if not candidate:
            return  # end of candidates: aiortc needs no signal
        refused = self._gate(media, pc_name).admit(candidate)
        if refused == "malformed":
            raise MediaError("the ICE candidate was refused: it is malformed")
        if refused is not None:
            # Browsers trickle candidates the server cannot use (a home network's
            # private addresses): not an error, but never a connectivity check.
            logger.debug("ICE candidate of %s not checked: %s", participant_id, refused)
            return
        try:
            await pc.addIceCandidate(parse_candidate(candidate, sdp_mid, sdp_mline_index))
        except Exception as exc:  # bad candidate text or an unknown mid
            raise MediaError(f"the ICE candidate was refused: {exc}") from None

    # -- introspection -------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for ``/metrics``."""
        totals: dict[str, int] = {}
        for forwarder in self._forwarders.values():
            for name, value in forwarder.counters().items():
                totals[name] = totals.get(name, 0) + value
        pcs = [
            pc
            for m in self._participants.values()
            for pc in (m.publish_pc, m.subscribe_pc)
            if pc is not None
        ]
        return {
            "forwarding": self._forwarding,
            "participants": len(self._participants),
            "peer_connections": len(pcs),
            # Connected through a TURN server (the client's side of the pair is a relay).
            "relayed_peer_connections": sum(
                hooks.remote_candidate_type(pc) == "relay" for pc in pcs
            ),
            # Remote ICE candidates never checked (media/candidate_policy.py).
            "ice_candidates_refused": self._refused_by_departed
            + sum(gate.refused for m in self._participants.values() for gate in m.gates.values()),
            # Viewers whose browser tells when each packet arrived (media/transport_wide.py).
            "transport_feedback_connections": sum(
                m.viewer.transport_feedback for m in self._participants.values()
            ),
            "forwarded_tracks": len(self._forwarders),
            "subscriptions": sum(f.subscriber_count for f in self._forwarders.values()),
            **totals,
            **hooks.COUNTERS.snapshot(),
        }

    def counters_by_kind(self) -> dict[str, dict[str, int]]:
        """Forwarding counters summed per kind ("audio", "video") over every track
        forwarded since start: they only grow (Prometheus counters)."""
        totals = {kind: dict(counters) for kind, counters in self._retired.items()}
        for forwarder in self._forwarders.values():
            kind = totals.setdefault(forwarder.kind, {})
            for name, value in forwarder.counters().items():
                kind[name] = kind.get(name, 0) + value
        return totals

    def publisher_loss(self) -> dict[str, tuple[int, int]]:
        """``(packets received, packets lost)`` per kind over the tracks published now,
        as the server receives them (RFC 3550 counts, before retransmission)."""
        totals: dict[str, tuple[int, int]] = {}
        for media in self._participants.values():
            for kind, (received, lost) in self._received(media):
                before = totals.get(kind, (0, 0))
                totals[kind] = (before[0] + received, before[1] + lost)
        return totals

    def _received(self, media: ParticipantMedia) -> list[tuple[str, tuple[int, int]]]:
        pc = media.publish_pc
        if pc is None or media.closed:
            return []
        found = []
        for transceiver in pc.getTransceivers():
            if (transceiver.mid or "") in media.published:
                streams = hooks.received_streams(transceiver.receiver)
                found.append(
                    (
                        str(transceiver.kind),
                        (sum(s[1] for s in streams), sum(s[2] for s in streams)),
                    )
                )
        return found

    async def participant_stats(self, participant_id: str) -> ParticipantMediaStats | None:
        """What one participant sends and receives, read from aiortc (changes nothing);
        None if it has no media here."""
        media = self._participants.get(participant_id)
        if media is None or media.closed:
            return None
        bytes_received = bytes_sent = packets_sent = reported_lost = 0
        tracks: list[ReceivedTrackStats] = []
        publish, subscribe = media.publish_pc, media.subscribe_pc
        try:
            if publish is not None:
                for stats in (await publish.getStats()).values():
                    if stats.type == "transport":
                        bytes_received += stats.bytesReceived
                for transceiver in publish.getTransceivers():
                    track_id = media.published.get(transceiver.mid or "")
                    if track_id is None:
                        continue
                    streams = hooks.received_streams(transceiver.receiver)
                    tracks.append(
                        ReceivedTrackStats(
                            track_id=track_id,
                            kind=transceiver.kind,
                            packets_received=sum(s[1] for s in streams),
                            packets_lost=sum(s[2] for s in streams),
                        )
                    )
            if subscribe is not None:
                for stats in (await subscribe.getStats()).values():
                    if stats.type == "outbound-rtp":
                        bytes_sent += stats.bytesSent
                        packets_sent += stats.packetsSent
                    elif stats.type == "remote-inbound-rtp":
                        reported_lost += max(0, stats.packetsLost)
        except Exception:  # a connection closing under us: no figures this time
            logger.debug("media stats of %s unavailable", participant_id, exc_info=True)
            return None
        return ParticipantMediaStats(
            bytes_received, bytes_sent, packets_sent, reported_lost, tuple(tracks)
        )

    # -- internals -----------------------------------------------------------

    def _gate(self, media: ParticipantMedia, pc_name: str) -> CandidateGate:
        """The candidate gate of one of a participant's peer connections."""
        gate = media.gates.get(pc_name)
        if gate is None:
            gate = media.gates[pc_name] = self._candidates.gate(media.client_address)
        return gate

    def _media(self, participant_id: str) -> ParticipantMedia:
        media = self._participants.get(participant_id)
        if media is None or media.closed:
            raise MediaError("you are not in this lesson", code="not_joined")
        return media

    def _new_publish_pc(self, media: ParticipantMedia) -> RTCPeerConnection:
        pc = new_peer_connection(self._settings)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and not media.closed:
                # Its tracks end for everyone; the client offers on a new connection.
                for track_id in list(media.published.values()):
                    self._on_track_ended(media.participant_id, track_id)

        return pc

    def _keyframes_after(
        self, swap: hooks.IceConnectionSwap, track_ids: Callable[[], list[str]]
    ) -> None:
        """When the new path of an ICE restart carries media, ask the publishers of
        ``track_ids`` (taken then) for keyframes: what was lost meanwhile cannot be
        decoded without one."""

        async def when_usable() -> None:
            await swap.usable.wait()
            logger.info("ICE restart: the new path carries media")
            for track_id in track_ids():
                forwarder = self._forwarders.get(track_id)
                if forwarder is not None:
                    forwarder.request_keyframe()

        waiting = asyncio.ensure_future(when_usable())
        self._closing.add(waiting)
        waiting.add_done_callback(self._closing.discard)
        if swap.task is not None:
            # A restart that fails never becomes usable: stop waiting for it.
            swap.task.add_done_callback(lambda _: waiting.cancel())

    def _drop_publish_pc(self, media: ParticipantMedia) -> list[str]:
        """Forget the publish connection (closed in the background); its client
        connection's offers are refused from now on. Returns the tracks it carried."""
        pc, media.publish_pc = media.publish_pc, None
        if media.publish_fingerprint is not None:
            media.dropped_fingerprints.add(media.publish_fingerprint)
        media.publish_fingerprint = None
        stopped = list(media.published.values())
        media.published.clear()
        if pc is not None:
            task = asyncio.ensure_future(pc.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return stopped

    def _new_subscribe_pc(self, media: ParticipantMedia) -> RTCPeerConnection:
        pc = new_peer_connection(self._settings)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "failed" and not media.closed and media.subscribe_pc is pc:
                # Nothing more reaches the client on it: offer a new one.
                await self._new_subscribe_connection(media)

        return pc

    async def _new_subscribe_connection(self, media: ParticipantMedia) -> None:
        """Move every subscription to a new subscribe connection and offer it as new."""
        async with media.lock:
            if media.closed:
                return
            old = media.subscribe_pc
            for subscription in media.subscriptions.values():
                subscription.attachment.detach()
            media.retiring.clear()
            media.offered_inactive.clear()
            media.free.clear()
            media.offer_in_flight = False
            media.restart_ice = False
            if media.answer_timer is not None:
                media.answer_timer.cancel()
                media.answer_timer = None
            media.subscribe_pc = None
            if old is not None:
                await old.close()
            if media.subscriptions:
                pc = media.subscribe_pc = self._new_subscribe_pc(media)
                for track_id, subscription in list(media.subscriptions.items()):
                    forwarder = self._forwarders.get(track_id)
                    if forwarder is None:
                        del media.subscriptions[track_id]
                        continue
                    attachment = forwarder.attach(pc)
                    attachment.transceiver.direction = "sendonly"
                    _follow_downlink(media, track_id, forwarder, attachment)
                    subscription.attachment = attachment
            # Also when nothing is subscribed yet: the client's connection ends all the
            # same, and the next offer (whenever) starts a new one.
            media.new_connection = True
        self._schedule_offer(media)

    def _forwarder_ended(self, participant_id: str, track_id: str) -> None:
        # The publisher's track ended by itself (RTCP BYE, peer connection gone).
        if track_id in self._forwarders:
            self._on_track_ended(participant_id, track_id)

    async def _remove_subscription(
        self, media: ParticipantMedia, subscription: _Subscription
    ) -> None:
        attachment = subscription.attachment
        media.viewer.remove(subscription.info.track_id)
        attachment.detach()
        async with media.lock:
            # Inactive in the next offer (the browser fires removetrack), then free
            # for the next track of its kind and codec.
            attachment.transceiver.direction = "inactive"
            media.retiring.append((subscription.reuse_key, attachment))
        if not media.closed:
            self._schedule_offer(media)

    def _schedule_offer(self, media: ParticipantMedia) -> None:
        if media.closed:
            return
        if media.send is None:
            media.renegotiate = True  # offered once a socket takes the seat
            return
        if media.offer_in_flight or (
            media.negotiation_task is not None and not media.negotiation_task.done()
        ):
            media.renegotiate = True
            return
        media.negotiation_task = asyncio.create_task(
            self._send_subscribe_offer(media), name=f"offer-{media.participant_id}"
        )

    async def _send_subscribe_offer(self, media: ParticipantMedia) -> None:
        async with media.lock:
            pc = media.subscribe_pc
            send = media.send
            # aiortc closes a connection by itself once the viewer closed its side
            # (DTLS close_notify), before the viewer's socket is seen to close.
            if pc is None or media.closed or media.offer_in_flight or _is_closed(pc):
                return
            if send is None:
                media.renegotiate = True
                return
            media.renegotiate = False
            if media.restart_ice:
                media.restart_ice = False
                await ice_restart.prepare_offer(pc)
            try:
                await pc.setLocalDescription(await pc.createOffer())
            except InvalidStateError:
                if _is_closed(pc):  # it closed while the offer was being made
                    return
                raise
            sdp = offer_transport_wide(
                announce_public_ip(pc.localDescription.sdp, self._settings.public_ip)
            )
            tracks = []
            for subscription in media.subscriptions.values():
                transceiver = subscription.attachment.transceiver
                mid = transceiver.mid
                if mid is None or transceiver.stopped:
                    continue
                tracks.append(dataclasses.replace(subscription.info, mid=mid))
            media.offered_inactive += media.retiring
            media.retiring.clear()
            media.offer_in_flight = True
            media.offer_id += 1
            offer = SubscribeOffer(sdp, tuple(tracks), media.offer_id, media.new_connection)
            media.new_connection = False
            media.answer_timer = asyncio.get_running_loop().call_later(
                self._negotiation_timeout, self._answer_timed_out, media
            )
        await send(offer)

    def _answer_timed_out(self, media: ParticipantMedia) -> None:
        media.answer_timer = None
        if media.offer_in_flight and not media.closed and self._on_negotiation_timeout:
            # Nothing can be offered to it any more: its socket is closed, and the
            # next one gets a new subscribe connection.
            media.subscribe_stuck = True
            self._on_negotiation_timeout(media.participant_id)


def _follow_downlink(
    media: ParticipantMedia, track_id: str, forwarder: Forwarder, attachment: Attachment
) -> None:
    """A new subscriber on the fast path follows the participant's downlink: a video's
    layer, and the subscribe connection's transport-wide numbering (audio too)."""
    if not isinstance(forwarder, RtpForwarder) or not isinstance(attachment, RtpSubscriber):
        return
    if forwarder.kind == "video":
        media.viewer.add(track_id, forwarder, attachment)
    else:
        attachment.numbering = media.viewer


def _reuse_key(codec: RTCRtpCodecParameters | None) -> str:
    """Which freed transceivers a subscription may take: those that carried the same
    codec (a receiver does not always follow a codec change on an m-line)."""
    if codec is None:
        return ""
    profile = codec.parameters.get("profile-level-id", "")
    return f"{codec.mimeType.lower()};{profile}"


def _is_closed(pc: RTCPeerConnection) -> bool:
    return hooks.is_closing(pc) or pc.connectionState == "closed"


async def close_quietly(pc: RTCPeerConnection) -> None:
    """Close a peer connection whatever state bad input left it in: aiortc's ``close``
    fails on a transceiver that a refused description created without a transport,
    and cleanup must go on for everything else."""
    try:
        await pc.close()
    except Exception:
        logger.debug("closing a peer connection failed", exc_info=True)
