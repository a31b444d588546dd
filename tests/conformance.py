"""Every message a test client receives from the server is checked against the schema.

``docs/protocol.schema.json`` is what a client in another language is written from;
this module makes the whole test suite a conformance run of the server against it.
:func:`install` wraps ``recv`` of websockets' asyncio and sync connections (what
``media.client.LessonClient``, the raw sockets of the tests and the fuzz test all
read with), so every text frame that reaches a test from ``/ws`` is validated
before the test sees it. Violations are collected (a reader task may swallow the
exception) and each test fails if any arrived during it (``tests/conftest.py``).
The browser tests feed what Chromium receives to :meth:`Conformance.observe`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import websockets.asyncio.client
import websockets.asyncio.connection
import websockets.sync.client
import websockets.sync.connection

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.schema.json"


@dataclass
class Conformance:
    """Counts what was validated and keeps what failed."""

    # One validator per message type (the union's discriminator), so that an error
    # names the key at fault rather than "not valid under any of the given schemas".
    validators: dict[str, jsonschema.protocols.Validator]
    by_type: Counter[str] = field(default_factory=Counter)
    sockets: int = 0
    violations: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path = SCHEMA_PATH) -> Conformance:
        """A checker for the server messages of the committed schema."""
        bundle = json.loads(path.read_text())
        validator_class = jsonschema.validators.validator_for(bundle)
        validator_class.check_schema(bundle)
        mapping = bundle["$defs"]["ServerMessage"]["discriminator"]["mapping"]
        return cls(
            {kind: validator_class({**bundle, "$ref": ref}) for kind, ref in mapping.items()}
        )

    @property
    def validated(self) -> int:
        """How many server messages were checked."""
        return sum(self.by_type.values())

    def check(self, data: str | bytes) -> None:
        """Validate one frame the server sent; raise (and remember) if it does not conform."""
        problem = self._problem(data)
        if problem is not None:
            self.violations.append(problem)
            raise AssertionError(problem)

    def observe(self, data: str | bytes) -> None:
        """Validate one frame from an event callback, which must not raise: only remember."""
        problem = self._problem(data)
        if problem is not None:
            self.violations.append(problem)

    def _problem(self, data: str | bytes) -> str | None:
        shown = repr(data[:300])
        if not isinstance(data, str):
            return f"the server sent a binary frame: {shown}"
        try:
            message = json.loads(data)
        except ValueError:
            return f"the server sent text that is not JSON: {shown}"
        kind = message.get("type") if isinstance(message, dict) else None
        validator = self.validators.get(kind) if isinstance(kind, str) else None
        if validator is None:
            return f"the server sent a message of no documented type {kind!r}: {shown}"
        error = jsonschema.exceptions.best_match(validator.iter_errors(message))
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "(top)"
            return (
                f"server message breaks docs/protocol.schema.json at {where}: "
                f"{error.message}; {shown}"
            )
        self.by_type[kind] += 1
        return None


def _is_signalling(url: object) -> bool:
    return urlsplit(str(url)).path.endswith("/ws")


def install(conformance: Conformance) -> Callable[[], None]:
    """Validate every frame received on a client socket to ``/ws``; returns an undo."""
    originals: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        originals.append((owner, name, original))
        setattr(owner, name, make(original))

    def async_recv(original: Any) -> Any:
        async def recv(self: Any, *args: Any, **kwargs: Any) -> Any:
            data = await original(self, *args, **kwargs)
            if getattr(self, "_lco_signalling", False):
                conformance.check(data)
            return data

        return recv

    def sync_recv(original: Any) -> Any:
        def recv(self: Any, *args: Any, **kwargs: Any) -> Any:
            data = original(self, *args, **kwargs)
            if getattr(self, "_lco_signalling", False):
                conformance.check(data)
            return data

        return recv

    def async_handshake(original: Any) -> Any:
        async def handshake(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = await original(self, *args, **kwargs)
            _opened(self)
            return result

        return handshake

    def sync_handshake(original: Any) -> Any:
        def handshake(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            _opened(self)
            return result

        return handshake

    def _opened(connection: Any) -> None:
        if _is_signalling(connection.request.path):
            connection._lco_signalling = True
            conformance.sockets += 1

    wrap(websockets.asyncio.connection.Connection, "recv", async_recv)
    wrap(websockets.sync.connection.Connection, "recv", sync_recv)
    wrap(websockets.asyncio.client.ClientConnection, "handshake", async_handshake)
    wrap(websockets.sync.client.ClientConnection, "handshake", sync_handshake)

    def undo() -> None:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)

    return undo
