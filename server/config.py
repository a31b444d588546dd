"""Server settings: command-line flags over environment variables over defaults."""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from signaling.adapters.private_files import create_private_file, tighten
from signaling.turn import TurnRest

from .http_limits import ConnectionLimits
from .links import DEFAULT_MAX_LINK_LIFETIME

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(os.environ.get("LCO_DATA_DIR", "./lco-data"))
SECRET_FILE_NAME = "secret.key"


@dataclass(frozen=True, slots=True)
class IceServerConfig:
    """One STUN server (for clients and the SFU) or TURN server (for clients only)."""

    url: str
    username: str | None = None
    credential: str | None = field(default=None, repr=False)

    @property
    def is_turn(self) -> bool:
        """A relay: handed to clients only, since the SFU never relays its own media."""
        return self.url.startswith(("turn:", "turns:"))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``lco serve`` can be told."""

    host: str = "127.0.0.1"
    port: int = 8080
    secret: bytes = b""
    data_dir: Path = DEFAULT_DATA_DIR
    # Host addresses announced in ICE candidates (None: every non-loopback address).
    ice_host_addresses: tuple[str, ...] | None = None
    # Private networks whose ICE candidates are checked besides the client's own and
    # the server's own (media/candidate_policy.py).
    ice_allowed_networks: tuple[str, ...] = ()
    public_ip: str | None = None
    ice_servers: tuple[IceServerConfig, ...] = ()
    # TURN servers sharing a secret with us: clients get short-lived credentials.
    turn: TurnRest | None = None
    # Origins allowed to open the signalling socket; empty means same origin only.
    allowed_origins: tuple[str, ...] = ()
    public_url: str | None = None
    # The operator's key for the HTTP API (generated into the data directory if absent).
    admin_key: str = ""
    # "rtp" forwards RTP packets (default); "frames" is aiortc's stock packetiser path.
    forwarding: Literal["rtp", "frames"] = "rtp"
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: bytes = b""
    join_timeout: float = 10.0
    # The server pings every ``ping_interval`` seconds and closes a socket silent for
    # ``idle_timeout`` (the client does the same with the server's pings).
    ping_interval: float = 2.0
    idle_timeout: float = 4.0
    # Seconds a participant's seat (id, decisions about it, media) is held for its
    # link after its socket went.
    seat_grace: float = 60.0
    # Seconds a subscribe offer waits for the client's answer before the client's
    # connection is closed (it reconnects and starts its media again).
    negotiation_timeout: float = 15.0
    # Seconds: no join link the server mints lives longer, whatever the lesson says.
    max_link_lifetime: int = DEFAULT_MAX_LINK_LIFETIME
    # Request-head and keep-alive timeouts, connections in all and per address.
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    # The ``node`` label of every metric: tells servers apart behind one Prometheus.
    # With Redis it is also the node's id among the others: unique per process.
    node_name: str = field(default_factory=socket.gethostname)
    # Redis (``redis://host:port/db``): lessons are placed on, and sockets relayed to,
    # several nodes. None: every lesson lives in this process.
    redis_url: str | None = field(default=None, repr=False)
    # With Redis: a participant's subscriptions are served by the node its socket came
    # through, and each track crosses once to each such node (server/cascade.py).
    cascade: bool = False
    # With --cascade: the participants of one school in a lesson are all served on the
    # node the first of them came through.
    cascade_by_school: bool = False
    # Seconds after which a finished recording is deleted (None: kept until deleted).
    recording_retention: float | None = None


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``4h`` or ``2d`` as seconds; raises ``ValueError``."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match:
        raise ValueError(f"bad duration {text!r} (use 90, 30m, 4h or 2d)")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def secure_data_dir(data_dir: Path) -> None:
    """At start: make an existing data directory private (0700, files 0600), and say so."""
    changed = tighten(data_dir)
    if changed:
        logger.warning(
            "tightened permissions in the data directory %s (now 0700, files 0600): %s",
            data_dir,
            ", ".join(changed),
        )


def parse_ice_server(spec: str) -> IceServerConfig:
    """``turn:host:3478?transport=udp|user|pass`` or ``stun:host:3478``."""
    url, _, rest = spec.partition("|")
    if not url.startswith(("stun:", "turn:", "turns:")):
        raise ValueError(f"ICE server {url!r} must start with stun:, turn: or turns:")
    username, _, credential = rest.partition("|")
    return IceServerConfig(url=url, username=username or None, credential=credential or None)


def load_or_create_secret(data_dir: Path) -> bytes:
    """The token signing secret from ``data_dir``, created (mode 0600) if absent."""
    return _load_or_create_key(data_dir / SECRET_FILE_NAME, "signing secret").encode()


def _load_or_create_key(path: Path, what: str) -> str:
    if path.exists():
        value = path.read_text().strip()
        if len(value) < 32:
            raise SystemExit(f"the {what} in {path} is too short (need 32+ characters)")
        return value
    value = secrets.token_urlsafe(48)
    with os.fdopen(create_private_file(path), "w") as handle:
        handle.write(value + "\n")
    # Say where it is, never what it is.
    logger.warning("no %s was configured; generated a new one in %s", what, path)
    return value


def resolve_admin_key(explicit: str | None, data_dir: Path) -> str:
    """Admin key from a flag, else ``LCO_ADMIN_KEY``, else ``DATA_DIR/admin.key``."""
    value = explicit or os.environ.get("LCO_ADMIN_KEY")
    if value:
        if len(value) < 32:
            raise SystemExit("the admin key must be at least 32 characters long")
        return value
    return _load_or_create_key(data_dir / "admin.key", "admin key")


def resolve_webhook_secret(explicit: str | None, data_dir: Path) -> bytes:
    """Webhook signing secret from a flag, else ``LCO_WEBHOOK_SECRET``, else a file."""
    value = explicit or os.environ.get("LCO_WEBHOOK_SECRET")
    if value:
        return value.encode()
    return _load_or_create_key(data_dir / "webhook.key", "webhook secret").encode()


def resolve_secret(explicit: str | None, data_dir: Path) -> bytes:
    """Secret from a flag, else ``LCO_SECRET``, else the data directory's file."""
    value = explicit or os.environ.get("LCO_SECRET")
    if value:
        if len(value) < 32:
            raise SystemExit("the signing secret must be at least 32 characters long")
        return value.encode()
    return load_or_create_secret(data_dir)
