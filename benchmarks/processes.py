"""Child processes of a benchmark run: the system under test and the load processes.

Every child speaks JSON lines on stdout (events) and stdin (commands) and logs to a
file; :class:`Child` starts one, waits for its events with a time bound and stops
it (SIGTERM, then SIGKILL). :func:`start_server` starts each system under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from media import hooks

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (UDP services use it too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


def _get_json(url: str, timeout: float = 2.0) -> dict[str, Any]:
    with _OPENER.open(url, timeout=timeout) as response:  # this machine only
        data: dict[str, Any] = json.loads(response.read())
        return data


async def http_json(url: str) -> dict[str, Any] | None:
    """GET ``url`` as JSON, or ``None`` if it does not answer (yet)."""
    try:
        return await asyncio.to_thread(_get_json, url)
    except (OSError, ValueError):
        return None


class Child:
    """A subprocess speaking JSON lines on stdout/stdin; stderr goes to a log file."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    @classmethod
    async def start(
        cls,
        name: str,
        argv: list[str],
        log_dir: Path,
        cwd: Path,
        env: dict[str, str] | None = None,
        quiet: bool = False,
    ) -> Child:
        log = log_dir / f"{name}.log"
        with log.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                # A program that is not ours (Janus) logs to stdout: to the file.
                stdout=err if quiet else asyncio.subprocess.PIPE,
                stderr=err,
                limit=64 * 2**20,  # result lines carry per-frame arrival times
                env={**os.environ, **(env or {})},
                cwd=str(cwd),
            )
        return cls(name, process, log)

    async def next_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The next JSON line with ``"event": event``; raises ``TimeoutError``/``EOFError``."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise EOFError(f"{self.name} exited (see {self.log})")
                with contextlib.suppress(ValueError):
                    message: dict[str, Any] = json.loads(line)
                    if message.get("event") == event:
                        return message

    async def events(self, timeout: float) -> AsyncIterator[dict[str, Any]]:
        """Every JSON line the child prints until it exits; each within ``timeout``."""
        assert self.process.stdout is not None
        while True:
            async with asyncio.timeout(timeout):
                line = await self.process.stdout.readline()
            if not line:
                return
            with contextlib.suppress(ValueError):
                message: dict[str, Any] = json.loads(line)
                yield message

    def send(self, command: dict[str, Any]) -> None:
        """One JSON command on the child's stdin (ignored if it is gone)."""
        if self.process.stdin is not None and self.process.returncode is None:
            with contextlib.suppress(OSError, RuntimeError):
                self.process.stdin.write((json.dumps(command) + "\n").encode())

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL. Returns the exit code."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        return self.process.returncode

    async def wait(self, timeout: float) -> int | None:
        """Let the child exit by itself, at most ``timeout`` seconds, then stop it."""
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            return await self.stop(2.0)
        return self.process.returncode


def server_argv(system: str, port: int, data_dir: Path, host: str) -> list[str]:
    """The command line of our server (``ours``, ``pack``) or the MediaRelay baseline."""
    common = ["--host", "127.0.0.1", "--port", str(port), "--ice-host", host]
    common += ["--data-dir", str(data_dir), "--log-level", "warning"]
    if system == "ours":
        return [sys.executable, "-m", "server.cli", "serve", *common]
    if system == "pack":
        return [sys.executable, "-m", "server.cli", "serve", "--forwarding", "frames", *common]
    if system == "mediarelay":
        return [sys.executable, "-m", "benchmarks", "relay-server", *common]
    raise ValueError(f"unknown system {system!r}")


async def start_server(
    system: str,
    tag: str,
    host: str,
    log_dir: Path,
    server_dir: Path,
    secret: str,
    extra: Sequence[str] = (),
) -> tuple[Child, str, str]:
    """Start the system under test from ``server_dir``; returns it, the URL the load
    uses (signalling, Janus's API or the relay's UDP address) and a health URL
    (``None`` for the relay, which answers no HTTP). ``extra``: more options of our
    server's command line (``--redis``, ``--workers``); the other systems take none."""
    if extra and system not in ("ours", "pack"):
        raise ValueError(f"{system} takes no extra server options")
    port = free_port()
    if system == "janus":
        from . import janus

        why = janus.available()
        if why:
            raise RuntimeError(why)
        if host.startswith("127."):
            raise RuntimeError(
                "Janus needs the test namespace (libnice skips loopback): run "
                "scripts/netns-run .venv/bin/lco bench run --system janus ..."
            )
        directory = log_dir / f"janus-{tag}"
        janus.write_config(directory, host, port)
        server = await Child.start(
            f"server-{tag}",
            janus.argv(directory, log_dir / f"janus-{tag}.log"),
            log_dir,
            server_dir,
            quiet=True,
        )
        base = f"http://{host}:{port}/janus"
        return server, base, base + "/info"
    if system == "udprelay":
        # The relay is the benchmark's own code: it runs from this checkout.
        argv = [sys.executable, "-m", "benchmarks", "udp-relay", "--host", host]
        argv += ["--port", str(port)]
        server = await Child.start(f"server-{tag}", argv, log_dir, REPO_ROOT)
        await server.next_event("ready", 15)
        return server, f"udp://{host}:{port}", ""
    server = await Child.start(
        f"server-{tag}",
        [*server_argv(system, port, log_dir / f"data-{tag}", host), *extra],
        log_dir,
        server_dir,
        env={"LCO_SECRET": secret},
    )
    return server, f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}/healthz"


async def wait_healthy(server: Child, health: str, timeout: float = 20.0) -> None:
    """Until ``health`` answers (or raise if the server exits or the time is up)."""
    if not health:
        return
    async with asyncio.timeout(timeout):
        while await http_json(health) is None:
            if server.process.returncode is not None:
                raise RuntimeError(f"the server exited (see {server.log})")
            await asyncio.sleep(0.1)


def chunks(items: list[str], size: int) -> list[list[str]]:
    """``items`` in lists of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def decoding_on_loopback() -> contextlib.AbstractContextManager[None]:
    """This process's aiortc peers (``LessonClient``) decode and count what they
    receive, and gather ICE candidates on loopback only, until the block ends."""
    return _peers_on(hooks.install_counting_hooks, "127.0.0.1")


def decoding_at(address: str) -> contextlib.AbstractContextManager[None]:
    """As :func:`decoding_on_loopback`, with ICE candidates on ``address`` only: the
    namespace's veth address, where a server that Chromium reaches announces itself."""
    return _peers_on(hooks.install_counting_hooks, address)


def receiving_on_loopback() -> contextlib.AbstractContextManager[None]:
    """This process's aiortc receivers hand on encoded frames without decoding them
    (cheap subscribers, for a workload that measures the server's cost alone; its
    publishers still encode), and its peers gather ICE candidates on loopback only,
    until the block ends."""
    return _peers_on(hooks.install_forwarding_hooks, "127.0.0.1")


@contextlib.contextmanager
def _peers_on(install_hooks: Callable[[], None], address: str) -> Iterator[None]:
    install_hooks()
    hooks.set_host_addresses([address])
    try:
        yield
    finally:
        hooks.uninstall_hooks()
        hooks.set_host_addresses(None)
