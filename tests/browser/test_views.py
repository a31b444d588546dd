"""The views show what the server says a participant may do, in headless Chromium.

Every page records the messages the server sends it. A teacher, a school moderator
(delegate) of the south school and two students (south, north) join one lesson; the
buttons next to each person on each page are exactly those that the page's
``targets`` (in its ``welcome``) allow for that person's role and school; a student
allowed to publish gets its microphone and camera buttons on the same page; and a
page whose ``welcome`` is rewritten on the way shows the buttons the rewritten
message allows (the server still refuses them): nothing in the page decides by role.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.sync_api import Browser, Dialog, Page, WebSocket, WebSocketRoute, expect

from signaling.permissions import Role

from .conftest import Server
from .test_web_client import TIMEOUT_MS

pytestmark = pytest.mark.browser

LESSON = "views-9c"

# The label of each button next to a person, by the message it sends.
BUTTONS = {
    "grant_publish": ["Allow to publish"],
    "revoke_publish": ["Stop publishing"],
    "mute": ["Mute microphone", "Mute camera"],
    "set_presenter": ["Make presenter"],
    "spotlight": ["Spotlight"],
    "remove": ["Remove from lesson"],
}

# The labels of the buttons in each person's row of the people list, by participant id.
ROW_BUTTONS = """() => Object.fromEntries(
  [...document.querySelectorAll('#people li[data-participant-id]')].map(li => [
    li.dataset.participantId,
    [...li.querySelectorAll('.actions button')].map(b => b.textContent),
  ]))"""


@dataclass
class Joined:
    """A joined page and every message the server sent it, parsed."""

    name: str
    page: Page
    received: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def welcome(self) -> dict[str, Any]:
        return [m for m in self.received if m["type"] == "welcome"][-1]

    @property
    def id(self) -> str:
        pid: str = self.welcome()["participant_id"]
        return pid

    def people(self) -> dict[str, dict[str, Any]]:
        """Everyone else as the server last described them to this page."""
        people = {p["id"]: p for p in self.welcome()["participants"]}
        for message in self.received:
            if message["type"] in ("participant_joined", "participant_updated"):
                people[message["participant"]["id"]] = message["participant"]
            elif message["type"] == "participant_left":
                people.pop(message["participant_id"], None)
        people.pop(self.id, None)
        return people

    def targets(self) -> dict[str, Any]:
        """What the server last said this page may send about whom."""
        changes = [m for m in self.received if m["type"] in ("welcome", "permissions_changed")]
        targets: dict[str, Any] = changes[-1]["targets"]
        return targets


def expected_buttons(targets: dict[str, Any], person: dict[str, Any]) -> list[str]:
    """The buttons ``targets`` allow next to ``person`` (role, school, can_publish)."""

    def allowed(message: str) -> bool:
        rule = targets.get(message)
        return (
            rule is not None
            and person["role"] in rule["roles"]
            and rule["school"] in (None, person["school"])
        )

    labels: list[str] = []
    for message, names in BUTTONS.items():
        if message == "grant_publish" and person["can_publish"]:
            continue
        if message == "revoke_publish" and not person["can_publish"]:
            continue
        if allowed(message):
            labels += names
    return sorted(labels)


def open_page(
    browser: Browser,
    server: Server,
    name: str,
    role: Role,
    school: str,
    rewrite: Any = None,
) -> Joined:
    """Join, recording what the server sends (``rewrite`` changes each message first)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    joined = Joined(name, page)
    page.on("pageerror", lambda error: joined.errors.append(str(error)))

    def record(text: str | bytes) -> None:
        joined.received.append(json.loads(text))

    if rewrite is None:
        page.on("websocket", lambda ws: _watch(ws, record))
    else:

        def relay(ws: WebSocketRoute) -> None:
            upstream = ws.connect_to_server()
            ws.on_message(upstream.send)

            def down(text: str | bytes) -> None:
                message = rewrite(json.loads(text))
                record(json.dumps(message))
                ws.send(json.dumps(message))

            upstream.on_message(down)

        page.route_web_socket("**/ws", relay)
    page.goto(server.link(LESSON, name, role, school))
    join = page.get_by_role("button", name="Join", exact=True)
    expect(join).to_be_enabled(timeout=TIMEOUT_MS)
    join.click()
    page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
    return joined


def _watch(ws: WebSocket, record: Any) -> None:
    ws.on("framereceived", record)


@dataclass
class Room:
    teacher: Joined
    delegate: Joined
    sam: Joined  # a student of the south school, like the delegate
    nia: Joined  # a student of the north school

    @property
    def pages(self) -> list[Joined]:
        return [self.teacher, self.delegate, self.sam, self.nia]


@pytest.fixture(scope="module")
def room(browser: Browser, server: Server) -> Iterator[Room]:
    room = Room(
        teacher=open_page(browser, server, "Ms Rivera", Role.TEACHER, "north"),
        delegate=open_page(browser, server, "Mr Okafor", Role.DELEGATE, "south"),
        sam=open_page(browser, server, "Sam", Role.STUDENT, "south"),
        nia=open_page(browser, server, "Nia", Role.STUDENT, "north"),
    )
    for joined in room.pages:
        expect(joined.page.locator("#people-title")).to_have_text("People (4)")
    yield room
    for joined in room.pages:
        joined.page.context.close()


def rows_follow_targets(joined: Joined) -> None:
    """Each person's row on ``joined`` has exactly the buttons its targets allow."""
    people = joined.people()
    expected = {pid: expected_buttons(joined.targets(), person) for pid, person in people.items()}
    expected[joined.id] = []  # nobody acts on themselves

    def shown() -> dict[str, list[str]]:
        rows: dict[str, list[str]] = joined.page.evaluate(ROW_BUTTONS)
        return {pid: sorted(labels) for pid, labels in rows.items()}

    joined.page.wait_for_function(
        f"() => ({ROW_BUTTONS})()[{json.dumps(joined.id)}] !== undefined", timeout=TIMEOUT_MS
    )
    assert shown() == expected, joined.name


def test_each_page_shows_the_buttons_its_targets_allow(room: Room) -> None:
    teacher, delegate, sam = room.teacher, room.delegate, room.sam
    # What the server sent: a teacher acts on everyone, a delegate on its own school
    # without teachers, a student on nobody.
    assert teacher.targets()["remove"]["school"] is None
    assert delegate.targets()["remove"] == {
        "roles": ["classroom", "delegate", "expert", "field_trip", "observer", "student"],
        "school": "south",
    }
    assert sam.targets() == {} and room.nia.targets() == {}
    for joined in room.pages:
        rows_follow_targets(joined)
    # So: the delegate moderates Sam, not Nia (north) nor the teacher...
    rows = delegate.page.evaluate(ROW_BUTTONS)
    assert "Mute microphone" in rows[sam.id]
    assert rows[room.nia.id] == [] and rows[teacher.id] == []
    # ...and a student's page has no moderation at all.
    for joined in (sam, room.nia):
        page = joined.page
        assert page.locator("#people .actions").count() == 0
        expect(page.locator("#lesson-controls")).to_be_hidden()
        expect(page.locator("#hands-panel")).to_be_hidden()
        expect(page.locator("#breakout-panel")).to_be_hidden()
    expect(teacher.page.locator("#lesson-controls")).to_be_visible()
    expect(delegate.page.locator("#lesson-controls")).to_be_hidden()
    expect(delegate.page.locator("#hands-panel")).to_be_visible()


def test_a_student_allowed_to_publish_gets_its_controls_on_the_same_page(room: Room) -> None:
    sam = room.sam.page
    sam.evaluate("() => { window.__samePage = true; }")
    expect(sam.locator("#mic-button")).to_be_hidden()
    expect(sam.locator("#camera-button")).to_be_hidden()
    room.delegate.page.get_by_role("button", name="Allow to publish: Sam", exact=True).click()
    expect(sam.locator("#mic-button")).to_be_visible(timeout=TIMEOUT_MS)
    expect(sam.locator("#camera-button")).to_be_visible()
    expect(sam.locator("#publish-status")).to_have_attribute("data-allowed", "true")
    assert sam.evaluate("() => window.__samePage") is True
    changed = [m for m in room.sam.received if m["type"] == "permissions_changed"]
    assert "publish" in changed[-1]["permissions"] and changed[-1]["targets"] == {}
    # Every page now offers what its targets allow for a Sam who publishes.
    for joined in (room.teacher, room.delegate):
        joined.page.wait_for_function(
            f"() => ({ROW_BUTTONS})()[{json.dumps(room.sam.id)}].includes('Stop publishing')",
            timeout=TIMEOUT_MS,
        )
        rows_follow_targets(joined)


def test_the_buttons_are_those_of_the_message_the_page_got(
    browser: Browser, server: Server, room: Room
) -> None:
    """An observer's welcome, rewritten on its way to say it may remove north students,
    shows that button next to Nia only; the server, which never said so, refuses it."""
    claimed = {"remove": {"roles": ["student"], "school": "north"}}

    def rewrite(message: dict[str, Any]) -> dict[str, Any]:
        if message["type"] == "welcome":
            return {**message, "targets": claimed}
        return message

    observer = open_page(browser, server, "Olu", Role.OBSERVER, "north", rewrite)
    try:
        page = observer.page
        expect(page.locator("#people-title")).to_have_text("People (5)")
        rows_follow_targets(observer)
        rows = page.evaluate(ROW_BUTTONS)
        assert rows[room.nia.id] == ["Remove from lesson"]
        assert rows[room.sam.id] == [] and rows[room.teacher.id] == []

        def accept(dialog: Dialog) -> None:
            dialog.accept()

        page.once("dialog", accept)
        page.get_by_label("More actions: Nia", exact=True).click()
        page.get_by_role("button", name="Remove from lesson: Nia", exact=True).click()
        page.wait_for_function(
            "() => window.lco.state().banners.some(b => /may not moderate/.test(b))",
            timeout=TIMEOUT_MS,
        )
        refused = [m for m in observer.received if m["type"] == "error"]
        assert refused[-1]["code"] == "forbidden" and refused[-1]["request_type"] == "remove"
        assert room.nia.page.evaluate("() => window.lco.state().connected")
    finally:
        observer.page.context.close()
    assert {p.name: p.errors for p in [*room.pages, observer]} == {
        p.name: [] for p in [*room.pages, observer]
    }
