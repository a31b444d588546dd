"""Nested network namespaces: a "school network" inside the test run's namespace.

``scripts/netns-run`` puts the whole test run in a private namespace with a veth
pair (``10.213.0.1`` for the server, ``10.213.0.2`` for a service next to it).
A :class:`NestedNamespace` is one more namespace inside that one, joined to it by
its own veth pair and routed through it, with an nftables firewall of the test's
choosing on the way out: a school network that drops UDP, or lets only port 443
through. Programs started in it (:meth:`NestedNamespace.command`) see only that.

It needs no name in ``/run/netns``: a holder process owns the namespace, and the
namespace, its veth pair and its firewall vanish when the holder is killed.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from types import TracebackType

_numbers = itertools.count(1)


class NestedNamespace:
    """A network namespace behind the test namespace, with its own firewall."""

    def __init__(self) -> None:
        number = next(_numbers)
        if number > 250:
            raise RuntimeError("too many nested namespaces in one run")
        self.subnet = f"10.214.{number}"
        # Its address, and the test namespace's end of the link (its gateway).
        self.address = f"{self.subnet}.2"
        self.gateway = f"{self.subnet}.1"
        self._outer_name = f"lcon{number}"
        self._holder: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NestedNamespace:
        # unshare says "ready" only once it is inside the new namespace: no race.
        self._holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "echo ready; exec sleep infinity"],
            stdout=subprocess.PIPE,
        )
        try:
            assert self._holder.stdout is not None
            if self._holder.stdout.readline() != b"ready\n":
                raise RuntimeError("unshare --net did not start")
            self._link()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> str:
        """The namespace file, for ``nsenter --net=``."""
        assert self._holder is not None
        return f"/proc/{self._holder.pid}/ns/net"

    def command(self, *args: str) -> list[str]:
        """``args`` as a command line that runs inside this namespace."""
        return ["nsenter", f"--net={self.path}", "--", *args]

    def run(self, *args: str, stdin: str | None = None) -> str:
        """Run a command inside; its output. Raises if it fails."""
        result = subprocess.run(
            self.command(*args), input=stdin, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def firewall(self, ruleset: str) -> None:
        """Load an nftables ruleset inside (tables of this namespace only)."""
        self.run("nft", "-f", "-", stdin=ruleset)

    def counter(self, family: str, table: str, name: str) -> int:
        """Packets a named nftables counter has counted."""
        listing = json.loads(self.run("nft", "-j", "list", "counter", family, table, name))
        for item in listing["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise KeyError(name)

    def launcher(self, program: str, path: Path) -> Path:
        """A script at ``path`` that runs ``program`` (with its arguments) inside, for
        tools that start a program themselves (Playwright's ``executable_path``)."""
        path.write_text(f'#!/bin/sh\nexec nsenter --net={self.path} -- {program} "$@"\n')
        path.chmod(0o755)
        return path

    def close(self) -> None:
        """Kill the holder: the namespace, its veth pair and its firewall go with it."""
        holder, self._holder = self._holder, None
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()

    def _link(self) -> None:
        outer, inner = self._outer_name, f"{self._outer_name}i"
        # Created here, the inner end moved into the namespace at once.
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", self.path)
        _ip("addr", "add", f"{self.gateway}/24", "dev", outer)
        _ip("link", "set", outer, "up")
        self.run("ip", "link", "set", "lo", "up")
        self.run("ip", "addr", "add", f"{self.address}/24", "dev", inner)
        self.run("ip", "link", "set", inner, "up")
        self.run("ip", "route", "add", "default", "via", self.gateway)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)
