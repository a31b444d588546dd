"""The zero-hop baseline: a trivial UDP relay between raw publishers and subscribers.

``python -m benchmarks udp-relay --host H --port P``. A subscriber registers by
sending ``SUB`` (again every second, so that a lost registration heals); every
other datagram is copied, as received, to every registered subscriber. No
signalling, no ICE, no DTLS, no SRTP work (publishers and subscribers share one
key), no RTCP: what remains between a publisher's ``sendto`` and a subscriber's
``recvfrom`` is the kernel's UDP path and one ``recvfrom`` + ``sendto`` per copy in
one Python process. Latency through it is the floor for "added latency", and its CPU
per forwarded packet the floor of a Python forwarder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

REGISTER = b"SUB"


class Relay(asyncio.DatagramProtocol):
    """Copies each datagram to every registered subscriber."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.subscribers: dict[tuple[str, int], None] = {}
        self.forwarded = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data == REGISTER:
            self.subscribers[addr] = None
            return
        transport = self.transport
        if transport is None:
            return
        for subscriber in self.subscribers:
            transport.sendto(data, subscriber)
        self.forwarded += len(self.subscribers)


async def serve(host: str, port: int) -> None:
    """Relay until SIGTERM/SIGINT; print a ready line, then a summary line."""
    loop = asyncio.get_running_loop()
    transport, relay = await loop.create_datagram_endpoint(Relay, local_addr=(host, port))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(json.dumps({"event": "ready", "address": [host, port]}), flush=True)
    try:
        await stop.wait()
    finally:
        transport.close()
    print(json.dumps({"event": "result", "forwarded": relay.forwarded}), flush=True)


def main(argv: list[str]) -> int:
    """Entry point of ``python -m benchmarks udp-relay``."""
    parser = argparse.ArgumentParser(prog="lco bench udp-relay")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
