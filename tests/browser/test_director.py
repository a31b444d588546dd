"""Director mode in Chromium: three classroom big screens follow the teacher's choice.

The teacher (a page) chooses in its "Big screens" panel; each classroom page's
stage (``#main-view``) must show exactly the chosen tracks, without a click on
the classroom pages. Recording's notice and chime reach the same pages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Browser, expect

from signaling.permissions import Role

from .conftest import Server
from .test_web_client import Participant, open_participant, wait_video_plays

pytestmark = pytest.mark.browser

LESSON = "physics-7b"  # open_participant's lesson
TIMEOUT_MS = 30_000

# The (participant, source) pairs a page's stage shows, in order.
STAGE = "() => window.lco.state().stage.map(v => `${v.participantId}:${v.source}`)"


@dataclass
class Room:
    teacher: Participant
    classrooms: list[Participant]


@pytest.fixture(scope="module")
def room(browser: Browser, server: Server) -> Iterator[Room]:
    teacher = open_participant(browser, server, "Ms Rivera", Role.TEACHER, "north-high")
    classrooms = [
        open_participant(browser, server, f"Room {n}", Role.CLASSROOM, school, (960, 540))
        for n, school in ((1, "west"), (2, "south"), (3, "east"))
    ]
    try:
        yield Room(teacher, classrooms)
    finally:
        for participant in (teacher, *classrooms):
            participant.context.close()


def stage_is(viewer: Participant, expected: list[str]) -> None:
    viewer.page.wait_for_function(
        f"(expected) => JSON.stringify(({STAGE})()) === JSON.stringify(expected)",
        arg=expected,
        timeout=TIMEOUT_MS,
        polling=100,
    )


def choose(teacher: Participant, first: str, second: str = "", scope: str = "") -> None:
    """Pick in the teacher's panel, as a teacher would, and press Show."""
    page = teacher.page
    page.select_option("#director-scope", value=scope)
    page.select_option("#director-first", value=first)
    page.select_option("#director-second", value=second)
    page.get_by_role("button", name="Show on big screens").click()


def test_classroom_stages_follow_the_director(room: Room) -> None:
    teacher, classrooms = room.teacher, room.classrooms
    teacher_id = teacher.id
    ids = [c.id for c in classrooms]
    for classroom in classrooms:
        wait_video_plays(classroom, teacher_id)
    for classroom_id in ids:
        wait_video_plays(teacher, classroom_id)
    # Not directed: each big screen shows the teacher.
    for classroom in classrooms:
        stage_is(classroom, [f"{teacher_id}:camera"])

    # Room 1 on every big screen (Room 1's own page does not show itself: it shows
    # what it would otherwise show).
    choose(teacher, f"{ids[0]}|camera")
    stage_is(classrooms[1], [f"{ids[0]}:camera"])
    stage_is(classrooms[2], [f"{ids[0]}:camera"])
    stage_is(classrooms[0], [f"{teacher_id}:camera"])

    # A layout of two: the teacher beside Room 3.
    choose(teacher, f"{teacher_id}|camera", f"{ids[2]}|camera")
    stage_is(classrooms[0], [f"{teacher_id}:camera", f"{ids[2]}:camera"])
    stage_is(classrooms[1], [f"{teacher_id}:camera", f"{ids[2]}:camera"])
    stage_is(classrooms[2], [f"{teacher_id}:camera"])

    # One classroom gets its own choice; the others keep the lesson's.
    choose(teacher, f"{ids[0]}|camera", scope=ids[1])
    stage_is(classrooms[1], [f"{ids[0]}:camera"])
    stage_is(classrooms[0], [f"{teacher_id}:camera", f"{ids[2]}:camera"])
    expect(teacher.page.locator("#director-status")).to_contain_text("Room 1")

    # Giving the lesson's choice back: Room 2 keeps its own, the others choose again.
    teacher.page.select_option("#director-scope", value="")
    teacher.page.get_by_role("button", name="Let them choose").click()
    stage_is(classrooms[0], [f"{teacher_id}:camera"])
    stage_is(classrooms[2], [f"{teacher_id}:camera"])
    stage_is(classrooms[1], [f"{ids[0]}:camera"])
    for participant in (teacher, *classrooms):
        assert participant.errors == []


def test_every_page_shows_and_chimes_when_recording_starts(room: Room) -> None:
    teacher, classrooms = room.teacher, room.classrooms
    teacher.page.get_by_role("button", name="Start recording").click()
    for page in (teacher.page, *(c.page for c in classrooms)):
        expect(page.locator("#recording-notice")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#recording-text")).to_have_text(
            "Ms Rivera started recording this lesson"
        )
        assert page.evaluate("() => window.lco.state().recordingChimes") == 1
    teacher.page.get_by_role("button", name="Stop recording").click()
    for page in (teacher.page, *(c.page for c in classrooms)):
        expect(page.locator("#recording-notice")).to_be_hidden(timeout=TIMEOUT_MS)

    # The recordings page, with the teacher's own link: a player per file, which
    # loads the file (range requests) and knows its length.
    page = teacher.context.new_page()
    page.goto(teacher.link.replace("/join#", "/recordings#"))
    expect(page.locator("#recordings-status")).to_have_text(f"1 recording of lesson {LESSON}.")
    players = page.locator(".recording video")
    expect(players).to_have_count(4, timeout=TIMEOUT_MS)  # the teacher's and 3 rooms' cameras
    page.wait_for_function(
        "() => [...document.querySelectorAll('.recording video')]"
        ".every(v => v.readyState >= 1 && v.duration > 0)",
        timeout=TIMEOUT_MS,
    )
    expect(page.locator(".recording audio")).to_have_count(4)
    page.close()
