"""The ``lco`` command line: serve, token, publish."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from urllib.parse import urlsplit

from signaling.permissions import Role
from signaling.tokens import mint_token
from signaling.turn import TurnRest

from . import manage, recording_cli
from .arguments import add_link_lifetime_arg, duration
from .config import (
    DEFAULT_DATA_DIR,
    Settings,
    parse_ice_server,
    resolve_admin_key,
    resolve_secret,
    resolve_webhook_secret,
    secure_data_dir,
)
from .http_limits import ConnectionLimits
from .logs import configure_logging

DEFAULT_URL = "http://127.0.0.1:8080"
PLUGIN_GROUP = "lco.commands"


def _env_list(name: str) -> list[str]:
    value = os.environ.get(name, "")
    return [item.strip() for item in value.split(",") if item.strip()]


def _add_secret_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secret", help="token signing secret (env LCO_SECRET; default: DATA_DIR/secret.key)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="where the server keeps its files (env LCO_DATA_DIR; default ./lco-data)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lco``."""
    parser = argparse.ArgumentParser(prog="lco", description="LCO Classroom server and tools")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the lesson server")
    serve.add_argument("--host", default=os.environ.get("LCO_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("LCO_PORT", "8080")))
    _add_secret_args(serve)
    serve.add_argument(
        "--ice-host",
        action="append",
        default=None,
        help="address to announce as an ICE host candidate; repeat for several "
        "(env LCO_ICE_HOSTS, comma separated; default: every non-loopback address)",
    )
    serve.add_argument(
        "--ice-allow-network",
        action="append",
        default=None,
        help="a private network (CIDR) whose ICE candidates are checked although it is "
        "neither the client's nor the server's own; repeat for several "
        "(env LCO_ICE_ALLOW_NETWORKS, comma separated)",
    )
    serve.add_argument(
        "--public-ip",
        default=os.environ.get("LCO_PUBLIC_IP"),
        help="public address of a 1:1 NAT in front of the server (env LCO_PUBLIC_IP)",
    )
    serve.add_argument(
        "--ice-server",
        action="append",
        default=None,
        help="'stun:host:port' (for clients and the SFU) or 'turn:host:port|user|password' "
        "(for clients only: the SFU never relays); repeat for several (env LCO_ICE_SERVERS)",
    )
    serve.add_argument(
        "--turn-secret",
        default=None,
        help="secret shared with coturn (its static-auth-secret): each client gets "
        "short-lived TURN credentials (env LCO_TURN_SECRET, which keeps it out of ps)",
    )
    serve.add_argument(
        "--turn-url",
        action="append",
        default=None,
        help="TURN server for clients, e.g. 'turns:turn.example.org:443?transport=tcp'; "
        "repeat for several (env LCO_TURN_URLS, comma separated)",
    )
    serve.add_argument(
        "--turn-ttl",
        type=duration,
        default=os.environ.get("LCO_TURN_TTL", "1h"),
        help="lifetime of TURN credentials, renewed at half of it (env LCO_TURN_TTL; default 1h)",
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=None,
        help="web origin allowed to open the signalling socket besides the server's own "
        "(env LCO_ALLOWED_ORIGINS, comma separated)",
    )
    serve.add_argument(
        "--admin-key",
        default=None,
        help="the operator's key for the HTTP API (env LCO_ADMIN_KEY; default: "
        "generated into DATA_DIR/admin.key)",
    )
    serve.add_argument(
        "--public-url",
        default=os.environ.get("LCO_PUBLIC_URL"),
        help="address people use to reach the server, for join links (env LCO_PUBLIC_URL)",
    )
    serve.add_argument(
        "--webhook-url",
        action="append",
        default=None,
        help="POST lesson events here, signed; repeat for several (env LCO_WEBHOOK_URLS)",
    )
    serve.add_argument(
        "--webhook-secret",
        default=None,
        help="HMAC key for webhook signatures (env LCO_WEBHOOK_SECRET; default: "
        "generated into DATA_DIR/webhook.key)",
    )
    serve.add_argument(
        "--join-timeout",
        type=float,
        default=float(os.environ.get("LCO_JOIN_TIMEOUT", "10")),
        help="seconds a new socket has to send its join (default 10)",
    )
    serve.add_argument(
        "--forwarding",
        choices=["rtp", "frames"],
        default=os.environ.get("LCO_FORWARDING", "rtp"),
        help="rtp: forward RTP packets (default, fastest); frames: re-packetise "
        "reassembled frames with aiortc's senders (the stock path, for comparison)",
    )
    serve.add_argument(
        "--ping-interval",
        type=float,
        default=float(os.environ.get("LCO_PING_INTERVAL", "2")),
        help="seconds between the server's keep-alive pings on each socket (default 2)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=float(os.environ.get("LCO_IDLE_TIMEOUT", "4")),
        help="seconds of silence (no pong, no message) after which a socket is taken "
        "as gone and closed; clients drop a server silent as long (default 4)",
    )
    serve.add_argument(
        "--seat-grace",
        type=duration,
        default=os.environ.get("LCO_SEAT_GRACE", "60"),
        help="how long a participant's seat (its id, what moderators decided, its media) "
        "is held for its link after its socket went, e.g. 60 or 2m (default 60 s)",
    )
    serve.add_argument(
        "--negotiation-timeout",
        type=float,
        default=float(os.environ.get("LCO_NEGOTIATION_TIMEOUT", "15")),
        help="seconds a client has to answer a media offer before its connection is "
        "closed to start again (default 15)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=float(os.environ.get("LCO_HEADER_TIMEOUT", "10")),
        help="seconds a connection has to send a whole request head (default 10)",
    )
    serve.add_argument(
        "--keep-alive-timeout",
        type=int,
        default=int(os.environ.get("LCO_KEEP_ALIVE_TIMEOUT", "5")),
        help="seconds an idle HTTP connection is kept open between requests (default 5)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=int(os.environ.get("LCO_MAX_CONNECTIONS", "1000")),
        help="open connections (HTTP and WebSocket) beyond which new ones get 503 (default 1000)",
    )
    serve.add_argument(
        "--max-connections-per-address",
        type=int,
        default=int(os.environ.get("LCO_MAX_CONNECTIONS_PER_ADDRESS", "200")),
        help="open connections from one client address beyond which new ones get 503; "
        "0: no limit (behind a reverse proxy all clients share its address) (default 200)",
    )
    serve.add_argument(
        "--recording-retention",
        type=duration,
        default=os.environ.get("LCO_RECORDING_RETENTION"),
        help="delete recordings this long after they stopped, e.g. 30d (default: keep)",
    )
    add_link_lifetime_arg(serve)
    serve.add_argument("--log-level", default=os.environ.get("LCO_LOG_LEVEL", "info"))
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("LCO_LOG_FORMAT", "text"),
        help="text lines, or one JSON object per line with request and participant ids "
        "(env LCO_LOG_FORMAT; default text)",
    )
    serve.add_argument(
        "--node-name",
        default=os.environ.get("LCO_NODE_NAME") or socket.gethostname(),
        help="the 'node' label of every metric (env LCO_NODE_NAME; default: the host name)",
    )
    serve.add_argument(
        "--redis",
        default=os.environ.get("LCO_REDIS_URL"),
        help="Redis URL, e.g. redis://127.0.0.1:6379/0: serve lessons together with the "
        "other nodes using it (env LCO_REDIS_URL; default: no Redis, one process)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("LCO_WORKERS", "1")),
        help="processes sharing the port on this machine, each a node (needs --redis; "
        "env LCO_WORKERS; default 1)",
    )
    serve.add_argument(
        "--cascade",
        action="store_true",
        default=os.environ.get("LCO_CASCADE", "") not in ("", "0"),
        help="spread lessons over the nodes their sockets land on: each node serves its "
        "sockets' subscriptions and gets each track once (needs --redis; env LCO_CASCADE=1)",
    )
    serve.add_argument(
        "--cascade-by-school",
        action="store_true",
        default=os.environ.get("LCO_CASCADE_BY_SCHOOL", "") not in ("", "0"),
        help="with --cascade: serve the participants of one school in a lesson on one "
        "node, the one its first participant came through (env LCO_CASCADE_BY_SCHOOL=1)",
    )
    serve.add_argument(
        "--no-demo",
        action="store_true",
        default=os.environ.get("LCO_NO_DEMO", "") not in ("", "0"),
        help="print no demo lesson links at start (env LCO_NO_DEMO=1)",
    )

    token = commands.add_parser("token", help="mint a signed join link")
    token.add_argument("--lesson", required=True)
    token.add_argument("--name", required=True)
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--school", default="")
    token.add_argument("--ttl", type=duration, default="4h", help="validity, e.g. 90m or 4h")
    token.add_argument(
        "--url", default=os.environ.get("LCO_PUBLIC_URL", DEFAULT_URL), help="server address"
    )
    token.add_argument("--json", action="store_true", help="print token and link as JSON")
    _add_secret_args(token)

    publish = commands.add_parser(
        "publish", help="join a lesson from Python: publish a file or test pattern, report"
    )
    publish.add_argument("--url", default=DEFAULT_URL, help="server address")
    publish.add_argument("--token", required=True, help="join token (or a whole join link)")
    publish.add_argument(
        "--source",
        default="test-pattern",
        help="'test-pattern' (moving bars and a tone), 'none', a media file, or an "
        "rtsp://, http(s):// URL: VP8, H264 and Opus are sent as they are, other codecs "
        "are encoded once; a network source that drops is reconnected",
    )
    publish.add_argument("--duration", type=duration, default=None, help="stop after this long")
    publish.add_argument(
        "--ice-host",
        action="append",
        default=None,
        help="address to announce as an ICE host candidate (e.g. 127.0.0.1 on one machine)",
    )
    publish.add_argument("--report", action="store_true", help="print what is received as JSON")
    # Commands installed by other packages (``lco bench``), listed for help only:
    # each parses its own arguments (see main).
    for name, command in sorted(plugin_commands().items()):
        commands.add_parser(name, help=f"installed by {command.module}: lco {name} --help")
    manage.add_commands(commands)
    recording_cli.add_command(commands)
    return parser


def _turn_from_args(args: argparse.Namespace) -> TurnRest | None:
    """TURN REST settings from flags or environment; exits with a clear message."""
    secret = args.turn_secret or os.environ.get("LCO_TURN_SECRET")
    urls = args.turn_url or _env_list("LCO_TURN_URLS")
    if not secret and not urls:
        return None
    if not secret:
        raise SystemExit("lco serve: --turn-url needs --turn-secret (or LCO_TURN_SECRET)")
    if not urls:
        raise SystemExit("lco serve: --turn-secret needs a --turn-url (or LCO_TURN_URLS)")
    try:
        return TurnRest(secret.encode(), tuple(urls), args.turn_ttl)
    except ValueError as exc:  # the message names the URL or the lifetime, never the secret
        raise SystemExit(f"lco serve: {exc}") from None


def _networks(values: list[str]) -> tuple[str, ...]:
    """CIDR networks, checked; a bad one stops the start with a clear message."""
    try:
        return tuple(str(ipaddress.ip_network(value, strict=False)) for value in values)
    except ValueError as exc:
        raise SystemExit(f"--ice-allow-network: {exc}") from None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Turn ``lco serve`` arguments (and environment) into settings."""
    if not 0 < args.ping_interval < args.idle_timeout:
        raise SystemExit("lco serve: --ping-interval must be above 0 and below --idle-timeout")
    ice_hosts = args.ice_host or _env_list("LCO_ICE_HOSTS") or None
    ice_specs = args.ice_server or _env_list("LCO_ICE_SERVERS")
    origins = args.allowed_origin or _env_list("LCO_ALLOWED_ORIGINS")
    webhooks = args.webhook_url or _env_list("LCO_WEBHOOK_URLS")
    return Settings(
        host=args.host,
        port=args.port,
        secret=resolve_secret(args.secret, args.data_dir),
        data_dir=args.data_dir,
        ice_host_addresses=tuple(ice_hosts) if ice_hosts else None,
        ice_allowed_networks=_networks(
            args.ice_allow_network or _env_list("LCO_ICE_ALLOW_NETWORKS") or []
        ),
        public_ip=args.public_ip,
        ice_servers=tuple(parse_ice_server(s) for s in ice_specs),
        turn=_turn_from_args(args),
        allowed_origins=tuple(origins),
        join_timeout=args.join_timeout,
        ping_interval=args.ping_interval,
        idle_timeout=args.idle_timeout,
        seat_grace=float(args.seat_grace),
        negotiation_timeout=args.negotiation_timeout,
        max_link_lifetime=args.max_link_lifetime,
        connection_limits=ConnectionLimits(
            header_timeout=args.header_timeout,
            keep_alive_timeout=args.keep_alive_timeout,
            max_connections=args.max_connections,
            max_connections_per_address=args.max_connections_per_address,
        ),
        forwarding=args.forwarding,
        recording_retention=args.recording_retention,
        admin_key=resolve_admin_key(args.admin_key, args.data_dir),
        public_url=args.public_url,
        webhook_urls=tuple(webhooks),
        webhook_secret=resolve_webhook_secret(args.webhook_secret, args.data_dir)
        if webhooks
        else b"",
        node_name=args.node_name,
        redis_url=args.redis or None,
        cascade=args.cascade or args.cascade_by_school,
        cascade_by_school=args.cascade_by_school,
    )


def _secrets_of(settings: Settings) -> list[str]:
    """Every secret the server holds: what its logs must never show."""
    hidden = [settings.secret.decode(), settings.admin_key, settings.webhook_secret.decode()]
    if settings.turn is not None:
        hidden.append(settings.turn.secret.decode())
    hidden += [s.credential for s in settings.ice_servers if s.credential]
    if settings.redis_url:
        password = urlsplit(settings.redis_url).password
        if password:
            hidden.append(password)
    return hidden


def _serve(args: argparse.Namespace) -> int:
    from .demo import demo_banner
    from .serve import run_server

    # Until the settings (and so the secrets) are known, nothing secret exists to hide.
    configure_logging(args.log_level, args.log_format)
    secure_data_dir(args.data_dir)
    settings = settings_from_args(args)
    configure_logging(args.log_level, args.log_format, hide=_secrets_of(settings))
    if args.workers < 1:
        raise SystemExit("lco serve: --workers must be at least 1")
    if args.workers > 1 and settings.redis_url is None:
        raise SystemExit(
            "lco serve: --workers needs --redis (or LCO_REDIS_URL): the workers place "
            "lessons and relay sockets through Redis"
        )
    if settings.cascade and settings.redis_url is None:
        raise SystemExit(
            "lco serve: --cascade needs --redis (or LCO_REDIS_URL): the nodes a lesson "
            "spreads over reach each other through Redis"
        )
    banner = None
    if not args.no_demo:
        given = args.admin_key or os.environ.get("LCO_ADMIN_KEY")
        banner = demo_banner(settings, None if given else args.data_dir / "admin.key")
    if args.workers > 1:
        from .workers import run_workers

        return run_workers(
            settings,
            args.workers,
            log_level=args.log_level,
            log_format=args.log_format,
            hide=_secrets_of(settings),
            banner=banner,
        )
    run_server(settings, log_level=args.log_level, banner=banner)
    return 0


def _token(args: argparse.Namespace) -> int:
    logging.basicConfig(level="WARNING", format="%(message)s")
    secret = resolve_secret(args.secret, args.data_dir)
    try:
        token = mint_token(
            secret,
            lesson=args.lesson,
            name=args.name,
            role=Role(args.role),
            school=args.school,
            ttl_seconds=args.ttl,
        )
    except ValueError as exc:
        print(f"lco token: {exc}", file=sys.stderr)
        return 2
    # The token travels in the fragment: browsers never send it in a request line.
    link = f"{args.url.rstrip('/')}/join#token={token}"
    if args.json:
        print(json.dumps({"token": token, "link": link, "expires_in": args.ttl}))
    else:
        print(link)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from .publish import run_publish

    logging.basicConfig(level="WARNING", format="%(message)s")
    from .progress import TimedProgress

    token = args.token.split("#token=", 1)[-1]
    started = time.monotonic()
    # With --duration, a bar shows the time left (on a terminal).
    progress: contextlib.AbstractContextManager[object] = (
        TimedProgress("publishing", args.duration) if args.duration else contextlib.nullcontext()
    )
    with progress:
        result = asyncio.run(
            run_publish(
                args.url,
                token,
                source=args.source,
                duration=args.duration,
                ice_hosts=args.ice_host,
            )
        )
    if args.report:
        result["seconds"] = round(time.monotonic() - started, 2)
        print(json.dumps(result, indent=2))
    if result.get("error"):
        print(f"lco publish: {result['error']}", file=sys.stderr)
        return 1
    return 0


def plugin_commands() -> dict[str, EntryPoint]:
    """Subcommands that installed packages add under the ``lco.commands`` entry-point
    group (the benchmarks add ``bench``): the server never imports them by name, so
    nothing it runs depends on them and they may import the server freely."""
    return {entry.name: entry for entry in entry_points(group=PLUGIN_GROUP)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lco`` console script."""
    arguments = sys.argv[1:] if argv is None else argv
    plugin = plugin_commands().get(arguments[0]) if arguments else None
    if plugin is not None:
        run: Callable[[list[str]], int] = plugin.load()
        return run(list(arguments[1:]))
    args = build_parser().parse_args(arguments)
    handlers = {
        "serve": _serve,
        "token": _token,
        "publish": _publish,
        "recording": recording_cli.run,
    }
    return handlers.get(args.command, manage.run)(args)


if __name__ == "__main__":
    sys.exit(main())
