"""Console sessions: a cookie that stands for the admin key, with CSRF protection.

The operator signs in once with the admin key (``POST /console/session``) and gets a
session cookie: ``HttpOnly`` (page scripts cannot read it), ``SameSite=Strict`` (a
browser never sends it with a request another site starts), ``Secure`` over HTTPS,
expiring after :data:`SESSION_LIFETIME`. The cookie is another credential for the
same HTTP API routes, with the admin key's scope: nothing else reaches the core.

State-changing requests (anything but GET, HEAD, OPTIONS) made with the cookie must
also carry the session's CSRF token in ``X-CSRF-Token`` (a header a cross-site form or
``no-cors`` fetch cannot set) and, when the browser names one, come from this
server's own origin. Sessions live in memory: a restart signs everyone out.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

SESSION_COOKIE = "lco_session"
CSRF_HEADER = "x-csrf-token"
SESSION_LIFETIME = 8 * 3600
# Sessions kept at most; the oldest goes first (each needs the admin key anyway).
MAX_SESSIONS = 1000
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """One signed-in browser."""

    id: str
    csrf_token: str
    expires_at: float


def same_origin(connection: HTTPConnection) -> bool:
    """Whether the browser says the request comes from this server's own pages.

    ``Sec-Fetch-Site`` (sent by current browsers) must not be ``cross-site`` or
    ``same-site``, and an ``Origin`` header, if any, must name this host. Clients
    that are not browsers send neither and are judged by their credentials alone.
    """
    site = connection.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = connection.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == connection.headers.get("host")


class ConsoleSessions:
    """Signed-in console sessions, in memory."""

    def __init__(
        self,
        admin_key: str,
        lifetime: float = SESSION_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._admin_key = admin_key.encode()
        self._lifetime = lifetime
        self._clock = clock
        self._sessions: dict[str, ConsoleSession] = {}

    def sign_in(self, key: str) -> ConsoleSession | None:
        """A new session if ``key`` is the admin key, else None."""
        if not key or not hmac.compare_digest(key.encode(), self._admin_key):
            return None
        self._expire()
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        session = ConsoleSession(
            id=secrets.token_urlsafe(32),
            csrf_token=secrets.token_urlsafe(32),
            expires_at=self._clock() + self._lifetime,
        )
        self._sessions[session.id] = session
        return session

    def find(self, connection: HTTPConnection) -> ConsoleSession | None:
        """The live session the request's cookie names, if any."""
        session_id = connection.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._sessions[session_id]
            return None
        return session

    def sign_out(self, session: ConsoleSession) -> None:
        """End a session; its cookie is refused from now on."""
        self._sessions.pop(session.id, None)

    def refusal(self, request: Request, session: ConsoleSession) -> str | None:
        """Why a request made with ``session``'s cookie is refused (CSRF), or None."""
        if request.method in SAFE_METHODS:
            return None
        if not same_origin(request):
            return "a request from another site may not use the console's session"
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
            return f"the console's CSRF token is missing or wrong ({CSRF_HEADER.title()})"
        return None

    def _expire(self) -> None:
        now = self._clock()
        for session_id, session in list(self._sessions.items()):
            if session.expires_at <= now:
                del self._sessions[session_id]


def session_answer(session: ConsoleSession) -> dict[str, object]:
    """What the console's scripts may know of their session (never the cookie's value)."""
    return {"signed_in": True, "csrf_token": session.csrf_token, "expires_at": session.expires_at}


def set_session_cookie(response: Response, session: ConsoleSession, secure: bool) -> None:
    """The cookie: HttpOnly, SameSite=Strict, Secure over HTTPS, for the session's life."""
    response.set_cookie(
        SESSION_COOKIE,
        session.id,
        max_age=max(1, int(session.expires_at - time.time())),
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def clear_session_cookie(response: Response, secure: bool) -> None:
    """Tell the browser to forget the cookie."""
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=secure
    )


def refused(status: int, message: str) -> JSONResponse:
    """An error answer shaped as the API's."""
    return JSONResponse({"error": message}, status_code=status)
