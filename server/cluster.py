"""Several nodes (or worker processes) serving lessons together through Redis.

With ``--redis URL`` this node joins the others: it beats in the node registry with
its load, renews the lessons it serves, and takes every socket: the socket's first
frame (the join) names the lesson; the lesson's node (placed on the least loaded node
if it has none) serves it, here or through the relay (``server/redis_relay.py``).
Without ``--redis`` none of this exists and every lesson lives in the one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import jwt
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.websockets import WebSocket

from signaling import protocol as p
from signaling.placement import PlacementUnavailable
from signaling.tokens import TokenError, verify_token

from . import redis_keys
from .cascade import SWEEP_INTERVAL
from .connection import ParticipantConnection
from .host import Connection, ConnectionHost
from .lesson_effects import execute_lesson_effect
from .live import LiveView
from .redis_nodes import CpuMeter, NodeRegistry
from .redis_placement import RedisPlacement
from .redis_relay import OwnerUnreachable, Relay, RelayedSocket

logger = logging.getLogger(__name__)

# Seconds between heartbeats (node load, lesson renewals).
HEARTBEAT_INTERVAL = 1.0
# Close code after an ``unavailable`` bye (IANA: 1013 "try again later").
CLOSE_TRY_AGAIN = 1013


class ClusterHost(ConnectionHost, Protocol):
    """The server as this node's membership sees it (``ServerState`` fulfils it)."""

    @property
    def connections(self) -> Mapping[str, Connection]: ...

    @property
    def answers(self) -> Mapping[str, Callable[[str, Any], Awaitable[Any]]]:
        """What routes answer when another node asks about a lesson served here."""
        ...

    @property
    def live(self) -> LiveView: ...

    async def forget_stopped_nodes(self, live: set[str]) -> None:
        """Let go of what crossed to or from nodes that stopped (``--cascade``)."""
        ...


class NodeNameTaken(Exception):
    """Another live node uses this node's name."""


def lesson_of_join(first: str | bytes, secret: bytes) -> str | None:
    """The lesson of a join frame whose token verifies, else None (the session then
    refuses the frame here, as it would on any node)."""
    try:
        message = json.loads(first)
        if not isinstance(message, dict) or message.get("type") != "join":
            return None
        token = message.get("token")
        if not isinstance(token, str):
            return None
        return verify_token(secret, token).lesson
    except (ValueError, TokenError, jwt.PyJWTError):
        return None


class Cluster:
    """This node's membership: heartbeat, placement, relay, and where sockets go."""

    def __init__(self, url: str, state: ClusterHost, node_id: str) -> None:
        self._state = state
        # No retries inside redis-py: an unreachable Redis must fail a join at once
        # with a clear error, not after a backoff.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
        )
        self.node_id = node_id
        self.nodes = NodeRegistry(self.redis, node_id)
        self.placement = RedisPlacement(
            self.redis, self.nodes, lambda lesson_id: state.registry.find(lesson_id) is not None
        )
        self.relay = Relay(self.redis, node_id, self._serve_relayed, self._claim_for, self._answer)
        self.reachable = False
        self._lost_redis = False  # Redis was unreachable at some point since start
        self._cpu = CpuMeter()
        # Lessons still here that another node owns now (Redis lost our key and the
        # lesson was placed again): not renewed, their sockets sent to the owner.
        self._lost: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Join: refuse a name another live node uses; then beat and listen. An
        unreachable Redis is no reason not to start: the node is not ready until it
        answers."""
        with contextlib.suppress(RedisError, OSError):
            other = await self.redis.hget(redis_keys.node(self.node_id), "pid")
            if other is not None and await self.redis.pttl(redis_keys.node(self.node_id)) > 0:
                raise NodeNameTaken(
                    f"node name {self.node_id!r} is in use by a live node (pid {other!s}); "
                    "give each node its own --node-name"
                )
        self._tasks = [
            asyncio.create_task(self._beat(), name="cluster-heartbeat"),
            asyncio.create_task(self.relay.listen(), name="cluster-relay"),
        ]
        if self._state.settings.cascade:
            self._tasks.append(asyncio.create_task(self._sweep(), name="cluster-sweep"))
        # Ready to relay before taking sockets (bounded: Redis may be down).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.relay.listening.wait(), 2.0)

    async def drain(self) -> None:
        """Shutting down: no new lesson is placed here meanwhile (Redis may be down)."""
        with contextlib.suppress(RedisError, OSError):
            await self.nodes.drain()

    async def stop(self) -> None:
        """Leave: close relayed sockets, release this node's lessons, forget the node."""
        await self.relay.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self.placement.release_all(
                [lesson.id for lesson in self._state.registry.lessons()]
            )
            await self.nodes.leave()
        await self.redis.aclose()

    async def _beat(self) -> None:
        while True:
            try:
                await self.nodes.beat(len(self._state.connections), self._cpu.read())
                local = [lesson.id for lesson in self._state.registry.lessons()]
                self._lost &= set(local)
                lost = await self.placement.renew([i for i in local if i not in self._lost])
                for lesson_id in lost:
                    self._give_up(lesson_id)
                if not self.reachable and self._lost_redis:
                    logger.info("Redis answers again")
                    # Redis may have lost its keys: every node claims its lessons
                    # again at its next beat before anyone places new ones.
                    self.placement.hold_placements(2 * HEARTBEAT_INTERVAL)
                self.reachable = True
            except (RedisError, OSError) as exc:
                if self.reachable or not self._lost_redis:
                    logger.warning("Redis is unreachable: %s", exc)
                self.reachable = False
                self._lost_redis = True
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _sweep(self) -> None:
        """With --cascade: every few seconds, let go of what crossed to or from nodes
        that stopped (apart from the heartbeat, which nothing may hold up)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                live = {node.node_id for node in await self.nodes.live_nodes()}
                await self._state.forget_stopped_nodes(live)
            except (RedisError, OSError):
                pass  # the heartbeat reports Redis; nothing is let go meanwhile
            except Exception:
                logger.exception("letting go of stopped nodes failed")

    def _give_up(self, lesson_id: str) -> None:
        """Another node owns ``lesson_id``: one node serves a lesson, so every socket of
        it here is told to reconnect (through this node's relay it reaches the owner).
        Its seats here are released at once, which ends the lesson here."""
        logger.error("lesson %s is owned by another node now: its sockets go there", lesson_id)
        self._lost.add(lesson_id)
        lesson = self._state.registry.find(lesson_id)
        if lesson is None:
            return
        self._state.seats.expedite(lesson_id)
        for participant_id in list(lesson.participants):
            connection = self._state.connections.get(participant_id)
            if connection is not None:
                connection.post_moved()

    @property
    def redis_up(self) -> bool:
        """Redis answered the last heartbeat and this node listens on its channel."""
        return self.reachable and self.relay.listening.is_set()

    def problems(self) -> dict[str, str]:
        """What keeps this node from taking joins, as far as Redis is concerned."""
        if not self.reachable:
            return {"redis": "unreachable: new joins cannot be placed"}
        if not self.relay.listening.is_set():
            return {"redis": "not subscribed to this node's relay channel"}
        return {}

    # -- sockets -------------------------------------------------------------

    async def serve_socket(self, ws: WebSocket) -> None:
        """Serve an accepted socket here, or relay it to its lesson's node."""
        state = self._state
        opened = time.monotonic()
        try:
            message = await asyncio.wait_for(ws.receive(), state.settings.join_timeout)
        except TimeoutError:
            # The connection times the join out at once, as without Redis.
            await ParticipantConnection(state, ws, opened_at=opened).run()
            return
        if message["type"] == "websocket.disconnect":
            return
        first = message.get("text")
        if first is None:
            first = message.get("bytes") or b""
        lesson_id = lesson_of_join(first, state.settings.secret)
        if lesson_id is None or isinstance(first, bytes):
            await ParticipantConnection(state, ws, first, opened).run()
            return
        try:
            owner = await self.placement.owner(lesson_id)
            if owner != self.node_id:
                try:
                    if not await self.relay.relay_client(ws, owner, first):
                        return
                except OwnerUnreachable:
                    # Its node died (a new one is placed) or is not subscribed yet.
                    if not await self.placement.evict_dead(lesson_id, owner):
                        raise PlacementUnavailable(f"node {owner} does not answer") from None
                    owner = await self.placement.owner(lesson_id)
                    if owner != self.node_id and not await self.relay.relay_client(
                        ws, owner, first
                    ):
                        return
        except (PlacementUnavailable, OwnerUnreachable) as exc:
            logger.warning("join refused: lesson %s cannot be reached (%s)", lesson_id, exc)
            bye = p.Bye(
                reason="unavailable",
                message="the lesson cannot be reached now (its server or the "
                "servers' coordination service is down); try again shortly",
            )
            with contextlib.suppress(Exception):  # the client may be gone already
                await ws.send_text(p.encode_server_message(bye))
                await ws.close(CLOSE_TRY_AGAIN)
            return
        await ParticipantConnection(state, ws, first, opened).run()

    # -- the HTTP API about lessons another node serves --------------------------

    async def ask_owner(
        self, lesson_id: str, question: str, details: Any = None
    ) -> tuple[bool, Any]:
        """``(True, answer)`` when another node serves ``lesson_id`` and answered
        ``question`` (``summary``, ``live`` or ``end``); ``(False, None)`` when this node
        serves it or no node does. Raises ``PlacementUnavailable`` (Redis unreachable)
        or ``OwnerUnreachable``."""
        owner = await self.placement.current_owner(lesson_id)
        if owner is None or owner == self.node_id:
            return False, None
        return True, await self.relay.ask(owner, question, lesson_id, details)

    async def ask_placed(self, lesson_id: str, question: str, details: Any) -> tuple[bool, Any]:
        """Like :meth:`ask_owner`, but a lesson no node serves is placed first (a WHIP
        publisher may be the first to arrive)."""
        owner = await self.placement.owner(lesson_id)
        if owner == self.node_id:
            return False, None
        # Publishing gathers ICE candidates on the owner: give it time.
        return True, await self.relay.ask(owner, question, lesson_id, details, timeout=20.0)

    async def ask_every_node(self, question: str) -> list[Any]:
        """Ask every other live node ``question`` (about no lesson in particular); the
        answers of those that answered."""
        try:
            nodes = await self.nodes.live_nodes()
        except (RedisError, OSError) as exc:
            raise PlacementUnavailable(f"Redis: {exc}") from exc
        others = [n.node_id for n in nodes if n.node_id != self.node_id]
        answers = await asyncio.gather(
            *(self.relay.ask(node, question, "") for node in others), return_exceptions=True
        )
        return [a for a in answers if not isinstance(a, BaseException)]

    async def _answer(self, question: str, lesson_id: str, details: Any) -> Any:
        state = self._state
        answer = state.answers.get(question)
        if answer is not None:
            return await answer(lesson_id, details)
        if question == "live_lessons":
            return [view.model_dump(mode="json") for view in await state.live.lessons()]
        live = state.registry.find(lesson_id)
        if live is None:
            return None
        if question == "summary":
            return {"participants": len(live.participants), "waiting": len(live.waiting)}
        if question == "live":
            return (await state.live.lesson(live)).model_dump(mode="json")
        if question == "end":
            for effect in live.close("the lesson was ended by its organiser"):
                await execute_lesson_effect(state, effect)
            return True
        return None

    async def _serve_relayed(self, socket: RelayedSocket, first: str) -> None:
        await ParticipantConnection(self._state, socket, first, entry_node=socket.entry).run()

    async def _claim_for(self, first: str) -> str:
        lesson_id = lesson_of_join(first, self._state.settings.secret)
        if lesson_id is None:
            return self.node_id
        return await self.placement.claim(lesson_id)
