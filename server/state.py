"""The server's live state: settings, lessons, the event bus, the SFU, the sockets."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCIceServer

from media import hooks
from media.candidate_policy import CandidatePolicy
from media.peers import IceSettings
from media.sfu import Sfu
from signaling import protocol as p
from signaling.adapters.memory_bus import InMemoryEventBus
from signaling.adapters.sqlite_catalogue import Catalogue
from signaling.adapters.sqlite_records import SqliteRecordStore
from signaling.bus import participant_topic
from signaling.effects import Effect
from signaling.records import Record
from signaling.registry import InMemoryLessonRegistry

from .cascade_host import CascadeHost
from .cluster import Cluster
from .config import Settings
from .host import Connection
from .lesson_effects import execute_lesson_effect
from .live import LiveView
from .media_messages import PUBLISH_LIMITS
from .media_router import MediaRouter
from .metrics import ServerMetrics, open_fds, resident_bytes
from .recordings import RecordingService
from .seats import SeatKeeper
from .sessions import ConsoleSessions
from .webhooks import Webhooks, WebhookSettings

logger = logging.getLogger(__name__)

# An event loop this late cannot keep media negotiation and signalling timely.
READY_MAX_LAG = 1.0


class ServerState:
    """Everything one server process shares between connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Clients get every configured server; the SFU only STUN ones (see media/peers.py).
        self._client_ice_servers = [
            p.IceServer(urls=[s.url], username=s.username, credential=s.credential)
            for s in settings.ice_servers
        ]
        for server in settings.ice_servers:
            if server.is_turn:
                logger.info(
                    "%s is for clients only: the SFU answers from its own addresses", server.url
                )
        self.turn = settings.turn
        self.records = SqliteRecordStore(settings.data_dir / "lco.sqlite3")
        if settings.redis_url is None:
            closed = self.records.close_open_sessions()
            if closed:
                logger.warning("closed %d attendance sessions left open by a previous run", closed)
        # With Redis, the nodes of one machine share the record store: sessions open
        # at start may be another node's, live.
        self.catalogue = Catalogue(settings.data_dir / "catalogue.sqlite3")
        # With Redis: this node among others (server/cluster.py); started by the app.
        self.cluster: Cluster | None = None
        self.registry = InMemoryLessonRegistry(
            self.ice_servers_for,
            self.records,
            settings_for=self.catalogue.settings_for,
            seat_grace=settings.seat_grace,
            keepalive=p.Keepalive(interval=settings.ping_interval, timeout=settings.idle_timeout),
            on_discard=self._lesson_discarded,
        )
        if settings.redis_url is not None:
            self.cluster = Cluster(settings.redis_url, self, settings.node_name)
        self.bus = InMemoryEventBus()
        ice = IceSettings(
            ice_servers=tuple(
                RTCIceServer(urls=s.url, username=s.username, credential=s.credential)
                for s in settings.ice_servers
                if not s.is_turn
            ),
            public_ip=settings.public_ip,
        )
        self.sfu = Sfu(
            ice,
            on_track_ended=self._track_ended,
            forwarding=settings.forwarding,
            on_negotiation_timeout=self._negotiation_timed_out,
            negotiation_timeout=settings.negotiation_timeout,
            candidate_policy=CandidatePolicy(
                own_addresses=[
                    *hooks.host_addresses(),
                    *([settings.public_ip] if settings.public_ip else []),
                ],
                allowed_networks=settings.ice_allowed_networks,
            ),
            limits=PUBLISH_LIMITS,
        )
        # Where each participant's media is served: here, or with --cascade its
        # subscriptions on the node its socket came through (server/cascade.py).
        self.media = MediaRouter(self.sfu)
        self.cascade: CascadeHost | None = None
        if self.cluster is not None and settings.cascade:
            ask = self.cluster.relay.ask
            self.media = MediaRouter(
                self.sfu,
                settings.node_name,
                ask,
                self._negotiation_timed_out,
                by_school=settings.cascade_by_school,
            )
            self.cascade = CascadeHost(self.sfu, ice, settings.node_name, ask)
        self.webhooks = Webhooks(
            WebhookSettings(urls=settings.webhook_urls, secret=settings.webhook_secret)
        )
        self.recordings = RecordingService(
            settings.data_dir,
            self.registry,
            self.sfu.forwarder,
            self._execute,
            retention=settings.recording_retention,
        )
        self.connections: dict[str, Connection] = {}
        # The web console's signed-in browsers (server/sessions.py).
        self.console_sessions = ConsoleSessions(settings.admin_key)
        self.live = LiveView(self.registry, self.catalogue, self.sfu)
        self.prometheus = ServerMetrics(self, settings.node_name)
        self.seats = SeatKeeper(self.registry, self.execute)
        # With --redis: what this node answers when another node asks about a lesson it
        # serves, by question (server/cluster.py); routes add theirs.
        self.answers: dict[str, Callable[[str, Any], Awaitable[Any]]] = {}
        if self.cascade is not None:
            self._answer_cascade(self.cascade)
        self.accepting = True
        self._no_connections = asyncio.Event()
        self._no_connections.set()

    def _answer_cascade(self, host: CascadeHost) -> None:
        """Take the calls other nodes make about the media they cascade here."""
        media = self.media

        async def call(lesson_id: str, details: Any) -> Any:
            return await host.call(lesson_id, details)

        async def upstream_offer(lesson_id: str, details: Any) -> Any:
            return await host.upstream_offer(details)

        async def notice(lesson_id: str, details: Any) -> Any:
            return await media.notice(details)

        self.answers.update(media=call, upstream_offer=upstream_offer, media_notice=notice)

    async def forget_stopped_nodes(self, live: set[str]) -> None:
        """With --cascade: let go of what crossed to or from nodes that stopped."""
        await self.media.sweep(live)
        if self.cascade is not None:
            await self.cascade.sweep(live)

    def ice_servers_for(self, participant_id: str) -> list[p.IceServer]:
        """The STUN/TURN servers for one participant: the configured ones and, with
        ``--turn-secret``, the TURN URLs with a credential issued now for it."""
        servers = list(self._client_ice_servers)
        if self.turn is not None:
            servers.append(self.turn.ice_server(participant_id, time.time()))
        return servers

    def add_connection(self, participant_id: str, connection: Connection) -> None:
        """Register the socket that owns ``participant_id`` now; a socket that held the
        participant's seat before is told it was replaced."""
        previous = self.connections.get(participant_id)
        self.connections[participant_id] = connection
        self._no_connections.clear()
        if previous is not None and previous is not connection:
            previous.post_replaced()

    def remove_connection(self, participant_id: str, connection: Connection) -> None:
        """Forget a closed socket (unless another one owns the participant by now)."""
        if self.connections.get(participant_id) is connection:
            del self.connections[participant_id]
        if not self.connections:
            self._no_connections.set()

    async def execute(self, effects: list[Effect]) -> None:
        """Carry out lesson effects in order (for changes made outside any socket)."""
        for effect in effects:
            await execute_lesson_effect(self, effect)

    def record(self, record: Record) -> None:
        """Write a lesson record durably (attendance, chat, removals, lesson end)."""
        self.records.append(record)

    async def keep_heartbeat(self, interval: float = 5.0) -> None:
        """Note every few seconds that the server lives, to bound what a crash loses."""
        while True:
            self.records.beat()
            await asyncio.sleep(interval)

    def _lesson_discarded(self, lesson_id: str) -> None:
        # Its last participant left: another node may serve it next time.
        if self.cluster is not None:
            self.cluster.placement.forget(lesson_id)

    async def _execute(self, effect: Effect) -> None:
        await self.execute([effect])

    def _track_ended(self, participant_id: str, track_id: str) -> None:
        connection = self.connections.get(participant_id)
        if connection is not None:
            connection.post_track_ended(track_id)
            return
        # A held seat (no socket owns it now): its lesson hears of it all the same.
        lesson_id = self.seats.lesson_of(participant_id)
        if lesson_id is not None:
            lesson = self.registry.find(lesson_id)
            if lesson is not None:
                live = lesson
                self.seats.apply(
                    lesson_id, lambda: live.remove_track(participant_id, track_id, "ended")
                )

    def _negotiation_timed_out(self, participant_id: str) -> None:
        connection = self.connections.get(participant_id)
        if connection is not None:
            connection.post_negotiation_failed()
        elif self.cascade is not None:
            self.cascade.negotiation_timed_out(participant_id)  # its socket is elsewhere

    async def shutdown(self) -> None:
        """Tell every participant, close every peer connection; refuse new joins."""
        if not self.accepting:
            return
        self.accepting = False
        if self.cluster is not None:
            # A lesson that starts while this node drains goes to another node.
            await self.cluster.drain()
        bye = p.encode_server_message(
            p.Bye(reason="server_shutdown", message="the server is shutting down; rejoin shortly")
        )
        for participant_id in list(self.connections):
            await self.bus.publish(participant_topic(participant_id), bye)
        await self.seats.close()
        await self.recordings.close()
        await self.media.close_all()
        if self.cascade is not None:
            await self.cascade.close_all()
        await self.sfu.close_all()
        # Each connection leaves once its writer has sent the bye; wait for that,
        # bounded, before uvicorn closes the sockets.
        try:
            await asyncio.wait_for(self._no_connections.wait(), 5.0)
        except TimeoutError:
            logger.warning("%d connections did not close in time", len(self.connections))
        logger.info("all participants told; peer connections closed")

    def readiness(self) -> dict[str, str]:
        """What stops this server from taking joins now, by check (empty: ready)."""
        problems: dict[str, str] = {}
        if not self.accepting:
            problems["accepting"] = "shutting down"
        for name, probe in (("records", self.records.ping), ("catalogue", self.catalogue.ping)):
            try:
                probe()
            except Exception as exc:  # any failure of the database means not ready
                problems[name] = f"{type(exc).__name__}: {exc}"
        if self.cluster is not None:
            problems.update(self.cluster.problems())
        lag = self.prometheus.last_lag
        if lag > READY_MAX_LAG:
            problems["event_loop"] = f"{lag:.2f} s late (limit {READY_MAX_LAG} s)"
        return problems

    def close(self) -> None:
        """Release the record store (after :meth:`shutdown`)."""
        self.records.close()
        self.catalogue.close()

    def metrics(self) -> dict[str, Any]:
        """Operator counters (no secrets, no names)."""
        return {
            "accepting": self.accepting,
            "lessons": len(self.registry.lessons()),
            "connections": len(self.connections),
            "held_seats": self.seats.held(),
            "bus_topics": self.bus.topic_count(),
            "webhooks": {
                "delivered": self.webhooks.delivered,
                "failed": self.webhooks.failed,
                "dropped": self.webhooks.dropped,
            },
            "asyncio_tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "open_fds": open_fds(),
            "rss_bytes": resident_bytes(),
            "sfu": self.sfu.stats(),
            "cascade": None
            if self.cascade is None
            else {**self.media.counts(), **self.cascade.counts()},
            "recordings": self.recordings.metrics(),
            "cluster": None
            if self.cluster is None
            else {
                "node": self.cluster.node_id,
                "redis_up": self.cluster.redis_up,
                "relay": self.cluster.relay.counts,
                "lessons": sorted(lesson.id for lesson in self.registry.lessons()),
                "placement_conflicts": self.cluster.placement.conflicts,
            },
        }
