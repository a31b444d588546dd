"""Lesson placement and ownership (server/redis_placement.py) on a real redis-server."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from server.redis_nodes import NodeLoad, NodeRegistry
from server.redis_placement import RedisPlacement

from .redis_server import RedisServer


async def node(store: aioredis.Redis, name: str, local: set[str] | None = None) -> RedisPlacement:
    """A node that has beaten once; ``local``: the lessons that live on it."""
    registry = NodeRegistry(store, name)
    await registry.beat(participants=0, cpu=0.0)
    lessons = local if local is not None else set()
    return RedisPlacement(store, registry, lambda lesson: lesson in lessons)


async def test_two_placements_racing_for_each_lesson_agree_on_one_owner(
    redis_server: RedisServer,
) -> None:
    # Two connections, as two nodes have.
    clients = [aioredis.Redis.from_url(redis_server.url, decode_responses=True) for _ in "ab"]
    try:
        placements = [await node(client, name) for client, name in zip(clients, "ab", strict=True)]
        lessons = [f"l{i}" for i in range(50)]
        for lesson in lessons:
            results = await asyncio.gather(*(placement.owner(lesson) for placement in placements))
            assert results[0] == results[1]
        # Load-aware: the lessons were spread over both nodes.
        counts = [len(await clients[0].smembers(f"lco:node:{n}:lessons")) for n in "ab"]
        assert sorted(counts) == [25, 25]
    finally:
        for client in clients:
            await client.aclose()


async def test_only_the_owner_renews_or_releases_a_lesson(store: aioredis.Redis) -> None:
    a = await node(store, "a", local={"maths"})
    b = await node(store, "b", local={"maths"})
    assert await a.claim("maths") == "a"
    # Another node can neither take it nor delete it.
    assert await b.claim("maths") == "a"
    assert await b.renew(["maths"]) == ["maths"] and b.conflicts == 1
    b.forget("maths")  # b thinks its lesson emptied, but it never owned it
    await asyncio.gather(*b._releases)
    assert await store.get("lco:lesson:maths:owner") == "a"
    # The owner's renewal extends the key; its release deletes it once the lesson is
    # no longer local.
    await store.pexpire("lco:lesson:maths:owner", 100)
    assert await a.renew(["maths"]) == []
    assert await store.pttl("lco:lesson:maths:owner") > 1000
    a._is_local = lambda lesson: False
    a.forget("maths")
    await asyncio.gather(*a._releases)
    assert await store.keys("lco:lesson:*") == []
    assert await store.smembers("lco:node:a:lessons") == set()


async def test_a_lesson_placed_on_a_node_is_the_first_load_the_next_placement_sees(
    store: aioredis.Redis,
) -> None:
    a = await node(store, "a")
    await node(store, "b")
    first = await a.owner("one")
    second = await a.owner("two")
    assert {first, second} == {"a", "b"}
    # The node whose placed lesson never started forgets it once the key expires.
    await store.delete("lco:lesson:one:owner")
    placements = {"a": a, "b": await node(store, "b")}
    await placements[first].renew([])
    assert await store.smembers(f"lco:node:{first}:lessons") == set()


async def test_a_dead_nodes_lesson_is_freed_and_a_live_nodes_is_not(store: aioredis.Redis) -> None:
    a = await node(store, "a")
    b = await node(store, "b")
    assert await store.set("lco:lesson:maths:owner", "b", nx=True)
    assert not await a.evict_dead("maths", "b")  # b's heartbeat lives
    await store.delete("lco:node:b")  # its heartbeat expired
    assert await a.evict_dead("maths", "b")
    assert await a.owner("maths") == "a"
    assert not await b.evict_dead("maths", "b")  # the key names a now: left alone


def test_load_orders_by_people_and_lessons_then_cpu_then_name() -> None:
    loads = [
        NodeLoad("c", participants=3, cpu=0.1, lessons=1),
        NodeLoad("b", participants=2, cpu=0.9, lessons=2),
        NodeLoad("a", participants=2, cpu=0.9, lessons=2),
        NodeLoad("d", participants=4, cpu=0.0, lessons=0),
        NodeLoad("e", participants=1, cpu=1.0, lessons=1),
    ]
    # e carries 2, the others 4 each: then the least CPU, then the name.
    assert [n.node_id for n in sorted(loads, key=lambda n: n.score)] == ["e", "d", "c", "a", "b"]


async def test_a_draining_node_keeps_its_lessons_and_takes_no_new_one(
    store: aioredis.Redis,
) -> None:
    a_nodes, b_nodes = NodeRegistry(store, "a"), NodeRegistry(store, "b")
    await a_nodes.beat(participants=0, cpu=0.0)
    await b_nodes.beat(participants=40, cpu=0.9)  # b is far busier than a
    a = RedisPlacement(store, a_nodes, lambda lesson: lesson == "maths")
    b = RedisPlacement(store, b_nodes, lambda lesson: False)
    assert await b.owner("maths") == "a"
    await a_nodes.drain()
    await a_nodes.beat(participants=0, cpu=0.0)  # its heartbeat goes on saying so
    assert await b.owner("art") == "b"
    assert await a.owner("music") == "b"
    assert await store.get("lco:lesson:maths:owner") == "a"  # its own lesson stays
    assert await a.renew(["maths"]) == []
    # Every node draining (the whole service stops): lessons still go somewhere.
    await b_nodes.drain()
    assert await b.owner("drama") == "a"
