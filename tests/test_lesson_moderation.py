"""Lobby, moderation, hands, chat and breakout groups in the lesson state machine."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from signaling import protocol as p
from signaling.lesson import (
    Deliver,
    Effect,
    Forbidden,
    Lesson,
    LessonSettings,
    Participant,
    PauseTrack,
    Record,
    Subscribe,
    Unsubscribe,
)
from signaling.permissions import ChatPolicy, Permission, Role
from signaling.records import AttendanceEvent, AttendanceKind, BanRecord, ChatRecord
from signaling.tokens import Grant

counter = itertools.count()


def grant(name: str, role: Role, school: str = "north", token_id: str | None = None) -> Grant:
    return Grant(
        lesson="l1",
        name=name,
        role=role,
        school=school,
        token_id=token_id or f"{name}-{next(counter)}",
        expires_at=2**40,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def lesson(**settings: Any) -> Lesson:
    return Lesson("l1", settings=LessonSettings(**settings), clock=Clock())


def messages(effects: list[Effect], to: str, message_type: str) -> list[Any]:
    return [
        e.message
        for e in effects
        if isinstance(e, Deliver) and e.to == to and e.message.type == message_type
    ]


def attendance(effects: list[Effect]) -> list[AttendanceKind]:
    return [
        e.data.kind
        for e in effects
        if isinstance(e, Record) and isinstance(e.data, AttendanceEvent)
    ]


# --- lobby -------------------------------------------------------------------


def test_with_the_lobby_on_students_wait_until_admitted() -> None:
    room = lesson(lobby=True)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    student, effects = room.join(grant("S", Role.STUDENT))
    assert room.is_waiting(student.id)
    (wait,) = messages(effects, student.id, "lobby_wait")
    assert wait.reason == "lobby"
    (lobby,) = messages(effects, teacher.id, "lobby_changed")
    assert [x.id for x in lobby.added] == [student.id] and lobby.removed == []
    assert attendance(effects) == [AttendanceKind.WAITING]
    effects = room.admit(teacher.id, student.id)
    assert messages(effects, student.id, "welcome")
    assert messages(effects, teacher.id, "participant_joined")
    assert attendance(effects)[:2] == [AttendanceKind.ADMITTED, AttendanceKind.JOINED]
    assert not room.is_waiting(student.id)


def test_a_denied_participant_is_told_and_closed() -> None:
    room = lesson(lobby=True)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    student, _ = room.join(grant("S", Role.STUDENT))
    effects = room.deny(teacher.id, student.id)
    (bye,) = messages(effects, student.id, "bye")
    assert bye.reason == "denied"
    assert AttendanceKind.DENIED in attendance(effects)
    assert room.is_empty is False and not room.waiting


def test_invited_classrooms_skip_the_lobby_but_others_wait() -> None:
    room = lesson(lobby=True, invited_schools=frozenset({"west"}))
    room.join(grant("T", Role.TEACHER))
    invited, _ = room.join(grant("Room W", Role.CLASSROOM, "west"))
    stranger, _ = room.join(grant("Room X", Role.CLASSROOM, "xeno"))
    assert invited.id in room.participants
    assert room.is_waiting(stranger.id)
    # A field-trip camera is its school's too.
    trip, _ = room.join(grant("Harbour", Role.FIELD_TRIP, "west"))
    other_trip, _ = room.join(grant("Farm", Role.FIELD_TRIP, "xeno"))
    assert trip.id in room.participants
    assert room.is_waiting(other_trip.id)


def test_a_delegate_admits_only_its_own_school() -> None:
    room = lesson(lobby=True)
    room.join(grant("T", Role.TEACHER))
    delegate, _ = room.join(grant("D", Role.DELEGATE, "south"))
    ours, _ = room.join(grant("S1", Role.STUDENT, "south"))
    theirs, _ = room.join(grant("S2", Role.STUDENT, "north"))
    room.admit(delegate.id, ours.id)
    with pytest.raises(Forbidden, match="own school"):
        room.admit(delegate.id, theirs.id)


def test_nobody_is_admitted_before_a_teacher_joins() -> None:
    room = lesson(wait_for_teacher=True)
    student, effects = room.join(grant("S", Role.STUDENT))
    room_endpoint, _ = room.join(grant("R", Role.CLASSROOM, "west"))
    (wait,) = messages(effects, student.id, "lobby_wait")
    assert wait.reason == "waiting_for_teacher"
    teacher, effects = room.join(grant("T", Role.TEACHER))
    assert messages(effects, student.id, "welcome")
    assert messages(effects, room_endpoint.id, "welcome")
    assert set(room.participants) == {teacher.id, student.id, room_endpoint.id}


def test_a_locked_lesson_admits_only_teachers() -> None:
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    (updated,) = messages(room.lock(teacher.id, True), teacher.id, "lesson_updated")
    assert updated.state.locked
    with pytest.raises(Forbidden, match="locked") as info:
        room.join(grant("S", Role.STUDENT))
    assert info.value.bye_reason == "locked"
    room.join(grant("T2", Role.TEACHER))
    room.lock(teacher.id, False)
    room.join(grant("S", Role.STUDENT))


# --- mute, remove, presenter, spotlight, end ---------------------------------


def publishing_student(room: Lesson, teacher: Participant) -> tuple[Participant, p.TrackInfo]:
    student, _ = room.join(grant("S", Role.STUDENT))
    room.grant_publish(teacher.id, student.id)
    track, _ = room.add_track(student.id, "audio", "microphone")
    return student, track


def test_mute_pauses_forwarding_and_unmute_needs_approval() -> None:
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    student, track = publishing_student(room, teacher)
    effects = room.mute(teacher.id, student.id, "audio")
    assert PauseTrack(track.id, True) in effects
    (notice,) = messages(effects, student.id, "notice")
    assert notice.code == "muted_audio" and "T muted" in notice.message
    (updated,) = messages(effects, teacher.id, "participant_updated")
    assert updated.participant.muted == ["audio"]
    # A new microphone track while muted starts paused too.
    second, effects = room.add_track(student.id, "audio", "microphone")
    assert PauseTrack(second.id, True) in effects
    effects = room.ask_to_unmute(student.id, "audio")
    (request,) = messages(effects, teacher.id, "unmute_requested")
    assert request.participant_id == student.id
    effects = room.allow_unmute(teacher.id, student.id, "audio")
    assert PauseTrack(track.id, False) in effects and PauseTrack(second.id, False) in effects
    assert messages(effects, student.id, "notice")[0].code == "unmute_allowed_audio"
    with pytest.raises(p.ProtocolError, match="not muted"):
        room.ask_to_unmute(student.id, "audio")


def test_mute_all_spares_the_teachers() -> None:
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    room_endpoint, _ = room.join(grant("R", Role.CLASSROOM, "west"))
    room.mute_all(teacher.id, "audio")
    assert room_endpoint.muted == {"audio"} and not teacher.muted


def test_a_removed_participant_cannot_come_back_with_the_same_link() -> None:
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    link = grant("S", Role.STUDENT, token_id="link-1")
    student, _ = room.join(link)
    effects = room.remove(teacher.id, student.id)
    assert Record(BanRecord("l1", "link-1")) == effects[0]
    (bye,) = messages(effects, student.id, "bye")
    assert bye.reason == "removed"
    assert messages(effects, teacher.id, "participant_left")[0].reason == "removed"
    with pytest.raises(Forbidden, match="removed") as info:
        room.join(link)
    assert info.value.bye_reason == "removed"
    room.join(grant("S", Role.STUDENT, token_id="link-2"))


def test_a_presenter_may_publish_until_stepped_down() -> None:
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    student, _ = room.join(grant("S", Role.STUDENT))
    room.set_presenter(teacher.id, student.id, True)
    assert student.presenter and student.may(Permission.PUBLISH)
    track, _ = room.add_track(student.id, "video", "screen")
    effects = room.set_presenter(teacher.id, student.id, False)
    assert not student.may(Permission.PUBLISH) and not student.tracks
    assert messages(effects, teacher.id, "track_unpublished")[0].track_id == track.id
    observer, _ = room.join(grant("O", Role.OBSERVER))
    with pytest.raises(Forbidden):
        room.set_presenter(teacher.id, observer.id, True)


def test_spotlight_is_lesson_state_for_everyone() -> None:
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    expert, _ = room.join(grant("E", Role.EXPERT))
    effects = room.set_spotlight(teacher.id, expert.id)
    assert messages(effects, expert.id, "lesson_updated")[0].state.spotlight == expert.id
    effects = room.leave(expert.id, "left")
    assert messages(effects, teacher.id, "lesson_updated")[0].state.spotlight is None


def test_ending_the_lesson_closes_everyone_and_refuses_joins() -> None:
    room = lesson(lobby=True)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    student, _ = room.join(grant("S", Role.STUDENT))  # waiting in the lobby
    effects = room.end(teacher.id)
    for pid in (teacher.id, student.id):
        assert messages(effects, pid, "bye")[0].reason == "lesson_ended"
    with pytest.raises(Forbidden, match="ended") as info:
        room.join(grant("T", Role.TEACHER))
    assert info.value.bye_reason == "lesson_ended"


# --- hands -------------------------------------------------------------------


def test_hands_queue_in_the_order_raised_with_school() -> None:
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    a, _ = room.join(grant("A", Role.STUDENT, "north"))
    b, _ = room.join(grant("B", Role.CLASSROOM, "west"))
    c, _ = room.join(grant("C", Role.STUDENT, "south"))
    for x in (b, c, a):
        room.raise_hand(x.id)
    assert room.raise_hand(b.id) == []  # raising twice keeps the place
    (changed,) = messages(room.lower_hand(c.id, None), teacher.id, "hands_changed")
    assert [(h.name, h.school) for h in changed.queue] == [("B", "west"), ("A", "north")]
    effects = room.grant_floor(teacher.id, a.id)
    assert [h.name for h in messages(effects, teacher.id, "hands_changed")[0].queue] == ["B"]
    assert a.may(Permission.PUBLISH)
    room.lower_hand(teacher.id, b.id)
    assert room.hands() == []
    with pytest.raises(p.ProtocolError, match="not raised"):
        room.grant_floor(teacher.id, c.id)


def test_a_student_cannot_lower_someone_elses_hand() -> None:
    room = lesson()
    room.join(grant("T", Role.TEACHER))
    a, _ = room.join(grant("A", Role.STUDENT))
    b, _ = room.join(grant("B", Role.STUDENT))
    room.raise_hand(b.id)
    with pytest.raises(Forbidden):
        room.lower_hand(a.id, b.id)


# --- chat ----------------------------------------------------------------------


def test_chat_is_recorded_before_it_is_delivered_and_history_reaches_late_joiners() -> None:
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    student, _ = room.join(grant("S", Role.STUDENT, token_id="s-link"))
    effects = room.chat(student.id, "<b>hi</b> see https://example.org", "everyone")
    assert isinstance(effects[0], Record) and isinstance(effects[0].data, ChatRecord)
    assert {e.to for e in effects if isinstance(e, Deliver)} == {teacher.id, student.id}
    private = room.chat(student.id, "I feel unwell", "teachers")
    assert {e.to for e in private if isinstance(e, Deliver)} == {teacher.id, student.id}
    other, effects = room.join(grant("O", Role.STUDENT))
    (history,) = messages(effects, other.id, "chat_history")
    assert [m.text for m in history.messages] == ["<b>hi</b> see https://example.org"]
    # The sender sees its own private message again after a reconnect; a teacher too.
    room.leave(student.id, "left")
    again, effects = room.join(grant("S", Role.STUDENT, token_id="s-link"))
    assert len(messages(effects, again.id, "chat_history")[0].messages) == 2
    late_teacher, effects = room.join(grant("T2", Role.TEACHER))
    assert len(messages(effects, late_teacher.id, "chat_history")[0].messages) == 2


# --- breakout groups -----------------------------------------------------------


def test_automatic_groups_mix_schools_and_media_stays_in_the_group() -> None:
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    people = {
        name: room.join(grant(name, Role.STUDENT, school))[0]
        for name, school in [("A1", "a"), ("A2", "a"), ("B1", "b"), ("B2", "b")]
    }
    for x in people.values():
        room.grant_publish(teacher.id, x.id)
    tracks = {name: room.add_track(x.id, "video", "camera")[0] for name, x in people.items()}
    effects = room.start_breakout(teacher.id, None, 2)
    groups = room.state().groups
    assert len(groups) == 2
    for members in groups.values():
        schools = {room.participants[m].school for m in members}
        assert schools == {"a", "b"}
    # Everyone is now subscribed only within its own group.
    unsubscribed = {(e.subscriber, e.track_id) for e in effects if isinstance(e, Unsubscribe)}
    a1 = people["A1"]
    for name, x in people.items():
        if x.id != a1.id and x.group != a1.group:
            assert (a1.id, tracks[name].id) in unsubscribed
    assert teacher.group is None
    # Teacher visits group 1, then broadcasts audio to every group.
    effects = room.visit_group(teacher.id, "1")
    _, effects = room.add_track(teacher.id, "audio", "microphone")
    listeners = {e.subscriber for e in effects if isinstance(e, Subscribe)}
    assert listeners == {x.id for x in people.values() if x.group == "1"}
    effects = room.broadcast_audio(teacher.id, True)
    assert {e.subscriber for e in effects if isinstance(e, Subscribe)} == {
        x.id for x in people.values() if x.group == "2"
    }
    chat = room.chat(a1.id, "in our group", "everyone")
    assert {e.to for e in chat if isinstance(e, Deliver)} == {
        x.id for x in room.participants.values() if x.group == a1.group
    }
    shout = room.broadcast(teacher.id, "five minutes left")
    assert {e.to for e in shout if isinstance(e, Deliver)} == set(room.participants)
    effects = room.end_breakout(teacher.id)
    assert not room.state().breakout and all(x.group is None for x in room.participants.values())
    resubscribed = {(e.subscriber, e.track.id) for e in effects if isinstance(e, Subscribe)}
    assert (a1.id, tracks["B1"].id) in resubscribed or a1.group == people["B1"].group


def test_a_groups_chat_is_not_in_the_history_of_another_group() -> None:
    """A student who joins (or reconnects) during breakouts reads its own group's
    messages, not the others'; those who teach read every group's."""
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    a, _ = room.join(grant("A", Role.STUDENT, token_id="link-a"))
    b, _ = room.join(grant("B", Role.STUDENT, token_id="link-b"))
    c, _ = room.join(grant("C", Role.STUDENT, token_id="link-c"))
    room.chat(a.id, "before the groups", "everyone")
    room.start_breakout(teacher.id, [[a.id, c.id], [b.id]], None)
    room.chat(a.id, "group one only", "everyone")
    room.chat(b.id, "group two only", "everyone")
    room.broadcast(teacher.id, "five minutes left")

    def history(who: Any) -> list[str]:
        return [entry.text for entry in room.chat_history_for(who)[0]]

    assert history(c) == ["before the groups", "group one only", "five minutes left"]
    assert history(b) == ["before the groups", "group two only", "five minutes left"]
    assert history(teacher) == [
        "before the groups",
        "group one only",
        "group two only",
        "five minutes left",
    ]
    room.end_breakout(teacher.id)
    assert "group one only" in history(a)  # its own message, whatever its group now
    assert "group one only" not in history(b)


def test_groups_by_hand_validate_members() -> None:
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    a, _ = room.join(grant("A", Role.STUDENT))
    with pytest.raises(p.ProtocolError, match="nobody"):
        room.start_breakout(teacher.id, [[a.id], ["nobody"]], None)
    with pytest.raises(p.ProtocolError, match="two groups"):
        room.start_breakout(teacher.id, [[a.id], [a.id]], None)
    room.start_breakout(teacher.id, [[a.id]], None)
    assert a.group == "1"
    with pytest.raises(p.ProtocolError, match="no group"):
        room.visit_group(teacher.id, "7")


# -- what each participant is told it may do to whom ---------------------------


def welcome_of(effects: list[Effect], pid: str) -> p.Welcome:
    (welcome,) = messages(effects, pid, "welcome")
    assert isinstance(welcome, p.Welcome)
    return welcome


def test_a_teacher_is_told_whom_each_moderation_message_applies_to() -> None:
    room = lesson()
    teacher, effects = room.join(grant("T", Role.TEACHER))
    targets = welcome_of(effects, teacher.id).targets
    assert targets["grant_publish"] == p.TargetRule(roles=["student"], school=None)
    assert targets["revoke_publish"].roles == ["student"]
    # Nothing to mute or present on a role that never publishes.
    publishing = ["classroom", "delegate", "expert", "field_trip", "student", "teacher"]
    for message in ("mute", "allow_unmute", "set_presenter"):
        assert targets[message] == p.TargetRule(roles=publishing, school=None)
    everyone = sorted(r.value for r in Role)
    for message in ("remove", "lower_hand", "grant_floor", "admit", "deny", "spotlight"):
        assert targets[message] == p.TargetRule(roles=everyone, school=None)


def test_a_delegate_is_told_its_own_school_and_no_teachers() -> None:
    room = lesson()
    delegate, effects = room.join(grant("D", Role.DELEGATE, school="south"))
    targets = welcome_of(effects, delegate.id).targets
    assert set(targets) == {
        "grant_publish",
        "revoke_publish",
        "grant_floor",
        "admit",
        "deny",
        "mute",
        "allow_unmute",
        "remove",
        "lower_hand",
    }
    assert all(rule.school == "south" for rule in targets.values())
    assert all("teacher" not in rule.roles for rule in targets.values())
    assert targets["mute"].roles == ["classroom", "delegate", "expert", "field_trip", "student"]


@pytest.mark.parametrize("role", [Role.STUDENT, Role.CLASSROOM, Role.EXPERT, Role.OBSERVER])
def test_participants_without_moderation_are_told_of_no_targets(role: Role) -> None:
    room = lesson()
    participant, effects = room.join(grant("P", role))
    assert welcome_of(effects, participant.id).targets == {}


@pytest.mark.parametrize("actor_role", [Role.TEACHER, Role.DELEGATE])
@pytest.mark.parametrize("target_role", list(Role))
@pytest.mark.parametrize("target_school", ["north", "south"])
def test_the_targets_a_client_is_told_are_the_targets_the_lesson_accepts(
    actor_role: Role, target_role: Role, target_school: str
) -> None:
    """For the messages whose handlers check only the actor's reach: told may ⇔ accepted."""
    room = lesson()
    actor, effects = room.join(grant("A", actor_role, school="north"))
    target, _ = room.join(grant("B", target_role, school=target_school))
    targets = welcome_of(effects, actor.id).targets
    for message, act in (
        ("mute", lambda: room.mute(actor.id, target.id, "audio")),
        ("lower_hand", lambda: room.lower_hand(actor.id, target.id)),
        ("remove", lambda: room.remove(actor.id, target.id)),  # last: the target goes
    ):
        rule = targets.get(message)
        told = (
            rule is not None
            and target_role.value in rule.roles
            and rule.school in (None, target_school)
        )
        try:
            act()
            accepted = True
        except Forbidden:
            accepted = False
        if message == "mute" and target_role is Role.OBSERVER:
            # Accepted, but an observer has nothing to mute: no button for it.
            assert not told
        else:
            assert told == accepted, (message, actor_role, target_role, target_school)


def test_granting_publish_sends_permissions_and_targets() -> None:
    room = lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    student, _ = room.join(grant("S", Role.STUDENT))
    effects = room.grant_publish(teacher.id, student.id)
    (changed,) = messages(effects, student.id, "permissions_changed")
    assert "publish" in changed.permissions
    assert changed.targets == {}


def test_the_chat_policy_narrows_the_chat_permission_in_welcome() -> None:
    room = lesson(chat_policy=ChatPolicy.TEACHERS_ONLY)
    teacher, teacher_effects = room.join(grant("T", Role.TEACHER))
    student, student_effects = room.join(grant("S", Role.STUDENT))
    assert "chat" in welcome_of(teacher_effects, teacher.id).permissions
    assert "chat" not in welcome_of(student_effects, student.id).permissions
    # Granting publishing does not open the chat again.
    (changed,) = messages(
        room.grant_publish(teacher.id, student.id), student.id, "permissions_changed"
    )
    assert "chat" not in changed.permissions
