"""Shared fixtures: settings, tokens, a real server process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from media import hooks
from media.client import LessonClient
from signaling.permissions import Role
from signaling.tokens import mint_token

from .conformance import Conformance, install
from .coturn import Coturn, coturn_available, make_test_ca, start_coturn, stop_coturn
from .logcheck import LogCheck
from .redis_server import RedisServer

SECRET = "test-secret-" + "x" * 40
ADMIN_KEY = "test-admin-key-" + "k" * 40


# Every server message a test receives is validated against docs/protocol.schema.json.
CONFORMANCE = Conformance.load()
_undo_conformance: list[Any] = []
# No log of the run shows a secret, the admin key or a token (tests/logcheck.py).
LOG_CHECK = LogCheck()
LOG_CHECK.hide(SECRET, "the signing secret")
LOG_CHECK.hide(ADMIN_KEY, "the admin key")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        help="tests/test_fuzz.py: 10,000 cases with a random seed instead of 1,000 fixed",
    )
    parser.addoption(
        "--cut-tries",
        type=int,
        default=1,
        help="tests/browser/test_seats.py: how many network drops to measure (default 1)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--fuzz-long"):
        # 10,000 fuzz cases take minutes; every other test keeps the short timeout.
        for item in items:
            if item.nodeid.startswith("tests/test_fuzz.py"):
                item.add_marker(pytest.mark.timeout(1800))


def pytest_configure(config: pytest.Config) -> None:
    _undo_conformance.append(install(CONFORMANCE))
    # What this process logs itself (in-process apps, clients) is checked too.
    own = Path(tempfile.mkdtemp(prefix="lco-test-log-")) / "pytest-process.log"
    handler = logging.FileHandler(own)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    LOG_CHECK.watch(own)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _undo_conformance:
        _undo_conformance.pop()()


@pytest.fixture(autouse=True)
def _server_messages_conform() -> Iterator[None]:
    """Fail the test during which the server sent a message the schema does not allow."""
    before = len(CONFORMANCE.violations)
    yield
    found = CONFORMANCE.violations[before:]
    assert not found, "\n".join(found)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    findings = LOG_CHECK.finish()
    if findings:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nsecrets or tokens in the logs of this run:\n" + "\n".join(findings))
    # A check that silently checked nothing would be worse than none: if sockets
    # were opened to /ws, messages must have been validated.
    if CONFORMANCE.sockets and not CONFORMANCE.validated:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(
            f"\n{CONFORMANCE.sockets} signalling sockets were opened "
            "but no server message was validated against docs/protocol.schema.json"
        )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    kinds = ", ".join(f"{name} {count}" for name, count in sorted(CONFORMANCE.by_type.items()))
    terminalreporter.write_line(
        f"logs: {LOG_CHECK.read_count} logs read, no secret, admin key or token in them"
        if not LOG_CHECK.findings
        else f"logs: {len(LOG_CHECK.findings)} findings of secrets or tokens (see above)"
    )
    terminalreporter.write_line(
        f"protocol conformance: {CONFORMANCE.validated} server messages on "
        f"{CONFORMANCE.sockets} sockets matched docs/protocol.schema.json ({kinds})"
    )


@dataclass
class RunningServer:
    """An ``lco serve`` process on loopback."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def token(
        self,
        name: str,
        role: Role,
        lesson: str = "lesson-1",
        school: str = "north",
        **extra: Any,
    ) -> str:
        return mint_token(
            SECRET.encode(), lesson=lesson, name=name, role=role, school=school, **extra
        )

    def api(self, method: str, path: str, key: str | None = ADMIN_KEY, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, f"{self.http}{path}", headers=headers, timeout=10, **kw)

    def metrics(self) -> dict[str, object]:
        response = httpx.get(f"{self.http}/metrics.json", timeout=5)
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def lco(*args: str) -> list[str]:
    """The ``lco`` command line with ``args``, run by this checkout's interpreter."""
    return [sys.executable, "-m", "server.cli", *args]


def lco_publish(url: str, token: str, *args: str) -> list[str]:
    """``lco publish`` into the lesson of ``token`` on the server at ``url``."""
    return lco("publish", "--url", url, "--token", token, *args)


@contextlib.asynccontextmanager
async def loopback_http(routes: list[Route], port: int | None = None) -> AsyncIterator[str]:
    """A small HTTP server on loopback (a webhook receiver, say) serving ``routes``
    for the duration of the block; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=routes),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    tmp: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> RunningServer:
    """Start ``lco serve`` and wait until /healthz answers (or the process dies).

    ``env`` adds to the environment; ``preexec_fn`` runs in the child before it
    starts (to lower a resource limit).
    """
    port = free_port()
    # Standard error holds the logs; standard output what a user is shown (demo links).
    log_path = tmp / f"server-{port}.log"
    log = log_path.open("wb")
    out = (tmp / f"server-{port}.out").open("wb")
    env = {**os.environ, "LCO_SECRET": SECRET, "LCO_ADMIN_KEY": ADMIN_KEY, **(env or {})}
    process = subprocess.Popen(
        [
            *lco("serve"),
            "--port",
            str(port),
            "--data-dir",
            str(tmp / "data"),
            "--ice-host",
            "127.0.0.1",
            *extra,
        ],
        stdout=out,
        stderr=log,
        env=env,
        preexec_fn=preexec_fn,
    )
    log.close()
    out.close()
    LOG_CHECK.watch(log_path, process)
    server = RunningServer(process, port, tmp / "data", log_path)
    # Poll the health endpoint: the event we wait for is "the server answers".
    with httpx.Client(timeout=1.0) as client:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log()}")
            try:
                if client.get(f"{server.http}/healthz").status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            try:
                process.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
    process.kill()
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


def stop_server(server: RunningServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    LOG_CHECK.stopped(server.process)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)


@pytest.fixture
def teacher_token() -> str:
    return mint_token(SECRET.encode(), lesson="lesson-1", name="Ms T", role=Role.TEACHER)


@pytest.fixture
def decoding_clients() -> Iterator[None]:
    """This process's aiortc peers decode what they receive and count it; ICE on loopback."""
    hooks.install_counting_hooks()
    hooks.set_host_addresses(["127.0.0.1"])
    yield
    hooks.uninstall_hooks()
    hooks.set_host_addresses(None)


@pytest.fixture
async def clients(server: RunningServer) -> AsyncIterator[Any]:
    """Join Python participants to the module's server; all are closed afterwards."""
    opened: list[LessonClient] = []

    async def join(
        name: str, role: Role, lesson: str, school: str = "north", token: str | None = None
    ) -> LessonClient:
        client = LessonClient(
            server.ws, token or server.token(name, role, lesson=lesson, school=school)
        )
        await client.connect()
        opened.append(client)
        return client

    yield join
    for client in opened:
        await client.close()


@pytest.fixture(scope="session")
def coturn() -> Iterator[Coturn]:
    """coturn configured as docs/turn.md says, on the test namespace's second address,
    relaying to the server's address; its TLS certificate is signed by a test CA."""
    reason = coturn_available()
    if reason:
        pytest.skip(reason)
    address = os.environ["LCO_TEST_PEER_ADDRESS"]
    # Not under pytest's private temporary directory: coturn continues as its own user.
    directory = Path(tempfile.mkdtemp(prefix="lco-coturn-"))
    try:
        directory.chmod(0o755)
        ca = make_test_ca(directory, address)
        running = start_coturn(
            directory,
            address=address,
            sfu_address=os.environ["LCO_TEST_HOST_ADDRESS"],
            # The shape docs/turn.md suggests: openssl rand -hex 32.
            secret=secrets.token_hex(32).encode(),
            ca=ca,
        )
        try:
            yield running
        finally:
            stop_coturn(running)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own, on a free loopback port."""
    server = RedisServer(tmp_path, free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of that redis-server, as a node has (strings decoded)."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def joined() -> AsyncIterator[Any]:
    """``join(node, name, role, lesson)``: a connected :class:`LessonClient` of a
    node (of several), closed after the test."""
    opened: list[LessonClient] = []

    async def join(
        node: RunningServer,
        name: str,
        role: Role,
        lesson: str,
        reconnect: bool = False,
        school: str = "north",
    ) -> LessonClient:
        token = node.token(name, role, lesson=lesson, school=school)
        client = LessonClient(node.ws, token, reconnect=reconnect)
        opened.append(client)
        await client.connect()
        return client

    yield join
    for client in opened:
        await client.close()
