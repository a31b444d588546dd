"""Measure what one misbehaving client costs a real ``lco serve``: ``python -m benchmarks.attacks``.

Each command starts the server (from ``--source-dir``, default this tree, so an
older tree from ``git archive`` can be measured the same way), runs the attack
from separate processes, watches from this one, and prints one JSON object:

- ``inflation``: a student's socket sends WebSocket frames as fast as loopback
  carries them: permessage-deflate frames that inflate to ``--inflated`` bytes (or
  plain frames, ``--plain``), rejoining whenever the server closes it; meanwhile
  ``/healthz`` is timed every 50 ms over new connections.
- ``slow-headers``: ``--connections`` sockets send a request head one byte a
  second; how many the server still holds after ``--after`` seconds, and whether
  ``/healthz`` and a joined teacher still answer.
- ``big-body``: one PATCH with a ``--mib`` MiB body and a teacher's token; the
  server's peak memory (VmHWM) before and after.

Traffic stays on loopback and every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import multiprocessing
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import websockets.exceptions
import websockets.sync.client

from signaling.permissions import Role
from signaling.tokens import mint_token

# ``--bounded-inflation`` runs the server with permessage-deflate kept but inflation
# stopped at the protocol's message limit (64 KiB) before it happens: the other way
# of fixing the inflation attack, measured against turning compression off.
BOUNDED_INFLATION_SERVER = """
import sys
from websockets.extensions import permessage_deflate as pmd
from signaling.protocol import MAX_MESSAGE_BYTES
_decode = pmd.PerMessageDeflate.decode
def decode(self, frame, *, max_size=None):
    if frame.rsv1 or (frame.opcode is pmd.CONT and self.decode_cont_data):
        max_size = MAX_MESSAGE_BYTES if max_size is None else min(max_size, MAX_MESSAGE_BYTES)
    return _decode(self, frame, max_size=max_size)
pmd.PerMessageDeflate.decode = decode
from server.cli import main
sys.exit(main())
"""
CLI = "server.cli"
SECRET = "attack-secret-" + "x" * 40
ADMIN_KEY = "attack-admin-" + "k" * 40
REPO = Path(__file__).resolve().parent.parent
LESSON = "under-attack"


# -- the server -------------------------------------------------------------------


class Server:
    """An ``lco serve`` subprocess on loopback."""

    def __init__(
        self,
        source_dir: Path,
        extra: list[str],
        fd_limit: int | None = None,
        bounded_inflation: bool = False,
    ) -> None:
        self.port = _free_port()
        self._tmp = Path(tempfile.mkdtemp(prefix="lco-attack-"))
        self.log_path = self._tmp / "server.log"
        env = {
            **os.environ,
            "LCO_SECRET": SECRET,
            "LCO_ADMIN_KEY": ADMIN_KEY,
            "PYTHONPATH": str(source_dir),
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *(("-c", BOUNDED_INFLATION_SERVER) if bounded_inflation else ("-m", CLI)),
                    *("serve", "--port", str(self.port)),
                    *("--data-dir", str(self._tmp / "data"), "--ice-host", "127.0.0.1"),
                    *extra,
                ],
                cwd=source_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=None if fd_limit is None else lambda: _limit_files(fd_limit),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.http}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # nothing to wait on but the port: poll, bounded
        raise RuntimeError("server did not start")

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, name: str, role: Role) -> str:
        return mint_token(SECRET.encode(), lesson=LESSON, name=name, role=role, school="north")

    def memory(self) -> dict[str, int]:
        """Resident and peak resident memory, KiB."""
        found: dict[str, int] = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
        return found

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.log_path.read_text(errors="replace")


def _limit_files(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running(
    source_dir: Path, extra: list[str], fd_limit: int | None = None, bounded: bool = False
) -> Iterator[Server]:
    server = Server(source_dir, extra, fd_limit, bounded)
    try:
        yield server
    finally:
        log = server.stop()
        if "Traceback" in log:
            print(f"(the server logged a traceback; log: {server.log_path})", file=sys.stderr)


# -- WebSocket by hand: the attacker chooses every bit of its frames ------------------


def ws_open(port: int, deflate: bool) -> tuple[socket.socket, bool]:
    """A raw WebSocket to ``/ws``; returns it and whether permessage-deflate was agreed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    extension = (
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; "
        "client_max_window_bits\r\n"
        if deflate
        else ""
    )
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extension}\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    return sock, b"permessage-deflate" in head.lower()


def frame(payload: bytes, compressed: bool) -> bytes:
    """One masked text frame (all-zero mask: the payload goes as it is)."""
    first = 0xC1 if compressed else 0x81
    size = len(payload)
    if size < 126:
        header = bytes([first, 0x80 | size])
    elif size < 65536:
        header = bytes([first, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([first, 0x80 | 127]) + size.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


def deflated(text: bytes) -> bytes:
    """``text`` as one permessage-deflate message (RFC 7692 7.2.1), a 4 KiB window."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -12, 9)
    data = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def attack_message(inflated_size: int) -> bytes:
    """A message of ``inflated_size`` bytes once inflated: JSON with one long string."""
    head = b'{"v":1,"type":"chat","text":"'
    return head + b"x" * (inflated_size - len(head) - 2) + b'"}'


def _drain(sock: socket.socket) -> None:
    # The server's replies must be read, or its writer would stall on a full buffer.
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def attacker(port: int, token: str, seconds: float, inflated: int, plain: bool) -> None:
    """Join as a student and send attack frames until ``seconds`` pass; print counts."""
    message = attack_message(inflated)
    payload = message if plain else deflated(message)
    one = frame(payload, compressed=not plain)
    batch = one * max(1, 65536 // len(one))
    join = frame(json.dumps({"v": 1, "type": "join", "token": token}).encode(), False)
    deadline = time.monotonic() + seconds
    sent = connections = refused = 0
    while time.monotonic() < deadline:
        try:
            sock, agreed = ws_open(port, deflate=not plain)
        except (OSError, ConnectionError):
            refused += 1
            continue
        connections += 1
        # Without agreed compression the frames go anyway, as an attacker's would.
        del agreed
        threading.Thread(target=_drain, args=(sock,), daemon=True).start()
        sock.settimeout(1.0)
        try:
            sock.sendall(join)
            while time.monotonic() < deadline:
                sock.sendall(batch)
                sent += len(batch) // len(one)
        except OSError:
            pass
        finally:
            sock.close()
    print(
        json.dumps(
            {
                "frames_sent": sent,
                "frame_bytes": len(one),
                "inflated_bytes": len(message),
                "connections": connections,
                "refused": refused,
            }
        ),
        flush=True,
    )


def probe_healthz(port: int, seconds: float) -> dict[str, Any]:
    """Time ``GET /healthz`` on a new connection every 50 ms for ``seconds``.

    A raw socket, so that the figure is the server's (connect, answer, close) and not
    an HTTP client's set-up; an answer slower than 10 s counts as failed.
    """
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
            ok = answer.startswith(b"HTTP/1.1 200")
        except OSError:
            ok = False
        elapsed = time.monotonic() - started
        if ok:
            latencies.append(elapsed)
        else:
            failures += 1
        time.sleep(max(0.0, 0.05 - elapsed))  # a probe every 50 ms, not a race
    return _summary(latencies, failures)


def _summary(latencies: list[float], failures: int) -> dict[str, Any]:
    if not latencies:
        return {"probes": failures, "failed": failures}
    ordered = sorted(latencies)
    return {
        "probes": len(latencies) + failures,
        "failed": failures,
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[math.ceil(len(ordered) * 0.95) - 1] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def inflation(args: argparse.Namespace) -> dict[str, Any]:
    with running(args.source_dir, args.server_arg, bounded=args.bounded_inflation) as server:
        baseline = probe_healthz(server.port, 3)
        cpu_before = server.cpu_seconds()
        results: multiprocessing.Queue[str] = multiprocessing.Queue()
        processes = [
            multiprocessing.Process(
                target=_attacker_process,
                args=(
                    results,
                    server.port,
                    server.token(f"Attacker {n}", Role.STUDENT),
                    args.seconds,
                    args.inflated,
                    args.plain,
                ),
            )
            for n in range(args.attackers)
        ]
        for process in processes:
            process.start()
        under_attack = probe_healthz(server.port, args.seconds)
        for process in processes:
            process.join(args.seconds + 30)
        sent = [json.loads(results.get(timeout=5)) for _ in processes]
        return {
            "attack": "plain frames" if args.plain else "permessage-deflate frames",
            "bounded_inflation": args.bounded_inflation,
            "server_args": args.server_arg,
            "seconds": args.seconds,
            "attackers": sent,
            "healthz_before": baseline,
            "healthz_under_attack": under_attack,
            "server_cpu_seconds": round(server.cpu_seconds() - cpu_before, 2),
            "server_memory_kib": server.memory(),
        }


def _attacker_process(
    results: multiprocessing.Queue[str],
    port: int,
    token: str,
    seconds: float,
    inflated: int,
    plain: bool,
) -> None:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        attacker(port, token, seconds, inflated, plain)
    results.put(out.getvalue().strip())


# -- slow request heads ---------------------------------------------------------------


def slow_headers(args: argparse.Namespace) -> dict[str, Any]:
    with running(args.source_dir, args.server_arg, args.fd_limit) as server:
        # Entered by hand: it stays open across the whole measurement.
        teacher = websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}/ws").__enter__()
        teacher.send(json.dumps({"v": 1, "type": "join", "token": server.token("T", Role.TEACHER)}))
        assert json.loads(teacher.recv(5))["type"] == "welcome"
        sockets: list[socket.socket] = []
        refused = 0
        for _ in range(args.connections):
            try:
                sock = socket.create_connection(
                    ("127.0.0.1", server.port), timeout=5, source_address=("127.0.0.2", 0)
                )
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")
                sockets.append(sock)
            except OSError:
                refused += 1
        started = time.monotonic()
        healthz = []
        while time.monotonic() - started < args.after:
            for sock in sockets:
                try:
                    sock.send(b"X")  # one more byte of a header that never ends
                except OSError:
                    pass
            healthz.append(probe_healthz(server.port, 1.0))
        held = 0
        for sock in sockets:
            sock.setblocking(False)
            try:
                sock.recv(1)  # an answer (408, 503) or the end: the server let go
            except BlockingIOError:
                held += 1  # nothing to read and not closed: still held
            except OSError:
                pass
            sock.close()
        return {
            "connections": args.connections,
            "refused_at_once": refused,
            "after_seconds": args.after,
            "still_held": held,
            "healthz_worst_max_ms": max((h.get("max_ms", 0.0) for h in healthz), default=0.0),
            "healthz_failed": sum(h["failed"] for h in healthz),
            "teacher_still_answered": _pong(teacher),
            "fd_limit": args.fd_limit,
            "server_args": args.server_arg,
        }


def _pong(connection: websockets.sync.client.ClientConnection) -> bool:
    try:
        connection.send('{"v":1,"type":"ping"}')
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if json.loads(connection.recv(5))["type"] == "pong":
                return True
    except (websockets.exceptions.WebSocketException, TimeoutError, OSError):
        pass
    return False


# -- a huge body ------------------------------------------------------------------------


def big_body(args: argparse.Namespace) -> dict[str, Any]:
    with running(args.source_dir, args.server_arg) as server:
        api = httpx.Client(base_url=server.http, timeout=120)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        api.post("/api/communities", json={"id": "v", "name": "V"}, headers=headers)
        api.post("/api/communities/v/schools", json={"id": "n", "name": "N"}, headers=headers)
        lesson = {
            "id": LESSON,
            "community_id": "v",
            "title": "T",
            "host_teacher": "Ms T",
            "host_school": "n",
            "starts_at": "2026-12-01T09:00:00Z",
            "ends_at": "2026-12-01T10:00:00Z",
        }
        api.post("/api/lessons", json=lesson, headers=headers)
        before = server.memory()
        teacher = {"Authorization": f"Bearer {server.token('Ms T', Role.TEACHER)}"}
        chunk = b" " * (1024 * 1024)

        def body() -> Iterator[bytes]:
            for _ in range(args.mib):
                yield chunk

        started = time.monotonic()
        try:
            status: int | str = api.patch(
                f"/api/lessons/{LESSON}", content=body(), headers=teacher
            ).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        return {
            "body_mib": args.mib,
            "status": status,
            "seconds": round(time.monotonic() - started, 2),
            "server_memory_kib_before": before,
            "server_memory_kib_after": server.memory(),
            "server_args": args.server_arg,
        }


def main(argv: list[str] | None = None) -> int:
    """Run one measurement and print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attacks")
    parser.add_argument("--source-dir", type=Path, default=REPO, help="tree to run the server from")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra lco serve argument; repeat"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    infl = commands.add_parser("inflation")
    infl.add_argument("--seconds", type=float, default=10)
    infl.add_argument("--inflated", type=int, default=1024 * 1024 - 1024)
    infl.add_argument("--plain", action="store_true", help="uncompressed frames")
    infl.add_argument("--attackers", type=int, default=1)
    infl.add_argument(
        "--bounded-inflation",
        action="store_true",
        help="run the server with inflation stopped at 64 KiB (compression kept)",
    )
    slow = commands.add_parser("slow-headers")
    slow.add_argument("--connections", type=int, default=500)
    slow.add_argument("--after", type=float, default=40)
    slow.add_argument("--fd-limit", type=int, help="the server's open-file limit (soft and hard)")
    body = commands.add_parser("big-body")
    body.add_argument("--mib", type=int, default=300)
    args = parser.parse_args(argv)
    handlers = {"inflation": inflation, "slow-headers": slow_headers, "big-body": big_body}
    print(json.dumps(handlers[args.command](args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
