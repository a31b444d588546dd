"""What owns a participant, and what it needs of the server, as narrow interfaces.

A participant is owned by a :class:`Connection`: a signalling socket
(``server/connection.py``) or a WHIP session (``server/whip.py``). What they need of
the server is :class:`ConnectionHost`, which ``ServerState`` (``server/state.py``)
fulfils: the state keeps connections and the connections use the state, yet neither
module imports the other.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import Histogram

from signaling import protocol as p
from signaling.registry import LessonRegistry
from signaling.turn import TurnRest

from .config import Settings
from .lesson_effects import EffectTargets


class Connection(Protocol):
    """What owns a participant: a signalling socket, or a WHIP session."""

    def post_track_ended(self, track_id: str) -> None: ...

    def post_negotiation_failed(self) -> None: ...

    def post_replaced(self) -> None: ...

    def post_moved(self) -> None: ...


class JoinMetrics(Protocol):
    """Where a socket notes how long its join took (``server/metrics.py``)."""

    @property
    def join_latency(self) -> Histogram: ...


class ConnectionHost(EffectTargets, Protocol):
    """The server as a participant's connection sees it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def registry(self) -> LessonRegistry: ...

    @property
    def turn(self) -> TurnRest | None: ...

    @property
    def prometheus(self) -> JoinMetrics: ...

    def ice_servers_for(self, participant_id: str) -> list[p.IceServer]:
        """The STUN/TURN servers for one participant, credentials issued now."""
        ...

    def add_connection(self, participant_id: str, connection: Connection) -> None:
        """Register the connection that owns ``participant_id`` now."""
        ...

    def remove_connection(self, participant_id: str, connection: Connection) -> None:
        """Forget a closed connection (unless another owns the participant by now)."""
        ...
