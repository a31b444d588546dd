"""Recording and director mode in the lesson state machine, without sockets or media."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import main
from signaling import protocol as p
from signaling.adapters.sqlite_catalogue import Catalogue
from signaling.lesson import Announce, Deliver, Effect, Forbidden, Lesson, LessonSettings
from signaling.permissions import Role
from signaling.recording import RecordingConsent, StartRecording, StopRecording

from .test_lesson import delivered, grant


def stage(*items: tuple[str, str]) -> p.Stage:
    return p.Stage(items=[p.StageItem(participant_id=pid, source=s) for pid, s in items])  # type: ignore[arg-type]


def announced(effects: list[Effect]) -> list[tuple[str, dict[str, object]]]:
    return [(e.event, e.data) for e in effects if isinstance(e, Announce)]


def test_starting_tells_everyone_before_the_service_writes() -> None:
    lesson = Lesson("l1", settings=LessonSettings(recording_declined=frozenset({"south"})))
    teacher, _ = lesson.join(grant("T", Role.TEACHER))
    room, _ = lesson.join(grant("R", Role.CLASSROOM, school="west"))
    effects = lesson.start_recording(teacher.id)
    (notice,) = delivered(effects, room.id, "recording_changed")
    assert isinstance(notice, p.RecordingChanged) and notice.recording
    assert notice.declined_schools == ["south"]
    assert notice.message == "T started recording this lesson; nothing of south is recorded"
    assert effects[-1] == StartRecording("l1", "T", frozenset({"south"}))
    assert announced(effects) == [
        ("recording.started", {"lesson": "l1", "by": "T", "declined_schools": ["south"]})
    ]
    assert lesson.state().recording and lesson.start_recording(teacher.id) == []
    # A newcomer learns it from the welcome.
    late, joined = lesson.join(grant("L", Role.STUDENT))
    (welcome,) = delivered(joined, late.id, "welcome")
    assert isinstance(welcome, p.Welcome) and welcome.state.recording


def test_only_teachers_record_and_stopping_says_why() -> None:
    lesson = Lesson("l1")
    teacher, _ = lesson.join(grant("T", Role.TEACHER))
    expert, _ = lesson.join(grant("E", Role.EXPERT))
    with pytest.raises(Forbidden):
        lesson.start_recording(expert.id)
    lesson.start_recording(teacher.id)
    effects = lesson.stop_recording(teacher.id)
    assert effects[0] == StopRecording("l1", "stopped by T")
    assert announced(effects) == [("recording.stopped", {"lesson": "l1", "reason": "stopped by T"})]
    lesson.start_recording(None, "the operator")
    ended = lesson.close("over")
    assert StopRecording("l1", "the lesson ended") in ended


def test_a_delegate_declines_for_its_own_school_only() -> None:
    lesson = Lesson("l1")
    teacher, _ = lesson.join(grant("T", Role.TEACHER))
    delegate, _ = lesson.join(grant("D", Role.DELEGATE, school="south"))
    student, _ = lesson.join(grant("S", Role.STUDENT, school="south"))
    with pytest.raises(Forbidden):
        lesson.decline_recording(student.id, True)
    lesson.decline_recording(delegate.id, True)
    assert lesson.state().recording_declined == ["south"]
    lesson.start_recording(teacher.id)
    effects = lesson.decline_recording(delegate.id, False)
    assert RecordingConsent("l1", frozenset()) in effects
    assert lesson.decline_recording(delegate.id, False) == []


def test_the_last_one_leaving_stops_the_recording() -> None:
    lesson = Lesson("l1")
    teacher, _ = lesson.join(grant("T", Role.TEACHER))
    lesson.start_recording(teacher.id)
    assert StopRecording("l1", "everyone left") in lesson.leave(teacher.id, "left")


def test_the_director_sets_every_stage_or_one_classrooms() -> None:
    lesson = Lesson("l1")
    teacher, _ = lesson.join(grant("T", Role.TEACHER))
    one, _ = lesson.join(grant("R1", Role.CLASSROOM, school="west"))
    two, _ = lesson.join(grant("R2", Role.CLASSROOM, school="east"))
    student, _ = lesson.join(grant("S", Role.STUDENT))
    pair = stage((teacher.id, "screen"), (one.id, "camera"))
    effects = lesson.direct_stage(teacher.id, pair, None)
    (update,) = delivered(effects, two.id, "lesson_updated")
    assert isinstance(update, p.LessonUpdated) and update.state.stage == pair
    lesson.direct_stage(teacher.id, stage((one.id, "camera")), two.id)
    assert lesson.state().classroom_stages == {two.id: stage((one.id, "camera"))}
    with pytest.raises(p.ProtocolError, match="not a classroom"):
        lesson.direct_stage(teacher.id, pair, student.id)
    with pytest.raises(p.ProtocolError, match="no participant"):
        lesson.direct_stage(teacher.id, stage(("nobody", "camera")), None)
    with pytest.raises(Forbidden):
        lesson.direct_stage(student.id, pair, None)
    # Whoever leaves is taken off every stage that showed them.
    effects = lesson.leave(one.id, "left")
    assert lesson.state().stage is None and lesson.state().classroom_stages == {}
    assert any(isinstance(e, Deliver) and e.message.type == "lesson_updated" for e in effects)
    lesson.direct_stage(teacher.id, None, None)
    assert lesson.state().stage is None


def test_a_lesson_scheduled_with_a_declining_school_starts_with_it_declined(
    tmp_path: Path,
) -> None:
    """``lco lesson create --decline-recording`` as an operator runs it."""
    data = ["--data-dir", str(tmp_path)]
    assert main(["community", "create", "--id", "valley", "--name", "Valley", *data]) == 0
    for school in ("north", "south"):
        assert (
            main(
                ["school", "add", "--community", "valley", "--id", school, "--name", school, *data]
            )
            == 0
        )
    created = main(
        [
            "lesson", "create", "--id", "fractions", "--community", "valley",
            "--title", "Fractions", "--teacher", "Ms Rivera", "--school", "north",
            "--invite", "south", "--starts", "2026-12-01T09:00:00+00:00",
            "--decline-recording", "south", *data,
        ]
    )  # fmt: skip
    assert created == 0
    catalogue = Catalogue(tmp_path / "catalogue.sqlite3")
    try:
        settings = catalogue.settings_for("fractions")
    finally:
        catalogue.close()
    assert settings.recording_declined == frozenset({"south"})
    lesson = Lesson("fractions", settings=settings)
    assert lesson.state().recording_declined == ["south"]
