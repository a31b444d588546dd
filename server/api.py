"""The HTTP API: communities, schools, endpoints, lessons, join links, attendance.

Every route needs credentials: the operator's admin key, or (for one lesson's own
routes) a teacher's join token for that lesson, as ``Authorization: Bearer ...``.
Bodies are read as a stream and refused past ``MAX_BODY_BYTES`` (413; the helpers
every API module shares are in ``server/api_common.py``), then
validated by the pydantic models in ``signaling.catalogue``; errors answer 4xx
with a message that names the field. No input should ever answer 500.
"""

from __future__ import annotations

import hmac
import time
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from signaling.attendance import attendance_rows, rows_as_csv, rows_as_json
from signaling.catalogue import (
    CatalogueError,
    Community,
    CommunityIn,
    Endpoint,
    EndpointIn,
    Identifier,
    Lesson,
    LessonIn,
    LessonPatch,
    PersonName,
    School,
    SchoolIn,
)
from signaling.permissions import Role
from signaling.placement import PlacementUnavailable
from signaling.records import LessonEndedRecord
from signaling.tokens import TokenError, check_identifier, verify_token

from .api_common import (
    ApiError,
    Handler,
    Operation,
    Principal,
    check_declared_length,
    json_response,
    read_model,
)
from .lesson_effects import execute_lesson_effect
from .links import JoinLink, LinkError, LinkMaker
from .live import LiveLesson
from .qr import qr_svg_data_uri
from .recordings_api import RecordingsApi
from .redis_relay import OwnerUnreachable
from .state import ServerState


class LinkRequest(BaseModel):
    """Ask for join links: one per name, for one role (and school)."""

    model_config = ConfigDict(extra="forbid")
    role: Role
    names: list[PersonName] = Field(min_length=1, max_length=500)
    school: Identifier | None = None
    ttl_minutes: int | None = Field(default=None, ge=1, le=7 * 24 * 60)


def _attachment(filename: str) -> str:
    """Content-Disposition for ``filename`` (RFC 6266): an ASCII fallback for old
    clients, the exact name percent-encoded as UTF-8 (headers are Latin-1 only)."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _with_qr(request: Request, links: list[JoinLink]) -> list[JoinLink]:
    """With ``?qr=svg``, each link gets its QR code (for phones and printed sheets)."""
    wanted = request.query_params.get("qr")
    if wanted is None:
        return links
    if wanted != "svg":
        raise ApiError(422, "query 'qr' must be svg")
    return [link.model_copy(update={"qr_svg": qr_svg_data_uri(link.link)}) for link in links]


class Api:
    """Route handlers over the server state."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.catalogue = state.catalogue
        self.recordings = RecordingsApi(state, self)

    # -- auth ----------------------------------------------------------------

    def _principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        if not header:
            # The web console's cookie session: the admin key's scope, and a CSRF check
            # for anything that changes state (server/sessions.py).
            session = self.state.console_sessions.find(request)
            if session is not None:
                problem = self.state.console_sessions.refusal(request, session)
                if problem is not None:
                    raise ApiError(403, problem)
                return Principal(admin=True)
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise ApiError(401, "credentials required: Authorization: Bearer <admin key or token>")
        if hmac.compare_digest(credential.encode(), self.state.settings.admin_key.encode()):
            return Principal(admin=True)
        try:
            grant = verify_token(self.state.settings.secret, credential)
        except TokenError as exc:
            raise ApiError(401, f"credentials refused: {exc.reason}") from None
        if grant.role is not Role.TEACHER:
            raise ApiError(403, "only teachers and the operator may use the API")
        # A link removed from its lesson opens no door: not the socket, not the API,
        # and so mints no links either.
        if self.state.records.is_banned(grant.lesson, grant.token_id):
            raise ApiError(403, "this link was removed from the lesson")
        return Principal(admin=False, lesson=grant.lesson, expires_at=grant.expires_at)

    def _admin(self, request: Request) -> None:
        if not self._principal(request).admin:
            raise ApiError(403, "this needs the operator's admin key")

    def lesson_access(self, request: Request, lesson_id: str) -> Principal:
        principal = self._principal(request)
        try:
            # Ids as tokens carry them: no lesson can have another, and the id may
            # end up in a header (the CSV's file name).
            check_identifier("path 'lesson_id'", lesson_id)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        if not principal.admin and principal.lesson != lesson_id:
            raise ApiError(403, "your token is for another lesson")
        return principal

    # -- communities, schools, endpoints ---------------------------------------

    async def list_communities(self, request: Request) -> Response:
        self._admin(request)
        return json_response(self.catalogue.communities())

    async def create_community(self, request: Request) -> Response:
        self._admin(request)
        return json_response(
            self.catalogue.add_community(await read_model(request, CommunityIn)), 201
        )

    async def show_community(self, request: Request) -> Response:
        self._admin(request)
        community = self.catalogue.community(request.path_params["community_id"])
        return json_response(
            {
                **community.model_dump(mode="json"),
                "schools": [
                    s.model_dump(mode="json") for s in self.catalogue.schools(community.id)
                ],
            }
        )

    async def list_schools(self, request: Request) -> Response:
        self._admin(request)
        return json_response(self.catalogue.schools(request.path_params["community_id"]))

    async def create_school(self, request: Request) -> Response:
        self._admin(request)
        school = self.catalogue.add_school(
            request.path_params["community_id"], await read_model(request, SchoolIn)
        )
        return json_response(school, 201)

    async def list_endpoints(self, request: Request) -> Response:
        self._admin(request)
        school = self.catalogue.school(request.path_params["school_id"])
        return json_response(self.catalogue.endpoints(school.id))

    async def create_endpoint(self, request: Request) -> Response:
        self._admin(request)
        endpoint = self.catalogue.add_endpoint(
            request.path_params["school_id"], await read_model(request, EndpointIn)
        )
        return json_response(endpoint, 201)

    # -- lessons -----------------------------------------------------------------

    async def list_lessons(self, request: Request) -> Response:
        self._admin(request)
        return json_response(self.catalogue.lessons(request.query_params.get("community")))

    async def create_lesson(self, request: Request) -> Response:
        self._admin(request)
        return json_response(self.catalogue.add_lesson(await read_model(request, LessonIn)), 201)

    async def show_lesson(self, request: Request) -> Response:
        lesson_id = request.path_params["lesson_id"]
        self.lesson_access(request, lesson_id)
        lesson = self.catalogue.lesson(lesson_id)
        live = self.state.registry.find(lesson_id)
        summary = (
            {"participants": len(live.participants), "waiting": len(live.waiting)}
            if live is not None
            else await self.ask_owner(lesson_id, "summary")
        )
        return json_response({**lesson.model_dump(mode="json"), "live": summary})

    async def ask_owner(self, lesson_id: str, question: str, details: Any = None) -> Any:
        """What the node that serves a lesson not served here answers (None: no node
        serves it, or there are no other nodes)."""
        cluster = self.state.cluster
        if cluster is None:
            return None
        try:
            _, answer = await cluster.ask_owner(lesson_id, question, details)
        except (PlacementUnavailable, OwnerUnreachable) as exc:
            raise ApiError(503, f"the lesson's server cannot be reached now ({exc})") from None
        return answer

    async def update_lesson(self, request: Request) -> Response:
        lesson_id = request.path_params["lesson_id"]
        self.lesson_access(request, lesson_id)
        patch = await read_model(request, LessonPatch)
        return json_response(self.catalogue.update_lesson(lesson_id, patch))

    async def end_lesson(self, request: Request) -> Response:
        lesson_id = request.path_params["lesson_id"]
        self.lesson_access(request, lesson_id)
        lesson = self.catalogue.end_lesson(lesson_id)
        live = self.state.registry.find(lesson_id)
        if live is not None:
            for effect in live.close("the lesson was ended by its organiser"):
                await execute_lesson_effect(self.state, effect)
        elif not await self.ask_owner(lesson_id, "end"):
            self.state.record(LessonEndedRecord(lesson_id, time.time()))
        return json_response(lesson)

    # -- links -------------------------------------------------------------------

    def _links(self, request: Request, principal: Principal) -> LinkMaker:
        settings = self.state.settings
        return LinkMaker(
            self.catalogue,
            settings.secret,
            settings.public_url or str(request.base_url),
            max_lifetime=settings.max_link_lifetime,
            not_after=principal.expires_at,
        )

    async def lesson_links(self, request: Request) -> Response:
        """The standard set: teacher, expert guest, one per invited classroom endpoint."""
        lesson_id = request.path_params["lesson_id"]
        principal = self.lesson_access(request, lesson_id)
        try:
            links = self._links(request, principal).standard(lesson_id)
        except LinkError as exc:
            raise ApiError(422, str(exc)) from None
        return json_response(_with_qr(request, links))

    async def create_links(self, request: Request) -> Response:
        """Links for named people of one role (students, co-teachers, delegates...)."""
        lesson_id = request.path_params["lesson_id"]
        principal = self.lesson_access(request, lesson_id)
        body: LinkRequest = await read_model(request, LinkRequest)
        ttl = body.ttl_minutes * 60 if body.ttl_minutes else None
        try:
            links = self._links(request, principal).named(
                lesson_id, body.role, list(body.names), body.school or "", ttl
            )
        except LinkError as exc:
            raise ApiError(422, str(exc)) from None
        return json_response(_with_qr(request, links), 201)

    # -- live view ---------------------------------------------------------------

    async def live_lessons(self, request: Request) -> Response:
        """Every running lesson: participants per school, publishing, bitrate, loss."""
        self._admin(request)
        lessons: list[Any] = [x.model_dump(mode="json") for x in await self.state.live.lessons()]
        cluster = self.state.cluster
        if cluster is not None:
            # With --redis: every node's lessons (a node that does not answer is left out).
            try:
                for answer in await cluster.ask_every_node("live_lessons"):
                    lessons += answer or []
            except PlacementUnavailable as exc:
                raise ApiError(503, f"the other servers cannot be reached now ({exc})") from None
        return json_response(lessons)

    async def live_lesson(self, request: Request) -> Response:
        """One running lesson's live view; 404 while nobody is in it."""
        lesson_id = request.path_params["lesson_id"]
        self.lesson_access(request, lesson_id)
        live = self.state.registry.find(lesson_id)
        if live is None:
            elsewhere = await self.ask_owner(lesson_id, "live")
            if elsewhere is None:
                raise ApiError(404, f"nobody is in lesson {lesson_id!r} now")
            return json_response(elsewhere)
        return json_response(await self.state.live.lesson(live))

    # -- attendance --------------------------------------------------------------

    async def attendance(self, request: Request) -> Response:
        lesson_id = request.path_params["lesson_id"]
        self.lesson_access(request, lesson_id)
        fmt: Literal["json", "csv"] | str = request.query_params.get("format", "json")
        if fmt not in ("json", "csv"):
            raise ApiError(422, "query 'format' must be json or csv")
        rows = attendance_rows(self.state.records.attendance(lesson_id), time.time())
        if fmt == "csv":
            return PlainTextResponse(
                rows_as_csv(rows),
                media_type="text/csv",
                headers={"Content-Disposition": _attachment(f"{lesson_id}.csv")},
            )
        return JSONResponse(rows_as_json(lesson_id, rows))

    # -- routing -----------------------------------------------------------------

    def operations(self) -> list[Operation]:
        """Every API operation: its route, handler and what the OpenAPI document says."""
        lesson_scope = "admin key, or a teacher token for this lesson"
        return [
            Operation(
                "/api/communities",
                "GET",
                self.list_communities,
                "List communities",
                response=Community,
                many=True,
            ),
            Operation(
                "/api/communities",
                "POST",
                self.create_community,
                "Create a community",
                body=CommunityIn,
                response=Community,
                status=201,
            ),
            Operation(
                "/api/communities/{community_id}",
                "GET",
                self.show_community,
                "Show a community and its schools",
                response=Community,
            ),
            Operation(
                "/api/communities/{community_id}/schools",
                "GET",
                self.list_schools,
                "List a community's schools",
                response=School,
                many=True,
            ),
            Operation(
                "/api/communities/{community_id}/schools",
                "POST",
                self.create_school,
                "Add a school to a community",
                body=SchoolIn,
                response=School,
                status=201,
            ),
            Operation(
                "/api/schools/{school_id}/endpoints",
                "GET",
                self.list_endpoints,
                "List a school's classroom endpoints",
                response=Endpoint,
                many=True,
            ),
            Operation(
                "/api/schools/{school_id}/endpoints",
                "POST",
                self.create_endpoint,
                "Register a classroom endpoint (room PC) with its headcount",
                body=EndpointIn,
                response=Endpoint,
                status=201,
            ),
            Operation(
                "/api/lessons",
                "GET",
                self.list_lessons,
                "List lessons (query: community)",
                response=Lesson,
                many=True,
            ),
            Operation(
                "/api/lessons",
                "POST",
                self.create_lesson,
                "Schedule a lesson",
                body=LessonIn,
                response=Lesson,
                status=201,
            ),
            Operation(
                "/api/lessons/{lesson_id}",
                "GET",
                self.show_lesson,
                "Show a lesson (with live counts)",
                response=Lesson,
                auth=lesson_scope,
            ),
            Operation(
                "/api/lessons/{lesson_id}",
                "PATCH",
                self.update_lesson,
                "Change a scheduled lesson",
                body=LessonPatch,
                response=Lesson,
                auth=lesson_scope,
            ),
            Operation(
                "/api/lessons/{lesson_id}/end",
                "POST",
                self.end_lesson,
                "End a lesson for everyone",
                response=Lesson,
                auth=lesson_scope,
            ),
            Operation(
                "/api/lessons/{lesson_id}/links",
                "GET",
                self.lesson_links,
                "Join links: teacher, guest expert, one per invited classroom endpoint",
                response=JoinLink,
                many=True,
                auth=lesson_scope,
            ),
            Operation(
                "/api/lessons/{lesson_id}/links",
                "POST",
                self.create_links,
                "Join links for named people of one role (students...)",
                body=LinkRequest,
                response=JoinLink,
                many=True,
                status=201,
                auth=lesson_scope,
            ),
            Operation(
                "/api/live",
                "GET",
                self.live_lessons,
                "Running lessons: participants per school, who publishes, bitrate, loss, warnings",
                response=LiveLesson,
                many=True,
            ),
            Operation(
                "/api/lessons/{lesson_id}/live",
                "GET",
                self.live_lesson,
                "A running lesson's live view (404 while nobody is in it)",
                response=LiveLesson,
                auth=lesson_scope,
            ),
            Operation(
                "/api/lessons/{lesson_id}/attendance",
                "GET",
                self.attendance,
                "Attendance per participant and school (query: format=json|csv)",
                auth=lesson_scope,
                csv=True,
            ),
            *self.recordings.operations(),
        ]

    def routes(self) -> list[Route]:
        """Every API route, wrapped so that errors become JSON answers."""

        def wrap(handler: Handler) -> Handler:
            async def endpoint(request: Request) -> Response:
                try:
                    # Every route, with a body or not, refuses one declared too large.
                    check_declared_length(request)
                    return await handler(request)
                except ApiError as exc:
                    headers = {"Connection": "close"} if exc.close else None
                    return JSONResponse(
                        {"error": exc.message}, status_code=exc.status, headers=headers
                    )
                except CatalogueError as exc:
                    return JSONResponse({"error": exc.message}, status_code=exc.status)

            return endpoint

        by_path: dict[str, dict[str, Handler]] = {}
        for operation in self.operations():
            by_path.setdefault(operation.path, {})[operation.method] = wrap(operation.handler)

        def dispatch(methods: dict[str, Handler]) -> Handler:
            async def endpoint(request: Request) -> Response:
                return await methods[request.method](request)

            return endpoint

        return [
            Route(path, dispatch(methods), methods=list(methods))
            for path, methods in by_path.items()
        ]
