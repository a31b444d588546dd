"""The server's logs: text or JSON lines, a request and participant id on each, no secrets.

Every line carries the id of the HTTP request or WebSocket connection it was logged
for (``request_id``) and, once a socket has joined, its participant (``participant_id``);
both are context variables, so tasks a request starts inherit them. Lines logged
outside any request (start-up, the heartbeat) carry ``null`` for both.

No token or key should ever reach a log; :class:`Redact` is the safety net behind
that rule: whatever a bug passes to a logger, the configured secrets and anything
shaped like a JWT are replaced by ``[redacted]`` before a line is written.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import secrets
import sys
from collections.abc import Iterable
from typing import Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LogFormat = Literal["text", "json"]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
PARTICIPANT_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "participant_id", default=None
)

# Three base64url parts, the first two of which start as JSON objects do ("{" is "ey").
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+")
REDACTED = "[redacted]"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(participant_id)s]: %(message)s"


logger = logging.getLogger(__name__)


def bind_participant(participant_id: str, lesson_id: str, role: str) -> None:
    """Mark the lines the current task (and tasks it starts from now on) logs as this
    participant's, starting with this join."""
    PARTICIPANT_ID.set(participant_id)
    logger.info("joined lesson %s as %s", lesson_id, role)


class ContextIds(logging.Filter):
    """Puts ``request_id`` and ``participant_id`` on every record ("-" when none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        record.participant_id = PARTICIPANT_ID.get() or "-"
        return True


class Redact(logging.Filter):
    """Replaces the given secrets and any JWT in a record's message by ``[redacted]``."""

    def __init__(self, secrets_to_hide: Iterable[str]) -> None:
        super().__init__()
        # Longest first: a secret that contains another is hidden whole.
        self._secrets = sorted({s for s in secrets_to_hide if len(s) >= 8}, key=len, reverse=True)

    def clean(self, text: str) -> str:
        """``text`` without the secrets and tokens."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return JWT_PATTERN.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.clean(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request and participant id."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", "-")
        participant_id = getattr(record, "participant_id", "-")
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": None if request_id == "-" else request_id,
            "participant_id": None if participant_id == "-" else participant_id,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, fmt: LogFormat, hide: Iterable[str] = ()) -> None:
    """Send every logger's lines (uvicorn's too) to stderr in ``fmt``, secrets hidden.

    Standard output stays free for what the user asked to see (the demo links).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextIds())
    handler.addFilter(Redact(hide))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aioice logs every ICE check at INFO: keep operators' logs readable.
    logging.getLogger("aioice").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def new_request_id() -> str:
    """A short random id for one request or socket."""
    return secrets.token_hex(6)


class RequestIds:
    """Gives every HTTP request and WebSocket connection an id, in the logs and in the
    ``X-Request-ID`` response header (so a user's report can be found in the logs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        token = REQUEST_ID.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
