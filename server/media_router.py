"""Where each participant's media is served: :class:`MediaRouter`.

Without ``--cascade`` every call goes straight to this node's SFU. With it, the
lesson's node keeps each participant's publish side and routes the calls about its
subscribe side to its home node (``server/cascade.py`` has the design), one call at
a time per participant: a participant's calls reach its home in the order they were
made, and a move to another home is never interleaved with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from media.sfu import (
    IncomingTrack,
    Kind,
    MediaError,
    MediaNotice,
    PeerConnectionName,
    PublishResult,
    SendNotice,
    Sfu,
    SubscribeOffer,
)
from media.viewer import Mode

from .cascade import (
    ASK_TIMEOUT,
    OFFER_TIMEOUT,
    Ask,
    MissedNodes,
    decode_notice,
    encode_notice,
    to_node,
)

logger = logging.getLogger(__name__)

# Crossings to one node started over in a row (an offer refused or unanswered) after
# which it gets no more until a participant there subscribes to something again.
MAX_REFUSALS = 3


class NodeGone(Exception):
    """The node a call went to does not listen or did not answer."""


@dataclass(frozen=True, slots=True)
class _Home:
    node_id: str
    lesson_id: str
    client_address: str | None


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
        by_school: bool = False,
    ) -> None:
        self.sfu = sfu
        self._node_id = node_id
        self._ask = ask
        self._on_negotiation_timeout = on_negotiation_timeout
        # --cascade-by-school: (lesson, school) -> the node its participants are served
        # on, that of the first one to join; and each participant's (lesson, school).
        self._by_school = by_school
        self._school_homes: dict[tuple[str, str], str] = {}
        self._school_of: dict[str, tuple[str, str]] = {}
        self._homes: dict[str, _Home] = {}  # participants served on another node
        self._senders: dict[str, SendNotice] = {}  # their sockets' connections
        self._subscribed: dict[str, dict[str, _Subscription]] = {}  # homed only
        self._receive_settings: dict[str, tuple[Mode, dict[str, int]]] = {}
        # Node -> track ids forwarded there (its pseudo-participant is open here), and
        # which opening of that pseudo-participant is the current one.
        self._crossing: dict[str, set[str]] = {}
        self._generation: dict[str, int] = {}
        self._refusals: dict[str, int] = {}
        self._missed = MissedNodes()  # home nodes and nodes tracks cross to
        self._locks: dict[str, asyncio.Lock] = {}
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
        school: str = "",
    ) -> None:
        """Media for a participant who joined; with ``home`` (another node, the one its
        socket came through) its subscribe side is served there, or with
        ``--cascade-by-school`` where its school's first participant's is."""
        self.sfu.open(participant_id, send, client_address)
        if not self.cascading:
            return
        self._senders[participant_id] = send
        home = self._school_home(participant_id, lesson_id, school, home)
        if home is not None and home != self._node_id:
            async with self._lock(participant_id):
                await self._home_at(participant_id, _Home(home, lesson_id, client_address))

    async def attach(
        self,
        participant_id: str,
        send: SendNotice,
        client_address: str | None,
        lesson_id: str = "",
        home: str | None = None,
    ) -> bool:
        """A socket took the participant's seat (False: it has no media here). A
        subscribe side whose node no longer serves it moves to the new socket's node
        (or here)."""
        if not self.sfu.attach(participant_id, send, client_address):
            return False
        if not self.cascading:
            return True
        self._senders[participant_id] = send
        async with self._lock(participant_id):
            homed = self._homes.get(participant_id)
            if homed is None:
                return True
            try:
                attached = await self._call(homed, participant_id, "attach", address=client_address)
            except (NodeGone, MediaError):
                attached = False
            if not attached:
                target = self._school_homes.get(self._school_of.get(participant_id, ("", "")))
                await self._move(participant_id, target or home, lesson_id, client_address)
        return True

    def detach(self, participant_id: str) -> None:
        """The participant's socket went: its offers wait for the next one."""
        self.sfu.detach(participant_id)
        self._senders.pop(participant_id, None)
        if participant_id in self._homes:
            self._spawn(self._locked(participant_id, self._quietly(participant_id, "detach")))

    async def reset(self, participant_id: str) -> None:
        """Start the participant's media over (a new page took its seat)."""
        await self.sfu.reset(participant_id)
        if participant_id in self._homes:
            async with self._lock(participant_id):
                await self._quietly(participant_id, "reset")

    async def close(self, participant_id: str) -> None:
        """Release everything the participant held, here and on its home node."""
        if not self.cascading:
            await self.sfu.close(participant_id)
            return
        self._senders.pop(participant_id, None)
        self._receive_settings.pop(participant_id, None)
        school = self._school_of.pop(participant_id, None)
        if school is not None and school not in self._school_of.values():
            self._school_homes.pop(school, None)  # its school's last participant
        async with self._lock(participant_id):
            await self.sfu.close(participant_id)
            await self._let_go(participant_id)
        self._locks.pop(participant_id, None)

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
        # Their homes keep what they want until told: the track is gone for good.
        for participant_id, subscriptions in list(self._subscribed.items()):
            if subscriptions.pop(track_id, None) is not None:
                async with self._lock(participant_id):
                    await self._quietly(participant_id, "unsubscribe", track=track_id)

    def set_paused(self, track_id: str, paused: bool) -> None:
        """Pause a track at its source: every node's subscribers stop getting it."""
        self.sfu.set_paused(track_id, paused)

    # -- subscribing: on the participant's home ------------------------------

    async def subscribe(
        self, subscriber_id: str, publisher_id: str, track_id: str, kind: Kind, source: str
    ) -> None:
        """Forward a track to a subscriber, on its home node (the track crosses there
        first, once for all of that node's subscribers)."""
        if not self.cascading:
            await self.sfu.subscribe(subscriber_id, publisher_id, track_id, kind, source)
            return
        async with self._lock(subscriber_id):
            await self._subscribe(
                subscriber_id, track_id, _Subscription(publisher_id, kind, source)
            )

    async def unsubscribe(self, subscriber_id: str, track_id: str) -> None:
        """Stop forwarding one track to one subscriber."""
        if not self.cascading:
            await self.sfu.unsubscribe(subscriber_id, track_id)
            return
        async with self._lock(subscriber_id):
            homed = self._homes.get(subscriber_id)
            if homed is None:
                await self.sfu.unsubscribe(subscriber_id, track_id)
                return
            if self._subscribed.get(subscriber_id, {}).pop(track_id, None) is None:
                return
            await self._quietly(subscriber_id, "unsubscribe", track=track_id)
            await self._uncross_if_unused(track_id, homed.node_id)

    async def accept_subscribe_answer(
        self, participant_id: str, sdp: str, offer_id: int | None = None
    ) -> None:
        """See :meth:`media.sfu.Sfu.accept_subscribe_answer`."""
        async with self._maybe_locked(participant_id):
            if participant_id not in self._homes:
                await self.sfu.accept_subscribe_answer(participant_id, sdp, offer_id)
                return
            await self._refusable(participant_id, "answer", sdp=sdp, offer_id=offer_id)

    async def add_candidate(
        self,
        participant_id: str,
        pc_name: PeerConnectionName,
        candidate: str | None,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None:
        """See :meth:`media.sfu.Sfu.add_candidate`; a subscribe candidate goes home."""
        async with self._maybe_locked(participant_id):
            if pc_name == "publish" or participant_id not in self._homes:
                await self.sfu.add_candidate(
                    participant_id, pc_name, candidate, sdp_mid, sdp_mline_index
                )
                return
            await self._refusable(
                participant_id, "candidate", candidate=candidate, mid=sdp_mid, index=sdp_mline_index
            )

    async def receive_settings(
        self, participant_id: str, mode: Mode, widths: dict[str, int]
    ) -> None:
        """See :meth:`media.sfu.Sfu.receive_settings` (kept to follow a move)."""
        if not self.cascading:
            self.sfu.receive_settings(participant_id, mode, widths)
            return
        async with self._lock(participant_id):
            self._receive_settings[participant_id] = (mode, dict(widths))
            await self._apply_settings(participant_id, mode, widths)

    async def restart_ice(self, participant_id: str) -> None:
        """See :meth:`media.sfu.Sfu.restart_ice`."""
        async with self._maybe_locked(participant_id):
            if participant_id not in self._homes:
                await self.sfu.restart_ice(participant_id)
                return
            await self._refusable(participant_id, "restart_ice")

    # -- what other nodes say ------------------------------------------------

    async def notice(self, details: dict[str, Any]) -> bool:
        """A home node's SFU tells a participant something (``media_notice``)."""
        participant_id = str(details.get("pid", ""))
        send = self._senders.get(participant_id)
        home = self._homes.get(participant_id)
        if send is None or home is None or details.get("from") != home.node_id:
            return False  # not (or no longer) served there
        if details.get("timeout"):
            if self._on_negotiation_timeout is not None:
                self._on_negotiation_timeout(participant_id)
            return True
        await send(decode_notice(details["notice"]))
        return True

    async def sweep(self, live: set[str]) -> None:
        """Let go of nodes that stopped: nothing crosses to them any more, and the
        participants they served are served here, on a new subscribe connection."""
        if self._node_id not in live:
            return  # Redis lost the keys, or this node's own beat is late: judge nothing
        known = {home.node_id for home in self._homes.values()} | set(self._crossing)
        gone = self._missed.gone(known, live)
        for node_id in gone:
            self._refusals.pop(node_id, None)
            if node_id in self._crossing:
                await self._close_crossing(node_id)
            self._generation.pop(node_id, None)
        for school, node_id in list(self._school_homes.items()):
            if node_id in gone:
                del self._school_homes[school]
        for participant_id, home in list(self._homes.items()):
            if home.node_id not in gone:
                continue
            try:
                async with self._lock(participant_id):
                    if self._homes.get(participant_id) is home:
                        await self._move(
                            participant_id, None, home.lesson_id, home.client_address, gone=True
                        )
            except Exception:
                logger.exception("moving %s off node %s failed", participant_id, home.node_id)

    async def close_all(self) -> None:
        """Stop calls in flight (server shutdown; the SFU closes by itself)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- a participant's home (called with its lock held) --------------------

    def _school_home(
        self, participant_id: str, lesson_id: str, school: str, entry: str | None
    ) -> str | None:
        """Where a joining participant is served: its socket's node, or with
        ``--cascade-by-school`` its school's node in this lesson (the first one's)."""
        if not self._by_school or not school:
            return entry
        key = (lesson_id, school)
        self._school_of[participant_id] = key
        return self._school_homes.setdefault(key, entry or self._node_id)

    async def _home_at(
        self, participant_id: str, home: _Home, new_connection: bool = False
    ) -> None:
        self._homes[participant_id] = home
        try:
            await self._call(
                home,
                participant_id,
                "open",
                address=home.client_address,
                new_connection=new_connection,
            )
        except (NodeGone, MediaError) as exc:
            # Its socket's node just stopped: served here until a socket comes back.
            del self._homes[participant_id]
            school = self._school_of.get(participant_id)
            if school is not None and self._school_homes.get(school) == home.node_id:
                del self._school_homes[school]  # the school's next one decides again
            logger.warning(
                "node %s cannot serve %s (%s): served here", home.node_id, participant_id, exc
            )

    async def _move(
        self,
        participant_id: str,
        node_id: str | None,
        lesson_id: str,
        client_address: str | None,
        gone: bool = False,
    ) -> None:
        """Its home no longer serves the participant: serve its subscribe side on
        ``node_id`` (or here), on a new connection, with what it subscribed to and
        asked for (``gone``: the old home stopped, nothing to tell it)."""
        old = self._homes[participant_id]
        subscriptions = dict(self._subscribed.get(participant_id, {}))
        logger.info(
            "node %s no longer serves %s: moving its subscriptions", old.node_id, participant_id
        )
        await self._let_go(participant_id, tell=not gone)
        if node_id is not None and node_id != self._node_id:
            await self._home_at(
                participant_id, _Home(node_id, lesson_id, client_address), new_connection=True
            )
        if participant_id not in self._homes:
            await self.sfu.new_subscribe_connection(participant_id)
        settings = self._receive_settings.get(participant_id)
        try:
            if settings is not None:
                await self._apply_settings(participant_id, *settings)
        except MediaError as exc:
            logger.info("the receive settings of %s did not follow it: %s", participant_id, exc)
        for track_id, subscription in subscriptions.items():
            try:
                await self._subscribe(participant_id, track_id, subscription)
            except MediaError as exc:
                logger.info("%s did not follow %s: %s", track_id, participant_id, exc)

    async def _let_go(self, participant_id: str, tell: bool = True) -> None:
        """Forget the participant's home (which lets go of it if ``tell``, and if it
        still listens) and what crossed there for it alone."""
        home = self._homes.pop(participant_id, None)
        subscriptions = self._subscribed.pop(participant_id, {})
        if home is None:
            return
        if tell:
            with contextlib.suppress(NodeGone, MediaError):
                await self._call(home, participant_id, "close")
        for track_id in subscriptions:
            await self._uncross_if_unused(track_id, home.node_id)

    async def _subscribe(
        self, participant_id: str, track_id: str, subscription: _Subscription
    ) -> None:
        homed = self._homes.get(participant_id)
        if homed is None:
            await self.sfu.subscribe(
                participant_id,
                subscription.publisher_id,
                track_id,
                subscription.kind,
                subscription.source,
            )
            return
        subscriptions = self._subscribed.setdefault(participant_id, {})
        if track_id in subscriptions or self.sfu.forwarder(track_id) is None:
            return
        subscriptions[track_id] = subscription
        await self._cross(track_id, homed.node_id, subscription)
        await self._quietly(
            participant_id,
            "subscribe",
            publisher=subscription.publisher_id,
            track=track_id,
            kind=subscription.kind,
            source=subscription.source,
        )

    async def _apply_settings(
        self, participant_id: str, mode: Mode, widths: dict[str, int]
    ) -> None:
        if participant_id not in self._homes:
            self.sfu.receive_settings(participant_id, mode, widths)
        else:
            await self._refusable(participant_id, "settings", mode=mode, widths=widths)

    # -- crossings -------------------------------------------------------------

    async def _cross(self, track_id: str, node_id: str, subscription: _Subscription) -> None:
        """Forward ``track_id`` to ``node_id`` unless it crosses there already."""
        tracks = self._crossing.get(node_id)
        if tracks is None:
            await self._open_crossing(node_id)
            tracks = self._crossing.get(node_id)
        if tracks is None or track_id in tracks:
            return
        tracks.add(track_id)
        await self.sfu.subscribe(
            to_node(node_id),
            subscription.publisher_id,
            track_id,
            subscription.kind,
            subscription.source,
        )

    async def _open_crossing(self, node_id: str) -> None:
        """Start crossing to ``node_id``, with every track its participants receive."""
        pseudo = to_node(node_id)
        tracks = self._crossing[node_id] = set()
        generation = self._generation[node_id] = self._generation.get(node_id, 0) + 1
        self.sfu.open(pseudo, self._to_node(node_id, generation), None)
        # Its first offer asks the other node for a new connection: one it may still
        # hold from an earlier crossing ends.
        await self.sfu.new_subscribe_connection(pseudo)
        for track_id, subscription in self._wanted_on(node_id).items():
            if self._crossing.get(node_id) is not tracks:
                return  # closed meanwhile
            if track_id in tracks or self.sfu.forwarder(track_id) is None:
                continue
            tracks.add(track_id)
            await self.sfu.subscribe(
                pseudo,
                subscription.publisher_id,
                track_id,
                subscription.kind,
                subscription.source,
            )

    def _wanted_on(self, node_id: str) -> dict[str, _Subscription]:
        """The tracks the participants homed on ``node_id`` receive."""
        wanted: dict[str, _Subscription] = {}
        for participant_id, home in self._homes.items():
            if home.node_id == node_id:
                wanted.update(self._subscribed.get(participant_id, {}))
        return wanted

    async def _uncross_if_unused(self, track_id: str, node_id: str) -> None:
        """Stop forwarding ``track_id`` to ``node_id`` once nobody there receives it."""
        for participant_id, subscriptions in self._subscribed.items():
            home = self._homes.get(participant_id)
            if track_id in subscriptions and home is not None and home.node_id == node_id:
                return
        tracks = self._crossing.get(node_id)
        if tracks is not None and track_id in tracks:
            tracks.discard(track_id)
            await self.sfu.unsubscribe(to_node(node_id), track_id)

    async def _close_crossing(self, node_id: str) -> None:
        """Nothing crosses to ``node_id`` any more (until a track does again)."""
        self._crossing.pop(node_id, None)
        self._generation[node_id] = self._generation.get(node_id, 0) + 1  # late answers
        await self.sfu.close(to_node(node_id))

    def _to_node(self, node_id: str, generation: int) -> SendNotice:
        """What the SFU tells the pseudo-participant of ``node_id``: its offers go
        there, and their answers come back (in a task of their own: the SFU's
        negotiation task sends the offer and must end before the next one)."""

        async def send(notice: MediaNotice) -> None:
            if isinstance(notice, SubscribeOffer):
                self._spawn(self._offer_to_node(node_id, generation, notice))

        return send

    async def _offer_to_node(self, node_id: str, generation: int, offer: SubscribeOffer) -> None:
        assert self._ask is not None
        details = {"from": self._node_id, "offer": encode_notice(offer)}
        try:
            answer = await self._ask(node_id, "upstream_offer", "", details, OFFER_TIMEOUT)
        except Exception as exc:  # OwnerUnreachable: it stopped, or did not answer
            if self._generation.get(node_id) == generation:
                await self._recross(node_id, f"no answer: {exc}")
            return
        if self._generation.get(node_id) != generation:
            return  # answers an offer of a crossing closed since
        try:
            if not isinstance(answer, str):
                raise MediaError(f"node {node_id} could not answer the offer")
            await self.sfu.accept_subscribe_answer(to_node(node_id), answer, offer.offer_id)
        except MediaError as exc:
            if exc.code != "stale_answer" and self._generation.get(node_id) == generation:
                await self._recross(node_id, exc.message)  # (stale: a newer offer is out)
            return
        self._refusals.pop(node_id, None)

    async def _recross(self, node_id: str, reason: str) -> None:
        """An offer of crossing tracks went wrong: start the crossing over, on a new
        connection, with every track its node's participants receive."""
        refusals = self._refusals[node_id] = self._refusals.get(node_id, 0) + 1
        logger.warning("crossing to node %s failed (%s), attempt %d", node_id, reason, refusals)
        await self._close_crossing(node_id)
        if refusals <= MAX_REFUSALS and self._wanted_on(node_id):
            await self._open_crossing(node_id)

    # -- calls to a home -------------------------------------------------------

    async def _call(self, home: _Home, participant_id: str, op: str, **arguments: Any) -> Any:
        """One call for a participant on ``home``; its result. Raises
        :class:`MediaError` (the home's SFU refused) or :class:`NodeGone`."""
        assert self._ask is not None
        details = {"op": op, "pid": participant_id, "owner": self._node_id, **arguments}
        try:
            reply = await self._ask(home.node_id, "media", home.lesson_id, details, ASK_TIMEOUT)
        except Exception as exc:  # OwnerUnreachable: the node stopped or is stuck
            raise NodeGone(f"node {home.node_id}: {exc}") from None
        if not isinstance(reply, dict):
            raise NodeGone(f"node {home.node_id} did not answer {op}")
        if "error" in reply:
            raise MediaError(str(reply.get("message", "")), code=str(reply["error"]))
        return reply.get("ok")

    async def _quietly(self, participant_id: str, op: str, **arguments: Any) -> None:
        """A call for a homed participant whose failure it cannot act on (logged)."""
        home = self._homes.get(participant_id)
        if home is None:
            return
        try:
            await self._call(home, participant_id, op, **arguments)
        except (MediaError, NodeGone) as exc:
            logger.info("%s for %s on node %s failed: %s", op, participant_id, home.node_id, exc)

    async def _refusable(self, participant_id: str, op: str, **arguments: Any) -> None:
        """A call the client asked for: what went wrong is its error."""
        try:
            await self._call(self._homes[participant_id], participant_id, op, **arguments)
        except NodeGone:
            raise MediaError(
                "the server that carries your video is gone; reconnect", code="unavailable"
            ) from None

    # -- plumbing ------------------------------------------------------------

    def _lock(self, participant_id: str) -> asyncio.Lock:
        lock = self._locks.get(participant_id)
        if lock is None:
            lock = self._locks[participant_id] = asyncio.Lock()
        return lock

    def _maybe_locked(self, participant_id: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """The participant's lock when cascading; nothing to wait for otherwise."""
        if not self.cascading:
            return contextlib.nullcontext()
        return self._lock(participant_id)

    async def _locked(self, participant_id: str, work: Coroutine[Any, Any, None]) -> None:
        async with self._lock(participant_id):
            await work

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
