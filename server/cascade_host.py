"""This node's side of other nodes' cascaded lessons: :class:`CascadeHost`.

It serves the subscribe sides of participants whose sockets came through this node
while their lesson lives elsewhere (``server/cascade.py`` has the design), on this
node's SFU, and takes the tracks that cross to here (one
:class:`media.upstream.UpstreamLink` per lesson's node). A participant's
subscriptions are kept as *wanted* until the lesson's node drops them (the
participant unsubscribes, or the track ends): a track that stops crossing for a while
(its crossing replaced) is subscribed again when it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from media.peers import IceSettings
from media.sfu import Kind, MediaError, MediaNotice, SendNotice, Sfu, SubscribeOffer
from media.upstream import UpstreamLink

from .cascade import ASK_TIMEOUT, Ask, MissedNodes, decode_notice, encode_notice, from_node

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Wanted:
    publisher_id: str
    kind: Kind
    source: str


class CascadeHost:
    """The subscribe sides homed here and the tracks that cross to here."""

    def __init__(self, sfu: Sfu, settings: IceSettings, node_id: str, ask: Ask) -> None:
        self._sfu = sfu
        self._settings = settings
        self._node_id = node_id
        self._ask = ask
        self._owners: dict[str, tuple[str, str]] = {}  # participant -> (node, lesson)
        self._links: dict[str, UpstreamLink] = {}  # lesson's node -> its link here
        self._wanted: dict[str, dict[str, _Wanted]] = {}  # track -> participant -> ...
        self._missed = MissedNodes()  # lessons' nodes
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
        offer = decode_notice(details["offer"])
        if not isinstance(offer, SubscribeOffer):
            raise ValueError("an upstream offer must be a subscribe offer")
        return await self._link(str(details["from"])).answer(offer)

    def negotiation_timed_out(self, participant_id: str) -> bool:
        """A homed participant's offer went unanswered: its lesson's node decides."""
        if participant_id not in self._owners:
            return False
        self._spawn(self._tell(participant_id, {"timeout": True}))
        return True

    async def sweep(self, live: set[str]) -> None:
        """Close what lessons of nodes that stopped left here."""
        known = {node for node, _ in self._owners.values()} | set(self._links)
        gone = self._missed.gone(known, live)
        for participant_id, (node_id, _) in list(self._owners.items()):
            if node_id in gone:
                await self._close(participant_id)
        for node_id in gone & set(self._links):
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
            await self._subscribe(participant_id, details)
        elif op == "unsubscribe":
            track_id = str(details["track"])
            self._forget(participant_id, track_id)
            await sfu.unsubscribe(participant_id, track_id)
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

    async def _subscribe(self, participant_id: str, details: dict[str, Any]) -> None:
        """Want the track until told otherwise; subscribe now if it has crossed (else
        when it does: its offer may still be on its way)."""
        track_id = str(details["track"])
        wanted = _Wanted(str(details["publisher"]), details["kind"], str(details["source"]))
        self._wanted.setdefault(track_id, {})[participant_id] = wanted
        link = self._link(self._owners[participant_id][0])
        if track_id in link.track_ids:
            await self._sfu.subscribe(
                participant_id, wanted.publisher_id, track_id, wanted.kind, wanted.source
            )

    def _track_started(self, track_id: str) -> None:
        """A track crossed to here: everyone who wants it gets it."""
        for participant_id, wanted in self._wanted.get(track_id, {}).items():
            self._spawn(
                self._sfu.subscribe(
                    participant_id, wanted.publisher_id, track_id, wanted.kind, wanted.source
                )
            )

    def _link(self, node_id: str) -> UpstreamLink:
        link = self._links.get(node_id)
        if link is None:
            link = self._links[node_id] = UpstreamLink(
                self._sfu,
                self._settings,
                from_node(node_id),
                self._track_started,
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
            details = {"pid": participant_id, "from": self._node_id, **what}
            await self._ask(owner[0], "media_notice", owner[1], details, ASK_TIMEOUT)
        except Exception as exc:  # OwnerUnreachable: its lesson's node stopped
            logger.info("could not tell %s's node: %s", participant_id, exc)

    async def _close(self, participant_id: str) -> None:
        self._owners.pop(participant_id, None)
        for track_id in list(self._wanted):
            self._forget(participant_id, track_id)
        await self._sfu.close(participant_id)

    def _forget(self, participant_id: str, track_id: str) -> None:
        wanted = self._wanted.get(track_id)
        if wanted is not None:
            wanted.pop(participant_id, None)
            if not wanted:
                del self._wanted[track_id]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
