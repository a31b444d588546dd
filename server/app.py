"""The Starlette application: health, metrics, the signalling socket and the web client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from .api import Api
from .config import Settings
from .connection import ParticipantConnection
from .headers import SecurityHeaders
from .openapi import openapi_document
from .state import ServerState
from .whip import WhipEndpoint

WEB_CLIENT_DIR = Path(__file__).resolve().parent.parent / "web_client"


def origin_allowed(websocket: WebSocket, allowed: tuple[str, ...]) -> bool:
    """Same origin by default, or one of ``allowed``; native clients send no Origin."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    if origin in allowed or "*" in allowed:
        return True
    host = websocket.headers.get("host", "")
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == host


def create_app(settings: Settings) -> Starlette:
    """Build the ASGI app for ``settings``."""
    state = ServerState(settings)

    async def healthz(request: Request) -> Response:
        if not state.accepting:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return JSONResponse(state.metrics())

    api = Api(state)
    document = openapi_document(api, version("lco-classroom"))

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def join_page(request: Request) -> Response:
        return FileResponse(WEB_CLIENT_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def recordings_page(request: Request) -> Response:
        return FileResponse(
            WEB_CLIENT_DIR / "recordings.html", headers={"Cache-Control": "no-store"}
        )

    async def signaling(websocket: WebSocket) -> None:
        if not origin_allowed(websocket, settings.allowed_origins):
            # Closing before accept answers the upgrade with HTTP 403.
            await websocket.close(code=1008)
            return
        if not state.accepting:
            await websocket.close(code=1013)
            return
        await websocket.accept()
        await ParticipantConnection(state, websocket).run()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        background = [
            asyncio.create_task(state.keep_heartbeat(), name="heartbeat"),
            asyncio.create_task(state.webhooks.run(), name="webhooks"),
            asyncio.create_task(state.recordings.keep_retention(), name="recording-retention"),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await state.shutdown()
            state.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            Route("/openapi.json", openapi),
            *api.routes(),
            *api.recordings.routes(),
            *WhipEndpoint(state).routes(),
            Route("/recordings", recordings_page),
            Route("/", join_page),
            Route("/join", join_page),
            WebSocketRoute("/ws", signaling),
            Mount("/static", StaticFiles(directory=WEB_CLIENT_DIR), name="static"),
        ],
        lifespan=lifespan,
        middleware=[Middleware(SecurityHeaders)],
    )
    app.state.lco = state
    return app
