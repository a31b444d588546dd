"""Every role against every action, through the real session and lesson (no I/O).

The actor sends each message as its client would; the expectation is only
whether the permission table lets it through ("forbidden" or not): an allowed
action may still fail for another stated reason (a hand not raised, SDP...).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from signaling import protocol as p
from signaling.lesson import LessonSettings
from signaling.permissions import ChatPolicy, Role
from signaling.records import InMemoryRecordStore
from signaling.registry import InMemoryLessonRegistry
from signaling.session import (
    NegotiatePublish,
    Reply,
    SessionEffect,
    SignalingSession,
)
from signaling.tokens import mint_token

SECRET = b"a" * 48
T = Role.TEACHER
MODERATORS = {Role.TEACHER, Role.DELEGATE}
RAISERS = {Role.EXPERT, Role.CLASSROOM, Role.STUDENT}
PUBLISHERS = {Role.TEACHER, Role.DELEGATE, Role.EXPERT, Role.CLASSROOM, Role.FIELD_TRIP}

# action -> roles allowed to do it (target: a student of the actor's own school)
EXPECTED: dict[str, set[Role]] = {
    "publish_offer": PUBLISHERS,
    "grant_publish": MODERATORS,
    "revoke_publish": MODERATORS,
    "grant_floor": MODERATORS,
    "admit": MODERATORS,
    "deny": MODERATORS,
    "mute": MODERATORS,
    "allow_unmute": MODERATORS,
    "remove": MODERATORS,
    "lower_other_hand": MODERATORS,
    "raise_hand": RAISERS,
    "ask_to_unmute": RAISERS,
    # A field-trip camera publishes and nothing else.
    "chat": set(Role) - {Role.FIELD_TRIP},
    "lock_lesson": {T},
    "mute_all": {T},
    "set_presenter": {T},
    "spotlight": {T},
    "end_lesson": {T},
    "start_breakout": {T},
    "visit_group": {T},
    "broadcast": {T},
    "broadcast_audio": {T},
    "end_breakout": {T},
    "direct_stage": {T},
    "start_recording": {T},
    "stop_recording": {T},
    "decline_recording": MODERATORS,
}


class Room:
    """A lesson with a teacher, the actor, a student target and one waiting student."""

    def __init__(self, actor_role: Role, *, target_school: str = "north", **settings: Any) -> None:
        store = InMemoryRecordStore()
        lesson_settings = LessonSettings(**settings)
        self.registry = InMemoryLessonRegistry(
            records=store, settings_for=lambda _: lesson_settings
        )
        self.teacher = self.join(Role.TEACHER, "T", "north")
        self.actor = (
            self.join(actor_role, "A", "north")
            if actor_role is not Role.TEACHER
            else (self.teacher)
        )
        self.target = self.join(Role.STUDENT, "S", target_school)

    def join(self, role: Role, name: str, school: str) -> SignalingSession:
        session = SignalingSession(secret=SECRET, registry=self.registry, burst=1000)
        token = mint_token(SECRET, lesson="l", name=name, role=role, school=school)
        session.receive_text(json.dumps({"v": 1, "type": "join", "token": token}), now=0.0)
        return session

    def send(self, session: SignalingSession, **message: Any) -> list[SessionEffect]:
        return session.receive_text(json.dumps({"v": 1, **message}), now=0.0)


def message_for(action: str, room: Room) -> dict[str, Any]:
    target = room.target.participant_id
    return {
        "publish_offer": {"type": "publish_offer", "sdp": "v=0", "tracks": []},
        "grant_publish": {"type": "grant_publish", "participant_id": target},
        "revoke_publish": {"type": "revoke_publish", "participant_id": target},
        "grant_floor": {"type": "grant_floor", "participant_id": target},
        "admit": {"type": "admit", "participant_id": target},
        "deny": {"type": "deny", "participant_id": target},
        "mute": {"type": "mute", "participant_id": target, "kind": "audio"},
        "allow_unmute": {"type": "allow_unmute", "participant_id": target, "kind": "audio"},
        "remove": {"type": "remove", "participant_id": target},
        "lower_other_hand": {"type": "lower_hand", "participant_id": target},
        "raise_hand": {"type": "raise_hand"},
        "ask_to_unmute": {"type": "ask_to_unmute", "kind": "audio"},
        "chat": {"type": "chat", "text": "hello"},
        "lock_lesson": {"type": "lock_lesson", "locked": True},
        "mute_all": {"type": "mute_all", "kind": "audio"},
        "set_presenter": {"type": "set_presenter", "participant_id": target, "presenter": True},
        "spotlight": {"type": "spotlight", "participant_id": target},
        "end_lesson": {"type": "end_lesson"},
        "start_breakout": {"type": "start_breakout", "count": 2},
        "visit_group": {"type": "visit_group", "group": None},
        "broadcast": {"type": "broadcast", "text": "back in 5 minutes"},
        "broadcast_audio": {"type": "broadcast_audio", "on": True},
        "end_breakout": {"type": "end_breakout"},
        "direct_stage": {"type": "direct_stage", "stage": {"items": [{"participant_id": target}]}},
        "start_recording": {"type": "start_recording"},
        "stop_recording": {"type": "stop_recording"},
        "decline_recording": {"type": "decline_recording"},
    }[action]


def errors(effects: list[SessionEffect]) -> list[p.ErrorMessage]:
    return [e.message for e in effects if isinstance(e, Reply) and e.message.type == "error"]  # type: ignore[misc]


def forbidden(effects: list[SessionEffect]) -> bool:
    return any(error.code == "forbidden" for error in errors(effects))


@pytest.mark.parametrize("action", sorted(EXPECTED))
@pytest.mark.parametrize("role", list(Role))
def test_every_role_against_every_action(role: Role, action: str) -> None:
    room = Room(role)
    effects = room.send(room.actor, **message_for(action, room))
    assert forbidden(effects) is (role not in EXPECTED[action]), errors(effects)
    if action == "publish_offer" and role in EXPECTED[action]:
        assert any(isinstance(e, NegotiatePublish) for e in effects)


@pytest.mark.parametrize(
    "action", ["grant_publish", "mute", "allow_unmute", "remove", "lower_other_hand", "grant_floor"]
)
def test_a_delegate_cannot_act_on_another_school(action: str) -> None:
    room = Room(Role.DELEGATE, target_school="south")
    effects = room.send(room.actor, **message_for(action, room))
    assert forbidden(effects)
    assert "own school" in errors(effects)[0].message


def test_a_delegate_cannot_act_on_a_teacher() -> None:
    room = Room(Role.DELEGATE)
    effects = room.send(
        room.actor, type="mute", participant_id=room.teacher.participant_id, kind="audio"
    )
    assert forbidden(effects)


@pytest.mark.parametrize("field", ["role", "from", "sender", "participant"])
def test_forged_role_or_sender_fields_are_refused(field: str) -> None:
    room = Room(Role.STUDENT)
    message = {**message_for("mute", room), field: "teacher"}
    effects = room.send(room.actor, **message)
    assert [e.code for e in errors(effects)] == ["invalid_message"]
    lesson = room.actor.lesson
    assert lesson is not None
    assert not lesson.participants[room.target.participant_id or ""].muted


def test_observers_cannot_chat_when_the_lesson_says_so() -> None:
    room = Room(Role.OBSERVER, chat_policy=ChatPolicy.NO_OBSERVERS)
    assert forbidden(room.send(room.actor, type="chat", text="hi"))
    assert not forbidden(room.send(room.target, type="chat", text="hi"))


def test_nobody_but_teachers_chat_in_a_teachers_only_lesson() -> None:
    room = Room(Role.DELEGATE, chat_policy=ChatPolicy.TEACHERS_ONLY)
    assert not forbidden(room.send(room.actor, type="chat", text="hi"))
    assert forbidden(room.send(room.target, type="chat", text="hi"))
