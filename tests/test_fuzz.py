"""Fuzz the signalling socket of a real ``lco serve`` over real WebSockets (Hypothesis).

Students send random bytes, random text and JSON, every message type with wrong,
missing, extra, huge or deeply nested fields, and valid messages they are not
allowed to send (against the teacher and each other). After each case the
student pings: the pong proves the server handled the case and goes on. After
the run the server has logged no traceback, and a teacher connected throughout
still gets pong and sees a new student's chat.

1,000 cases by default (a fixed seed); ``--fuzz-long`` runs 10,000 with a random one.
Every reply is checked against docs/protocol.schema.json (tests/conformance.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from signaling.permissions import Role
from signaling.protocol import CLIENT_MESSAGE_TYPES

from .conftest import RunningServer, start_server, stop_server

STUDENTS = 16
# Per socket, below the server's limit (20 per second, bursts of 60): the fuzz
# tests what the server does with each message, not its rate limit.
RATE_PER_SECOND = 12.0
BURST = 30.0
# Close codes a student may see: normal (leave), protocol error, bad data,
# policy (bye), too big. 1011 would be a server error.
EXPECTED_CLOSE_CODES = {1000, 1002, 1007, 1008, 1009}


def open_socket(url: str) -> ClientConnection:
    """A sync client socket kept open across calls (closed with ``close()``)."""
    # websockets wants connect() used as a context manager; entering it is that.
    # No keepalive thread: its pings draw from the global random module while
    # Hypothesis draws examples, which Hypothesis rightly flags. The teacher pings.
    return connect(url, max_size=2**22, ping_interval=None).__enter__()


@dataclass
class Student:
    """One fuzzing socket, rejoined with the same link whenever the server closes it."""

    url: str
    token: str
    socket: ClientConnection | None = None
    participant_id: str = ""
    allowance: float = BURST
    refilled: float = field(default_factory=time.monotonic)

    def ensure_open(self) -> ClientConnection:
        if self.socket is None:
            self.socket = open_socket(self.url)
            self.socket.send(json.dumps({"v": 1, "type": "join", "token": self.token}))
            welcome = self.receive()
            assert welcome["type"] == "welcome", welcome
            self.participant_id = welcome["participant_id"]
            self.allowance -= 1
        return self.socket

    def receive(self) -> dict[str, Any]:
        assert self.socket is not None
        message: dict[str, Any] = json.loads(self.socket.recv(timeout=15))
        return message

    def pace(self) -> None:
        """Wait for this socket's turn under the client-side rate (not a race: a rate)."""
        now = time.monotonic()
        self.allowance = min(BURST, self.allowance + (now - self.refilled) * RATE_PER_SECOND)
        self.refilled = now
        if self.allowance < 2:
            time.sleep((2 - self.allowance) / RATE_PER_SECOND)
            self.allowance = 2
            self.refilled = time.monotonic()
        self.allowance -= 2


class Teacher(threading.Thread):
    """A teacher connected throughout: reads everything, answers the server's pings."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.socket = open_socket(url)
        self.socket.send(json.dumps({"v": 1, "type": "join", "token": token}))
        welcome = json.loads(self.socket.recv(timeout=15))
        assert welcome["type"] == "welcome"
        self.participant_id: str = welcome["participant_id"]
        self.received: Counter[str] = Counter()
        self.chats: list[str] = []
        self.chat_arrived = threading.Condition()
        self.pong = threading.Event()
        self.closed = threading.Event()
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    message = json.loads(self.socket.recv(timeout=1))
                except TimeoutError:
                    continue
                self.received[message["type"]] += 1
                if message["type"] == "ping":
                    self.socket.send('{"v":1,"type":"pong"}')
                elif message["type"] == "pong":
                    self.pong.set()
                elif message["type"] == "chat_message":
                    with self.chat_arrived:
                        self.chats.append(message["message"]["text"])
                        self.chat_arrived.notify_all()
        except websockets.ConnectionClosed:
            self.closed.set()

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)
        self.socket.close()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("fuzz"))
    yield running
    stop_server(running)


# -- what the students send -------------------------------------------------------------

FIELDS = sorted(
    {
        "token", "lesson", "sdp", "tracks", "mid", "source", "pc", "candidate", "sdp_mid",
        "sdp_mline_index", "participant_id", "locked", "kind", "presenter", "text", "to",
        "groups", "count", "group", "on", "mode", "v", "type", "resume", "before", "limit",
        "offer_id", "stage", "classroom", "items", "declined",
    }
)  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def templates(ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid message of every type a client may send, aimed at real participants."""
    who = st.sampled_from(ids)
    kind = st.sampled_from(["audio", "video"])
    sdp = st.sampled_from(
        ["v=0\r\n", "not sdp", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"]
    )
    options: dict[str, st.SearchStrategy[dict[str, Any]]] = {
        "join": st.fixed_dictionaries(
            {"token": st.text(min_size=1, max_size=60)}, optional={"resume": st.booleans()}
        ),
        "publish_offer": st.fixed_dictionaries(
            {"sdp": sdp, "tracks": st.just([{"mid": "0", "source": "camera"}])}
        ),
        "subscribe_answer": st.fixed_dictionaries(
            {"sdp": sdp}, optional={"offer_id": st.integers(0, 5)}
        ),
        "ice_candidate": st.fixed_dictionaries(
            {
                "pc": st.sampled_from(["publish", "subscribe"]),
                "candidate": st.sampled_from(
                    [None, "candidate:1 1 udp 1 127.0.0.1 9 typ host", "garbage"]
                ),
            }
        ),
        "grant_publish": st.fixed_dictionaries({"participant_id": who}),
        "revoke_publish": st.fixed_dictionaries({"participant_id": who}),
        "ping": st.just({}),
        "pong": st.just({}),
        "leave": st.just({}),
        "ice_restart": st.just({"pc": "subscribe"}),
        "fetch_chat": st.fixed_dictionaries(
            {}, optional={"before": st.integers(0, 50), "limit": st.integers(1, 100)}
        ),
        "admit": st.fixed_dictionaries({"participant_id": who}),
        "deny": st.fixed_dictionaries({"participant_id": who}),
        "lock_lesson": st.fixed_dictionaries({"locked": st.booleans()}),
        "mute": st.fixed_dictionaries({"participant_id": who, "kind": kind}),
        "mute_all": st.fixed_dictionaries({"kind": kind}),
        "ask_to_unmute": st.fixed_dictionaries({"kind": kind}),
        "allow_unmute": st.fixed_dictionaries({"participant_id": who, "kind": kind}),
        "remove": st.fixed_dictionaries({"participant_id": who}),
        "set_presenter": st.fixed_dictionaries({"participant_id": who, "presenter": st.booleans()}),
        "spotlight": st.fixed_dictionaries({"participant_id": who | st.none()}),
        "end_lesson": st.just({}),
        "raise_hand": st.just({}),
        "lower_hand": st.fixed_dictionaries({}, optional={"participant_id": who}),
        "grant_floor": st.fixed_dictionaries({"participant_id": who}),
        "chat": st.fixed_dictionaries(
            {
                "text": st.text(min_size=1, max_size=80),
                "to": st.sampled_from(["everyone", "teachers"]),
            }
        ),
        "start_breakout": st.fixed_dictionaries({"count": st.integers(2, 4)})
        | st.fixed_dictionaries({"groups": st.lists(st.lists(who, max_size=3), max_size=3)}),
        "visit_group": st.fixed_dictionaries({"group": st.none() | st.sampled_from(["1", "2"])}),
        "broadcast": st.fixed_dictionaries({"text": st.text(min_size=1, max_size=40)}),
        "broadcast_audio": st.fixed_dictionaries({"on": st.booleans()}),
        "end_breakout": st.just({}),
        "receive_settings": st.fixed_dictionaries(
            {
                "mode": st.sampled_from(["auto", "low_data", "audio_only"]),
                "tracks": st.lists(
                    st.fixed_dictionaries(
                        {
                            "track_id": who.map(lambda pid: f"{pid}-1") | st.text(max_size=8),
                            "width": st.integers(-1, 20000),
                            "height": st.integers(-1, 20000),
                        }
                    ),
                    max_size=3,
                ),
            }
        ),
        "direct_stage": st.fixed_dictionaries(
            {
                "stage": st.none()
                | st.fixed_dictionaries(
                    {
                        "items": st.lists(
                            st.fixed_dictionaries(
                                {"participant_id": who},
                                optional={"source": st.sampled_from(["camera", "screen"])},
                            ),
                            min_size=0,
                            max_size=3,
                        )
                    }
                )
            },
            optional={"classroom": who | st.none()},
        ),
        "start_recording": st.just({}),
        "stop_recording": st.just({}),
        "decline_recording": st.fixed_dictionaries({}, optional={"declined": st.booleans()}),
    }
    assert set(options) == CLIENT_MESSAGE_TYPES  # a new message type gets fuzzed too
    return st.sampled_from(sorted(options)).flatmap(
        lambda kind_: options[kind_].map(lambda body: {"v": 1, "type": kind_, **body})
    )


@st.composite
def mutated(draw: st.DrawFn, ids: list[str]) -> str:
    """A valid message, then damaged: a key dropped, changed, added or repeated..."""
    message = draw(templates(ids))
    how = draw(
        st.sampled_from(["as-is", "drop", "change", "add", "repeat", "version", "wrap", "huge"])
    )
    keys = sorted(message)
    if how == "drop":
        message.pop(draw(st.sampled_from(keys)))
    elif how == "change":
        message[draw(st.sampled_from(keys))] = draw(json_values)
    elif how == "add":
        message[draw(st.sampled_from(FIELDS) | st.text(max_size=10))] = draw(json_values)
    elif how == "repeat":
        key = draw(st.sampled_from(keys))
        text = json.dumps(message)
        return text[:-1] + f", {json.dumps(key)}: {json.dumps(draw(json_values))}}}"
    elif how == "version":
        message["v"] = draw(st.sampled_from([0, 2, "1", 1.0, True, None]))
    elif how == "wrap":
        return json.dumps([message])
    elif how == "huge":
        key = draw(st.sampled_from([k for k in keys if k not in ("v", "type")] or ["text"]))
        size = draw(st.sampled_from([2_000, 60_000, 66_000, 200_000, 1_100_000]))
        message[key] = "x" * size
    return json.dumps(message)


@st.composite
def nested(draw: st.DrawFn) -> str:
    depth = draw(st.sampled_from([10, 500, 1_000, 5_000, 30_000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    inner = opener * depth + "1" + closer * depth
    return draw(st.sampled_from([inner, '{"v":1,"type":"chat","text":' + inner + "}"]))


def frames(ids: list[str]) -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        json_values.map(json.dumps),
        st.fixed_dictionaries(
            {"v": st.just(1), "type": st.sampled_from(sorted(CLIENT_MESSAGE_TYPES))},
            optional={name: json_values for name in FIELDS if name not in ("v", "type")},
        ).map(json.dumps),
        templates(ids).map(json.dumps),
        mutated(ids),
        nested(),
        st.integers(4300, 5000).map(
            lambda digits: '{"v":1,"type":"ping","n":' + "7" * digits + "}"
        ),
    )


# -- the run ----------------------------------------------------------------------------


def test_no_message_from_a_student_hurts_the_server_or_the_lesson(
    fuzz_server: RunningServer, request: pytest.FixtureRequest
) -> None:
    long_run = bool(request.config.getoption("--fuzz-long"))
    cases = 10_000 if long_run else 1_000
    lesson = "fuzzed"
    teacher = Teacher(fuzz_server.ws, fuzz_server.token("Ms T", Role.TEACHER, lesson=lesson))
    teacher.start()
    students = [
        Student(fuzz_server.ws, fuzz_server.token(f"S{n}", Role.STUDENT, lesson=lesson))
        for n in range(STUDENTS)
    ]
    for student in students:
        student.ensure_open()
    targets = [teacher.participant_id, *(s.participant_id for s in students), "nobody", "x" * 64]
    seen: Counter[str] = Counter()
    ran = [0]

    @given(frame=frames(targets), which=st.integers(0, STUDENTS - 1))
    @settings(
        max_examples=cases,
        derandomize=not long_run,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def case(frame: str | bytes, which: int) -> None:
        ran[0] += 1
        student = students[which]
        ws = student.ensure_open()
        student.pace()
        try:
            ws.send(frame)
            ws.send('{"v":1,"type":"ping"}')
            while (reply := student.receive())["type"] != "pong":
                seen[reply.get("code") or reply["type"]] += 1
            seen["pong"] += 1
        except websockets.ConnectionClosed as closed:
            # No close frame (rcvd None): the server closed while we were still
            # sending, as it does after a frame over 1 MiB. A server error would
            # send 1011, or log a traceback (checked at the end).
            code = closed.rcvd.code if closed.rcvd else None
            assert code in EXPECTED_CLOSE_CODES | {None}, f"closed {code} after {frame!r:.200}"
            seen[f"closed {code}"] += 1
            student.socket.close()
            student.socket = None

    started = time.monotonic()
    try:
        case()
    finally:
        elapsed = time.monotonic() - started
        for student in students:
            if student.socket is not None:
                student.socket.close()
        if not teacher.is_alive():
            teacher.socket.close()
    print(f"\nfuzz: {ran[0]} cases in {elapsed:.1f} s; replies {dict(seen)}")
    assert ran[0] >= cases

    # The lesson still works for someone who was there all along.
    assert not teacher.closed.is_set(), "the teacher was dropped"
    teacher.pong.clear()
    teacher.socket.send('{"v":1,"type":"ping"}')
    assert teacher.pong.wait(15), "the teacher got no pong"
    late = Student(fuzz_server.ws, fuzz_server.token("Late Lou", Role.STUDENT, lesson=lesson))
    late.ensure_open()
    assert late.socket is not None
    late.socket.send('{"v":1,"type":"chat","text":"after the fuzz","to":"everyone"}')
    with teacher.chat_arrived:
        seen_chat = teacher.chat_arrived.wait_for(lambda: "after the fuzz" in teacher.chats, 15)
    assert seen_chat, "the teacher never saw the chat"
    late.socket.close()
    teacher.stop()
    log = fuzz_server.log()
    for sign in ("Traceback", "Exception in", "ERROR", "exception was never retrieved"):
        assert sign not in log, f"the server logged {sign!r}:\n{log[-3000:]}"
