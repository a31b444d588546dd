"""Running the app under uvicorn with a shutdown that tells every participant."""

from __future__ import annotations

import logging
import resource
import socket

import uvicorn

from media import hooks
from signaling.protocol import MAX_MESSAGE_BYTES

from .app import create_app
from .config import Settings
from .http_limits import guarded_http_protocol, open_file_limit_warning
from .state import ServerState

logger = logging.getLogger(__name__)


class _LessonServer(uvicorn.Server):
    """Uvicorn, but on SIGINT/SIGTERM participants get ``bye`` before sockets close."""

    def __init__(
        self, config: uvicorn.Config, state: ServerState, banner: str | None = None
    ) -> None:
        super().__init__(config)
        self._state = state
        self._banner = banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._banner and not self.should_exit:
            # Listening now: the links work. Standard output, for the person who started
            # the server; the logs (standard error) never see them.
            print(self._banner, flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._state.shutdown()
        await super().shutdown(sockets)


def raise_open_file_limit(wanted: int = 65536) -> int:
    """Raise the soft limit on open files towards ``wanted`` (within the hard limit).

    Every peer connection holds sockets, and the RTP fast path one more descriptor per
    forwarded track and subscriber: a large lesson needs more than the usual 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other processes may bind too (the kernel spreads new
    connections over them): how ``--workers`` share one port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def run_server(
    settings: Settings,
    log_level: str = "info",
    banner: str | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGINT or SIGTERM; print ``banner`` once listening. ``reuse_port``:
    share the port with other processes (``--workers``)."""
    limits = settings.connection_limits
    open_files = raise_open_file_limit()
    logger.info("open file limit: %d", open_files)
    warning = open_file_limit_warning(open_files, limits.max_connections)
    if warning:
        logger.warning(warning)
    # Process-wide: every aiortc receiver in this process yields encoded frames.
    hooks.install_forwarding_hooks()
    hooks.set_host_addresses(settings.ice_host_addresses)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        # Logging is configured by server/logs.py: uvicorn's lines go through the same
        # handler (text or JSON, request ids, secrets hidden).
        log_config=None,
        # Frames up to 1 MiB reach our parser, which answers oversized messages
        # with an error naming the limit; larger frames close the socket (1009).
        ws_max_size=16 * MAX_MESSAGE_BYTES,
        # No permessage-deflate: a compressed frame inflates about 1000 times before
        # any size check, so a student's 1 KiB frames cost the server 1 MiB each and
        # stalled every lesson. Bounding inflation at 64 KiB was measured too: an
        # attacker then sends 100-byte frames of 64 KiB with the same effect
        # (docs/security.md). Signalling messages are small; bandwidth is cheap.
        ws_per_message_deflate=False,
        # Our own keep-alive (ping messages) decides when a participant is gone.
        ws_ping_interval=20,
        ws_ping_timeout=20,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # uvicorn's h11 protocol with a request-head deadline and connection limits.
        http=guarded_http_protocol(limits),
        timeout_keep_alive=limits.keep_alive_timeout,
    )
    logger.info("LCO Classroom listening on http://%s:%d", settings.host, settings.port)
    sockets = [reuse_port_socket(settings.host, settings.port)] if reuse_port else None
    _LessonServer(config, app.state.lco, banner).run(sockets=sockets)
