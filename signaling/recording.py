"""Recording and director state of a lesson, and the effects they send out.

Plain data: :class:`~signaling.lesson.Lesson` holds one :class:`RecordingState`
and one :class:`DirectorState` and changes them in its operations
(``start_recording``, ``decline_recording``, ``direct_stage``...); the server
carries out the effects (:mod:`server.recordings` writes the files).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import protocol as p


@dataclass(slots=True)
class RecordingState:
    """Whether the lesson is being recorded, since when, and who declined."""

    active: bool = False
    started_at: float | None = None
    by: str = ""
    # Schools whose participants are never recorded: from the lesson's settings
    # (the catalogue) and from their delegates during the lesson.
    declined: set[str] = field(default_factory=set)


@dataclass(slots=True)
class DirectorState:
    """What classroom stages show: one choice for every classroom, and overrides."""

    stage: p.Stage | None = None
    classrooms: dict[str, p.Stage] = field(default_factory=dict)

    def forget(self, participant_id: str) -> bool:
        """Drop what names a participant who left; whether anything changed."""
        changed = False
        if self.classrooms.pop(participant_id, None) is not None:
            changed = True
        if self.stage is not None and _names(self.stage, participant_id):
            self.stage = None
            changed = True
        for classroom, stage in list(self.classrooms.items()):
            if _names(stage, participant_id):
                del self.classrooms[classroom]
                changed = True
        return changed


def _names(stage: p.Stage, participant_id: str) -> bool:
    return any(item.participant_id == participant_id for item in stage.items)


@dataclass(frozen=True, slots=True)
class StartRecording:
    """Start writing every forwarded track of the lesson (except declined schools')."""

    lesson: str
    by: str
    declined_schools: frozenset[str]


@dataclass(frozen=True, slots=True)
class StopRecording:
    """Stop writing; close every file and the manifest."""

    lesson: str
    reason: str


@dataclass(frozen=True, slots=True)
class RecordingConsent:
    """The schools that declined changed while recording: stop (or start) theirs."""

    lesson: str
    declined_schools: frozenset[str]


RecordingEffect = StartRecording | StopRecording | RecordingConsent
