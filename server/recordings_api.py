"""HTTP routes of recordings: list, start and stop, delete, download with ranges.

The API operations (in the OpenAPI document) take the admin key or a teacher
token of the lesson, as every lesson route does. Files are served by a plain
route that takes the same credentials, or a signed link from the listing
(``?expires=...&sig=...``, valid :data:`LINK_LIFETIME`), so that a ``<video>``
element, which cannot send an ``Authorization`` header, can play them with range
requests.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from signaling.tokens import check_identifier

from .api_common import ApiError, LessonAccess, Operation, json_response, read_model
from .lesson_effects import execute_lesson_effect
from .recordings import RecordingBusy
from .state import ServerState

LINK_LIFETIME = 4 * 3600  # seconds a signed file link works
MEDIA_TYPES = {".webm": "video/webm", ".mkv": "video/x-matroska", ".mp4": "video/mp4"}


class RecordingFile(BaseModel):
    """One file of a recording, with a signed link that plays in a browser."""

    name: str
    bytes: int
    url: str


class RecordingInfo(BaseModel):
    """One recording of a lesson."""

    id: str
    lesson: str
    active: bool
    started_at: float | None
    stopped_at: float | None
    stop_reason: str | None
    files: list[RecordingFile]
    manifest: dict[str, object]


class RecordingControl(BaseModel):
    """Start (true) or stop (false) recording a live lesson."""

    model_config = ConfigDict(extra="forbid")
    recording: bool


class RecordingState(BaseModel):
    """Whether the live lesson is being recorded now."""

    lesson: str
    recording: bool


def sign(secret: bytes, path: str, expires: int) -> str:
    """The signature of a file link."""
    return hmac.new(secret, f"recording:{path}:{expires}".encode(), hashlib.sha256).hexdigest()


class RecordingsApi:
    """Recordings' handlers, sharing the API's credentials and error handling."""

    def __init__(self, state: ServerState, access: LessonAccess) -> None:
        self.access = access
        self.state = state
        # With --redis, another node's API asks the lesson's node (server/cluster.py).
        self.state.answers["recording"] = self._answer

    def operations(self) -> list[Operation]:
        scope = "admin key, or a teacher token for this lesson"
        return [
            Operation(
                "/api/lessons/{lesson_id}/recordings",
                "GET",
                self.list_recordings,
                "A lesson's recordings, newest first, with their manifests and file links",
                response=RecordingInfo,
                many=True,
                auth=scope,
            ),
            Operation(
                "/api/lessons/{lesson_id}/recording",
                "POST",
                self.control,
                "Start or stop recording a live lesson (everyone in it is told)",
                body=RecordingControl,
                response=RecordingState,
                auth=scope,
            ),
            Operation(
                "/api/lessons/{lesson_id}/recordings/{recording_id}",
                "DELETE",
                self.delete,
                "Delete a finished recording",
                status=204,
                auth=scope,
            ),
        ]

    def routes(self) -> list[Route]:
        """The file route (with signed links) and the recordings page."""
        return [Route("/recordings/files/{lesson_id}/{recording_id}/{name}", self.download)]

    # -- handlers --------------------------------------------------------------

    async def list_recordings(self, request: Request) -> Response:
        lesson_id = request.path_params["lesson_id"]
        self.access.lesson_access(request, lesson_id)
        service = self.state.recordings
        expires = int(time.time()) + LINK_LIFETIME
        result = []
        for item in service.listing(lesson_id):
            files = []
            for entry in item["files"]:
                path = f"{lesson_id}/{item['id']}/{entry['name']}"
                signature = sign(self.state.settings.secret, path, expires)
                url = f"/recordings/files/{quote(path)}?expires={expires}&sig={signature}"
                files.append(RecordingFile(name=entry["name"], bytes=entry["bytes"], url=url))
            result.append(
                RecordingInfo(
                    id=item["id"],
                    lesson=lesson_id,
                    active=item["active"],
                    started_at=item["started_at"],
                    stopped_at=item["stopped_at"],
                    stop_reason=item["stop_reason"],
                    files=files,
                    manifest=service.manifest(lesson_id, item["id"]),
                )
            )
        return json_response(result)

    async def control(self, request: Request) -> Response:
        lesson_id = request.path_params["lesson_id"]
        principal = self.access.lesson_access(request, lesson_id)
        body: RecordingControl = await read_model(request, RecordingControl)
        by = "the operator" if principal.admin else "a teacher (through the API)"
        if self.state.registry.find(lesson_id) is None:
            # With --redis the lesson may live on another node: it decides there.
            elsewhere = await self.access.ask_owner(
                lesson_id, "recording", {"recording": body.recording, "by": by}
            )
            if elsewhere is not None:
                return json_response(RecordingState(lesson=lesson_id, recording=bool(elsewhere)))
        active = await self.apply(lesson_id, body.recording, by)
        if active is None:
            raise ApiError(409, "the lesson is not live: nobody is in it")
        return json_response(RecordingState(lesson=lesson_id, recording=active))

    async def _answer(self, lesson_id: str, details: Any) -> bool | None:
        return await self.apply(lesson_id, bool(details["recording"]), str(details["by"]))

    async def apply(self, lesson_id: str, recording: bool, by: str) -> bool | None:
        """Start or stop recording a lesson live on this node; whether it records now
        (None: not live here)."""
        lesson = self.state.registry.find(lesson_id)
        if lesson is None or lesson.ended:
            return None
        effects = (
            lesson.start_recording(None, by)
            if recording
            else lesson.stop_recording(None, f"stopped by {by}")
        )
        for effect in effects:
            await execute_lesson_effect(self.state, effect)
        return lesson.recording.active

    async def delete(self, request: Request) -> Response:
        lesson_id = request.path_params["lesson_id"]
        self.access.lesson_access(request, lesson_id)
        try:
            deleted = self.state.recordings.delete(lesson_id, request.path_params["recording_id"])
        except RecordingBusy as exc:
            raise ApiError(409, str(exc)) from None
        if not deleted:
            raise ApiError(404, "no such recording")
        return Response(status_code=204)

    async def download(self, request: Request) -> Response:
        """A recording's file; answers range requests (206) so players can seek."""
        lesson_id = request.path_params["lesson_id"]
        recording_id = request.path_params["recording_id"]
        name = request.path_params["name"]
        try:
            check_identifier("path 'lesson_id'", lesson_id)
            if not self._signed(request, f"{lesson_id}/{recording_id}/{name}"):
                self.access.lesson_access(request, lesson_id)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        except ApiError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        path = self.state.recordings.file(lesson_id, recording_id, name)
        if path is None:
            return JSONResponse({"error": "no such file"}, status_code=404)
        media_type = MEDIA_TYPES.get(path.suffix, "application/json")
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private"})

    def _signed(self, request: Request, path: str) -> bool:
        expires = request.query_params.get("expires", "")
        signature = request.query_params.get("sig", "")
        if not expires.isdigit() or not signature or int(expires) < time.time():
            return False
        expected = sign(self.state.settings.secret, path, int(expires))
        return hmac.compare_digest(expected, signature)
