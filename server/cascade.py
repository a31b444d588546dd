"""Where each participant's media is served, and cascading between nodes (``--cascade``).

Without ``--cascade`` every participant's media is this node's SFU, and
:class:`MediaRouter` passes each call straight to it. With ``--cascade`` (and
``--redis``) a lesson spreads over the nodes its sockets landed on:

- a participant's **publish** side is always on the lesson's node (its SFU receives
  every published track once);
- its **subscribe** side is on the node its socket came through, its *home*: that
  node offers it its subscribe connection and forwards it every track it receives;
- a track crosses **once** to each home node that has subscribers for it: to the
  lesson's SFU a home node is one more subscriber (a pseudo-participant,
  ``~node:{name}``), whose offers go over Redis to :class:`media.upstream.UpstreamLink`
  there, which feeds the track to that node's SFU like a published one. Keyframe
  requests of its subscribers go back up the same way; retransmissions are served
  hop by hop.

The lesson's node makes each call for a homed participant over the relay's
questions (``media``: one call; ``upstream_offer``: an offer of the tracks that
cross; answered with the SDP), and the home node tells the lesson's node what its
SFU tells the participant (``media_notice``): :class:`CascadeHost` is that side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from media.peers import IceSettings
from media.sfu import (
    IncomingTrack,
    Kind,
    MediaError,
    MediaNotice,
    OfferedTrack,
    PeerConnectionName,
    PublishResult,
    SendNotice,
    Sfu,
    SubscribeOffer,
)
from media.upstream import UpstreamLink
from media.viewer import Mode, QualityNotice, ReceivedVideo

logger = logging.getLogger(__name__)

# Seconds a home node waits for a track to cross before subscribing a participant.
CROSSING_TIMEOUT = 15.0
# Seconds between two looks for nodes that stopped (their homes and crossings go).
SWEEP_INTERVAL = 2.0

# ask(node, question, lesson id, details, timeout): another node's answer. Raises
# server.redis_relay.OwnerUnreachable when the node does not listen or answer.
Ask = Callable[[str, str, str, Any, float], Awaitable[Any]]
# The nodes alive now.
LiveNodes = Callable[[], Awaitable[set[str]]]
ASK_TIMEOUT = 5.0


class NodeGone(Exception):
    """The node a call went to does not listen or did not answer."""


def pseudo_participant(node_id: str) -> str:
    """The id under which another node subscribes to (or forwards) tracks."""
    return f"~node:{node_id}"


@dataclass(frozen=True, slots=True)
class _Subscription:
    publisher_id: str
    kind: Kind
    source: str


class MediaRouter:
    """The media calls of this node's lessons, each to the SFU that serves it."""

    def __init__(
        self,
        sfu: Sfu,
        node_id: str = "",
        ask: Ask | None = None,
        on_negotiation_timeout: Callable[[str], None] | None = None,
    ) -> None:
        self.sfu = sfu
        self._node_id = node_id
        self._ask = ask
        self._on_negotiation_timeout = on_negotiation_timeout
        self._homes: dict[str, tuple[str, str]] = {}  # participant -> (node, lesson)
        self._senders: dict[str, SendNotice] = {}
        self._subscribed: dict[str, dict[str, _Subscription]] = {}  # homed only
        # Node -> track ids forwarded there (its pseudo-participant is open here).
        self._crossing: dict[str, set[str]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    @property
    def cascading(self) -> bool:
        """Whether participants may be served on other nodes."""
        return self._ask is not None

    def counts(self) -> dict[str, Any]:
        """Participants homed on other nodes and tracks crossing to each (metrics)."""
        return {
            "homed_elsewhere": len(self._homes),
            "crossing": {node: len(tracks) for node, tracks in sorted(self._crossing.items())},
        }

    # -- a participant's life ------------------------------------------------

    async def open(
        self,
        participant_id: str,
        send: SendNotice,
        client_address: str | None,
        lesson_id: str = "",
        home: str | None = None,
    ) -> None:
        """Media for a participant who joined; with ``home`` (another node, the one its
        socket came through) its subscribe side is served there."""
        self.sfu.open(participant_id, send, client_address)
        self._senders[participant_id] = send
        if home is not None and home != self._node_id and self.cascading:
            await self._home_at(participant_id, home, lesson_id, client_address, False)

    async def attach(
        self,
        participant_id: str,
        send: SendNotice,
        client_address: str | None,
        lesson_id: str = "",
        home: str | None = None,
    ) -> bool:
        """A socket took the participant's seat (False: it has no media here). A
        subscribe side whose node is gone moves to the new socket's node."""
        if not self.sfu.attach(participant_id, send, client_address):
            return False
        self._senders[participant_id] = send
        homed = self._homes.get(participant_id)
        if homed is None:
            return True
        try:
            attached = await self._call(
                participant_id, "attach", address=client_address, lesson=lesson_id
            )
        except NodeGone:
            attached = False
        if not attached:
            await self._rehome(participant_id, home, lesson_id, client_address)
        return True

    def detach(self, participant_id: str) -> None:
        """The participant's socket went: its offers wait for the next one."""
        self.sfu.detach(participant_id)
        if participant_id in self._homes:
            self._spawn(self._call_quietly(participant_id, "detach"))

    async def reset(self, participant_id: str) -> None:
        """Start the participant's media over (a new page took its seat)."""
        await self.sfu.reset(participant_id)
        if participant_id in self._homes:
            await self._call_quietly(participant_id, "reset")

    async def close(self, participant_id: str) -> None:
        """Release everything the participant held, here and on its home node."""
        await self.sfu.close(participant_id)
        self._senders.pop(participant_id, None)
        homed = self._homes.get(participant_id)
        if homed is not None:
            await self._call_quietly(participant_id, "close")
            del self._homes[participant_id]
            for track_id in self._subscribed.pop(participant_id, {}):
                await self._uncross_if_unused(track_id, homed[0])

    # -- publishing: always here ---------------------------------------------

    async def accept_publish_offer(self, participant_id: str, offer_sdp: str) -> PublishResult:
        """See :meth:`media.sfu.Sfu.accept_publish_offer`."""
        return await self.sfu.accept_publish_offer(participant_id, offer_sdp)

    def start_forwarding(self, participant_id: str, track_id: str, incoming: IncomingTrack) -> None:
        """See :meth:`media.sfu.Sfu.start_forwarding`."""
        self.sfu.start_forwarding(participant_id, track_id, incoming)

    async def stop_track(self, track_id: str) -> None:
        """Stop a track for everyone: here, and (its crossings renegotiated) on every
        node it crossed to."""
        await self.sfu.stop_track(track_id)
        for tracks in self._crossing.values():
            tracks.discard(track_id)
        for subscriptions in self._subscribed.values():
            subscriptions.pop(track_id, None)

    def set_paused(self, track_id: str, paused: bool) -> None:
        """Pause a track at its source: every node's subscribers stop getting it."""
        self.sfu.set_paused(track_id, paused)

    # -- subscribing: on the participant's home ------------------------------

    async def subscribe(
        self, subscriber_id: str, publisher_id: str, track_id: str, kind: Kind, source: str
    ) -> None:
        """Forward a track to a subscriber, on its home node (the track crosses there
        first, once for all of that node's subscribers)."""
        homed = self._homes.get(subscriber_id)
        if homed is None:
            await self.sfu.subscribe(subscriber_id, publisher_id, track_id, kind, source)
            return
        subscriptions = self._subscribed.setdefault(subscriber_id, {})
        if track_id in subscriptions or self.sfu.forwarder(track_id) is None:
            return
        subscriptions[track_id] = _Subscription(publisher_id, kind, source)
        await self._cross(track_id, homed[0], subscriptions[track_id])
        await self._call_quietly(
            subscriber_id,
            "subscribe",
            publisher=publisher_id,
            track=track_id,
            kind=kind,
            source=source,
        )

    async def unsubscribe(self, subscriber_id: str, track_id: str) -> None:
        """Stop forwarding one track to one subscriber."""
        homed = self._homes.get(subscriber_id)
        if homed is None:
            await self.sfu.unsubscribe(subscriber_id, track_id)
            return
        if self._subscribed.get(subscriber_id, {}).pop(track_id, None) is None:
            return
        await self._call_quietly(subscriber_id, "unsubscribe", track=track_id)
        await self._uncross_if_unused(track_id, homed[0])

    async def accept_subscribe_answer(
        self, participant_id: str, sdp: str, offer_id: int | None = None
    ) -> None:
        """See :meth:`media.sfu.Sfu.accept_subscribe_answer`."""
        if participant_id not in self._homes:
            await self.sfu.accept_subscribe_answer(participant_id, sdp, offer_id)
            return
        await self._call_or_refuse(participant_id, "answer", sdp=sdp, offer_id=offer_id)

    async def add_candidate(
        self,
        participant_id: str,
        pc_name: PeerConnectionName,
        candidate: str | None,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None:
        """See :meth:`media.sfu.Sfu.add_candidate`; a subscribe candidate goes home."""
        if pc_name == "publish" or participant_id not in self._homes:
            await self.sfu.add_candidate(
                participant_id, pc_name, candidate, sdp_mid, sdp_mline_index
            )
            return
        await self._call_or_refuse(
            participant_id, "candidate", candidate=candidate, mid=sdp_mid, index=sdp_mline_index
        )

    async def receive_settings(
        self, participant_id: str, mode: Mode, widths: dict[str, int]
    ) -> None:
        """See :meth:`media.sfu.Sfu.receive_settings`."""
        if participant_id not in self._homes:
            self.sfu.receive_settings(participant_id, mode, widths)
            return
        await self._call_or_refuse(participant_id, "settings", mode=mode, widths=widths)

    async def restart_ice(self, participant_id: str) -> None:
        """See :meth:`media.sfu.Sfu.restart_ice`."""
        if participant_id not in self._homes:
            await self.sfu.restart_ice(participant_id)
            return
        await self._call_or_refuse(participant_id, "restart_ice")

    # -- what home nodes say ---------------------------------------------------

    async def notice(self, details: dict[str, Any]) -> bool:
        """A home node's SFU tells a participant something (``media_notice``)."""
        participant_id = str(details.get("pid", ""))
        send = self._senders.get(participant_id)
        if send is None or participant_id not in self._homes:
            return False
        if details.get("timeout"):
            if self._on_negotiation_timeout is not None:
                self._on_negotiation_timeout(participant_id)
            return True
        await send(decode_notice(details["notice"]))
        return True

    async def sweep(self, live: set[str]) -> None:
        """Forget what crossed to nodes that stopped: their pseudo-participants close
        here. Participants homed there move when their next socket takes the seat."""
        for node_id in [n for n in self._crossing if n not in live]:
            del self._crossing[node_id]
            await self.sfu.close(pseudo_participant(node_id))

    async def close_all(self) -> None:
        """Stop calls in flight (server shutdown; the SFU closes by itself)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- internals -----------------------------------------------------------

    async def _home_at(
        self,
        participant_id: str,
        node_id: str,
        lesson_id: str,
        client_address: str | None,
        new_connection: bool,
    ) -> None:
        self._homes[participant_id] = (node_id, lesson_id)
        try:
            await self._call(
                participant_id,
                "open",
                address=client_address,
                lesson=lesson_id,
                new_connection=new_connection,
            )
        except NodeGone:
            # Its socket's node just stopped: served here until a socket comes back.
            del self._homes[participant_id]
            logger.warning("node %s is gone: %s is served here", node_id, participant_id)

    async def _rehome(
        self, participant_id: str, home: str | None, lesson_id: str, client_address: str | None
    ) -> None:
        """The participant's home node is gone: serve its subscribe side on the new
        socket's node (or here), on a new connection, with what it subscribed to."""
        old = self._homes.pop(participant_id)
        subscriptions = self._subscribed.pop(participant_id, {})
        logger.info(
            "node %s no longer serves %s's subscriptions: moving them", old[0], participant_id
        )
        if home is not None and home != self._node_id:
            await self._home_at(participant_id, home, lesson_id, client_address, True)
        if participant_id not in self._homes:
            await self.sfu.new_subscribe_connection(participant_id)
        for track_id, subscription in subscriptions.items():
            await self.subscribe(
                participant_id,
                subscription.publisher_id,
                track_id,
                subscription.kind,
                subscription.source,
            )

    async def _cross(self, track_id: str, node_id: str, subscription: _Subscription) -> None:
        """Forward ``track_id`` to ``node_id`` unless it crosses there already."""
        pseudo = pseudo_participant(node_id)
        tracks = self._crossing.get(node_id)
        if tracks is None:
            tracks = self._crossing[node_id] = set()
            self.sfu.open(pseudo, self._to_node(node_id), None)
        if track_id in tracks:
            return
        tracks.add(track_id)
        await self.sfu.subscribe(
            pseudo, subscription.publisher_id, track_id, subscription.kind, subscription.source
        )

    async def _uncross_if_unused(self, track_id: str, node_id: str) -> None:
        """Stop forwarding ``track_id`` to ``node_id`` once nobody there receives it."""
        for participant_id, subscriptions in self._subscribed.items():
            if track_id in subscriptions and self._homes.get(participant_id, ("",))[0] == node_id:
                return
        tracks = self._crossing.get(node_id)
        if tracks is not None and track_id in tracks:
            tracks.discard(track_id)
            await self.sfu.unsubscribe(pseudo_participant(node_id), track_id)

    def _to_node(self, node_id: str) -> SendNotice:
        """What the SFU tells the pseudo-participant of ``node_id``: its offers go
        there, and their answers come back (in a task of their own: the SFU's
        negotiation task sends the offer and must end before the next one)."""

        async def send(notice: MediaNotice) -> None:
            if isinstance(notice, SubscribeOffer):
                self._spawn(self._offer_to_node(node_id, notice))

        return send

    async def _offer_to_node(self, node_id: str, offer: SubscribeOffer) -> None:
        assert self._ask is not None
        pseudo = pseudo_participant(node_id)
        try:
            answer = await self._ask(
                node_id,
                "upstream_offer",
                "",
                {"from": self._node_id, "offer": encode_notice(offer)},
                ASK_TIMEOUT,
            )
        except Exception as exc:  # OwnerUnreachable: the node stopped
            logger.warning("node %s did not take the tracks offered to it: %s", node_id, exc)
            self._crossing.pop(node_id, None)
            await self.sfu.close(pseudo)
            return
        if not isinstance(answer, str):
            logger.warning("node %s refused the tracks offered to it", node_id)
            return
        try:
            await self.sfu.accept_subscribe_answer(pseudo, answer, offer.offer_id)
        except MediaError as exc:
            logger.warning("the answer of node %s was refused: %s", node_id, exc.message)

    async def _call(self, participant_id: str, op: str, **arguments: Any) -> Any:
        """Make one call for a homed participant on its home node; its result.
        Raises :class:`MediaError` (the home's SFU refused) or :class:`NodeGone`."""
        assert self._ask is not None
        node_id, lesson_id = self._homes[participant_id]
        details = {"op": op, "pid": participant_id, "owner": self._node_id, **arguments}
        try:
            reply = await self._ask(node_id, "media", lesson_id, details, ASK_TIMEOUT)
        except Exception as exc:  # OwnerUnreachable: the node stopped
            raise NodeGone(f"node {node_id}: {exc}") from None
        if not isinstance(reply, dict):
            raise NodeGone(f"node {node_id} did not answer {op}")
        if "error" in reply:
            raise MediaError(str(reply.get("message", "")), code=str(reply["error"]))
        return reply.get("ok")

    async def _call_quietly(self, participant_id: str, op: str, **arguments: Any) -> None:
        """A call whose failure the participant cannot act on (logged)."""
        with contextlib.suppress(KeyError):
            try:
                await self._call(participant_id, op, **arguments)
            except (MediaError, NodeGone) as exc:
                logger.info("%s for %s on its node failed: %s", op, participant_id, exc)

    async def _call_or_refuse(self, participant_id: str, op: str, **arguments: Any) -> None:
        """A call the client asked for: what went wrong is its error."""
        try:
            await self._call(participant_id, op, **arguments)
        except NodeGone:
            raise MediaError(
                "the server that carries your video is gone; reconnect", code="unavailable"
            ) from None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class CascadeHost:
    """This node's side of other nodes' lessons: the subscribe sides homed here and
    the tracks that cross to here, on this node's SFU."""

    def __init__(self, sfu: Sfu, settings: IceSettings, node_id: str, ask: Ask) -> None:
        self._sfu = sfu
        self._settings = settings
        self._node_id = node_id
        self._ask = ask
        self._owners: dict[str, tuple[str, str]] = {}  # participant -> (node, lesson)
        self._links: dict[str, UpstreamLink] = {}  # upstream node -> its link here
        # Subscriptions waiting for their track to cross, by participant and track.
        self._waiting: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Future[None]] = set()

    def counts(self) -> dict[str, Any]:
        """Participants homed here and tracks that cross to here, by node (metrics)."""
        return {
            "homed_here": len(self._owners),
            "upstream": {node: len(link.track_ids) for node, link in sorted(self._links.items())},
        }

    async def call(self, lesson_id: str, details: dict[str, Any]) -> dict[str, Any]:
        """Carry out one call of a lesson's node (``media``)."""
        try:
            return {"ok": await self._carry_out(lesson_id, details)}
        except MediaError as exc:
            return {"error": exc.code, "message": exc.message}

    async def upstream_offer(self, details: dict[str, Any]) -> str:
        """Answer an offer of the tracks another node forwards here."""
        node_id = str(details["from"])
        offer = decode_notice(details["offer"])
        assert isinstance(offer, SubscribeOffer)
        return await self._link(node_id).answer(offer)

    def negotiation_timed_out(self, participant_id: str) -> bool:
        """A homed participant's offer went unanswered: its lesson's node decides."""
        owner = self._owners.get(participant_id)
        if owner is None:
            return False
        task = asyncio.ensure_future(self._tell(participant_id, {"timeout": True}))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def sweep(self, live: set[str]) -> None:
        """Close what lessons of nodes that stopped left here."""
        for participant_id, (node_id, _) in list(self._owners.items()):
            if node_id not in live:
                await self._close(participant_id)
        for node_id in [n for n in self._links if n not in live]:
            await self._links.pop(node_id).close()

    async def close_all(self) -> None:
        """Release everything (server shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for participant_id in list(self._owners):
            await self._close(participant_id)
        for link in self._links.values():
            await link.close()
        self._links.clear()

    async def _carry_out(self, lesson_id: str, details: dict[str, Any]) -> Any:
        op, participant_id = details["op"], str(details["pid"])
        sfu = self._sfu
        if op == "open":
            if participant_id in self._owners:
                await self._close(participant_id)
            self._owners[participant_id] = (str(details["owner"]), lesson_id)
            sfu.open(participant_id, self._notices_of(participant_id), details.get("address"))
            if details.get("new_connection"):
                await sfu.new_subscribe_connection(participant_id)
            return True
        if participant_id not in self._owners:
            if op in ("attach", "detach", "close"):
                return False
            raise MediaError("you are not in this lesson", code="not_joined")
        if op == "attach":
            return sfu.attach(
                participant_id, self._notices_of(participant_id), details.get("address")
            )
        if op == "detach":
            sfu.detach(participant_id)
        elif op == "close":
            await self._close(participant_id)
        elif op == "reset":
            await sfu.reset(participant_id)
        elif op == "subscribe":
            self._subscribe_when_crossed(participant_id, details)
        elif op == "unsubscribe":
            waiting = self._waiting.pop((participant_id, str(details["track"])), None)
            if waiting is not None:
                waiting.cancel()
            await sfu.unsubscribe(participant_id, str(details["track"]))
        elif op == "answer":
            await sfu.accept_subscribe_answer(participant_id, details["sdp"], details["offer_id"])
        elif op == "candidate":
            await sfu.add_candidate(
                participant_id, "subscribe", details["candidate"], details["mid"], details["index"]
            )
        elif op == "settings":
            sfu.receive_settings(participant_id, details["mode"], dict(details["widths"]))
        elif op == "restart_ice":
            await sfu.restart_ice(participant_id)
        else:
            raise MediaError(f"unknown media call {op!r}", code="bad_request")
        return None

    def _subscribe_when_crossed(self, participant_id: str, details: dict[str, Any]) -> None:
        """Subscribe once the track has crossed (its offer may still be on its way);
        the lesson's node does not wait for that."""
        owner = self._owners[participant_id][0]
        track_id = str(details["track"])
        link = self._link(owner)

        async def when_crossed() -> None:
            try:
                if not await link.arrived(track_id, CROSSING_TIMEOUT):
                    logger.warning("track %s did not cross from node %s", track_id, owner)
                    return
                await self._sfu.subscribe(
                    participant_id,
                    str(details["publisher"]),
                    track_id,
                    details["kind"],
                    str(details["source"]),
                )
            finally:
                self._waiting.pop((participant_id, track_id), None)

        key = (participant_id, track_id)
        previous = self._waiting.pop(key, None)
        if previous is not None:
            previous.cancel()
        self._waiting[key] = asyncio.ensure_future(when_crossed())

    def _link(self, node_id: str) -> UpstreamLink:
        link = self._links.get(node_id)
        if link is None:
            link = self._links[node_id] = UpstreamLink(
                self._sfu, self._settings, pseudo_participant(node_id)
            )
        return link

    def _notices_of(self, participant_id: str) -> SendNotice:
        async def send(notice: MediaNotice) -> None:
            await self._tell(participant_id, {"notice": encode_notice(notice)})

        return send

    async def _tell(self, participant_id: str, what: dict[str, Any]) -> None:
        owner = self._owners.get(participant_id)
        if owner is None:
            return
        try:
            await self._ask(
                owner[0], "media_notice", owner[1], {"pid": participant_id, **what}, ASK_TIMEOUT
            )
        except Exception as exc:  # OwnerUnreachable: its lesson's node stopped
            logger.info("could not tell %s's node: %s", participant_id, exc)

    async def _close(self, participant_id: str) -> None:
        self._owners.pop(participant_id, None)
        for key in [k for k in self._waiting if k[0] == participant_id]:
            self._waiting.pop(key).cancel()
        await self._sfu.close(participant_id)


def encode_notice(notice: MediaNotice) -> dict[str, Any]:
    """A media notice as JSON, to cross between nodes."""
    if isinstance(notice, SubscribeOffer):
        return {
            "offer": {
                "sdp": notice.sdp,
                "tracks": [
                    [t.mid, t.track_id, t.publisher_id, t.kind, t.source] for t in notice.tracks
                ],
                "offer_id": notice.offer_id,
                "new_connection": notice.new_connection,
            }
        }
    return {
        "quality": {
            "level": notice.level,
            "limited_by": notice.limited_by,
            "videos": [[v.track_id, v.forwarded, v.width, v.height] for v in notice.videos],
        }
    }


def decode_notice(data: dict[str, Any]) -> MediaNotice:
    """The media notice :func:`encode_notice` wrote."""
    if "offer" in data:
        offer = data["offer"]
        return SubscribeOffer(
            sdp=str(offer["sdp"]),
            tracks=tuple(OfferedTrack(*entry) for entry in offer["tracks"]),
            offer_id=int(offer["offer_id"]),
            new_connection=bool(offer["new_connection"]),
        )
    quality = data["quality"]
    return QualityNotice(
        level=quality["level"],
        limited_by=quality["limited_by"],
        videos=tuple(ReceivedVideo(*entry) for entry in quality["videos"]),
    )
