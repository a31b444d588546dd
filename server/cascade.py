"""Cascading (``--cascade``): one lesson over several nodes, each track crossing once
per node. What both sides share: the names of pseudo-participants, how a node asks
another, and media notices as JSON.

With ``--cascade`` (and ``--redis``) a lesson spreads over the nodes its sockets
land on:

- a participant's **publish** side is always on the lesson's node (its SFU receives
  every published track once);
- its **subscribe** side is on its *home*: the node its socket came through when it
  joined, until that node stops (``server/media_router.py`` routes each media call
  there);
- a track **crosses once** to each home node that has subscribers for it: to the
  lesson's SFU a home node is one more subscriber, the pseudo-participant
  :func:`to_node`, whose offers go over Redis to :class:`media.upstream.UpstreamLink`
  there, which feeds the track to that node's SFU as a published track of
  :func:`from_node` (``server/cascade_host.py``). Keyframe requests of its
  subscribers go back up the same way; retransmissions are served hop by hop.

The nodes talk through the relay's questions: ``media`` (one media call for a homed
participant), ``upstream_offer`` (an offer of the tracks that cross; the answer is
the SDP) and ``media_notice`` (what the home's SFU tells a participant, back to the
lesson's node, which holds its socket).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from media.sfu import MediaNotice, OfferedTrack, SubscribeOffer
from media.viewer import QualityNotice, ReceivedVideo

# ask(node, question, lesson id, details, timeout): another node's answer. Raises
# server.redis_relay.OwnerUnreachable when the node does not listen or answer.
Ask = Callable[[str, str, str, Any, float], Awaitable[Any]]
ASK_TIMEOUT = 5.0  # a media call
OFFER_TIMEOUT = 20.0  # an offer of crossing tracks: the answer gathers ICE first
SWEEP_INTERVAL = 2.0  # seconds between two looks for nodes that stopped
# Sweeps in a row that must miss a node before it counts as stopped: one late
# heartbeat is not a death.
MISSED_SWEEPS = 2


class MissedNodes:
    """Which of the nodes a sweep cares about have stopped: those missing from
    :data:`MISSED_SWEEPS` sweeps in a row."""

    def __init__(self) -> None:
        self._missed: dict[str, int] = {}  # node -> sweeps in a row it was not live

    def gone(self, known: set[str], live: set[str]) -> set[str]:
        """One sweep: ``known`` the nodes that matter now, ``live`` those that beat."""
        for node_id in known:
            self._missed[node_id] = 0 if node_id in live else self._missed.get(node_id, 0) + 1
        gone = {node for node, missed in self._missed.items() if missed >= MISSED_SWEEPS}
        for node_id in list(self._missed):
            if node_id in gone or node_id not in known:
                del self._missed[node_id]
        return gone


def to_node(node_id: str) -> str:
    """The pseudo-participant under which tracks cross to ``node_id``."""
    return f"~to:{node_id}"


def from_node(node_id: str) -> str:
    """The pseudo-participant that publishes here the tracks crossing from ``node_id``."""
    return f"~from:{node_id}"


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
