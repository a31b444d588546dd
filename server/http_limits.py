"""Connection limits that uvicorn lacks: request-head deadline, total and per address.

uvicorn holds a connection that sends its request head slowly for ever (its
keep-alive timeout starts only after a response), and its ``limit_concurrency``
answers 503 only once a request head has arrived, never for WebSocket upgrades.
:func:`guarded_http_protocol` makes a subclass of uvicorn's h11 protocol that:

- closes a connection whose request head is not complete ``header_timeout``
  seconds after the connection opened or its next request started (408);
- refuses a connection at once (503, closed) when ``max_connections`` are open,
  HTTP and WebSocket together, or ``max_connections_per_address`` from its address.

The per-address count keeps transports, not protocols: a WebSocket upgrade hands
the transport to another protocol, whose end this one never sees, so transports
that are closing are dropped from the count when it is next consulted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

# Without a head or a body read, these answers need no HTTP parser state.
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 34\r\n"
    b"Connection: close\r\n\r\nthe request head came too slowly\r\n"
)
_FULL_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 35\r\n"
    b"Connection: close\r\n\r\ntoo many connections; try shortly\r\n"
)

# Sweep the per-address table of addresses with no open transport this often.
_SWEEP_EVERY = 1000


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The limits; ``max_connections_per_address`` 0 means no per-address limit."""

    header_timeout: float = 10.0
    keep_alive_timeout: int = 5
    max_connections: int = 1000
    max_connections_per_address: int = 200


class AddressTable:
    """Open transports per peer address."""

    def __init__(self) -> None:
        self._open: dict[str, list[asyncio.BaseTransport]] = {}
        self._admitted = 0

    def admit(self, address: str, transport: asyncio.BaseTransport, limit: int) -> bool:
        """Count ``transport`` for ``address`` unless ``limit`` are already open."""
        self._admitted += 1
        if self._admitted % _SWEEP_EVERY == 0:
            self._sweep()
        open_now = [t for t in self._open.get(address, ()) if not t.is_closing()]
        admitted = len(open_now) < limit
        if admitted:
            open_now.append(transport)
        if open_now:
            self._open[address] = open_now
        else:
            self._open.pop(address, None)
        return admitted

    def count(self, address: str) -> int:
        """Transports from ``address`` still open."""
        return sum(1 for t in self._open.get(address, ()) if not t.is_closing())

    def _sweep(self) -> None:
        for address in list(self._open):
            if not self.count(address):
                del self._open[address]


def guarded_http_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """An h11 protocol class for uvicorn (``Config(http=...)``) enforcing ``limits``."""
    addresses = AddressTable()

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol with a request-head deadline and connection limits."""

        _head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # uvicorn: asyncio.Transport
            super().connection_made(transport)
            address = self.client[0] if self.client else ""
            per_address = limits.max_connections_per_address
            if len(self.connections) > limits.max_connections:
                self._refuse("connection limit (%d) reached", limits.max_connections)
            elif per_address and not addresses.admit(address, transport, per_address):
                self._refuse("per-address connection limit (%d) reached", per_address)
            else:
                self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head_deadline is None and self._between_requests():
                self._arm()  # a new request starts on a kept-alive connection
            super().data_received(data)
            if self.transport.get_protocol() is not self or not self._between_requests():
                self._disarm()

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            self._disarm()
            super().handle_websocket_upgrade(event)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._head_deadline = self.loop.call_later(limits.header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _too_slow(self) -> None:
            self._head_deadline = None
            if not self.transport.is_closing() and self.transport.get_protocol() is self:
                self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()

        def _refuse(self, why: str, limit: int) -> None:
            # Debug only: a flood of refusals must not flood the log too.
            logger.debug("refused a connection from %s: " + why, self.client, limit)
            self.transport.write(_FULL_RESPONSE)
            self.transport.close()

    return GuardedH11Protocol


# Descriptors one connection may need: its socket, and for a participant two peer
# connections' UDP sockets plus one per track forwarded to it (the RTP fast path),
# and a few more; plus what the process holds besides (databases, listening socket).
FDS_PER_CONNECTION = 8
FDS_RESERVED = 100


def open_file_limit_warning(open_file_limit: int, max_connections: int) -> str | None:
    """A warning if ``open_file_limit`` is too low for ``max_connections``, else None."""
    needed = max_connections * FDS_PER_CONNECTION + FDS_RESERVED
    if open_file_limit >= needed:
        return None
    fits = max(1, (open_file_limit - FDS_RESERVED) // FDS_PER_CONNECTION)
    return (
        f"the open file limit ({open_file_limit}) is low for --max-connections "
        f"{max_connections} (about {needed} descriptors): raise it (ulimit -n, or "
        f"LimitNOFILE= for systemd) or lower --max-connections to {fits}; when descriptors "
        "run out, new connections fail and joined participants can lose their media"
    )
