"""``/metrics`` in the Prometheus text format, and the measurements behind it.

Gauges and counters are read from the server's state when Prometheus scrapes (a
collector, so nothing is counted twice); two histograms are observed as things happen:
how long a join takes (socket open to welcome) and how late the event loop runs.
Every series has a ``node`` label (``--node-name``), so that several servers behind
one Prometheus can be told apart and summed.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sized
from importlib.metadata import version
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from media.loop_watch import TICK
from media.sfu import Sfu
from signaling.permissions import Role
from signaling.registry import LessonRegistry

from .cluster import Cluster
from .config import Settings
from .seats import SeatKeeper
from .webhooks import Webhooks

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# How often the event loop's lateness is measured.
JOIN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ROLES = tuple(role.value for role in Role)  # every role has its series, at 0 when absent
KINDS = ("audio", "video")


class Observed(Protocol):
    """What a scrape reads of the server (``ServerState`` fulfils it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def accepting(self) -> bool: ...

    @property
    def registry(self) -> LessonRegistry: ...

    @property
    def connections(self) -> Sized: ...

    @property
    def sfu(self) -> Sfu: ...

    @property
    def seats(self) -> SeatKeeper: ...

    @property
    def webhooks(self) -> Webhooks: ...

    @property
    def cluster(self) -> Cluster | None: ...


class ServerMetrics:
    """The Prometheus registry of one server: its collector and histograms."""

    def __init__(self, state: Observed, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self.join_latency = Histogram(
            "lco_join_latency_seconds",
            "From a signalling socket's opening to its join being accepted",
            ["node"],
            buckets=JOIN_BUCKETS,
            registry=self.registry,
        ).labels(node=node)
        self.loop_lag = Histogram(
            "lco_event_loop_lag_seconds",
            f"How late a timer due every {TICK} s fires on the server's event loop",
            ["node"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        ).labels(node=node)
        # The newest lag measured, for /readyz.
        self.last_lag = 0.0
        self.registry.register(_StateCollector(state, node))

    def exposition(self) -> bytes:
        """Every metric, in the text format Prometheus scrapes."""
        return generate_latest(self.registry)

    def observe_lag(self, lag: float) -> None:
        """One lateness of the event loop's watch (``media.loop_watch``)."""
        self.last_lag = lag
        self.loop_lag.observe(lag)


class _StateCollector(Collector):
    """Reads lessons, connections and the SFU's counters at each scrape."""

    def __init__(self, state: Observed, node: str) -> None:
        self._state = state
        self._node = node

    def describe(self) -> list[Metric]:
        # Collected on demand: nothing to describe ahead (the registry then calls collect).
        return []

    def collect(self) -> Iterator[Metric]:
        state = self._state
        node = self._node

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=["node"])
            family.add_metric([node], value)
            return family

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=["node"])
            family.add_metric([node], value)
            return family

        info = GaugeMetricFamily(
            "lco_info",
            "This server: version and forwarding path",
            labels=["node", "version", "forwarding"],
        )
        info.add_metric([node, version("lco-classroom"), state.settings.forwarding], 1)
        yield info
        yield gauge(
            "lco_accepting",
            "1 while the server takes joins, 0 while it shuts down",
            int(state.accepting),
        )
        lessons = state.registry.lessons()
        yield gauge("lco_lessons", "Live lessons (someone is in them or waiting)", len(lessons))
        roles: Counter[str] = Counter()
        waiting = 0
        for lesson in lessons:
            roles.update(p.role.value for p in lesson.participants.values())
            waiting += len(lesson.waiting)
        participants = GaugeMetricFamily(
            "lco_participants",
            "Participants in live lessons, by role (not counting the lobby)",
            labels=["node", "role"],
        )
        for role in ROLES:
            participants.add_metric([node, role], roles.get(role, 0))
        yield participants
        yield gauge("lco_participants_waiting", "Participants waiting in a lobby", waiting)
        yield gauge(
            "lco_connections", "Open signalling sockets that joined", len(state.connections)
        )

        sfu = state.sfu.stats()
        yield gauge(
            "lco_seats_held",
            "Seats held for a reconnect (their socket went, the grace period runs)",
            state.seats.held(),
        )
        yield gauge("lco_peer_connections", "WebRTC peer connections", sfu["peer_connections"])
        yield gauge(
            "lco_relayed_peer_connections",
            "Peer connections whose client comes through a TURN relay",
            sfu["relayed_peer_connections"],
        )
        yield gauge(
            "lco_transport_feedback_connections",
            "Subscribe connections whose viewer reports when each packet arrived",
            sfu["transport_feedback_connections"],
        )
        yield gauge(
            "lco_forwarded_tracks", "Published tracks being forwarded", sfu["forwarded_tracks"]
        )
        yield gauge(
            "lco_subscriptions",
            "Track subscriptions (a track to one subscriber)",
            sfu["subscriptions"],
        )
        yield counter(
            "lco_ice_candidates_refused_total",
            "Remote ICE candidates never checked (the candidate policy)",
            sfu["ice_candidates_refused"],
        )
        yield counter(
            "lco_frames_decoded_total",
            "Video frames the server decoded (always 0)",
            sfu["frames_decoded"],
        )
        yield counter(
            "lco_frames_encoded_total",
            "Video frames the server encoded (always 0)",
            sfu["frames_encoded"],
        )

        by_kind = state.sfu.counters_by_kind()
        packets = "frames" if state.settings.forwarding == "frames" else "packets"

        def per_kind(name: str, text: str, key: str) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=["node", "kind"])
            for kind in KINDS:
                family.add_metric([node, kind], by_kind.get(kind, {}).get(key, 0))
            return family

        yield per_kind(
            "lco_received_packets_total",
            f"RTP {packets} received from publishers",
            f"{packets}_received",
        )
        yield per_kind(
            "lco_forwarded_packets_total",
            f"RTP {packets} forwarded to subscribers (one per subscriber)",
            f"{packets}_forwarded",
        )
        yield per_kind(
            "lco_forwarded_bytes_total", "Payload bytes forwarded to subscribers", "bytes_forwarded"
        )
        yield per_kind(
            "lco_dropped_packets_total",
            f"RTP {packets} not forwarded (late, duplicate, waiting for a keyframe, unsent)",
            f"{packets}_dropped",
        )
        yield per_kind(
            "lco_muted_packets_total",
            f"RTP {packets} held back by a moderator's mute",
            f"{packets}_muted",
        )
        keyframes = CounterMetricFamily(
            "lco_keyframe_requests_total",
            "Keyframe requests: relayed to a publisher, or suppressed (coalesced)",
            labels=["node", "outcome"],
        )
        for outcome in ("relayed", "suppressed"):
            keyframes.add_metric(
                [node, outcome],
                sum(c.get(f"keyframe_requests_{outcome}", 0) for c in by_kind.values()),
            )
        yield keyframes
        yield counter(
            "lco_retransmissions_total",
            "Packets resent to subscribers that asked (NACK)",
            sum(c.get("retransmissions", 0) for c in by_kind.values()),
        )
        lost = GaugeMetricFamily(
            "lco_publisher_packets_lost",
            "Packets lost between publishers and the server, over the tracks published now "
            "(RFC 3550 cumulative loss, before retransmission)",
            labels=["node", "kind"],
        )
        received = GaugeMetricFamily(
            "lco_publisher_packets_received",
            "Packets received from publishers, over the tracks published now",
            labels=["node", "kind"],
        )
        loss = state.sfu.publisher_loss()
        for kind in KINDS:
            lost.add_metric([node, kind], loss.get(kind, (0, 0))[1])
            received.add_metric([node, kind], loss.get(kind, (0, 0))[0])
        yield lost
        yield received

        if state.cluster is not None:
            yield from self._cluster(state.cluster, gauge, counter)

        webhooks = CounterMetricFamily(
            "lco_webhook_events_total", "Webhook events by outcome", labels=["node", "outcome"]
        )
        for outcome in ("delivered", "failed", "dropped"):
            webhooks.add_metric([node, outcome], getattr(state.webhooks, outcome))
        yield webhooks
        yield gauge("lco_open_fds", "Open file descriptors of the server process", open_fds())
        yield gauge(
            "lco_resident_memory_bytes", "Resident memory of the server process", resident_bytes()
        )
        yield gauge("lco_asyncio_tasks", "asyncio tasks of the server process", _task_count())

    def _cluster(
        self,
        cluster: Cluster,
        gauge: Callable[[str, str, float], GaugeMetricFamily],
        counter: Callable[[str, str, float], CounterMetricFamily],
    ) -> Iterator[Metric]:
        """With ``--redis``: Redis reachability, relayed sockets and frames, conflicts."""
        node = self._node
        yield gauge(
            "lco_redis_up",
            "1 while Redis answers this node's heartbeat and relay channel",
            int(cluster.redis_up),
        )
        counts = cluster.relay.counts
        sockets = GaugeMetricFamily(
            "lco_relayed_sockets",
            "Sockets relayed between nodes: entry (the client is here, its lesson elsewhere) "
            "or owner (the lesson is here, the client elsewhere)",
            labels=["node", "side"],
        )
        sockets.add_metric([node, "entry"], counts["entry_sockets"])
        sockets.add_metric([node, "owner"], counts["owner_sockets"])
        yield sockets
        frames = CounterMetricFamily(
            "lco_relayed_frames_total",
            "Client frames relayed to lessons' nodes (in) and their frames written back (out)",
            labels=["node", "direction"],
        )
        frames.add_metric([node, "in"], counts["frames_in"])
        frames.add_metric([node, "out"], counts["frames_out"])
        yield frames
        yield counter(
            "lco_placement_conflicts_total",
            "Renewals that found another node owning one of this node's lessons",
            cluster.placement.conflicts,
        )


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # scraped outside the loop (tests)
        return 0


def open_fds() -> int:
    """Open file descriptors of this process, or -1 where /proc does not tell."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def resident_bytes() -> int:
    """This process's resident memory (VmRSS), or -1 where /proc does not tell."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1
