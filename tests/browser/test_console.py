"""The web console in Chromium against the real server.

An operator signs in with the admin key, sets up a community with three schools and
two classroom endpoints, schedules a lesson for them and hands out the links (the
clicks are counted); a classroom opens its link from the console and the operator
sees it join in the live view, ends the lesson and downloads the attendance. Also:
a wrong key, the cookie's attributes, and a POST from another site.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import segno
from playwright.sync_api import Browser, Page, expect

from signaling.permissions import Role

from .conftest import Server, keep_screenshot

pytestmark = pytest.mark.browser

TIMEOUT_MS = 30_000


class Clicks:
    """Counts the operator's clicks (form submissions by button count as one)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.count = 0

    def click(self, role: str, name: str) -> None:
        self.page.get_by_role(role, name=name, exact=True).click()  # type: ignore[arg-type]
        self.count += 1


def fill(page: Page, label: str, text: str) -> None:
    page.get_by_label(label, exact=True).fill(text)


def sign_in(page: Page, server: Server, clicks: Clicks) -> None:
    page.goto(f"{server.url}/")
    fill(page, "Admin key", server.admin_key())
    clicks.click("button", "Sign in")
    expect(page.get_by_role("heading", name="Schedule a lesson")).to_be_visible(timeout=TIMEOUT_MS)


def add_school(page: Page, clicks: Clicks, name: str) -> None:
    fill(page, "New school", name)
    clicks.click("button", "Add school")
    expect(page.locator("#school-list")).to_contain_text(name)


def add_room(page: Page, clicks: Clicks, school: str, room: str, headcount: int) -> None:
    page.get_by_label("Classroom of").select_option(label=school)
    clicks.count += 1  # choosing the school in the list is a click too
    fill(page, "Room", room)
    fill(page, "Students", str(headcount))
    clicks.click("button", "Add classroom")
    expect(page.locator("#school-list")).to_contain_text(f"{room}: {headcount} students")


@pytest.fixture(scope="module")
def operator(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()


def test_a_wrong_key_is_refused(browser: Browser, server: Server, artifacts: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(f"{server.url}/")
    expect(page.get_by_role("heading", name="I have a link")).to_be_visible()
    page.screenshot(path=artifacts / "landing.png", full_page=True)
    keep_screenshot(artifacts / "landing.png")
    fill(page, "Admin key", "not-the-key-" + "x" * 40)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#operator-error")).to_have_text("That is not the admin key.")
    assert context.cookies() == []
    page.goto(f"{server.url}/console")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    context.close()


def test_the_three_school_lesson_from_sign_in_to_links(
    operator: Page, server: Server, artifacts: Path
) -> None:
    page = operator
    clicks = Clicks(page)
    sign_in(page, server, clicks)
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "lco_session"
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.evaluate("() => document.cookie") == ""  # scripts cannot read it

    fill(page, "New community", "Valley Learning Community")
    clicks.click("button", "Create community")
    expect(page.locator("#community-select")).to_have_value("valley-learning-community")
    for school in ("North High", "West Primary", "South Academy"):
        add_school(page, clicks, school)
    add_room(page, clicks, "West Primary", "Room 4", 24)
    add_room(page, clicks, "South Academy", "Lab 2", 18)

    fill(page, "Title", "Fractions together")
    fill(page, "Teacher", "Ms Rivera")
    # The first school hosts by default; every other school is invited by default and
    # the lobby is on by default: nothing to click.
    expect(page.get_by_label("Teacher's school")).to_have_value("north-high")
    expect(page.get_by_label("West Primary (1 classrooms)")).to_be_checked()
    expect(page.get_by_label("South Academy (1 classrooms)")).to_be_checked()
    page.screenshot(path=artifacts / "console.png", full_page=True)
    keep_screenshot(artifacts / "console.png")
    clicks.click("button", "Schedule lesson")
    expect(page.get_by_role("heading", name="Fractions together: links")).to_be_visible(
        timeout=TIMEOUT_MS
    )
    links = page.locator("#link-list > li")
    expect(links).to_have_count(4)  # teacher, guest expert, Room 4, Lab 2
    clicks.click("button", "Copy all links")
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied.count("/join#token=") == 4 and "Classroom: Room 4 (West Primary)" in copied
    print(f"\nthree-school lesson: {clicks.count} clicks from sign-in to links handed out")
    page.screenshot(path=artifacts / "console-links.png", full_page=True)
    keep_screenshot(artifacts / "console-links.png")
    # Sign in 1, community 1, schools 3, classrooms 2 x (school, add), schedule 1, copy 1.
    assert clicks.count == 11

    # Every classroom and student link has a QR code of exactly that link.
    room = page.locator("#link-list > li[data-endpoint]", has_text="Room 4")
    link = room.locator("input.link-text").input_value()
    qr = room.get_by_role("img", name="QR code of the link for Room 4").get_attribute("src")
    expected = segno.make(link, error="m", micro=False)
    assert qr == expected.svg_data_uri(scale=4, border=2, dark="#000", light="#fff")
    page.get_by_label("Student links for").select_option(label="West Primary")
    fill(page, "Names", "Ana, Ben")
    page.get_by_role("button", name="Make student links").click()
    expect(links).to_have_count(6)
    expect(page.get_by_role("img", name="QR code of the link for Ben")).to_be_visible()


def test_the_classroom_joins_live_and_the_lesson_ends(
    operator: Page, browser: Browser, server: Server, artifacts: Path
) -> None:
    page = operator
    teacher_link = page.locator("#link-list > li[data-role='teacher'] input").input_value()
    room = page.locator("#link-list > li", has_text="Room 4")
    with page.context.expect_page() as opened:
        room.get_by_role("link", name="Open link: Room 4").click()
    classroom = opened.value  # the room PC, in a context of its own below
    link = classroom.url
    classroom.close()
    pc = browser.new_context(viewport={"width": 1280, "height": 720})
    screen = pc.new_page()
    screen.goto(link)
    screen.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)

    page.get_by_role("button", name="Live", exact=True).click()
    lesson = page.locator("section.live-lesson", has_text="Fractions together")
    row = lesson.locator("tr[data-role='classroom']", has_text="Room 4")
    expect(row).to_be_visible(timeout=TIMEOUT_MS)
    expect(row).to_contain_text("camera")
    expect(row).to_contain_text("microphone")
    expect(lesson).to_contain_text("no teacher is in the lesson")
    # The teacher joins from the teacher link: the warning goes, both publish.
    teaching = browser.new_context(viewport={"width": 1280, "height": 720})
    teacher = teaching.new_page()
    teacher.goto(teacher_link)
    join = teacher.get_by_role("button", name="Join")
    expect(join).to_be_enabled(timeout=TIMEOUT_MS)
    join.click()
    teacher.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
    expect(lesson.locator("tr[data-role='teacher']", has_text="Ms Rivera")).to_be_visible(
        timeout=TIMEOUT_MS
    )
    expect(lesson).not_to_contain_text("no teacher is in the lesson", timeout=TIMEOUT_MS)
    # Bitrate figures come with the second look at each participant (the view asks
    # every two seconds): both publish, so both send the server something.
    page.wait_for_function(
        """() => {
          const cells = [...document.querySelectorAll(
            "section.live-lesson tr[data-role] td:nth-child(5)")];
          return cells.length === 2 && cells.every((td) => Number(td.textContent) > 0);
        }""",
        timeout=TIMEOUT_MS,
    )
    # The chart fills as the view refreshes.
    page.wait_for_function(
        "() => Number(document.querySelector('section.live-lesson figure')?.dataset.points) >= 3",
        timeout=TIMEOUT_MS,
    )
    page.screenshot(path=artifacts / "console-live.png", full_page=True)
    keep_screenshot(artifacts / "console-live.png")

    lesson.get_by_role("button", name="End lesson: Fractions together").click()
    screen.wait_for_function(
        "() => document.getElementById('fatal-title').textContent === 'The lesson has ended'",
        timeout=TIMEOUT_MS,
    )
    expect(page.locator("#live-empty")).to_be_visible(timeout=TIMEOUT_MS)
    pc.close()
    teaching.close()

    page.get_by_role("button", name="Schools and lessons").click()
    row = page.locator("#lesson-table tr", has_text="Fractions together")
    expect(row).to_contain_text("ended")
    with page.expect_download() as download:
        row.get_by_role("button", name="Attendance (CSV): Fractions together").click()
    text = Path(download.value.path()).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {(r["name"], r["role"], r["school"]) for r in rows} == {
        ("Room 4", "classroom", "west-primary"),
        ("Ms Rivera", "teacher", "north-high"),
    }
    (room_row,) = [r for r in rows if r["name"] == "Room 4"]
    assert room_row["headcount"] == "24" and float(room_row["seconds_present"]) > 0
    row.get_by_role("button", name="Links: Fractions together").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download attendance (JSON)").click()
    report = json.loads(Path(download.value.path()).read_text())
    assert report["lesson"] == "fractions-together"
    assert report["schools"]["west-primary"]["classroom_headcount"] == 24


def test_a_teacher_link_opens_my_lesson(browser: Browser, server: Server) -> None:
    token = server.link("fractions-together", "Ms Rivera", Role.TEACHER, "north-high")
    context = browser.new_context()
    page = context.new_page()
    page.goto(token)
    mine = page.locator("#prejoin .my-lesson-link")
    expect(mine).to_be_visible(timeout=TIMEOUT_MS)
    page.goto(f"{server.url}{mine.get_attribute('href')}")
    expect(page.get_by_role("heading", name="Fractions together: links")).to_be_visible(
        timeout=TIMEOUT_MS
    )
    # The invited schools' links (not the teacher's own), student links, attendance.
    expect(page.locator("#link-list > li[data-role='classroom']")).to_have_count(2)
    expect(page.locator("#link-list > li[data-role='teacher']")).to_have_count(0)
    expect(page.locator("#attendance-table tbody tr")).to_have_count(2)
    assert context.cookies() == []  # the teacher's link is the credential; no session
    context.close()


class _Attacker(BaseHTTPRequestHandler):
    """A page on another site that posts to the console's API with the browser's cookies."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><title>elsewhere</title><script>
        fetch("{self.target}/api/communities", {{method: "POST", mode: "no-cors",
          credentials: "include", headers: {{"Content-Type": "text/plain"}},
          body: JSON.stringify({{id: "stolen", name: "Stolen"}})}})
          .then(() => document.title = "sent", () => document.title = "failed");
        </script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_cross_site_post_is_refused(operator: Page, server: Server) -> None:
    """Signed in, the operator visits another site (another port: same site but another
    origin, so the browser sends the cookie) whose page posts to the API: refused."""
    _Attacker.target = server.url
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    thread = threading.Thread(target=attacker.serve_forever, daemon=True)
    thread.start()
    try:
        page = operator.context.new_page()
        page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        page.wait_for_function("() => document.title === 'sent'", timeout=TIMEOUT_MS)
        page.close()
    finally:
        attacker.shutdown()
        attacker.server_close()
    names = httpx.get(
        f"{server.url}/api/communities",
        headers={"Authorization": f"Bearer {server.admin_key()}"},
        timeout=10,
    ).json()
    assert "stolen" not in {c["id"] for c in names}
