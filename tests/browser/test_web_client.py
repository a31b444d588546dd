"""The web client in headless Chromium against the real server.

One lesson (a teacher, two students, one classroom screen) is shared by the
tests of this module, which run in order: media first, then screen sharing,
publishing rights, reload, reconnect and leaving.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from signaling.permissions import Role

from .conftest import Server, keep_screenshot, wait_until

pytestmark = pytest.mark.browser

LESSON = "physics-7b"
TIMEOUT_MS = 30_000

# The <video> of a participant's source on the stage, as {width, time}.
VIDEO_STATE = """([pid, source]) => {
  const v = document.querySelector(
    `#stage video[data-participant-id="${pid}"][data-source="${source}"]`);
  return v ? {width: v.videoWidth, time: v.currentTime} : null;
}"""

# Wait until that video has a size and its currentTime moved past `since`.
VIDEO_ADVANCED = """([pid, source, since]) => {
  const v = document.querySelector(
    `#stage video[data-participant-id="${pid}"][data-source="${source}"]`);
  return Boolean(v && v.videoWidth > 0 && v.currentTime > since);
}"""

# Sum of a counter over inbound-rtp streams of a participant's source.
INBOUND = """async ([pid, source, counter]) => {
  const stats = await window.lco.inboundStats();
  return stats.filter(s => s.participant_id === pid && s.source === source)
              .reduce((sum, s) => sum + (s[counter] || 0), 0);
}"""

INBOUND_ABOVE = """async ([pid, source, counter, above]) => {
  const stats = await window.lco.inboundStats();
  const total = stats.filter(s => s.participant_id === pid && s.source === source)
                     .reduce((sum, s) => sum + (s[counter] || 0), 0);
  return total > above;
}"""


@dataclass
class Participant:
    """One browser page in the lesson."""

    name: str
    role: Role
    context: BrowserContext
    page: Page
    link: str
    errors: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        pid: str = self.page.evaluate("() => window.lco.state().participantId")
        return pid

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.page.evaluate("() => window.lco.state()")
        return state


def open_participant(
    browser: Browser,
    server: Server,
    name: str,
    role: Role,
    school: str,
    viewport: tuple[int, int] = (1280, 720),
) -> Participant:
    """Open a join link in a fresh context and join (classrooms join by themselves)."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    link = server.link(LESSON, name, role, school)
    participant = Participant(name, role, context, page, link)
    page.on("pageerror", lambda error: participant.errors.append(str(error)))
    page.goto(link)
    if role is not Role.CLASSROOM:
        join = page.get_by_role("button", name="Join")
        expect(join).to_be_enabled(timeout=TIMEOUT_MS)
        join.click()
    page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
    return participant


def wait_video_plays(viewer: Participant, publisher_id: str, source: str = "camera") -> None:
    """A <video> of ``publisher_id`` has a size, its time advances, frames get decoded."""
    page = viewer.page
    page.wait_for_function(
        VIDEO_ADVANCED, arg=[publisher_id, source, 0], timeout=TIMEOUT_MS, polling=100
    )
    before = page.evaluate(VIDEO_STATE, [publisher_id, source])
    decoded = page.evaluate(INBOUND, [publisher_id, source, "framesDecoded"])
    page.wait_for_function(
        VIDEO_ADVANCED, arg=[publisher_id, source, before["time"]], timeout=TIMEOUT_MS
    )
    wait_until(
        page, INBOUND_ABOVE, [publisher_id, source, "framesDecoded", decoded], timeout_ms=TIMEOUT_MS
    )


def wait_audio_arrives(viewer: Participant, publisher_id: str) -> None:
    """Audio packets of ``publisher_id`` keep arriving at ``viewer``."""
    received = viewer.page.evaluate(INBOUND, [publisher_id, "microphone", "packetsReceived"])
    wait_until(
        viewer.page,
        INBOUND_ABOVE,
        [publisher_id, "microphone", "packetsReceived", max(received, 0)],
        timeout_ms=TIMEOUT_MS,
    )


@dataclass
class Lesson:
    teacher: Participant
    student: Participant
    student2: Participant
    classroom: Participant

    def viewers(self) -> list[Participant]:
        return [self.student, self.student2, self.classroom]


@pytest.fixture(scope="module")
def lesson(browser: Browser, server: Server) -> Iterator[Lesson]:
    teacher = open_participant(browser, server, "Ms Rivera", Role.TEACHER, "north-high")
    student = open_participant(browser, server, "Ada <b>Lovelace</b>", Role.STUDENT, "north-high")
    student2 = open_participant(
        browser, server, "Grace", Role.STUDENT, "south-school", viewport=(390, 844)
    )
    classroom = open_participant(
        browser, server, "Room 12", Role.CLASSROOM, "south-school", viewport=(1920, 1080)
    )
    lesson = Lesson(teacher, student, student2, classroom)
    try:
        yield lesson
    finally:
        for participant in (teacher, student, student2, classroom):
            participant.context.close()


def save_screenshot(participant: Participant, artifacts: Path, name: str) -> None:
    path = artifacts / f"{name}.png"
    participant.page.screenshot(path=str(path))
    keep_screenshot(path)


# -- tests -----------------------------------------------------------------------


def test_bad_links_say_what_happened(browser: Browser, server: Server) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        expired = server.link(
            LESSON, "Late", Role.CLASSROOM, "north-high", now=time.time() - 7200, ttl_seconds=60
        )
        page.goto(expired)
        expect(page.locator("#fatal-title")).to_have_text("This join link has expired")
        expect(page.locator("#fatal-text")).to_contain_text("ask the teacher for a new one")

        page.goto(f"{server.url}/join#token=not-a-token")
        page.reload()  # a fragment change alone does not load the page again
        expect(page.locator("#fatal-title")).to_have_text("This join link is damaged")

        forged = server.link(LESSON, "Mallory", Role.STUDENT).replace("#token=", "#token=x")
        page.goto(forged)
        page.reload()
        expect(page.get_by_role("button", name="Join")).to_be_enabled()
        page.get_by_role("button", name="Join").click()
        expect(page.locator("#fatal-title")).to_have_text("This join link does not work")
    finally:
        context.close()


def test_everyone_sees_and_hears_the_teacher(lesson: Lesson, artifacts: Path) -> None:
    teacher_id = lesson.teacher.id
    for viewer in lesson.viewers():
        wait_video_plays(viewer, teacher_id)
        wait_audio_arrives(viewer, teacher_id)
    # The teacher sees the classroom on the stage.
    wait_video_plays(lesson.teacher, lesson.classroom.id)
    expect(lesson.teacher.page.locator("#main-view video[data-role='classroom']")).to_have_count(1)
    # Others see the teacher large.
    expect(
        lesson.student.page.locator(f"#main-view video[data-participant-id='{teacher_id}']")
    ).to_have_count(1)

    metrics = lesson.student.page.evaluate("() => window.lco.metrics")
    ms, welcome = metrics["firstTeacherFrameMs"], metrics["welcomeMs"]
    assert ms is not None and welcome is not None and 0 < welcome < ms
    print(
        f"\nstudent page: first decoded teacher frame {ms:.0f} ms after opening the link "
        f"(welcome at {welcome:.0f} ms)"
    )

    # The student has not been allowed to publish, and says so; names are text, not HTML.
    student = lesson.student.page
    expect(student.locator("#publish-status")).to_have_text(
        "The teacher has not allowed you to publish yet. You can watch and listen."
    )
    expect(student.get_by_role("button", name="Share screen")).to_be_hidden()
    expect(lesson.teacher.page.locator("#people-groups")).to_contain_text("Ada <b>Lovelace</b>")
    assert lesson.teacher.page.locator("#people-groups b").count() == 0
    # The teacher's list is grouped by school.
    expect(lesson.teacher.page.locator("#people-groups section.school h3")).to_have_text(
        ["north-high", "south-school"]
    )
    # A phone-width page does not scroll sideways.
    assert lesson.student2.page.evaluate(
        "() => document.documentElement.scrollWidth <= window.innerWidth"
    )
    save_screenshot(lesson.classroom, artifacts, "classroom")
    lesson.student2.page.screenshot(path=str(artifacts / "student-phone.png"), full_page=True)


def test_teacher_grants_and_revokes_publishing(lesson: Lesson, artifacts: Path) -> None:
    teacher, student = lesson.teacher.page, lesson.student.page
    teacher.get_by_role("button", name="Allow to publish: Ada <b>Lovelace</b>").click()
    expect(student.locator("#publish-status")).to_contain_text("has allowed you to publish")
    expect(student.get_by_role("button", name="Mute microphone")).to_be_visible()
    wait_video_plays(lesson.teacher, lesson.student.id)
    wait_video_plays(lesson.classroom, lesson.student.id)
    wait_audio_arrives(lesson.teacher, lesson.student.id)
    # Muting is a real, labelled toggle that silences the sent track.
    student.get_by_role("button", name="Mute microphone").click()
    expect(student.get_by_role("button", name="Unmute microphone")).to_have_attribute(
        "aria-pressed", "true"
    )
    assert not student.evaluate("() => window.lco.page.localStream.getAudioTracks()[0].enabled")
    student.get_by_role("button", name="Unmute microphone").click()
    expect(student.get_by_role("button", name="Mute microphone")).to_be_visible()
    save_screenshot(lesson.teacher, artifacts, "teacher")
    save_screenshot(lesson.student, artifacts, "student")

    teacher.get_by_role("button", name="Stop publishing: Ada <b>Lovelace</b>").click()
    expect(student.locator("#publish-status")).to_have_text(
        "The teacher has not allowed you to publish yet. You can watch and listen."
    )
    student_id = lesson.student.id
    expect(teacher.locator(f"#stage video[data-participant-id='{student_id}']")).to_have_count(0)
    expect(
        lesson.classroom.page.locator(f"#stage video[data-participant-id='{student_id}']")
    ).to_have_count(0)


MEDIA_SECTIONS = """(name) => {
  const pc = window.lco.page[name]?.pc;
  const sdp = pc?.localDescription?.sdp ?? "";
  return sdp.split("\\n").filter((line) => line.startsWith("m=")).length;
}"""


def test_sharing_the_screen_again_and_again_keeps_every_offer_small(lesson: Lesson) -> None:
    """A lesson turns screen sharing on and off many times: neither the teacher's
    publish offer nor a viewer's subscribe connection may grow with each share
    (once past the size limit, no change would reach anyone any more)."""
    teacher = lesson.teacher.page
    teacher_id = lesson.teacher.id
    student = lesson.student
    for _ in range(12):
        teacher.get_by_role("button", name="Share screen").click()
        expect(teacher.get_by_role("button", name="Stop sharing")).to_be_visible()
        expect(
            student.page.locator(f"#stage video[data-participant-id='{teacher_id}']")
        ).to_have_count(2, timeout=TIMEOUT_MS)
        teacher.get_by_role("button", name="Stop sharing").click()
        expect(teacher.get_by_role("button", name="Share screen")).to_be_visible()
        expect(
            student.page.locator(f"#stage video[data-participant-id='{teacher_id}']")
        ).to_have_count(1, timeout=TIMEOUT_MS)
    teacher.get_by_role("button", name="Share screen").click()
    wait_video_plays(student, teacher_id, "screen")
    wait_video_plays(student, teacher_id, "camera")
    # Camera, microphone, screen and its sound: each stopped section was recycled.
    assert teacher.evaluate(MEDIA_SECTIONS, "publisher") == 4
    # The teacher's four and the classroom's two, and at most two being freed.
    assert student.page.evaluate(MEDIA_SECTIONS, "subscriber") <= 8
    teacher.get_by_role("button", name="Stop sharing").click()
    expect(student.page.locator(f"#stage video[data-participant-id='{teacher_id}']")).to_have_count(
        1, timeout=TIMEOUT_MS
    )


def test_screen_share_is_a_second_video(lesson: Lesson) -> None:
    teacher = lesson.teacher.page
    teacher_id = lesson.teacher.id
    teacher.get_by_role("button", name="Share screen").click()
    expect(teacher.get_by_role("button", name="Stop sharing")).to_be_visible()
    for viewer in lesson.viewers():
        wait_video_plays(viewer, teacher_id, "screen")
        wait_video_plays(viewer, teacher_id, "camera")
        expect(
            viewer.page.locator(f"#stage video[data-participant-id='{teacher_id}']")
        ).to_have_count(2)
    # The shared screen is the presenter: it takes the large place.
    expect(lesson.classroom.page.locator("#main-view video[data-source='screen']")).to_have_count(1)

    # Stopping from the browser's own "Stop sharing" bar ends the track; the
    # page sees "ended". Chromium fires it when the capture source goes away,
    # which headless cannot do, so the same event is dispatched on the track.
    teacher.evaluate(
        """() => {
          const track = window.lco.page.screenStream.getVideoTracks()[0];
          track.dispatchEvent(new Event('ended'));
        }"""
    )
    expect(teacher.get_by_role("button", name="Share screen")).to_be_visible()
    for viewer in lesson.viewers():
        expect(
            viewer.page.locator(
                f"#stage video[data-participant-id='{teacher_id}'][data-source='screen']"
            )
        ).to_have_count(0, timeout=TIMEOUT_MS)
        wait_video_plays(viewer, teacher_id, "camera")


def test_reload_takes_the_same_seat_back(lesson: Lesson) -> None:
    old_id = lesson.student2.id
    page = lesson.student2.page
    page.reload()
    page.get_by_role("button", name="Join").click()
    page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
    assert lesson.student2.id == old_id
    wait_video_plays(lesson.student2, lesson.teacher.id)
    # Everyone else lists the student once, under its id, connected.
    teacher = lesson.teacher.page
    row = teacher.locator(f"#people-groups li[data-participant-id='{old_id}']")
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-connected", "true")


def test_dropped_connection_comes_back_with_media(lesson: Lesson) -> None:
    classroom = lesson.classroom
    old_id = classroom.id
    decoded = lesson.teacher.page.evaluate(INBOUND, [old_id, "camera", "framesDecoded"])
    classroom.page.evaluate("() => window.lco.debugDropConnection()")
    classroom.page.wait_for_function(
        "() => window.lco.state().connected && window.lco.state().resumes >= 1",
        timeout=TIMEOUT_MS,
    )
    state = classroom.state()
    assert state["reconnects"] >= 1 and state["participantId"] == old_id
    # While it tried, the page said so; now it says it is back.
    assert "Reconnecting…" in state["banners"]
    expect(classroom.page.locator("#banner")).to_have_text("Reconnected to the lesson.")
    wait_video_plays(classroom, lesson.teacher.id)
    wait_audio_arrives(classroom, lesson.teacher.id)
    # Its own camera goes on, on the same connections: the teacher keeps decoding it.
    lesson.teacher.page.wait_for_function(
        INBOUND_ABOVE, arg=[old_id, "camera", "framesDecoded", decoded], timeout=TIMEOUT_MS
    )
    expect(lesson.teacher.page.locator("#main-view video[data-role='classroom']")).to_have_count(1)


def test_a_student_who_leaves_disappears_everywhere(lesson: Lesson) -> None:
    gone_id = lesson.student2.id
    lesson.student2.page.get_by_role("button", name="Leave").click()
    lesson.student2.page.close()
    for viewer in (lesson.teacher, lesson.student):
        expect(
            viewer.page.locator(f"#people-groups li[data-participant-id='{gone_id}']")
        ).to_have_count(0)
        expect(viewer.page.locator("#people-groups")).not_to_contain_text("Grace")
    lesson.classroom.page.wait_for_function(
        f"() => !window.lco.state().participants.some(p => p.id === '{gone_id}')"
    )
    assert [p["name"] for p in lesson.teacher.state()["participants"]].count("Grace") == 0
    # No page threw an uncaught error during the whole lesson.
    assert {p.name: p.errors for p in (lesson.teacher, lesson.student, lesson.classroom)} == {
        lesson.teacher.name: [],
        lesson.student.name: [],
        lesson.classroom.name: [],
    }
