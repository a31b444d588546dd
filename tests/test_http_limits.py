"""Connections that never finish their request, and too many connections, on a real server.

Attackers connect from other loopback addresses (127.0.0.2...) than the teacher
and the health checks (127.0.0.1), as clients behind other addresses would.
"""

from __future__ import annotations

import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from media.client import LessonClient
from server.http_limits import AddressTable, open_file_limit_warning
from signaling.permissions import Role

from .conftest import RunningServer, start_server, stop_server

HEADER_TIMEOUT = 1.0
PER_ADDRESS = 4
MAX_CONNECTIONS = 12


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("limits"),
        *("--header-timeout", str(HEADER_TIMEOUT), "--keep-alive-timeout", "60"),
        *("--max-connections", str(MAX_CONNECTIONS)),
        *("--max-connections-per-address", str(PER_ADDRESS)),
    )
    yield running
    stop_server(running)
    assert "Traceback" not in running.log()


def connect(server: RunningServer, source: str) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", server.port), timeout=10, source_address=(source, 0)
    )


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or 10 s pass: then fail)."""
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def held(server: RunningServer, source: str) -> socket.socket:
    """A connection the server has accepted: one request answered, kept alive."""
    sock = connect(server, source)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:  # the body may come in a segment of its own
        body += sock.recv(4096)
    return sock


def healthy(server: RunningServer) -> bool:
    return httpx.get(f"{server.http}/healthz", timeout=5).status_code == 200


async def test_a_request_head_that_comes_too_slowly_is_cut_off(limited: RunningServer) -> None:
    teacher = LessonClient(limited.ws, limited.token("Ms T", Role.TEACHER, lesson="slow"))
    await teacher.connect()
    slow = [connect(limited, "127.0.0.2") for _ in range(3)]
    for sock in slow:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    # A kept-alive connection whose next request then stalls is cut off too.
    kept = held(limited, "127.0.0.2")
    kept.sendall(b"GET /healthz HTTP/1.1\r\n")
    for sock in [*slow, kept]:
        assert answer(sock).startswith(b"HTTP/1.1 408"), "held past the header timeout"
        sock.close()
    assert healthy(limited)
    pong = teacher.wait_for(lambda m: m["type"] == "pong")
    await teacher.send('{"v":1,"type":"ping"}')
    await pong
    await teacher.close()


async def test_one_address_cannot_take_every_connection(limited: RunningServer) -> None:
    teacher = LessonClient(limited.ws, limited.token("Ms T", Role.TEACHER, lesson="greedy"))
    await teacher.connect()
    mine = [held(limited, "127.0.0.3") for _ in range(PER_ADDRESS)]
    refused = connect(limited, "127.0.0.3")
    assert answer(refused).startswith(b"HTTP/1.1 503")
    refused.close()
    assert healthy(limited)
    # Another address still gets in; the one above does once it lets one go.
    held(limited, "127.0.0.4").close()
    mine.pop().close()
    for _ in range(100):  # the server sees the close on its next turn: poll, bounded
        again = connect(limited, "127.0.0.3")
        again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if answer(again).startswith(b"HTTP/1.1 200"):
            again.close()
            break
        again.close()
    else:
        pytest.fail("a freed slot was never reused")
    for sock in mine:
        sock.close()
    pong = teacher.wait_for(lambda m: m["type"] == "pong")
    await teacher.send('{"v":1,"type":"ping"}')
    await pong
    await teacher.close()


async def test_past_the_connection_limit_new_connections_get_503(
    limited: RunningServer,
) -> None:
    teacher = LessonClient(limited.ws, limited.token("Ms T", Role.TEACHER, lesson="full"))
    await teacher.connect()
    taken: list[socket.socket] = []
    address = 10
    # Fill the server from several addresses until a connection is refused.
    while True:
        sock = connect(limited, f"127.0.0.{address}")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = sock.recv(4096)
        if response.startswith(b"HTTP/1.1 503"):
            sock.close()
            break
        assert response.startswith(b"HTTP/1.1 200"), response
        taken.append(sock)
        if len(taken) % (PER_ADDRESS - 1) == 0:
            address += 1
        assert len(taken) <= MAX_CONNECTIONS, "no limit"
    # The teacher's socket and ours fill it (less any closed by earlier tests that the
    # server has not yet seen go); the joined teacher stays in.
    assert 1 <= len(taken) <= MAX_CONNECTIONS - 1
    pong = teacher.wait_for(lambda m: m["type"] == "pong")
    await teacher.send('{"v":1,"type":"ping"}')
    await pong
    for sock in taken:
        sock.close()
    await teacher.close()


def test_the_address_table_forgets_closed_transports() -> None:
    class Transport:
        def __init__(self) -> None:
            self.closing = False

        def is_closing(self) -> bool:
            return self.closing

    table = AddressTable()
    first, second, third = Transport(), Transport(), Transport()
    assert table.admit("a", first, 2)  # type: ignore[arg-type]
    assert table.admit("a", second, 2)  # type: ignore[arg-type]
    assert not table.admit("a", third, 2)  # type: ignore[arg-type]
    first.closing = True
    assert table.admit("a", third, 2)  # type: ignore[arg-type]
    assert table.count("a") == 2 and table.count("b") == 0


def test_a_low_open_file_limit_is_named_with_what_would_fit() -> None:
    assert open_file_limit_warning(65536, 1000) is None
    warning = open_file_limit_warning(1024, 1000)
    assert warning is not None
    assert "open file limit (1024)" in warning and "--max-connections to 115" in warning


def test_the_server_warns_at_start_when_its_open_file_limit_is_low(tmp_path: Path) -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    server = start_server(tmp_path, preexec_fn=low_limit)
    try:
        assert healthy(server)
        log = server.log()
    finally:
        stop_server(server)
    assert "open file limit (512) is low for --max-connections 1000" in log
