"""WHIP ingest (RFC 9725): OBS, GStreamer or a phone app publishes into a lesson.

``POST /whip`` with ``Content-Type: application/sdp`` and ``Authorization: Bearer
<join token>`` joins the token's lesson as a participant without a socket and
answers ``201 Created`` with the SDP answer (every candidate gathered: no trickle
needed) and a ``Location`` resource URL. ``DELETE`` on that URL (same token) ends
it. ``PATCH`` (trickle ICE, ICE restart) answers ``405``, which RFC 9725 4.3.1
allows a server that does not support it.

The publisher's tracks go through the same SFU path as a browser's: the lesson
names them, everyone who may see them subscribes. The token's role must publish
by itself: ``field_trip`` (a camera that only publishes, docs/field-trips.md),
``expert``, ``classroom``, ``teacher`` or ``delegate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import Coroutine
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from media.sfu import MediaError, MediaNotice
from signaling import protocol as p
from signaling.bus import Subscription, participant_topic
from signaling.lesson import Forbidden, Lesson
from signaling.permissions import Permission, is_allowed
from signaling.placement import PlacementUnavailable
from signaling.tokens import Grant, TokenError, verify_token

from .host import ConnectionHost
from .lesson_effects import execute_lesson_effect
from .media_messages import track_source
from .redis_relay import OwnerUnreachable
from .state import ServerState

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
MAX_OFFER_BYTES = p.MAX_SDP_CHARS


class WhipSession:
    """One WHIP publisher: a lesson participant whose only channel is HTTP."""

    def __init__(
        self,
        state: ConnectionHost,
        grant: Grant,
        lesson: Lesson,
        resource: str,
        sessions: dict[str, WhipSession],
    ) -> None:
        """``sessions``: the endpoint's sessions by resource id; this one leaves it as it
        ends."""
        self.state = state
        self.grant = grant
        self.lesson = lesson
        self.resource = resource
        self._sessions = sessions
        self.participant_id = ""
        self._subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self._ended = False
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Future[None]] = set()

    # -- what the SFU and the server call (as on a socket's connection) --------

    def post_track_ended(self, track_id: str) -> None:
        """One of its tracks ended by itself (the publisher went away)."""
        self._spawn(self._track_ended(track_id))

    def post_negotiation_failed(self) -> None:
        """Never happens: a WHIP publisher receives nothing."""

    def post_replaced(self) -> None:
        """Another connection took this participant's seat: this session ends."""
        self._spawn(self.end("replaced"))

    def post_moved(self) -> None:
        """Another node serves the lesson now (``--redis``): this session ends."""
        self._spawn(self.end("moved"))

    # -- lifecycle -------------------------------------------------------------

    async def start(self, offer_sdp: str) -> str:
        """Join the lesson, apply the offer, start forwarding; the answer SDP."""
        state = self.state
        participant, effects = self.lesson.join(self.grant)
        self.participant_id = participant.id
        if self.lesson.is_waiting(participant.id):
            for effect in self.lesson.leave(participant.id, "WHIP publishers cannot wait"):
                await execute_lesson_effect(state, effect)
            raise WhipError(403, "the lesson holds newcomers in its lobby; WHIP cannot wait there")
        state.add_connection(participant.id, self)
        self._subscription = state.bus.subscribe(participant_topic(participant.id))
        self._pump = asyncio.create_task(self._watch(self._subscription), name="whip-pump")
        await state.media.open(participant.id, self._ignore, None)
        for effect in effects:
            await execute_lesson_effect(state, effect)
        try:
            offer = p.PublishOffer(sdp=offer_sdp, tracks=[])
        except ValueError as exc:
            raise WhipError(400, f"the offer is not acceptable: {exc}") from None
        try:
            result = await state.media.accept_publish_offer(participant.id, offer.sdp)
        except MediaError as exc:
            raise WhipError(400, exc.message) from None
        if not result.started:
            raise WhipError(400, "the offer sends no audio or video the server can take")
        for incoming in result.started:
            info, track_effects = self.lesson.add_track(
                participant.id, incoming.kind, track_source(offer.tracks, incoming)
            )
            state.media.start_forwarding(participant.id, info.id, incoming)
            for effect in track_effects:
                await execute_lesson_effect(state, effect)
        return result.answer_sdp

    async def end(self, reason: str) -> None:
        """Leave the lesson and release the peer connection (idempotent)."""
        async with self._lock:
            if self._ended:
                return
            self._ended = True
        state = self.state
        pid = self.participant_id
        if pid:
            effects = self.lesson.leave(pid, reason)
            await state.media.close(pid)
            for effect in effects:
                await execute_lesson_effect(state, effect)
            state.registry.discard_if_empty(self.lesson.id)
            state.remove_connection(pid, self)
        if self._subscription is not None:
            self._subscription.close()
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self._sessions.pop(self.resource, None)

    async def _track_ended(self, track_id: str) -> None:
        if self._ended:
            return
        for effect in self.lesson.remove_track(self.participant_id, track_id, "ended"):
            await execute_lesson_effect(self.state, effect)
        participant = self.lesson.participants.get(self.participant_id)
        if participant is not None and not participant.tracks:
            await self.end("the WHIP publisher went away")

    async def _watch(self, subscription: Subscription) -> None:
        """Read the participant's messages: a bye (removed, lesson ended, shutdown)
        ends the session; everything else is for pages, not for a camera."""
        while True:
            text = await subscription.get()
            if '"bye"' in text:
                with contextlib.suppress(ValueError):
                    if p.parse_server_message(text)["type"] == "bye":
                        self._spawn(self.end("removed"))
                        return

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ignore(self, notice: MediaNotice) -> None:
        """The SFU's notices for a publisher that never subscribes."""


class WhipError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WhipEndpoint:
    """The WHIP routes."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.sessions: dict[str, WhipSession] = {}  # resource id -> WHIP publisher
        # With --redis, WHIP requests another node relays here (server/cluster.py).
        for question in ("whip_publish", "whip_end"):
            state.answers[question] = functools.partial(self.answer, question)

    def routes(self) -> list[Route]:
        return [
            Route("/whip", self.endpoint, methods=["POST", "OPTIONS"]),
            Route("/whip/resource/{resource}", self.resource, methods=["DELETE", "PATCH"]),
        ]

    @staticmethod
    def _token(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise WhipError(401, "Authorization: Bearer <join token> is required")
        return token.strip()

    def _verify(self, token: str) -> Grant:
        try:
            return verify_token(self.state.settings.secret, token)
        except TokenError as exc:
            raise WhipError(401, f"the token was refused: {exc.reason}") from None

    def _grant(self, request: Request) -> Grant:
        return self._verify(self._token(request))

    async def endpoint(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Accept-Post": SDP_TYPE})
        try:
            return await self._publish(request)
        except WhipError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return PlainTextResponse(exc.message, status_code=exc.status, headers=headers)

    async def _publish(self, request: Request) -> Response:
        state = self.state
        if not state.accepting:
            raise WhipError(503, "the server is shutting down")
        if request.headers.get("content-type", "").split(";")[0].strip() != SDP_TYPE:
            raise WhipError(415, f"the offer must be sent as {SDP_TYPE}")
        grant = self._grant(request)
        if not is_allowed(grant.role, Permission.PUBLISH, frozenset()):
            raise WhipError(403, f"a {grant.role.value} link may not publish")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_OFFER_BYTES:
            raise WhipError(413, f"the offer is larger than {MAX_OFFER_BYTES} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_OFFER_BYTES:
                raise WhipError(413, f"the offer is larger than {MAX_OFFER_BYTES} bytes")
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WhipError(400, "the offer is not UTF-8 text") from None
        if state.cluster is not None:
            # One node serves a lesson (--redis): another node's publish goes there.
            details = {"token": self._token(request), "offer": offer}
            elsewhere, reply = await self._ask(grant.lesson, "whip_publish", details)
            if elsewhere:
                return _relayed(reply)
        answer, resource = await self.publish_here(grant, offer)
        return Response(
            answer,
            status_code=201,
            media_type=SDP_TYPE,
            headers={"Location": f"/whip/resource/{resource}"},
        )

    async def _ask(self, lesson_id: str, question: str, details: Any) -> tuple[bool, Any]:
        cluster = self.state.cluster
        assert cluster is not None
        try:
            if question == "whip_publish":
                return await cluster.ask_placed(lesson_id, question, details)
            return await cluster.ask_owner(lesson_id, question, details)
        except (PlacementUnavailable, OwnerUnreachable) as exc:
            raise WhipError(503, f"the lesson's server cannot be reached now ({exc})") from None

    async def answer(self, question: str, lesson_id: str, details: Any) -> dict[str, Any]:
        """A WHIP request relayed from another node (``--redis``), answered here."""
        try:
            grant = self._verify(str(details["token"]))
            if grant.lesson != lesson_id:
                raise WhipError(403, "the token is for another lesson")
            if question == "whip_publish":
                answer, resource = await self.publish_here(grant, str(details["offer"]))
                return {"status": 201, "sdp": answer, "resource": resource}
            session = self.sessions.get(str(details["resource"]))
            if session is None or session.grant.token_id != grant.token_id:
                raise WhipError(404, "no such WHIP session")
            await session.end("left")
            return {"status": 200}
        except WhipError as exc:
            return {"status": exc.status, "message": exc.message}

    async def publish_here(self, grant: Grant, offer: str) -> tuple[str, str]:
        """Publish ``offer`` for ``grant`` on this node: the answer and the resource id."""
        state = self.state
        lesson = state.registry.lesson(grant.lesson)
        # The same link publishing again (OBS reconnecting) replaces the old session.
        for other in list(self.sessions.values()):
            if other.grant.token_id == grant.token_id:
                await other.end("rejoined")
        resource = secrets.token_urlsafe(16)
        session = WhipSession(state, grant, lesson, resource, self.sessions)
        self.sessions[resource] = session
        try:
            if lesson.ended:
                raise WhipError(403, "this lesson has ended")
            try:
                answer = await session.start(offer)
            except Forbidden as exc:
                raise WhipError(403, exc.message) from None
        except BaseException:
            await session.end("refused")
            state.registry.discard_if_empty(lesson.id)
            raise
        logger.info("WHIP publisher %s joined lesson %s", session.participant_id, lesson.id)
        return answer, resource

    async def resource(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["resource"])
        if request.method == "PATCH":
            # RFC 9725 4.3.1: no trickle ICE and no ICE restart here.
            return PlainTextResponse(
                "trickle ICE and ICE restarts are not supported: the answer holds every candidate",
                status_code=405,
                headers={"Allow": "DELETE"},
            )
        try:
            grant = self._grant(request)
            if session is None and self.state.cluster is not None:
                # Published through another node (--redis): its lesson's node ends it.
                details = {
                    "token": self._token(request),
                    "resource": request.path_params["resource"],
                }
                elsewhere, reply = await self._ask(grant.lesson, "whip_end", details)
                if elsewhere:
                    return _relayed(reply)
        except WhipError as exc:
            return PlainTextResponse(exc.message, status_code=exc.status)
        if session is None or session.grant.token_id != grant.token_id:
            return PlainTextResponse("no such WHIP session", status_code=404)
        await session.end("left")
        return Response(status_code=200)


def _relayed(reply: Any) -> Response:
    """The HTTP answer to a WHIP request another node answered."""
    if not isinstance(reply, dict):
        return PlainTextResponse("the lesson's server did not answer", status_code=503)
    status = int(reply.get("status", 503))
    if status == 201:
        return Response(
            str(reply["sdp"]),
            status_code=201,
            media_type=SDP_TYPE,
            headers={"Location": f"/whip/resource/{reply['resource']}"},
        )
    if status == 200:
        return Response(status_code=200)
    return PlainTextResponse(str(reply.get("message", "")), status_code=status)
