"""The committed JSON Schema of the protocol, and the check that holds the server to it."""

from __future__ import annotations

import json

import pytest

from signaling import protocol as p
from signaling.protocol_schema import SCHEMA_PATH, render

from .conformance import Conformance


def test_the_committed_schema_is_up_to_date() -> None:
    assert SCHEMA_PATH.read_text() == render(), (
        "docs/protocol.schema.json is stale: run .venv/bin/python -m signaling.protocol_schema"
    )


def welcome() -> dict[str, object]:
    me = p.ParticipantInfo(
        id="a1", name="Ana", role="student", school="south", can_publish=False, tracks=[]
    )
    state = p.LessonState(
        locked=False,
        spotlight=None,
        breakout=False,
        groups={},
        broadcast_audio_from=None,
        chat_policy="everyone",
    )
    message = p.Welcome(
        participant_id="a1",
        lesson="maths-7",
        you=me,
        permissions=["join"],
        participants=[me],
        ice_servers=[],
        state=state,
    )
    decoded: dict[str, object] = json.loads(p.encode_server_message(message))
    return decoded


def test_what_the_server_encodes_conforms() -> None:
    checker = Conformance.load()
    checker.check(json.dumps(welcome()))
    assert checker.validated == 1 and checker.by_type["welcome"] == 1


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda m: m["state"].pop("spotlight"), "'spotlight' is a required property"),
        (lambda m: m["state"].pop("broadcast_audio_from"), "'broadcast_audio_from' is a required"),
        (lambda m: m["participants"][0].pop("group"), "'group' is a required property"),
        (lambda m: m.update(extra=1), "Additional properties"),
        (lambda m: m.update(type="welcomed"), "welcomed"),
    ],
    ids=["no-spotlight", "no-broadcast-audio-from", "no-group", "extra-key", "unknown-type"],
)
def test_messages_missing_documented_keys_are_violations(damage: object, words: str) -> None:
    checker = Conformance.load()
    message = welcome()
    damage(message)  # type: ignore[operator]
    with pytest.raises(AssertionError, match=words):
        checker.check(json.dumps(message))
    assert checker.validated == 0 and len(checker.violations) == 1


def test_binary_and_non_json_frames_are_violations() -> None:
    checker = Conformance.load()
    for frame in (b"{}", "not json"):
        with pytest.raises(AssertionError):
            checker.check(frame)
    assert len(checker.violations) == 2
