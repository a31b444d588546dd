"""Lesson placement in Redis: exactly one node owns each running lesson.

The owner of a lesson is the value of ``lco:lesson:{id}:owner``, written only with
``SET NX PX``: whoever places a lesson first wins, and a second node racing for it
reads the winner. The owner renews the key while the lesson lives on it and deletes
it when the lesson empties, both only if the key still names it (compare-and-set in a
script), so a node that stalled and lost its key never deletes or overwrites a key
another node holds now. A key whose node stopped renewing it (the node died) expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from signaling.placement import PlacementUnavailable

from . import redis_keys as keys
from .redis_nodes import NODE_TTL_MS, NodeRegistry

logger = logging.getLogger(__name__)

# A lesson whose owner stops renewing it is free again this long after.
LESSON_TTL_MS = 5000

# KEYS: owner key, the target node's lesson set. ARGV: target, lesson TTL, lesson id,
# node TTL. Places the lesson on the target unless a node owns it; returns the owner.
_PLACE = """
local placed = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if not placed then return redis.call('GET', KEYS[1]) end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return ARGV[1]
"""

# KEYS: owner key, this node's lesson set. ARGV: this node, lesson TTL, lesson id,
# node TTL. Renews this node's ownership, or takes a lesson nobody owns; returns the
# owner (another node's id when another node holds it).
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  current = ARGV[1]
elseif current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if current == ARGV[1] then
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return current
"""

# KEYS: owner key, this node's lesson set. ARGV: this node, lesson id. Deletes the
# owner key only if it names this node.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""

# KEYS: owner key, the owner's node key, the owner's lesson set. ARGV: the owner,
# lesson id. Frees a lesson whose node is dead (its heartbeat expired), only if the
# key still names that node.
_EVICT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
"""

# KEYS: this node's lesson set. ARGV: this node. Forgets lessons placed here whose
# owner key is gone or names another node (a first socket that never arrived).
_PRUNE = """
local gone = 0
for _, lesson in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('GET', 'lco:lesson:' .. lesson .. ':owner') ~= ARGV[1] then
    redis.call('SREM', KEYS[1], lesson)
    gone = gone + 1
  end
end
return gone
"""


class RedisPlacement:
    """Places lessons on the least loaded live node; this node's side of ownership."""

    def __init__(
        self,
        client: aioredis.Redis,
        nodes: NodeRegistry,
        is_local: Callable[[str], bool],
    ) -> None:
        """``is_local(lesson_id)``: whether the lesson lives on this node now."""
        self._redis = client
        self._nodes = nodes
        self._is_local = is_local
        self._place = client.register_script(_PLACE)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._prune = client.register_script(_PRUNE)
        self._evict = client.register_script(_EVICT)
        self._releases: set[asyncio.Task[None]] = set()
        # After Redis comes back (it may have lost every key), new lessons are placed
        # only once every node has had a heartbeat to claim its lessons again.
        self._hold_until = 0.0
        self.conflicts = 0  # renewals that found another node owning a local lesson

    @property
    def node_id(self) -> str:
        return self._nodes.node_id

    async def owner(self, lesson_id: str) -> str:
        try:
            current = await self._redis.get(keys.lesson_owner(lesson_id))
            if current is not None:
                return str(current)
            wait = self._hold_until - time.monotonic()
            if wait > 0:
                # Time-based by design: the other nodes renew on their heartbeat.
                await asyncio.sleep(wait)
                current = await self._redis.get(keys.lesson_owner(lesson_id))
                if current is not None:
                    return str(current)
            target = await self._nodes.least_loaded()
            owner: str = await self._place(
                keys=[keys.lesson_owner(lesson_id), keys.node_lessons(target)],
                args=[target, LESSON_TTL_MS, lesson_id, NODE_TTL_MS],
            )
            if owner == target:
                logger.info("lesson %s placed on node %s", lesson_id, target)
            return owner
        except (RedisError, OSError) as exc:
            raise PlacementUnavailable(f"Redis: {exc}") from exc

    async def current_owner(self, lesson_id: str) -> str | None:
        """The node serving ``lesson_id`` now, if any (places nothing)."""
        try:
            current = await self._redis.get(keys.lesson_owner(lesson_id))
        except (RedisError, OSError) as exc:
            raise PlacementUnavailable(f"Redis: {exc}") from exc
        return None if current is None else str(current)

    async def claim(self, lesson_id: str) -> str:
        try:
            owner: str = await self._claim(
                keys=[keys.lesson_owner(lesson_id), keys.node_lessons(self.node_id)],
                args=[self.node_id, LESSON_TTL_MS, lesson_id, NODE_TTL_MS],
            )
        except (RedisError, OSError) as exc:
            raise PlacementUnavailable(f"Redis: {exc}") from exc
        return owner

    async def evict_dead(self, lesson_id: str, owner: str) -> bool:
        """Free ``lesson_id`` if ``owner`` still holds it but its heartbeat expired (it
        died): the next join places the lesson again. False while ``owner`` lives."""
        try:
            freed: int = await self._evict(
                keys=[keys.lesson_owner(lesson_id), keys.node(owner), keys.node_lessons(owner)],
                args=[owner, lesson_id],
            )
        except (RedisError, OSError) as exc:
            raise PlacementUnavailable(f"Redis: {exc}") from exc
        if freed:
            logger.warning("node %s is gone: lesson %s will be placed again", owner, lesson_id)
        return bool(freed)

    def forget(self, lesson_id: str) -> None:
        task = asyncio.create_task(self._forget(lesson_id), name="lesson-release")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _forget(self, lesson_id: str) -> None:
        if self._is_local(lesson_id):
            return  # it started again here meanwhile: the key stays ours
        try:
            await self._release(
                keys=[keys.lesson_owner(lesson_id), keys.node_lessons(self.node_id)],
                args=[self.node_id, lesson_id],
            )
        except (RedisError, OSError):
            # The key expires by itself (nobody renews it now).
            logger.warning("could not release lesson %s in Redis", lesson_id)

    async def renew(self, lesson_ids: list[str]) -> list[str]:
        """Renew this node's lessons; return those another node owns now (conflicts)."""
        lost = []
        for lesson_id in lesson_ids:
            owner = await self.claim(lesson_id)
            if owner != self.node_id:
                lost.append(lesson_id)
        await self._prune(keys=[keys.node_lessons(self.node_id)], args=[self.node_id])
        self.conflicts += len(lost)
        return lost

    def hold_placements(self, seconds: float) -> None:
        """Place no new lesson for ``seconds`` (Redis just came back)."""
        self._hold_until = time.monotonic() + seconds

    async def release_all(self, lesson_ids: list[str]) -> None:
        """This node stops: let go of every lesson it still holds."""
        for task in list(self._releases):
            await asyncio.gather(task, return_exceptions=True)
        for lesson_id in lesson_ids:
            await self._release(
                keys=[keys.lesson_owner(lesson_id), keys.node_lessons(self.node_id)],
                args=[self.node_id, lesson_id],
            )
