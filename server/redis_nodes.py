"""The node registry in Redis: each node's heartbeat and load, and the choice of the
least loaded node for a new lesson."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from . import redis_keys as keys

# A node whose heartbeat stops is forgotten this long after its last beat.
NODE_TTL_MS = 5000


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """What a node said about itself at its last heartbeat."""

    node_id: str
    participants: int
    cpu: float  # fraction of one core used since the previous heartbeat
    lessons: int  # lessons placed on it (including ones whose first socket is on its way)
    draining: bool = False  # shutting down: keeps its lessons, takes no new ones

    @property
    def score(self) -> tuple[int, float, str]:
        """Lower is less loaded: participants plus one per lesson (a lesson just placed
        has nobody yet), then CPU, then the id (so that the choice is deterministic)."""
        return (self.participants + self.lessons, self.cpu, self.node_id)


class CpuMeter:
    """This process's CPU use between two readings, as a fraction of one core."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()

    def read(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        used = (cpu - self._cpu) / max(wall - self._wall, 1e-6)
        self._wall, self._cpu = wall, cpu
        return round(used, 3)


class NodeRegistry:
    """Writes this node's heartbeat; reads every live node's load."""

    def __init__(self, client: aioredis.Redis, node_id: str) -> None:
        self._redis = client
        self.node_id = node_id
        self.draining = False

    async def beat(self, participants: int, cpu: float) -> None:
        """Say this node lives and how loaded it is (expires after ``NODE_TTL_MS``)."""
        key = keys.node(self.node_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "participants": participants,
                    "cpu": cpu,
                    "pid": os.getpid(),
                    "at": time.time(),
                    "draining": int(self.draining),
                },
            )
            pipe.pexpire(key, NODE_TTL_MS)
            pipe.sadd(keys.NODES, self.node_id)
            await pipe.execute()

    async def live_nodes(self) -> list[NodeLoad]:
        """Every node whose heartbeat has not expired; forgets the others."""
        ids = sorted(str(member) for member in await self._redis.smembers(keys.NODES))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for node_id in ids:
                pipe.hgetall(keys.node(node_id))
                pipe.scard(keys.node_lessons(node_id))
            replies = await pipe.execute()
        live: list[NodeLoad] = []
        gone: list[str] = []
        for index, node_id in enumerate(ids):
            load, lessons = replies[2 * index], replies[2 * index + 1]
            if not load:
                gone.append(node_id)
                continue
            live.append(
                NodeLoad(
                    node_id,
                    participants=int(load.get("participants", 0)),
                    cpu=float(load.get("cpu", 0.0)),
                    lessons=int(lessons),
                    draining=load.get("draining") == "1",
                )
            )
        if gone:
            await self._redis.srem(keys.NODES, *gone)
        return live

    async def least_loaded(self) -> str:
        """The node a new lesson should go to (this node if no other is known): never
        one that is shutting down while another is not."""
        nodes = await self.live_nodes()
        taking = [node for node in nodes if not node.draining] or nodes
        if not taking:
            return self.node_id
        return min(taking, key=lambda n: n.score).node_id

    async def drain(self) -> None:
        """This node is shutting down: from now on no new lesson is placed on it
        (its lessons stay its own until it leaves)."""
        self.draining = True
        await self._redis.hset(keys.node(self.node_id), "draining", 1)

    async def leave(self) -> None:
        """This node stops: forget it at once rather than when its heartbeat expires."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.node(self.node_id), keys.node_lessons(self.node_id))
            pipe.srem(keys.NODES, self.node_id)
            await pipe.execute()
