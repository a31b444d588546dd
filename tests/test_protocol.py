"""Parsing client messages: every malformed input is refused with a named reason."""

from __future__ import annotations

import json

import pytest

from signaling import protocol as p


def parse_error(data: str | bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_message(data)
    return info.value


def test_a_valid_join_parses() -> None:
    message = p.parse_client_message('{"v":1,"type":"join","token":"abc"}')
    assert isinstance(message, p.Join) and message.token == "abc"


def test_a_publish_offer_with_tracks_parses() -> None:
    text = json.dumps(
        {
            "v": 1,
            "type": "publish_offer",
            "sdp": "v=0",
            "tracks": [{"mid": "0", "source": "camera"}],
        }
    )
    message = p.parse_client_message(text)
    assert isinstance(message, p.PublishOffer)
    assert message.tracks[0].source == "camera"


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        ("{not json", "malformed_json", "not valid JSON"),
        ("[1, 2]", "malformed_message", "JSON object"),
        ('{"v":1,"type":"join","token":"a","token":"b"}', "duplicate_key", "'token'"),
        ('{"type":"join","token":"a"}', "unsupported_version", "version"),
        ('{"v":2,"type":"join","token":"a"}', "unsupported_version", "v=1"),
        ('{"v":1,"type":"launch_rockets"}', "unknown_type", "'launch_rockets'"),
        ('{"v":1}', "unknown_type", "None"),
        ('{"v":1,"type":"join"}', "invalid_message", "missing field 'token'"),
        ('{"v":1,"type":"join","token":5}', "invalid_message", "'token'"),
        ('{"v":1,"type":"join","token":"a","role":"teacher"}', "invalid_message", "'role'"),
        ('{"v":1,"type":"grant_publish","participant_id":""}', "invalid_message", "participant_id"),
        (
            '{"v":1,"type":"publish_offer","sdp":"x","tracks":[{"mid":"0","source":"hat"}]}',
            "invalid_message",
            "tracks.0.source",
        ),
        ('{"v":1,"type":"ice_candidate","pc":"other"}', "invalid_message", "'pc'"),
        ('{"v":true,"type":"ping"}', "unsupported_version", "True"),
    ],
)
def test_malformed_messages_name_the_problem(data: str, code: str, words: str) -> None:
    error = parse_error(data)
    assert error.code == code
    assert words in error.message


def test_oversized_messages_are_refused_before_parsing() -> None:
    big = json.dumps({"v": 1, "type": "join", "token": "a" * (p.MAX_MESSAGE_BYTES + 1)})
    assert parse_error(big).code == "message_too_large"


def test_binary_frames_are_refused() -> None:
    assert parse_error(b'{"v":1,"type":"ping"}').code == "binary_message"


def test_deep_nesting_is_refused_not_crashing() -> None:
    error = parse_error("[" * 50_000 + "]" * 50_000)
    assert error.code in ("malformed_json", "message_too_large")


def test_server_messages_round_trip_as_json() -> None:
    text = p.encode_server_message(p.ErrorMessage(code="forbidden", message="no"))
    assert json.loads(text) == {
        "v": 1,
        "type": "error",
        "code": "forbidden",
        "message": "no",
        "request_type": None,
    }


def test_server_messages_carry_every_documented_key_even_when_null() -> None:
    state = p.LessonState(
        locked=False,
        spotlight=None,
        breakout=False,
        groups={},
        broadcast_audio_from=None,
        chat_policy="everyone",
    )
    updated = json.loads(p.encode_server_message(p.LessonUpdated(state=state)))
    assert updated["state"]["spotlight"] is None
    assert updated["state"]["broadcast_audio_from"] is None
    someone = p.ParticipantInfo(
        id="a1", name="Ana", role="student", school="south", can_publish=False, tracks=[]
    )
    joined = json.loads(p.encode_server_message(p.ParticipantJoined(participant=someone)))
    assert joined["participant"]["group"] is None


def test_a_number_too_long_to_convert_is_malformed_json_not_a_crash() -> None:
    # Found by tests/test_fuzz.py: Python refuses ints of more than 4300 digits
    # with a plain ValueError, which escaped the parser and ended the connection.
    error = parse_error('{"v":1,"type":"ping","n":' + "1" * 5000 + "}")
    assert error.code == "malformed_json" and "number" in error.message
