"""The lesson state machine, without sockets or media."""

from __future__ import annotations

import pytest

from signaling import protocol as p
from signaling.lesson import Deliver, Effect, Forbidden, Lesson, StopTrack, Subscribe
from signaling.permissions import Role
from signaling.tokens import Grant


def grant(name: str, role: Role, lesson: str = "l1", school: str = "north") -> Grant:
    return Grant(
        lesson=lesson, name=name, role=role, school=school, token_id=name, expires_at=2**40
    )


def delivered(effects: list[Effect], to: str, message_type: str) -> list[p.ServerMessage]:
    return [
        e.message
        for e in effects
        if isinstance(e, Deliver) and e.to == to and e.message.type == message_type
    ]


def test_join_welcomes_with_everyone_and_their_tracks() -> None:
    lesson = Lesson("l1")
    teacher, _ = lesson.join(grant("T", Role.TEACHER))
    track, _ = lesson.add_track(teacher.id, "video", "camera")
    student, effects = lesson.join(grant("S", Role.STUDENT, school="south"))
    (welcome,) = delivered(effects, student.id, "welcome")
    assert isinstance(welcome, p.Welcome)
    assert [x.id for x in welcome.participants] == [teacher.id]
    assert welcome.participants[0].tracks == [track]
    assert welcome.you.role == "student" and not welcome.you.can_publish
    assert delivered(effects, teacher.id, "participant_joined")
    assert Subscribe(student.id, teacher.id, track) in effects


def test_a_token_for_another_lesson_is_refused() -> None:
    with pytest.raises(Forbidden):
        Lesson("l1").join(grant("T", Role.TEACHER, lesson="l2"))


def test_publishing_subscribes_everyone_else_but_the_publisher() -> None:
    lesson = Lesson("l1")
    teacher, _ = lesson.join(grant("T", Role.TEACHER))
    room, _ = lesson.join(grant("R", Role.CLASSROOM))
    observer, _ = lesson.join(grant("O", Role.OBSERVER))
    _, effects = lesson.add_track(teacher.id, "video", "camera")
    subscribers = {e.subscriber for e in effects if isinstance(e, Subscribe)}
    assert subscribers == {room.id, observer.id}
    assert delivered(effects, room.id, "track_published")


def test_a_student_cannot_publish_without_a_grant() -> None:
    lesson = Lesson("l1")
    student, _ = lesson.join(grant("S", Role.STUDENT))
    with pytest.raises(Forbidden, match="until the teacher allows it"):
        lesson.add_track(student.id, "video", "camera")


def test_grant_then_revoke_stops_the_students_tracks() -> None:
    lesson = Lesson("l1")
    teacher, _ = lesson.join(grant("T", Role.TEACHER))
    student, _ = lesson.join(grant("S", Role.STUDENT))
    effects = lesson.grant_publish(teacher.id, student.id)
    (changed,) = delivered(effects, student.id, "permissions_changed")
    assert isinstance(changed, p.PermissionsChanged) and "publish" in changed.permissions
    assert delivered(effects, teacher.id, "participant_updated")
    track, _ = lesson.add_track(student.id, "audio", "microphone")
    effects = lesson.revoke_publish(teacher.id, student.id)
    assert StopTrack(student.id, track.id) in effects
    assert delivered(effects, teacher.id, "track_unpublished")
    assert not lesson.participants[student.id].tracks
    with pytest.raises(Forbidden):
        lesson.add_track(student.id, "audio", "microphone")


@pytest.mark.parametrize("role", [Role.STUDENT, Role.CLASSROOM, Role.EXPERT, Role.OBSERVER])
def test_only_teachers_grant(role: Role) -> None:
    lesson = Lesson("l1")
    actor, _ = lesson.join(grant("A", role))
    student, _ = lesson.join(grant("S", Role.STUDENT))
    with pytest.raises(Forbidden):
        lesson.grant_publish(actor.id, student.id)
    with pytest.raises(Forbidden):
        lesson.revoke_publish(actor.id, student.id)


def test_an_observer_cannot_be_granted_publishing() -> None:
    lesson = Lesson("l1")
    teacher, _ = lesson.join(grant("T", Role.TEACHER))
    observer, _ = lesson.join(grant("O", Role.OBSERVER))
    with pytest.raises(Forbidden, match="observer"):
        lesson.grant_publish(teacher.id, observer.id)


def test_granting_an_unknown_participant_names_it() -> None:
    lesson = Lesson("l1")
    teacher, _ = lesson.join(grant("T", Role.TEACHER))
    with pytest.raises(p.ProtocolError, match="nobody"):
        lesson.grant_publish(teacher.id, "nobody")


def test_leaving_ends_tracks_and_tells_the_others() -> None:
    lesson = Lesson("l1")
    teacher, _ = lesson.join(grant("T", Role.TEACHER))
    room, _ = lesson.join(grant("R", Role.CLASSROOM))
    track, _ = lesson.add_track(teacher.id, "video", "camera")
    effects = lesson.leave(teacher.id, "left")
    assert StopTrack(teacher.id, track.id) in effects
    (left,) = delivered(effects, room.id, "participant_left")
    assert isinstance(left, p.ParticipantLeft) and left.participant_id == teacher.id
    assert lesson.leave(teacher.id, "left") == []
    lesson.leave(room.id, "left")
    assert lesson.is_empty
