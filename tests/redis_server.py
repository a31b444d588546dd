"""A real redis-server for the tests: on a free loopback port, in a temporary
directory, stopped afterwards."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis


@dataclass
class RedisServer:
    """One ``redis-server`` process (no persistence: a restart loses every key)."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        # Wait for the event "it answers PING" (or the process dies).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.directory / "redis.log").read_text())
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                try:
                    self.process.wait(0.02)
                except subprocess.TimeoutExpired:
                    pass
        raise RuntimeError("redis-server did not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2)

    def keys(self, pattern: str = "lco:*") -> list[str]:
        return sorted(self.client().keys(pattern))
