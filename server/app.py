"""The Starlette application: health, readiness, metrics, the API, the signalling socket,
the web client, the landing page and the console."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
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

from media.loop_watch import loop_watch

from .api import Api
from .config import Settings
from .connection import ParticipantConnection
from .console import ConsoleRoutes
from .headers import SecurityHeaders
from .logs import RequestIds
from .metrics import CONTENT_TYPE
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

    async def readyz(request: Request) -> Response:
        # Liveness is /healthz; ready means joins would work now: not shutting down,
        # both databases answer, the event loop keeps time.
        problems = state.readiness()
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        return Response(state.prometheus.exposition(), media_type=CONTENT_TYPE)

    async def metrics_json(request: Request) -> Response:
        return JSONResponse(state.metrics())

    api = Api(state)
    whip = WhipEndpoint(state)
    document = openapi_document(api, version("lco-classroom"))

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    def page(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            return FileResponse(WEB_CLIENT_DIR / name, headers={"Cache-Control": "no-store"})

        return serve

    async def signaling(websocket: WebSocket) -> None:
        if not origin_allowed(websocket, settings.allowed_origins):
            # Closing before accept answers the upgrade with HTTP 403.
            await websocket.close(code=1008)
            return
        if not state.accepting:
            await websocket.close(code=1013)
            return
        await websocket.accept()
        if state.cluster is not None:
            await state.cluster.serve_socket(websocket)
        else:
            await ParticipantConnection(state, websocket).run()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if state.cluster is not None:
            await state.cluster.start()
        # Lag for Prometheus and /readyz; connections' keep-alives ask the same watch.
        loop_watch().on_lag(state.prometheus.observe_lag)
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
            if state.cluster is not None:
                await state.cluster.stop()
            state.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/metrics.json", metrics_json),
            Route("/openapi.json", openapi),
            *api.routes(),
            *api.recordings.routes(),
            *whip.routes(),
            Route("/", page("landing.html")),
            Route("/join", page("index.html")),
            Route("/recordings", page("recordings.html")),
            Route("/console", page("console/index.html")),
            *ConsoleRoutes(
                state.console_sessions, (settings.public_url or "").startswith("https://")
            ).routes(),
            WebSocketRoute("/ws", signaling),
            Mount("/static", StaticFiles(directory=WEB_CLIENT_DIR), name="static"),
        ],
        lifespan=lifespan,
        middleware=[Middleware(RequestIds), Middleware(SecurityHeaders)],
    )
    app.state.lco = state
    return app
