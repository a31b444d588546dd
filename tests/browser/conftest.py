"""Fixtures for tests that drive the web client in headless Chromium.

The whole run happens inside the private network namespace made by
``scripts/netns-run`` (Chromium gathers no ICE candidates on loopback): the
real ``lco serve`` runs as a subprocess announcing the namespace's veth
address, and pages are opened at ``http://127.0.0.1`` (a secure context).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    WebSocket,
    sync_playwright,
)

from signaling.permissions import Role
from signaling.tokens import mint_token

from ..conftest import CONFORMANCE, LOG_CHECK

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOTS = REPO / "docs" / "screenshots"


def keep_screenshot(path: Path) -> None:
    """Copy a test's screenshot over the committed one in ``docs/screenshots`` when
    ``LCO_UPDATE_SCREENSHOTS=1`` (the interface changed); an ordinary run leaves the
    committed pictures as they are."""
    if os.environ.get("LCO_UPDATE_SCREENSHOTS") == "1" and SCREENSHOTS.is_dir():
        (SCREENSHOTS / path.name).write_bytes(path.read_bytes())


CHROMIUM = os.environ.get("LCO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]


@dataclass(frozen=True, slots=True)
class Server:
    """A running ``lco serve`` and the secret its tokens are signed with."""

    url: str
    secret: bytes
    process: subprocess.Popen[bytes]
    data_dir: Path | None = None

    def admin_key(self) -> str:
        """The HTTP API's admin key that the server generated into its data directory."""
        if os.environ.get("LCO_ADMIN_KEY"):
            return os.environ["LCO_ADMIN_KEY"]
        assert self.data_dir is not None
        return (self.data_dir / "admin.key").read_text().strip()

    def link(
        self,
        lesson: str,
        name: str,
        role: Role,
        school: str = "",
        *,
        ttl_seconds: int = 3600,
        now: float | None = None,
    ) -> str:
        """A join link as ``lco token`` prints it."""
        token = mint_token(
            self.secret,
            lesson=lesson,
            name=name,
            role=role,
            school=school,
            ttl_seconds=ttl_seconds,
            now=now,
        )
        return f"{self.url}/join#token={token}"


@pytest.fixture(scope="session")
def host_address() -> str:
    """The namespace's veth address; browser tests only run inside scripts/netns-run."""
    address = os.environ.get("LCO_TEST_HOST_ADDRESS")
    if not address:
        pytest.skip(
            "browser tests need the test network namespace: "
            "run them via scripts/netns-run (scripts/test does)"
        )
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium package)")
    return address


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"lco serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling for start-up, not waiting out a race
    raise TimeoutError("lco serve did not become healthy")


def start_server(
    port: int,
    secret: str,
    host_address: str,
    data_dir: str,
    *extra: str,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``lco serve`` on ``host``:``port`` and wait until it is healthy; ``extra``
    arguments, ``env`` variables, its logs to ``log`` (standard error; standard output
    next to it, ``.out``) or to a file of the run's. The log is checked for secrets."""
    lco = Path(sys.executable).with_name("lco")
    if log is None:
        log = Path(tempfile.mkdtemp(prefix="lco-browser-log-")) / f"server-{port}.log"
    output = log.open("wb")
    shown = log.with_suffix(".out").open("wb")
    LOG_CHECK.hide(secret, "a browser test server's signing secret")
    process = subprocess.Popen(
        [
            str(lco),
            "serve",
            "--host",
            host,
            "--port",
            str(port),
            "--ice-host",
            host_address,
            "--data-dir",
            data_dir,
            "--log-level",
            "warning",
            *extra,
        ],
        env={**os.environ, "LCO_SECRET": secret, **(env or {})},
        stdout=shown,
        stderr=output,
    )
    output.close()  # the child has its own descriptors
    shown.close()
    LOG_CHECK.watch(log, process)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", process)
    except BaseException:
        stop_server(process)
        raise
    admin_key = Path(data_dir) / "admin.key"
    if admin_key.exists():
        LOG_CHECK.hide(admin_key.read_text().strip(), "a browser test server's admin key")
    return process


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Stop the server gracefully (it says bye to everyone), or kill it; check its log."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    LOG_CHECK.stopped(process)


@pytest.fixture(scope="module")
def server(host_address: str) -> Iterator[Server]:
    """The real server, one per test module."""
    port = free_port()
    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="lco-browser-") as data_dir:
        process = start_server(port, secret, host_address, data_dir)
        try:
            yield Server(
                url=f"http://127.0.0.1:{port}",
                secret=secret.encode(),
                process=process,
                data_dir=Path(data_dir),
            )
        finally:
            stop_server(process)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright, host_address: str) -> Iterator[Browser]:
    """One headless Chromium; each participant gets its own fresh context."""
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
    )
    new_context = browser.new_context

    def checked_context(*args: Any, **kwargs: Any) -> BrowserContext:
        # What the web client receives is held to docs/protocol.schema.json too.
        context = new_context(*args, **kwargs)
        context.on("page", lambda page: page.on("websocket", _check_signalling))
        return context

    browser.new_context = checked_context  # type: ignore[method-assign]
    try:
        yield browser
    finally:
        browser.close()


def wait_until(
    page: Page, predicate: str, arg: Any = None, *, timeout_ms: float, polling_ms: int = 200
) -> Any:
    """Wait until the page's ``predicate(arg)`` (JavaScript, async or not) is truthy;
    return its value.

    Playwright's ``wait_for_function`` takes the Promise an async predicate returns for
    a truthy result and returns at once, so a wait on ``getStats()`` would wait for
    nothing; here the page awaits each result.
    """
    script = f"""async ([arg, timeoutMs, pollingMs]) => {{
      const predicate = {predicate};
      const deadline = performance.now() + timeoutMs;
      for (;;) {{
        const value = await predicate(arg);
        if (value) return value;
        if (performance.now() > deadline) {{
          throw new Error(`no result in ${{timeoutMs}} ms from ${{{json.dumps(predicate[:300])}}}`);
        }}
        await new Promise((resolve) => setTimeout(resolve, pollingMs));
      }}
    }}"""
    return page.evaluate(script, [arg, timeout_ms, polling_ms])


def _check_signalling(socket: WebSocket) -> None:
    if urlsplit(socket.url).path.endswith("/ws"):
        CONFORMANCE.sockets += 1
        socket.on("framereceived", CONFORMANCE.observe)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
