"""The web console: its pages' routes and the sign-in that starts a cookie session.

The console is static HTML and JavaScript (``web_client/console/``) that does
everything through the HTTP API; ``server/sessions.py`` explains the session.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .api_common import ApiError, read_model
from .sessions import (
    ConsoleSessions,
    clear_session_cookie,
    refused,
    same_origin,
    session_answer,
    set_session_cookie,
)


class SignIn(BaseModel):
    """The console's sign-in form."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(max_length=1024)


class ConsoleRoutes:
    """``/console/session``: sign in (POST), what the page may know (GET), sign out
    (DELETE, with the CSRF token)."""

    def __init__(self, sessions: ConsoleSessions, secure_cookies: bool) -> None:
        self._sessions = sessions
        self._secure = secure_cookies

    def _secure_for(self, request: Request) -> bool:
        return self._secure or request.url.scheme == "https"

    async def sign_in(self, request: Request) -> Response:
        """Check the admin key and start a session."""
        if not same_origin(request):
            # Signing a victim's browser into our console from another site is no attack
            # on the key, but nothing good either.
            return refused(403, "sign in from this server's own console page")
        try:
            form: SignIn = await read_model(request, SignIn)
        except ApiError as exc:
            return refused(exc.status, exc.message)
        session = self._sessions.sign_in(form.key)
        if session is None:
            return refused(401, "that is not the admin key")
        response = JSONResponse(session_answer(session))
        set_session_cookie(response, session, self._secure_for(request))
        return response

    async def show(self, request: Request) -> Response:
        """The session's CSRF token and expiry, for the page's scripts."""
        session = self._sessions.find(request)
        if session is None:
            return refused(401, "not signed in")
        return JSONResponse(session_answer(session))

    async def sign_out(self, request: Request) -> Response:
        """End the session (needs its CSRF token) and clear the cookie."""
        session = self._sessions.find(request)
        if session is None:
            return refused(401, "not signed in")
        problem = self._sessions.refusal(request, session)
        if problem is not None:
            return refused(403, problem)
        self._sessions.sign_out(session)
        response = Response(status_code=204)
        clear_session_cookie(response, self._secure_for(request))
        return response

    async def dispatch(self, request: Request) -> Response:
        """One route, three methods."""
        handler = {"POST": self.sign_in, "GET": self.show, "DELETE": self.sign_out}
        return await handler[request.method](request)

    def routes(self) -> list[Route]:
        """The session route."""
        return [Route("/console/session", self.dispatch, methods=["GET", "POST", "DELETE"])]
