"""The names of everything LCO Classroom keeps in Redis, in one place.

Every key starts with ``lco:``. While nodes run: ``lco:nodes`` (the set of node ids),
``lco:node:{id}`` (a node's load, expiring unless its heartbeat renews it) and
``lco:node:{id}:lessons`` (the lessons placed on it). While a lesson runs:
``lco:lesson:{id}:owner`` (the node serving it, expiring unless that node renews
it). Channels: ``lco:relay:{node}`` (signalling relayed to a node).
"""

from __future__ import annotations

NODES = "lco:nodes"


def node(node_id: str) -> str:
    """A node's load (hash), expiring with its heartbeat."""
    return f"lco:node:{node_id}"


def node_lessons(node_id: str) -> str:
    """The lessons placed on a node (set)."""
    return f"lco:node:{node_id}:lessons"


def lesson_owner(lesson_id: str) -> str:
    """The node that serves a lesson (string), expiring unless renewed."""
    return f"lco:lesson:{lesson_id}:owner"


def relay_channel(node_id: str) -> str:
    """The pub/sub channel on which a node receives relayed signalling."""
    return f"lco:relay:{node_id}"
