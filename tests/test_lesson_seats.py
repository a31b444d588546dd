"""Seats in the lesson state machine: every transition, without sockets or media.

A seat belongs to a join link: its socket may go and come back (or be replaced)
without the lesson forgetting anything about it, until it is released.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from signaling import protocol as p
from signaling.attendance import attendance_rows
from signaling.lesson import (
    Deliver,
    Effect,
    EndMedia,
    Forbidden,
    HoldSeat,
    Lesson,
    LessonSettings,
    Record,
    ResetMedia,
    StopTrack,
    Subscribe,
)
from signaling.permissions import Permission, Role
from signaling.records import (
    AttendanceEvent,
    AttendanceKind,
    BanRecord,
    InMemoryRecordStore,
    ModerationRecord,
)
from signaling.tokens import Grant

GRACE = 60.0
numbers = itertools.count()


class Clock:
    """The lesson's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def grant(name: str, role: Role, token_id: str | None = None, school: str = "north") -> Grant:
    return Grant(
        lesson="l1",
        name=name,
        role=role,
        school=school,
        token_id=token_id or f"{name}-{next(numbers)}",
        expires_at=2**40,
    )


def new_lesson(clock: Clock | None = None, **settings: Any) -> Lesson:
    return Lesson(
        "l1", settings=LessonSettings(**settings), clock=clock or Clock(), seat_grace=GRACE
    )


def messages(effects: list[Effect], to: str, message_type: str) -> list[Any]:
    return [
        e.message
        for e in effects
        if isinstance(e, Deliver) and e.to == to and e.message.type == message_type
    ]


def kinds(effects: list[Effect]) -> list[AttendanceKind]:
    return [
        e.data.kind
        for e in effects
        if isinstance(e, Record) and isinstance(e.data, AttendanceEvent)
    ]


def records(effects: list[Effect]) -> list[Any]:
    return [e.data for e in effects if isinstance(e, Record)]


# --- held, taken back, released ------------------------------------------------


def test_a_socket_that_goes_leaves_its_seat_held_with_everything_decided_about_it() -> None:
    clock = Clock()
    room = new_lesson(clock)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    ana, _ = room.join(grant("Ana", Role.STUDENT))
    room.grant_publish(teacher.id, ana.id)
    track, _ = room.add_track(ana.id, "video", "camera")
    room.mute(teacher.id, ana.id, "audio")
    room.raise_hand(ana.id)
    room.set_spotlight(teacher.id, ana.id)
    effects = room.disconnect(ana.id, ana.epoch, "disconnected", clock.now)
    (gone,) = messages(effects, teacher.id, "participant_disconnected")
    assert gone.seat_held_until == clock.now + GRACE and gone.reason == "disconnected"
    assert HoldSeat("l1", ana.id, clock.now + GRACE) in effects
    assert kinds(effects) == [AttendanceKind.DISCONNECTED]
    assert not messages(effects, teacher.id, "participant_left")
    assert not [e for e in effects if isinstance(e, (StopTrack, EndMedia))]
    seat = room.participants[ana.id]
    assert not seat.connected and seat.info().connected is False
    assert seat.tracks == {track.id: track} and seat.muted == {"audio"}
    assert seat.may(Permission.PUBLISH) and seat.hand_raised_at is not None
    assert room.spotlight == ana.id and [h.participant_id for h in room.hands()] == [ana.id]
    assert not room.is_empty


def test_the_same_link_takes_its_held_seat_back_with_its_media() -> None:
    clock = Clock()
    room = new_lesson(clock)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    link = grant("Ana", Role.STUDENT)
    ana, _ = room.join(link)
    room.grant_publish(teacher.id, ana.id)
    track, _ = room.add_track(ana.id, "video", "camera")
    room.disconnect(ana.id, ana.epoch, "timed out", clock.now)
    clock.now += 10
    entry = room.enter(link, resume_media=True)
    assert entry.resumed and entry.participant is ana and ana.connected
    (back,) = messages(entry.effects, teacher.id, "participant_reconnected")
    assert back.participant_id == ana.id
    (welcome,) = messages(entry.effects, ana.id, "welcome")
    assert welcome.resumed and welcome.you.id == ana.id and welcome.you.tracks == [track]
    assert "publish" in welcome.permissions
    assert kinds(entry.effects) == [AttendanceKind.RECONNECTED]
    # Its media was kept: nothing stops, nothing is offered again.
    assert not [e for e in entry.effects if isinstance(e, (ResetMedia, StopTrack, Subscribe))]
    assert room.release(ana.id, clock.now + GRACE) == []


def test_a_new_page_takes_the_seat_but_its_media_starts_over() -> None:
    clock = Clock()
    room = new_lesson(clock)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    teacher_track, _ = room.add_track(teacher.id, "video", "camera")
    link = grant("Room", Role.CLASSROOM)
    classroom, _ = room.join(link)
    own, _ = room.add_track(classroom.id, "audio", "microphone")
    room.disconnect(classroom.id, classroom.epoch, "disconnected", clock.now)
    entry = room.enter(link, resume_media=False)
    assert entry.resumed and entry.participant.id == classroom.id
    (gone,) = messages(entry.effects, teacher.id, "track_unpublished")
    assert gone.track_id == own.id and gone.reason == "reconnected"
    assert StopTrack(classroom.id, own.id) in entry.effects
    assert ResetMedia(classroom.id) in entry.effects
    # What it receives stays subscribed: the SFU offers it on a new connection.
    assert not [e for e in entry.effects if isinstance(e, Subscribe)]
    assert (classroom.id, teacher_track.id) in room._forwarded
    assert not classroom.tracks


def test_a_second_socket_takes_a_connected_seat_and_the_first_changes_nothing() -> None:
    clock = Clock()
    room = new_lesson(clock)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    link = grant("Ana", Role.STUDENT)
    first = room.enter(link)
    epoch = first.participant.epoch
    second = room.enter(link, resume_media=True)
    assert second.participant is first.participant and second.resumed
    assert second.participant.epoch == epoch + 1
    assert not messages(second.effects, teacher.id, "participant_reconnected")
    assert not kinds(second.effects)
    assert room.disconnect(first.participant.id, epoch, "replaced", clock.now) == []
    assert first.participant.connected


def test_a_seat_not_taken_back_in_time_is_released_as_of_its_drop() -> None:
    clock = Clock()
    room = new_lesson(clock)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    ana, _ = room.join(grant("Ana", Role.STUDENT))
    room.grant_publish(teacher.id, ana.id)
    track, _ = room.add_track(ana.id, "video", "camera")
    room.raise_hand(ana.id)
    room.set_spotlight(teacher.id, ana.id)
    dropped = clock.now
    room.disconnect(ana.id, ana.epoch, "timed out", dropped)
    assert room.release(ana.id, dropped + GRACE - 1) == []  # not yet
    clock.now = dropped + GRACE
    effects = room.release(ana.id, clock.now)
    (left,) = messages(effects, teacher.id, "participant_left")
    assert left.reason == "timed out"
    (event,) = [r for r in records(effects) if isinstance(r, AttendanceEvent)]
    assert event.kind is AttendanceKind.LEFT and event.at == dropped
    assert StopTrack(ana.id, track.id) in effects and EndMedia(ana.id) in effects
    assert messages(effects, teacher.id, "hands_changed") and room.spotlight is None
    assert ana.id not in room.participants
    assert room.release(ana.id, clock.now) == []


def test_a_seat_dropped_again_is_held_anew_and_the_first_deadline_frees_nothing() -> None:
    clock = Clock()
    room = new_lesson(clock)
    room.join(grant("T", Role.TEACHER))
    link = grant("Ana", Role.STUDENT)
    ana, _ = room.join(link)
    room.disconnect(ana.id, ana.epoch, "disconnected", clock.now)
    first_deadline = clock.now + GRACE
    clock.now += 30
    room.enter(link, resume_media=True)
    room.disconnect(ana.id, ana.epoch, "disconnected", clock.now)
    assert room.release(ana.id, first_deadline) == []
    assert room.release(ana.id, clock.now + GRACE) != []


@pytest.mark.parametrize(
    "reason", ["left", "removed", "denied", "lesson_ended", "flood", "server_shutdown"]
)
def test_leaving_on_purpose_or_being_sent_away_frees_the_seat_at_once(reason: str) -> None:
    clock = Clock()
    room = new_lesson(clock)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    ana, _ = room.join(grant("Ana", Role.STUDENT))
    effects = room.disconnect(ana.id, ana.epoch, reason, clock.now)
    assert messages(effects, teacher.id, "participant_left")
    assert EndMedia(ana.id) in effects and ana.id not in room.participants


def test_a_seat_grace_of_zero_holds_nothing() -> None:
    clock = Clock()
    room = Lesson("l1", clock=clock, seat_grace=0)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    ana, _ = room.join(grant("Ana", Role.STUDENT))
    effects = room.disconnect(ana.id, ana.epoch, "disconnected", clock.now)
    assert messages(effects, teacher.id, "participant_left")


def test_removing_a_held_seat_frees_it_and_bans_its_link() -> None:
    clock = Clock()
    room = new_lesson(clock)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    link = grant("Troll", Role.STUDENT)
    troll, _ = room.join(link)
    room.disconnect(troll.id, troll.epoch, "disconnected", clock.now)
    effects = room.remove(teacher.id, troll.id)
    assert BanRecord("l1", link.token_id) in records(effects)
    assert troll.id not in room.participants
    with pytest.raises(Forbidden, match="removed"):
        room.enter(link, resume_media=True)


def test_ending_the_lesson_frees_held_seats_as_of_their_drop() -> None:
    clock = Clock()
    room = new_lesson(clock)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    ana, _ = room.join(grant("Ana", Role.STUDENT))
    dropped = clock.now
    room.disconnect(ana.id, ana.epoch, "disconnected", dropped)
    clock.now += 5
    effects = room.end(teacher.id)
    left = [r for r in records(effects) if isinstance(r, AttendanceEvent)]
    assert [(e.participant_id, e.kind, e.at) for e in left] == [
        (ana.id, AttendanceKind.LEFT, dropped)
    ]
    assert EndMedia(ana.id) in effects


# --- doors: locked lessons and the lobby -----------------------------------------


def test_a_locked_lesson_lets_a_seat_back_in_but_no_new_link() -> None:
    clock = Clock()
    room = new_lesson(clock)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    link = grant("Ana", Role.STUDENT)
    ana, _ = room.join(link)
    room.lock(teacher.id, True)
    room.disconnect(ana.id, ana.epoch, "disconnected", clock.now)
    assert room.enter(link, resume_media=True).participant is ana
    with pytest.raises(Forbidden, match="locked"):
        room.enter(grant("Ben", Role.STUDENT))


def test_an_admitted_student_goes_straight_back_in_also_after_its_seat_was_freed() -> None:
    clock = Clock()
    room = new_lesson(clock, lobby=True)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    link = grant("Ana", Role.STUDENT)
    ana, _ = room.join(link)
    assert room.is_waiting(ana.id)
    room.admit(teacher.id, ana.id)
    room.disconnect(ana.id, ana.epoch, "disconnected", clock.now)
    entry = room.enter(link, resume_media=True)
    assert messages(entry.effects, ana.id, "welcome") and not room.waiting
    # Freed, then back later: the teacher let this link in once; it does not wait again.
    room.disconnect(ana.id, ana.epoch, "disconnected", clock.now)
    room.release(ana.id, clock.now + GRACE)
    again, effects = room.join(link)
    assert again.id != ana.id and messages(effects, again.id, "welcome")


def test_one_link_holds_one_lobby_seat_whatever_its_sockets() -> None:
    clock = Clock()
    room = new_lesson(clock, lobby=True)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    link = grant("Ana", Role.STUDENT)
    first = room.enter(link)
    (changed,) = messages(first.effects, teacher.id, "lobby_changed")
    assert [x.id for x in changed.added] == [first.participant.id]
    for _ in range(5):
        again = room.enter(link)
        assert again.participant is first.participant and again.resumed
        (wait,) = messages(again.effects, first.participant.id, "lobby_wait")
        assert wait.participant_id == first.participant.id
        # The moderators see no change at all.
        assert not messages(again.effects, teacher.id, "lobby_changed")
    assert list(room.waiting) == [first.participant.id]
    # Only the socket holding the seat frees it.
    assert room.disconnect(first.participant.id, 0, "disconnected", clock.now) == []
    effects = room.disconnect(
        first.participant.id, first.participant.epoch, "disconnected", clock.now
    )
    (gone,) = messages(effects, teacher.id, "lobby_changed")
    assert gone.added == [] and gone.removed == [first.participant.id]
    assert not room.waiting


def test_moderators_get_the_lobby_once_then_changes_only() -> None:
    room = new_lesson(lobby=True)
    room.join(grant("T", Role.TEACHER))
    waiting = [room.join(grant(f"S{n}", Role.STUDENT))[0] for n in range(3)]
    co_teacher, effects = room.join(grant("Co", Role.TEACHER))
    (snapshot,) = messages(effects, co_teacher.id, "lobby_updated")
    assert [x.id for x in snapshot.waiting] == [x.id for x in waiting]
    effects = room.admit(co_teacher.id, waiting[0].id)
    (changed,) = messages(effects, co_teacher.id, "lobby_changed")
    assert changed.added == [] and changed.removed == [waiting[0].id]


# --- what moderators decided holds for the link ------------------------------------


def test_a_mute_holds_for_the_links_next_seat_and_is_recorded() -> None:
    clock = Clock()
    store = InMemoryRecordStore()
    room = new_lesson(clock)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    link = grant("Ana", Role.STUDENT)
    ana, _ = room.join(link)
    effects = room.mute(teacher.id, ana.id, "video")
    assert ModerationRecord("l1", link.token_id, ("video",), None) in records(effects)
    for record in records(effects):
        store.append(record)
    room.disconnect(ana.id, ana.epoch, "disconnected", clock.now)
    room.release(ana.id, clock.now + GRACE)
    # A new seat of the same link, even in a lesson reopened from the records.
    reopened = Lesson("l1", history=store.history("l1"), clock=clock, seat_grace=GRACE)
    for lesson in (room, reopened):
        again, effects = lesson.join(link)
        assert again.muted == {"video"}
        (welcome,) = messages(effects, again.id, "welcome")
        assert welcome.you.muted == ["video"]


def test_a_revoked_grant_holds_even_where_students_publish_by_default() -> None:
    clock = Clock()
    room = new_lesson(clock, students_publish=True)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    link = grant("Ana", Role.STUDENT)
    ana, _ = room.join(link)
    assert ana.may(Permission.PUBLISH)
    effects = room.revoke_publish(teacher.id, ana.id)
    assert ModerationRecord("l1", link.token_id, (), "revoked") in records(effects)
    room.disconnect(ana.id, ana.epoch, "left", clock.now)
    again, _ = room.join(link)
    assert not again.may(Permission.PUBLISH)
    other, _ = room.join(grant("Ben", Role.STUDENT))
    assert other.may(Permission.PUBLISH)


def test_a_grant_holds_for_the_links_next_seat() -> None:
    clock = Clock()
    room = new_lesson(clock)
    teacher, _ = room.join(grant("T", Role.TEACHER))
    link = grant("Ana", Role.STUDENT)
    ana, _ = room.join(link)
    room.grant_publish(teacher.id, ana.id)
    room.disconnect(ana.id, ana.epoch, "left", clock.now)
    again, _ = room.join(link)
    assert again.may(Permission.PUBLISH)


def test_allowing_back_is_recorded_too() -> None:
    room = new_lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    link = grant("Ana", Role.STUDENT)
    ana, _ = room.join(link)
    room.mute(teacher.id, ana.id, "audio")
    effects = room.allow_unmute(teacher.id, ana.id, "audio")
    assert ModerationRecord("l1", link.token_id, (), None) in records(effects)


# --- attendance -----------------------------------------------------------------------


def attendance_of(effects: list[Effect]) -> list[AttendanceEvent]:
    return [r for r in records(effects) if isinstance(r, AttendanceEvent)]


def test_a_drop_inside_the_grace_period_is_one_interval_and_a_longer_one_two() -> None:
    clock = Clock()
    room = new_lesson(clock)
    log: list[AttendanceEvent] = []
    log += attendance_of(room.join(grant("T", Role.TEACHER))[1])
    link = grant("Ana", Role.STUDENT)
    ana, effects = room.join(link)
    log += attendance_of(effects)
    start = clock.now
    clock.now += 100
    log += attendance_of(room.disconnect(ana.id, ana.epoch, "disconnected", clock.now))
    clock.now += 10  # a 10 s drop, inside the 60 s grace period
    log += attendance_of(room.enter(link, resume_media=True).effects)
    clock.now += 100
    log += attendance_of(room.disconnect(ana.id, ana.epoch, "left", clock.now))
    (row,) = [r for r in attendance_rows(log, clock.now) if r.name == "Ana"]
    assert row.sessions == 1 and row.seconds_present == 210
    assert row.first_joined == start and row.last_left == clock.now

    # The same link again, with a drop longer than the grace period: two sessions.
    again, effects = room.join(link)
    log += attendance_of(effects)
    second_start = clock.now
    clock.now += 50
    dropped = clock.now
    log += attendance_of(room.disconnect(again.id, again.epoch, "disconnected", dropped))
    clock.now += GRACE + 20
    log += attendance_of(room.release(again.id, dropped + GRACE))
    third, effects = room.join(link)
    log += attendance_of(effects)
    third_start = clock.now
    clock.now += 30
    log += attendance_of(room.disconnect(third.id, third.epoch, "left", clock.now))
    (row,) = [r for r in attendance_rows(log, clock.now) if r.name == "Ana"]
    assert row.sessions == 3
    assert row.seconds_present == 210 + (dropped - second_start) + (clock.now - third_start)


# --- chat history -----------------------------------------------------------------------


def test_a_late_joiner_gets_the_newest_chat_and_fetches_older_pages() -> None:
    room = new_lesson()
    teacher, _ = room.join(grant("T", Role.TEACHER))
    for number in range(120):
        room.chat(teacher.id, f"message {number}", "everyone")
    late, effects = room.join(grant("Late", Role.STUDENT))
    (history,) = messages(effects, late.id, "chat_history")
    assert len(history.messages) == p.CHAT_HISTORY_ON_JOIN and not history.complete
    assert history.messages[-1].text == "message 119"
    first_id = history.messages[0].id
    (page,) = messages(room.fetch_chat(late.id, first_id, 60), late.id, "chat_history")
    assert [m.text for m in page.messages] == [f"message {n}" for n in range(10, 70)]
    assert not page.complete
    (rest,) = messages(room.fetch_chat(late.id, page.messages[0].id, 60), late.id, "chat_history")
    assert [m.text for m in rest.messages] == [f"message {n}" for n in range(10)]
    assert rest.complete
