"""What the HTTP API's modules share: errors, operations, reading bodies, JSON answers.

``server/api.py`` (communities, schools, endpoints, lessons, links, attendance) and
``server/recordings_api.py`` (recordings) both build on these; neither imports the
other's module for them. A lesson's routes check the caller through
:class:`LessonAccess`, which :class:`server.api.Api` is.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Handler = Callable[[Request], Awaitable[Response]]

MAX_BODY_BYTES = 256 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # Close the connection after answering: the client may still be sending a
        # body that nobody will read.
        self.close = close


@dataclass(frozen=True, slots=True)
class Operation:
    """One API operation and its documentation."""

    path: str
    method: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    many: bool = False
    status: int = 200
    auth: str = "admin key"
    csv: bool = False


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls: the operator (admin key) or a teacher of one lesson."""

    admin: bool
    lesson: str | None = None
    # When the teacher token used expires: no link it mints may outlive it.
    expires_at: int | None = None


def _field_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    if first["type"] == "missing":
        return f"missing field {where!r}"
    return f"field {where!r}: {first['msg']}"


def _too_large() -> ApiError:
    return ApiError(413, f"body larger than {MAX_BODY_BYTES // 1024} KiB", close=True)


def check_declared_length(request: Request) -> None:
    """Refuse at once a body declared too large, before reading any of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()


async def _read_body(request: Request) -> bytes:
    """The body, read as it arrives and abandoned as soon as it passes the limit."""
    check_declared_length(request)
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > MAX_BODY_BYTES:
            raise _too_large()
    return bytes(received)


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ApiError(400, f"duplicate key {key!r} in the body")
        result[key] = value
    return result


async def read_model(request: Request, model: type[BaseModel]) -> Any:
    """The body as ``model``: read within the size limit, strict JSON, validated.
    Raises :class:`ApiError` (400, 413, 422) naming what is wrong."""
    raw = await _read_body(request)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "body is not UTF-8 text (JSON must be)") from None
    try:
        data = json.loads(text or "null", object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise ApiError(400, "body is nested too deeply") from None
    except ValueError:
        # Python refuses to convert integers of more than 4300 digits.
        raise ApiError(400, "body holds a number too long") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, _field_error(exc)) from None


class LessonAccess(Protocol):
    """Who may use a lesson's routes, and the node that serves a lesson elsewhere."""

    def lesson_access(self, request: Request, lesson_id: str) -> Principal:
        """The caller, if it may use ``lesson_id``'s routes; else :class:`ApiError`."""
        ...

    async def ask_owner(self, lesson_id: str, question: str, details: Any = None) -> Any:
        """What the node that serves ``lesson_id`` answers (None: served here or nowhere)."""
        ...


def json_response(value: Any, status: int = 200) -> JSONResponse:
    """``value`` as a JSON answer; pydantic models, alone or in a list, as their JSON."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return JSONResponse(value, status_code=status)
