"""The teacher's console moderating a lesson, in headless Chromium against the real server.

One lesson, created through the HTTP API with the lobby on, is shared by the
tests of this module, which run in order: every student waits in the lobby until
the teacher admits them from the console; chat (escaped, links, history for a
late joiner), muting a student and the ask-to-unmute round trip, the
raised-hands queue, locking, denying, removing, and ending the lesson. Three
pages at most: a teacher, a student at a desk and a student on a phone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, expect

from signaling.permissions import Role

from .conftest import Server, keep_screenshot, wait_until
from .test_web_client import TIMEOUT_MS, Participant, wait_audio_arrives

pytestmark = pytest.mark.browser

LESSON = "chemistry-8a"
ADA = "Ada <b>Lovelace</b>"

# True once the packets of a participant's microphone have stopped growing for `quiet_ms`.
AUDIO_STALLED = """async ([pid, quietMs]) => {
  const stats = await window.lco.inboundStats();
  const n = stats.filter(s => s.participant_id === pid && s.source === 'microphone')
                 .reduce((sum, s) => sum + (s.packetsReceived || 0), 0);
  const w = window.__stall ?? (window.__stall = {pid, n: -1, since: 0});
  if (w.pid !== pid || w.n !== n) {
    Object.assign(w, {pid, n, since: performance.now()});
    return false;
  }
  return performance.now() - w.since >= quietMs;
}"""


def create_lobby_lesson(server: Server) -> None:
    """Schedule LESSON for two schools with the lobby on, as an organiser would."""
    headers = {"Authorization": f"Bearer {server.admin_key()}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10.0) as api:
        api.post("/api/communities", json={"id": "valley", "name": "Valley"}).raise_for_status()
        for school in ("north-high", "south-school"):
            api.post(
                "/api/communities/valley/schools", json={"id": school, "name": school}
            ).raise_for_status()
        api.post(
            "/api/lessons",
            json={
                "id": LESSON,
                "community_id": "valley",
                "title": "Chemistry 8a",
                "host_teacher": "Ms Rivera",
                "host_school": "north-high",
                "starts_at": "2026-11-29T08:00:00Z",
                "ends_at": "2026-11-29T09:00:00Z",
                "invited_schools": ["south-school"],
                "settings": {"lobby": True},
            },
        ).raise_for_status()


def open_page(
    browser: Browser,
    server: Server,
    name: str,
    role: Role,
    school: str,
    viewport: tuple[int, int] = (1280, 800),
) -> Participant:
    """Open a join link in a fresh context and press Join."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    link = server.link(LESSON, name, role, school)
    participant = Participant(name, role, context, page, link)
    page.on("pageerror", lambda error: participant.errors.append(str(error)))
    page.goto(link)
    button = page.get_by_role("button", name="Join", exact=True)
    expect(button).to_be_enabled(timeout=TIMEOUT_MS)
    button.click()
    return participant


def join(
    browser: Browser,
    server: Server,
    name: str,
    role: Role,
    school: str,
    viewport: tuple[int, int] = (1280, 800),
    teacher: Participant | None = None,
) -> Participant:
    """Join; a student waits in the lobby until ``teacher`` admits it from the console."""
    participant = open_page(browser, server, name, role, school, viewport)
    page = participant.page
    if teacher is not None:
        expect(page.locator("#lobby-text")).to_have_text(
            "Please wait, the teacher will let you in."
        )
        waiting = teacher.page.locator("#lobby-list li").filter(has_text=name)
        expect(waiting).to_contain_text(school)
        waiting.get_by_role("button", name=f"Admit: {name}", exact=True).click()
    page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
    return participant


def accept_next_dialog(participant: Participant) -> list[str]:
    """Accept the next confirm() of the page; returns the list its text goes into."""
    seen: list[str] = []

    def accept(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.accept()

    participant.page.once("dialog", accept)
    return seen


@dataclass
class Room:
    teacher: Participant
    student: Participant
    pages: list[Participant] = field(default_factory=list)
    phone: Participant | None = None

    def grace(self) -> Participant:
        assert self.phone is not None, "the chat test opens the phone page"
        return self.phone


@pytest.fixture(scope="module")
def room(browser: Browser, server: Server) -> Iterator[Room]:
    create_lobby_lesson(server)
    teacher = join(browser, server, "Ms Rivera", Role.TEACHER, "north-high")
    student = join(browser, server, ADA, Role.STUDENT, "north-high", teacher=teacher)
    room = Room(teacher, student, pages=[teacher, student])
    try:
        yield room
    finally:
        for participant in room.pages:
            participant.context.close()


def person(participant: Participant, pid: str) -> str:
    return f"#people-groups li[data-participant-id='{pid}']"


# -- tests -----------------------------------------------------------------------


def test_chat_is_escaped_has_links_and_history(
    room: Room, browser: Browser, server: Server
) -> None:
    teacher, student = room.teacher.page, room.student.page
    text = "Look <img src=x onerror=alert(1)> here: https://example.org/notes?a=1&b=2. Thanks"
    student.get_by_label("Message", exact=True).fill(text)
    student.get_by_role("button", name="Send", exact=True).click()
    entry = teacher.locator("#chat-log li").filter(has_text="Look <img")
    expect(entry).to_have_count(1)
    expect(entry.locator(".chat-text")).to_have_text(text)
    expect(entry.locator(".name")).to_have_text(ADA)
    expect(entry).to_contain_text("north-high")
    assert teacher.locator("#chat-log img, #chat-log b").count() == 0
    link = entry.get_by_role("link")
    expect(link).to_have_text("https://example.org/notes?a=1&b=2")
    expect(link).to_have_attribute("href", "https://example.org/notes?a=1&b=2")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    # The sender sees its own message too.
    expect(student.locator("#chat-log li").filter(has_text="Look <img")).to_have_count(1)

    # Privately to the teachers: the teacher sees it marked private.
    student.get_by_label("Message", exact=True).fill("I cannot hear the video")
    student.get_by_label("Send to", exact=True).select_option("teachers")
    student.get_by_role("button", name="Send", exact=True).click()
    private = teacher.locator("#chat-log li[data-to='teachers']")
    expect(private).to_contain_text("I cannot hear the video")
    expect(private).to_contain_text("privately to the teachers")

    # A late joiner gets the history, without the private message.
    room.phone = join(
        browser,
        server,
        "Grace",
        Role.STUDENT,
        "south-school",
        viewport=(390, 844),
        teacher=room.teacher,
    )
    room.pages.append(room.phone)
    late = room.phone.page
    expect(teacher.locator("#lobby-panel")).to_be_hidden()
    expect(late.locator("#chat-log li")).to_have_count(1)
    expect(late.locator("#chat-log li")).to_contain_text("Look <img")
    expect(late.locator("#chat-log a")).to_have_attribute("rel", "noopener noreferrer")
    assert late.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


def test_teacher_mutes_a_student_who_asks_to_unmute(room: Room) -> None:
    teacher, student = room.teacher.page, room.student.page
    student_id = room.student.id
    teacher.get_by_role("button", name=f"Allow to publish: {ADA}").click()
    expect(student.get_by_role("button", name="Mute microphone", exact=True)).to_be_visible()
    wait_audio_arrives(room.teacher, student_id)

    teacher.get_by_role("button", name=f"Mute microphone: {ADA}", exact=True).click()
    # The student's page says so, turns its own microphone off and offers to ask.
    expect(student.locator("#mute-text")).to_have_text("The teacher muted your microphone.")
    expect(student.locator("#notice")).to_have_text("Ms Rivera muted your microphone.")
    expect(student.get_by_role("button", name="Unmute microphone", exact=True)).to_be_disabled()
    assert not student.evaluate("() => window.lco.page.localStream.getAudioTracks()[0].enabled")
    # The teacher and the other student see the muted state.
    for viewer in (room.teacher, room.grace()):
        expect(viewer.page.locator(f"{person(viewer, student_id)} .state")).to_contain_text(
            "microphone muted"
        )
    expect(teacher.get_by_role("button", name=f"Allow microphone: {ADA}")).to_be_visible()
    # The server stopped forwarding: no more audio packets reach the teacher.
    wait_until(teacher, AUDIO_STALLED, [student_id, 1000], timeout_ms=TIMEOUT_MS)

    # Ask to unmute; the teacher allows it from the request list.
    student.get_by_role("button", name="Ask to unmute microphone", exact=True).click()
    expect(student.locator("#mute-text")).to_contain_text("You asked to turn it back on")
    request = teacher.locator("#unmute-list li")
    expect(request).to_contain_text("asks to turn the microphone back on")
    request.get_by_role("button", name=f"Allow microphone: {ADA}").click()
    expect(student.locator("#notice")).to_contain_text(
        "Ms Rivera allowed you to turn your microphone back on."
    )
    expect(student.locator("#mute-status")).to_be_hidden()
    expect(teacher.locator("#unmute-panel")).to_be_hidden()
    # The student unmutes itself; the teacher hears it again.
    student.get_by_role("button", name="Unmute microphone", exact=True).click()
    assert student.evaluate("() => window.lco.page.localStream.getAudioTracks()[0].enabled")
    expect(teacher.locator(f"{person(room.teacher, student_id)} .state")).not_to_contain_text(
        "muted"
    )
    wait_audio_arrives(room.teacher, student_id)


def save_console_screenshot(teacher: Participant, artifacts: Path) -> None:
    """The whole console (hands, people, chat) at a small size, for the docs."""
    path = artifacts / "teacher-console.png"
    teacher.page.screenshot(path=str(path), full_page=True, scale="css")
    keep_screenshot(path)


def test_raised_hands_queue_in_order_with_schools(room: Room, artifacts: Path) -> None:
    teacher, student, grace = room.teacher.page, room.student.page, room.grace().page
    grace.get_by_role("button", name="Raise hand", exact=True).click()
    expect(grace.get_by_role("button", name="Lower hand", exact=True)).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(teacher.locator("#hands-list li")).to_have_count(1)
    student.get_by_role("button", name="Raise hand", exact=True).click()
    hands = teacher.locator("#hands-list li")
    expect(hands).to_have_count(2)
    expect(hands.locator(".name")).to_have_text(["Grace", ADA])
    expect(hands.locator(".school")).to_have_text(["south-school", "north-high"])
    expect(student.locator("#hand-status")).to_have_text("Your hand is up: 2nd in the queue.")
    expect(teacher.locator(f"{person(room.teacher, room.student.id)} .state")).to_contain_text(
        "hand raised"
    )
    save_console_screenshot(room.teacher, artifacts)

    # Giving the floor lets the student publish and takes the hand down.
    teacher.get_by_role("button", name="Give the floor: Grace").click()
    expect(grace.locator("#publish-status")).to_contain_text("has allowed you to publish")
    expect(grace.get_by_role("button", name="Raise hand", exact=True)).to_be_visible()
    expect(hands.locator(".name")).to_have_text([ADA])
    expect(student.locator("#hand-status")).to_have_text("Your hand is up: 1st in the queue.")
    # The teacher lowers the other hand.
    teacher.get_by_role("button", name=f"Lower: {ADA}").click()
    expect(hands).to_have_count(0)
    expect(teacher.locator("#hands-empty")).to_be_visible()
    expect(student.get_by_role("button", name="Raise hand", exact=True)).to_be_visible()


def test_a_locked_lesson_turns_newcomers_away(room: Room, browser: Browser, server: Server) -> None:
    teacher = room.teacher.page
    teacher.get_by_role("button", name="Lock lesson", exact=True).click()
    expect(teacher.get_by_role("button", name="Unlock lesson")).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(teacher.locator("#lock-status")).to_have_text(
        "The lesson is locked: nobody new can join."
    )
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(server.link(LESSON, "Late Larry", Role.STUDENT, "north-high"))
        page.get_by_role("button", name="Join", exact=True).click()
        expect(page.locator("#fatal-title")).to_have_text("The lesson is locked")
        expect(page.locator("#fatal-text")).to_have_text(
            "The teacher has locked the lesson, so nobody new can join."
        )
    finally:
        context.close()
    teacher.get_by_role("button", name="Unlock lesson").click()
    expect(teacher.get_by_role("button", name="Lock lesson", exact=True)).to_be_visible()


def test_teacher_denies_someone_in_the_lobby(room: Room, browser: Browser, server: Server) -> None:
    teacher = room.teacher.page
    stranger = open_page(browser, server, "Mallory", Role.STUDENT, "north-high")
    try:
        expect(stranger.page.locator("#lobby-text")).to_have_text(
            "Please wait, the teacher will let you in."
        )
        expect(teacher.locator("#lobby-title")).to_have_text("Waiting to join (1)")
        teacher.get_by_role("button", name="Deny: Mallory", exact=True).click()
        expect(stranger.page.locator("#fatal-title")).to_have_text("The teacher did not let you in")
        expect(teacher.locator("#lobby-panel")).to_be_hidden()
        assert stranger.errors == []
    finally:
        stranger.context.close()


def test_teacher_removes_a_student(room: Room) -> None:
    teacher, grace = room.teacher.page, room.grace()
    grace_id = grace.id
    row = teacher.locator(person(room.teacher, grace_id))
    row.get_by_label("More actions: Grace").click()
    asked = accept_next_dialog(room.teacher)
    row.get_by_role("button", name="Remove from lesson: Grace").click()
    expect(grace.page.locator("#fatal-title")).to_have_text("You were removed from the lesson")
    expect(grace.page.locator("#fatal-text")).to_have_text("Ms Rivera removed you from the lesson.")
    assert asked and "Grace" in asked[0]
    expect(row).to_have_count(0)
    # The same link is refused from now on.
    grace.page.reload()
    grace.page.get_by_role("button", name="Join", exact=True).click()
    expect(grace.page.locator("#fatal-title")).to_have_text("You were removed from the lesson")


def test_ending_the_lesson_tells_everyone(room: Room) -> None:
    asked = accept_next_dialog(room.teacher)
    room.teacher.page.get_by_role("button", name="End lesson", exact=True).click()
    for participant in (room.teacher, room.student):
        expect(participant.page.locator("#fatal-title")).to_have_text("The lesson has ended")
        expect(participant.page.locator("#fatal-text")).to_have_text("The lesson has ended.")
    assert asked and "End the lesson" in asked[0]
    assert {p.name: p.errors for p in room.pages} == {p.name: [] for p in room.pages}
