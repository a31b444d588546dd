"""The per-socket signalling session: join first, then permission-checked requests."""

from __future__ import annotations

import json

import pytest

from signaling import protocol as p
from signaling.lesson import Deliver
from signaling.permissions import Role
from signaling.registry import InMemoryLessonRegistry
from signaling.session import (
    Close,
    Joined,
    NegotiatePublish,
    Reply,
    SessionEffect,
    SessionState,
    SignalingSession,
)
from signaling.tokens import mint_token

SECRET = b"k" * 48


@pytest.fixture
def registry() -> InMemoryLessonRegistry:
    return InMemoryLessonRegistry()


def session(registry: InMemoryLessonRegistry) -> SignalingSession:
    return SignalingSession(secret=SECRET, registry=registry)


def join_text(role: Role, name: str = "N", lesson: str = "l1") -> str:
    token = mint_token(SECRET, lesson=lesson, name=name, role=role, school="north")
    return json.dumps({"v": 1, "type": "join", "token": token})


def replies(effects: list[SessionEffect]) -> list[p.ServerMessage]:
    return [e.message for e in effects if isinstance(e, Reply)]


def deliveries(effects: list[SessionEffect]) -> list[p.ServerMessage]:
    return [e.message for e in effects if isinstance(e, Deliver)]


def test_join_then_ping(registry: InMemoryLessonRegistry) -> None:
    s = session(registry)
    effects = s.receive_text(join_text(Role.TEACHER), now=0.0)
    assert any(isinstance(e, Joined) for e in effects)
    assert s.state is SessionState.JOINED
    assert replies(s.receive_text('{"v":1,"type":"ping"}', now=0.1)) == [p.Pong()]


def test_the_first_message_must_be_join(registry: InMemoryLessonRegistry) -> None:
    s = session(registry)
    effects = s.receive_text('{"v":1,"type":"ping"}', now=0.0)
    assert effects == [Close("join_required", "the first message must be join")]
    assert s.state is SessionState.CLOSED
    assert s.receive_text(join_text(Role.TEACHER), now=0.1) == []


def test_a_bad_token_is_refused_and_closes(registry: InMemoryLessonRegistry) -> None:
    s = session(registry)
    effects = s.receive_text('{"v":1,"type":"join","token":"forged"}', now=0.0)
    (error,) = replies(effects)
    assert isinstance(error, p.ErrorMessage) and error.code == "bad_token"
    assert isinstance(effects[-1], Close)
    assert registry.lessons() == []


def test_join_timeout_closes_only_before_join(registry: InMemoryLessonRegistry) -> None:
    waiting = session(registry)
    assert waiting.join_timed_out()[0] == Close("join_timeout", "no join within 10 s")
    joined = session(registry)
    joined.receive_text(join_text(Role.STUDENT), now=0.0)
    assert joined.join_timed_out() == []


def test_malformed_messages_after_join_keep_the_session(registry: InMemoryLessonRegistry) -> None:
    s = session(registry)
    s.receive_text(join_text(Role.STUDENT), now=0.0)
    for i, bad in enumerate(["{", '{"v":1,"type":"nope"}', '{"v":1,"type":"join","token":"x"}']):
        (error,) = replies(s.receive_text(bad, now=1.0 + i))
        assert isinstance(error, p.ErrorMessage)
    assert s.state is SessionState.JOINED


def test_a_student_publish_offer_is_forbidden(registry: InMemoryLessonRegistry) -> None:
    s = session(registry)
    s.receive_text(join_text(Role.STUDENT), now=0.0)
    offer = json.dumps({"v": 1, "type": "publish_offer", "sdp": "v=0", "tracks": []})
    (error,) = replies(s.receive_text(offer, now=0.1))
    assert isinstance(error, p.ErrorMessage)
    assert error.code == "forbidden" and error.request_type == "publish_offer"


def test_a_teacher_publish_offer_goes_to_the_sfu(registry: InMemoryLessonRegistry) -> None:
    s = session(registry)
    s.receive_text(join_text(Role.TEACHER), now=0.0)
    offer = json.dumps({"v": 1, "type": "publish_offer", "sdp": "v=0", "tracks": []})
    (effect,) = s.receive_text(offer, now=0.1)
    assert isinstance(effect, NegotiatePublish) and effect.participant_id == s.participant_id


def test_a_forged_sender_changes_nothing(registry: InMemoryLessonRegistry) -> None:
    teacher = session(registry)
    teacher.receive_text(join_text(Role.TEACHER, "T"), now=0.0)
    student = session(registry)
    student.receive_text(join_text(Role.STUDENT, "S"), now=0.0)
    # The student names the teacher as sender and itself as target: fields the schema
    # does not know are refused, and the acting id always comes from the session.
    forged = json.dumps(
        {"v": 1, "type": "grant_publish", "participant_id": student.participant_id, "from": "x"}
    )
    (error,) = replies(student.receive_text(forged, now=0.1))
    assert isinstance(error, p.ErrorMessage) and error.code == "invalid_message"
    plain = json.dumps({"v": 1, "type": "grant_publish", "participant_id": student.participant_id})
    (error,) = replies(student.receive_text(plain, now=0.2))
    assert isinstance(error, p.ErrorMessage) and error.code == "forbidden"
    assert student.lesson is not None
    assert not student.lesson.participants[student.participant_id or ""].granted


def test_the_same_token_joining_again_takes_the_seat_from_the_old_socket(
    registry: InMemoryLessonRegistry,
) -> None:
    text = join_text(Role.TEACHER, "T")
    first = session(registry)
    first.receive_text(text, now=0.0)
    second = session(registry)
    effects = second.receive_text(text, now=1.0)
    (joined,) = [e for e in effects if isinstance(e, Joined)]
    assert joined.resumed and second.participant_id == first.participant_id
    assert second.holds_seat and not first.holds_seat
    (welcome,) = [m for m in deliveries(effects) if m.type == "welcome"]
    assert isinstance(welcome, p.Welcome) and welcome.resumed
    assert second.lesson is not None
    assert list(second.lesson.participants) == [second.participant_id]
    # The first socket closing afterwards changes nothing: it no longer holds the seat.
    assert first.disconnected("replaced", now=2.0) == []
    assert second.lesson.participants[second.participant_id or ""].connected


def test_a_flood_is_rate_limited_then_closed(registry: InMemoryLessonRegistry) -> None:
    s = session(registry)
    s.receive_text(join_text(Role.STUDENT), now=0.0)
    outcomes = [s.receive_text('{"v":1,"type":"ping"}', now=0.0) for _ in range(200)]
    limited = [m for effects in outcomes for m in replies(effects) if isinstance(m, p.ErrorMessage)]
    assert limited and limited[0].code == "rate_limited"
    assert len(limited) == 1  # told once, not once per dropped message
    assert any(isinstance(e, Close) and e.reason == "flood" for o in outcomes for e in o)
    assert s.state is SessionState.CLOSED


def test_a_brief_burst_recovers(registry: InMemoryLessonRegistry) -> None:
    s = session(registry)
    s.receive_text(join_text(Role.STUDENT), now=0.0)
    for _ in range(70):
        s.receive_text('{"v":1,"type":"ping"}', now=0.0)
    # One second later the bucket has refilled.
    assert replies(s.receive_text('{"v":1,"type":"ping"}', now=1.0)) == [p.Pong()]


def test_leaving_forgets_an_empty_lesson(registry: InMemoryLessonRegistry) -> None:
    s = session(registry)
    s.receive_text(join_text(Role.TEACHER), now=0.0)
    assert len(registry.lessons()) == 1
    s.disconnected("left", now=1.0)
    assert registry.lessons() == []
    assert s.state is SessionState.CLOSED


def test_answers_the_server_asked_for_pass_an_empty_bucket(
    registry: InMemoryLessonRegistry,
) -> None:
    """A subscriber answers every offer; the server sets that pace, so an answer it
    asked for is never rate limited away (the server would wait for it forever)."""
    s = session(registry)
    s.receive_text(join_text(Role.STUDENT), now=0.0)
    for _ in range(60):
        s.receive_text('{"v":1,"type":"ping"}', now=0.0)  # the bucket is empty now
    for _ in range(3):
        s.answer_expected()
    passed = [replies(s.receive_text('{"v":1,"type":"ping"}', now=0.0)) for _ in range(3)]
    # At most MAX_SOLICITED are owed, however many offers were sent.
    assert passed[: SignalingSession.MAX_SOLICITED] == [[p.Pong()]] * SignalingSession.MAX_SOLICITED
    assert passed[SignalingSession.MAX_SOLICITED][0].code == "rate_limited"  # type: ignore[union-attr]
