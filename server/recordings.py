"""Lesson recordings: one file per forwarded track, a timeline manifest, retention.

The lesson decides (``start_recording``, ``stop_recording``, ``decline_recording``
return :mod:`signaling.recording` effects); this service carries that out. It
attaches a :class:`~media.recording.TrackRecorder` to the forwarder of every
track of the lesson whose publisher's school did not decline, and to every track
published while recording. It watches the lesson's effects as they are carried
out (:meth:`RecordingService.observe`) to write the timeline: who published what
and when, mutes, stage changes, chat to everyone, who declined.

Layout under the data directory (0700 directories, 0600 files)::

    recordings/LESSON/RECORDING/manifest.json
    recordings/LESSON/RECORDING/TRACK.webm (VP8, Opus) or TRACK.mkv (H264)

A recorder that cannot write (disk full) stops the whole recording, through the
lesson, with its reason: everyone is told, ``recording.stopped`` is announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from media.forwarder import TrackForwarder
from media.recording import CONTAINERS, TrackRecorder
from media.rtp_forward import RtpForwarder
from signaling import protocol as p
from signaling.adapters.private_files import FILE_MODE, private_directory
from signaling.effects import Deliver, Effect, PauseTrack
from signaling.lesson import Lesson
from signaling.recording import RecordingConsent, StartRecording, StopRecording
from signaling.registry import LessonRegistry

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RECORDING_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9._-]+\.(webm|mkv|json|mp4)$")

Execute = Callable[[Effect], Awaitable[None]]
FindForwarder = Callable[[str], Any]


@dataclass(slots=True)
class _Track:
    """One track of the recording: its manifest entry and, if written, its recorder."""

    entry: dict[str, Any]
    recorder: TrackRecorder | None = None
    detach: Callable[[], None] | None = None


@dataclass(slots=True)
class LessonRecording:
    """One recording of one lesson, in progress."""

    lesson_id: str
    recording_id: str
    directory: Path
    started: float  # wall clock
    started_mono: float
    manifest: dict[str, Any]
    declined: set[str]
    tracks: dict[str, _Track] = field(default_factory=dict)
    last_message: Any = None
    last_stage: Any = None


def new_recording_id(now: float) -> str:
    """A sortable id: UTC start time and a random suffix."""
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def write_private_json(path: Path, value: Any) -> None:
    """Write JSON atomically (a temporary file, then rename), mode 0600."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class RecordingService:
    """Starts, feeds and stops the recordings of every lesson on this server."""

    def __init__(
        self,
        data_dir: Path,
        registry: LessonRegistry,
        find_forwarder: FindForwarder,
        execute: Execute,
        *,
        retention: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = data_dir / "recordings"
        self.retention = retention
        self._registry = registry
        self._find_forwarder = find_forwarder
        self._execute = execute
        self._clock = clock
        self._active: dict[str, LessonRecording] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- effects of the lesson ---------------------------------------------------

    async def carry_out(self, effect: StartRecording | StopRecording | RecordingConsent) -> None:
        """Carry out one of the lesson's recording effects."""
        if isinstance(effect, StartRecording):
            await self._start(effect)
        elif isinstance(effect, StopRecording):
            await self._stop(effect.lesson, effect.reason)
        else:
            await self._consent(effect)

    def observe(self, effect: Effect) -> None:
        """See every lesson effect as it is carried out: the timeline of a recording."""
        if not self._active:
            return
        if isinstance(effect, PauseTrack):
            for recording in self._active.values():
                if effect.track_id in recording.tracks:
                    self._event(
                        recording, "muted" if effect.paused else "unmuted", track_id=effect.track_id
                    )
            return
        if not isinstance(effect, Deliver):
            return
        for recording in self._active.values():
            if effect.message is recording.last_message:
                continue  # the same message, delivered to the next participant
            lesson = self._registry.find(recording.lesson_id)
            if lesson is None or effect.to not in lesson.participants:
                continue
            recording.last_message = effect.message
            self._observe_message(recording, lesson, effect.message)

    # -- listing, files, retention -----------------------------------------------

    def lesson_directory(self, lesson_id: str) -> Path:
        """Where a lesson's recordings are (the id is checked by the caller)."""
        return self.root / lesson_id

    def listing(self, lesson_id: str) -> list[dict[str, Any]]:
        """The lesson's recordings, newest first, with their manifests and files."""
        directory = self.lesson_directory(lesson_id)
        if not directory.is_dir():
            return []
        result = []
        for entry in sorted(directory.iterdir(), reverse=True):
            if not RECORDING_ID.match(entry.name) or not entry.is_dir():
                continue
            manifest = self.manifest(lesson_id, entry.name)
            files = [
                {"name": f.name, "bytes": f.stat().st_size}
                for f in sorted(entry.iterdir())
                if FILE_NAME.match(f.name)
            ]
            result.append(
                {
                    "id": entry.name,
                    "lesson": lesson_id,
                    "active": lesson_id in self._active
                    and self._active[lesson_id].recording_id == entry.name,
                    "started_at": manifest.get("started_at"),
                    "stopped_at": manifest.get("stopped_at"),
                    "stop_reason": manifest.get("stop_reason"),
                    "files": files,
                }
            )
        return result

    def manifest(self, lesson_id: str, recording_id: str) -> dict[str, Any]:
        """One recording's manifest (empty if unreadable)."""
        try:
            value = json.loads((self.root / lesson_id / recording_id / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def file(self, lesson_id: str, recording_id: str, name: str) -> Path | None:
        """A recording's file, if the names are well formed and it exists."""
        if not RECORDING_ID.match(recording_id) or not FILE_NAME.match(name):
            return None
        path = self.root / lesson_id / recording_id / name
        return path if path.is_file() else None

    def delete(self, lesson_id: str, recording_id: str) -> bool:
        """Delete a finished recording; False if there is none (or it is in progress)."""
        if not RECORDING_ID.match(recording_id):
            return False
        active = self._active.get(lesson_id)
        if active is not None and active.recording_id == recording_id:
            raise RecordingBusy("this recording is in progress; stop it first")
        directory = self.root / lesson_id / recording_id
        if not directory.is_dir():
            return False
        shutil.rmtree(directory)
        return True

    def expire(self) -> list[str]:
        """Delete recordings that stopped longer ago than the retention; their ids."""
        if self.retention is None or not self.root.is_dir():
            return []
        cutoff = self._clock() - self.retention
        deleted = []
        for lesson_dir in self.root.iterdir():
            if not lesson_dir.is_dir():
                continue
            for directory in lesson_dir.iterdir():
                if not RECORDING_ID.match(directory.name):
                    continue
                active = self._active.get(lesson_dir.name)
                if active is not None and active.recording_id == directory.name:
                    continue
                stopped = self.manifest(lesson_dir.name, directory.name).get("stopped_at")
                if stopped is None:
                    stopped = directory.stat().st_mtime
                if stopped < cutoff:
                    shutil.rmtree(directory, ignore_errors=True)
                    deleted.append(f"{lesson_dir.name}/{directory.name}")
        if deleted:
            logger.info("deleted %d recordings past their retention", len(deleted))
        return deleted

    async def keep_retention(self, interval: float = 3600.0) -> None:
        """Apply the retention now and then every ``interval`` seconds."""
        while True:
            await asyncio.to_thread(self.expire)
            await asyncio.sleep(interval)

    def metrics(self) -> dict[str, int]:
        """For ``/metrics``: recordings and tracks being written, packets dropped."""
        recorders = [
            t.recorder for r in self._active.values() for t in r.tracks.values() if t.recorder
        ]
        return {
            "active": len(self._active),
            "tracks": len(recorders),
            "packets_dropped": sum(r.stats.packets_dropped for r in recorders),
        }

    async def close(self) -> None:
        """Server shutdown: stop every recording, writing its manifest."""
        for lesson_id in list(self._active):
            await self._stop(lesson_id, "the server shut down")

    # -- internals ---------------------------------------------------------------

    async def _start(self, effect: StartRecording) -> None:
        lesson = self._registry.find(effect.lesson)
        if lesson is None or effect.lesson in self._active:
            return
        now = self._clock()
        recording_id = new_recording_id(now)
        directory = self.lesson_directory(effect.lesson) / recording_id
        manifest: dict[str, Any] = {
            "lesson": effect.lesson,
            "recording": recording_id,
            "started_at": now,
            "started_by": effect.by,
            "stopped_at": None,
            "stop_reason": None,
            "declined_schools": sorted(effect.declined_schools),
            "participants": {},
            "tracks": [],
            "timeline": [],
        }
        try:
            private_directory(directory)
            write_private_json(directory / MANIFEST, manifest)
        except OSError as exc:
            self._fail_soon(effect.lesson, f"the recording could not be created: {exc}")
            return
        recording = LessonRecording(
            lesson_id=effect.lesson,
            recording_id=recording_id,
            directory=directory,
            started=now,
            started_mono=time.monotonic(),
            manifest=manifest,
            declined=set(effect.declined_schools),
        )
        self._active[effect.lesson] = recording
        self._event(recording, "recording_started", by=effect.by)
        if effect.declined_schools:
            self._event(recording, "declined", schools=sorted(effect.declined_schools))
        self._stage(recording, lesson.state())
        for participant in lesson.participants.values():
            self._participant(recording, participant.info())
            for track in participant.tracks.values():
                self._add_track(recording, lesson, participant.id, track)
        logger.info("recording %s of lesson %s started", recording_id, effect.lesson)

    async def _stop(self, lesson_id: str, reason: str) -> None:
        recording = self._active.pop(lesson_id, None)
        if recording is None:
            return
        for track_id in list(recording.tracks):
            await self._end_track(recording, track_id, "recording stopped")
        recording.manifest["stopped_at"] = self._clock()
        recording.manifest["stop_reason"] = reason
        self._event(recording, "recording_stopped", reason=reason)
        with contextlib.suppress(OSError):  # the disk may be what failed
            write_private_json(recording.directory / MANIFEST, recording.manifest)
        logger.info(
            "recording %s of lesson %s stopped: %s", recording.recording_id, lesson_id, reason
        )

    async def _consent(self, effect: RecordingConsent) -> None:
        recording = self._active.get(effect.lesson)
        lesson = self._registry.find(effect.lesson)
        if recording is None or lesson is None:
            return
        recording.declined = set(effect.declined_schools)
        recording.manifest["declined_schools"] = sorted(
            set(recording.manifest["declined_schools"]) | recording.declined
        )
        self._event(recording, "declined", schools=sorted(recording.declined))
        for participant in lesson.participants.values():
            for track in participant.tracks.values():
                current = recording.tracks.get(track.id)
                declined = participant.school in recording.declined
                if declined and current is not None and current.recorder is not None:
                    await self._end_track(recording, track.id, "school declined")
                elif not declined and (current is None or current.recorder is None):
                    recording.tracks.pop(track.id, None)
                    self._add_track(recording, lesson, participant.id, track)

    def _add_track(
        self, recording: LessonRecording, lesson: Lesson, publisher_id: str, track: p.TrackInfo
    ) -> None:
        if track.id in recording.tracks:
            return
        publisher = lesson.participants.get(publisher_id)
        school = publisher.school if publisher is not None else ""
        entry: dict[str, Any] = {
            "track_id": track.id,
            "participant_id": publisher_id,
            "name": publisher.name if publisher is not None else "",
            "school": school,
            "kind": track.kind,
            "source": track.source,
            "file": None,
            "status": "recording",
            "added_at": self._offset(recording),
        }
        recording.manifest["tracks"].append(entry)
        item = recording.tracks[track.id] = _Track(entry)
        if school in recording.declined:
            entry["status"] = "not recorded: the school declined recording"
            return
        forwarder = self._find_forwarder(track.id)
        codec = getattr(forwarder, "codec", None)
        if forwarder is None or codec is None or codec.name.upper() not in CONTAINERS:
            entry["status"] = f"not recorded: codec {getattr(codec, 'name', '?')} not supported"
            return
        entry["codec"] = codec.name
        # A track recorded again (its school withdrew a refusal) gets a second file.
        parts = sum(1 for t in recording.manifest["tracks"] if t["track_id"] == track.id)
        recorder = TrackRecorder(
            recording.directory / (track.id if parts == 1 else f"{track.id}-part{parts}"),
            codec.name,
            codec.clockRate,
            request_keyframe=forwarder.request_keyframe,
            on_failed=lambda reason: self._fail_soon(recording.lesson_id, reason),
            loop=asyncio.get_running_loop(),
        )
        if isinstance(forwarder, RtpForwarder):
            item.detach = forwarder.add_listener(recorder.on_packet)
        elif isinstance(forwarder, TrackForwarder):
            item.detach = forwarder.add_listener(recorder.on_frame)
        else:
            entry["status"] = "not recorded: no forwarder"
            return
        entry["file"] = recorder.path.name
        item.recorder = recorder
        recorder.start()

    async def _end_track(self, recording: LessonRecording, track_id: str, why: str) -> None:
        item = recording.tracks.get(track_id)
        if item is None or item.recorder is None:
            return
        recorder, item.recorder = item.recorder, None
        if item.detach is not None:
            item.detach()
            item.detach = None
        await recorder.stop()
        entry = item.entry
        entry.update(recorder.stats.as_dict())
        entry["ended_at"] = self._offset(recording)
        entry["status"] = "failed" if recorder.error else why
        entry["error"] = recorder.error
        entry["duration"] = round(recorder.duration, 3)
        entry["first_frame_at"] = (
            round(recorder.first_frame_at - recording.started_mono, 3)
            if recorder.first_frame_at is not None
            else None
        )
        if not recorder.written:
            entry["file"] = None
            with contextlib.suppress(OSError):
                recorder.path.unlink()

    def _observe_message(
        self, recording: LessonRecording, lesson: Lesson, message: p.ServerMessage
    ) -> None:
        if isinstance(message, p.TrackPublished):
            self._event(
                recording,
                "published",
                participant_id=message.participant_id,
                track_id=message.track.id,
                kind=message.track.kind,
                source=message.track.source,
            )
            self._add_track(recording, lesson, message.participant_id, message.track)
        elif isinstance(message, p.TrackUnpublished):
            self._event(
                recording,
                "unpublished",
                participant_id=message.participant_id,
                track_id=message.track_id,
            )
            self._spawn(self._end_track(recording, message.track_id, "unpublished"))
        elif isinstance(message, p.ParticipantJoined):
            self._participant(recording, message.participant)
            self._event(recording, "joined", participant_id=message.participant.id)
        elif isinstance(message, p.ParticipantLeft):
            self._event(recording, "left", participant_id=message.participant_id)
        elif isinstance(message, p.LessonUpdated):
            self._stage(recording, message.state)
        elif isinstance(message, p.ChatMessage) and message.message.to != "teachers":
            entry = message.message
            self._event(
                recording, "chat", participant_id=entry.from_id, name=entry.name, text=entry.text
            )

    def _participant(self, recording: LessonRecording, info: p.ParticipantInfo) -> None:
        recording.manifest["participants"][info.id] = {
            "name": info.name,
            "role": info.role,
            "school": info.school,
            "recorded": info.school not in recording.declined,
        }

    def _stage(self, recording: LessonRecording, state: p.LessonState) -> None:
        stage = {
            "stage": state.stage.model_dump() if state.stage else None,
            "classroom_stages": {k: v.model_dump() for k, v in state.classroom_stages.items()},
            "spotlight": state.spotlight,
        }
        if stage != recording.last_stage:
            recording.last_stage = stage
            self._event(recording, "stage", **stage)

    def _event(self, recording: LessonRecording, event: str, **data: Any) -> None:
        recording.manifest["timeline"].append(
            {"t": self._offset(recording), "event": event, **data}
        )

    def _offset(self, recording: LessonRecording) -> float:
        return round(time.monotonic() - recording.started_mono, 3)

    def _fail_soon(self, lesson_id: str, reason: str) -> None:
        """A recorder failed: stop the recording through the lesson (told, announced)."""
        self._spawn(self._fail(lesson_id, reason))

    async def _fail(self, lesson_id: str, reason: str) -> None:
        lesson = self._registry.find(lesson_id)
        if lesson is None:
            await self._stop(lesson_id, reason)
            return
        for effect in lesson.stop_recording(None, reason):
            await self._execute(effect)

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class RecordingBusy(Exception):
    """The recording asked for is still being written."""
