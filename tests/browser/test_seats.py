"""A seat survives the network, in Chromium: a student's home network drops, a page
reloads while muted, revoked or removed; the teacher decided, and it stays decided.

The student whose network drops runs in a network namespace of its own
(``tests/netns.py``), as a home behind its router::

    home namespace                                test namespace
    ┌───────────────────────────────┐   veth    ┌──────────────────────────────────┐
    │ Chromium: the student         │──────────▶│ lco serve :PORT, SFU on 10.213.0.1│
    │ 10.214.N.2, then (after the   │           │ Chromium: the teacher (127.0.0.1)│
    │ drop) a new address, as a new │           └──────────────────────────────────┘
    │ Wi-Fi lease gives             │
    └───────────────────────────────┘

The drop takes the link down and its address away for two seconds; the network
comes back with a new address and a new default route in one step. Recovery is
measured from that moment until the student decodes the teacher's camera again
(``getStats`` ``framesDecoded`` rising), and until the teacher decodes the
student's camera again: printed, with a generous bound only as a hang guard.
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, WebSocket, expect

from signaling.permissions import Role
from signaling.tokens import mint_token

from ..netns import NestedNamespace
from .conftest import CHROMIUM, CHROMIUM_FLAGS, free_port, start_server, stop_server
from .test_web_client import TIMEOUT_MS, Participant

pytestmark = pytest.mark.browser

LESSON = "seats-lesson"
CUT_SECONDS = 2.0
HANG_GUARD_S = 20.0  # not a target: media is expected back within a few seconds

DECODED = """async (pid) => (await window.lco.inboundStats())
  .filter((s) => s.participant_id === pid && s.source === "camera")
  .reduce((sum, s) => sum + s.framesDecoded, 0)"""

MIC_PACKETS = """async (pid) => (await window.lco.inboundStats())
  .filter((s) => s.participant_id === pid && s.source === "microphone")
  .reduce((sum, s) => sum + s.packetsReceived, 0)"""

MIC_PACKETS_ABOVE = """async ([pid, above]) => (await window.lco.inboundStats())
  .filter((s) => s.participant_id === pid && s.source === "microphone")
  .reduce((sum, s) => sum + s.packetsReceived, 0) > above"""


@dataclass(frozen=True, slots=True)
class SeatServer:
    url: str  # for pages in the test namespace
    home_url: str  # for pages in a home namespace (the server's veth address)
    secret: bytes
    log: Path

    def link(self, name: str, role: Role, *, home: bool = False) -> str:
        token = mint_token(self.secret, lesson=LESSON, name=name, role=role, school="north")
        return f"{self.home_url if home else self.url}/join#token={token}"

    def metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/metrics.json", timeout=5).json()
        return result


@pytest.fixture(scope="module")
def seat_server(host_address: str) -> Iterator[SeatServer]:
    port = free_port()
    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="lco-seats-") as data_dir:
        log = Path(data_dir) / "server.log"
        # Pages in the home namespace reach it on the veth address.
        process = start_server(
            port, secret, host_address, data_dir, "--log-level", "info", host="0.0.0.0", log=log
        )
        try:
            yield SeatServer(
                f"http://127.0.0.1:{port}", f"http://{host_address}:{port}", secret.encode(), log
            )
        finally:
            stop_server(process)


@contextmanager
def home_browser(playwright: Playwright, origin: str) -> Iterator[tuple[NestedNamespace, Browser]]:
    """Chromium in a home network of its own."""
    with NestedNamespace() as home, tempfile.TemporaryDirectory(prefix="lco-home-") as tmp:
        launcher = home.launcher(CHROMIUM, Path(tmp) / "chromium")
        browser = playwright.chromium.launch(
            executable_path=str(launcher),
            headless=True,
            # The page comes from the server's veth address, not 127.0.0.1: only this
            # flag makes it a secure context (camera, microphone).
            args=[*CHROMIUM_FLAGS, f"--unsafely-treat-insecure-origin-as-secure={origin}"],
            env={**os.environ, "HOME": tmp},
        )
        try:
            yield home, browser
        finally:
            browser.close()


def drop_network(home: NestedNamespace) -> None:
    """The home's link goes down and loses its address (Wi-Fi gone)."""
    device = f"{home._outer_name}i"
    home.run("ip", "-batch", "-", stdin=f"link set {device} down\naddr flush dev {device}\n")


def restore_network(home: NestedNamespace, address: str) -> None:
    """The link comes back with ``address`` and a default route, in one step."""
    device = f"{home._outer_name}i"
    home.run(
        "ip",
        "-batch",
        "-",
        stdin=(
            f"addr add {address}/24 dev {device}\n"
            f"link set {device} up\n"
            f"route add default via {home.gateway}\n"
        ),
    )


def join(browser: Browser, link: str, name: str, role: Role) -> Participant:
    context = browser.new_context()
    page = context.new_page()
    participant = Participant(name, role, context, page, link)
    page.on("pageerror", lambda error: participant.errors.append(str(error)))
    page.goto(link)
    button = page.get_by_role("button", name="Join", exact=True)
    expect(button).to_be_enabled(timeout=TIMEOUT_MS)
    button.click()
    page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
    return participant


def decoded(page: Page, publisher_id: str) -> int:
    value: int = page.evaluate(DECODED, publisher_id)
    return value


def wait_decoding(page: Page, publisher_id: str, above: int) -> float:
    """Poll until more than ``above`` frames of ``publisher_id``'s camera are decoded;
    the time it took."""
    started = time.monotonic()
    while decoded(page, publisher_id) <= above:
        if time.monotonic() - started > HANG_GUARD_S:
            raise TimeoutError(f"no frame of {publisher_id} decoded for {HANG_GUARD_S} s")
        time.sleep(0.05)  # polling getStats (a measurement), not waiting out a race
    return time.monotonic() - started


class Frames:
    """Every signalling message a page receives, by type."""

    def __init__(self, page: Page) -> None:
        self.messages: list[dict[str, Any]] = []
        page.on("websocket", self._watch)

    def _watch(self, socket: WebSocket) -> None:
        import json

        def received(data: str | bytes) -> None:
            if isinstance(data, str):
                self.messages.append(json.loads(data))

        socket.on("framereceived", received)

    def of(self, kind: str, participant_id: str) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages
            if m["type"] == kind and (m.get("participant_id") == participant_id)
        ]


@pytest.fixture(scope="module")
def teacher(browser: Browser, seat_server: SeatServer) -> Iterator[tuple[Participant, Frames]]:
    context = browser.new_context()
    page = context.new_page()
    frames = Frames(page)
    link = seat_server.link("Ms Rivera", Role.TEACHER)
    participant = Participant("Ms Rivera", Role.TEACHER, context, page, link)
    page.goto(link)
    page.get_by_role("button", name="Join", exact=True).click()
    page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
    try:
        yield participant, frames
    finally:
        context.close()


def test_a_student_whose_network_drops_is_back_with_media_in_the_same_seat(
    playwright: Playwright,
    seat_server: SeatServer,
    teacher: tuple[Participant, Frames],
    request: pytest.FixtureRequest,
) -> None:
    tries = int(request.config.getoption("--cut-tries"))
    console, frames = teacher
    with home_browser(playwright, seat_server.home_url) as (home, browser):
        link = seat_server.link("Ana", Role.STUDENT, home=True)
        student = join(browser, link, "Ana", Role.STUDENT)
        seat = student.id
        console.page.get_by_role("button", name="Allow to publish: Ana").click()
        wait_decoding(student.page, console.id, 0)
        wait_decoding(console.page, seat, 0)
        to_student: list[float] = []
        to_teacher: list[float] = []
        for attempt in range(tries):
            drop_network(home)
            time.sleep(CUT_SECONDS)  # the drop itself lasts this long: it is the scenario
            # Frames decoded so far, before the network is back.
            seen_by_student = decoded(student.page, console.id)
            seen_by_teacher = decoded(console.page, seat)
            # A new lease gives another address each time.
            restore_network(home, f"{home.subnet}.{3 + attempt}")
            restored = time.monotonic()
            try:
                wait_decoding(student.page, console.id, seen_by_student)
                to_student.append(time.monotonic() - restored)
                wait_decoding(console.page, seat, seen_by_teacher)
                to_teacher.append(time.monotonic() - restored)
            finally:
                if time.monotonic() - restored > 3:  # slow, or a hang: what happened
                    explain(attempt, student.page, seat_server)
            assert student.id == seat
        state = student.state()
        assert state["resumes"] >= tries and state["participantId"] == seat
        # The teacher's list kept the same student throughout: it never showed a leave.
        assert frames.of("participant_left", seat) == []
        assert [p["id"] for p in console.state()["participants"]] == [seat]
        assert not student.errors
    report(f"network drop of {CUT_SECONDS:.0f} s, {tries} tries: media to the student", to_student)
    report("... and the student's camera at the teacher", to_teacher)


def explain(attempt: int, page: Page, server: SeatServer) -> None:
    """Print the student page's connection events and the server's ICE log lines."""
    events = page.evaluate("window.lco.connectionLog()")
    lines = [x for x in server.log.read_text().splitlines() if "ICE" in x or "ERROR" in x]
    print(f"\ntry {attempt} was slow: page {events[-25:]}\nserver {lines[-8:]}")


def report(what: str, seconds: list[float]) -> None:
    print(
        f"\n{what}: p50 {statistics.median(seconds):.2f} s, worst {max(seconds):.2f} s "
        f"({', '.join(f'{s:.2f}' for s in seconds)})"
    )


def test_a_reload_while_muted_stays_muted_until_allowed(
    browser: Browser, seat_server: SeatServer, teacher: tuple[Participant, Frames]
) -> None:
    console, _ = teacher
    student = join(browser, seat_server.link("Ben", Role.STUDENT), "Ben", Role.STUDENT)
    seat = student.id
    console.page.get_by_role("button", name="Allow to publish: Ben").click()
    wait_decoding(console.page, seat, 0)
    console.page.get_by_role("button", name="Mute microphone: Ben").click()
    expect(student.page.locator("#mute-text")).to_contain_text("muted your microphone")

    student.page.reload()
    student.page.get_by_role("button", name="Join", exact=True).click()
    student.page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
    assert student.id == seat
    # Still muted: the page says so, and the server forwards none of its microphone.
    expect(student.page.locator("#mute-text")).to_contain_text("muted your microphone")
    wait_decoding(console.page, seat, decoded(console.page, seat))  # its new camera is on
    # (The teacher's receiver counts on from what arrived before the mute: the server
    # gives the new microphone the m-line, and the stream, the old one had.)
    heard = console.page.evaluate(MIC_PACKETS, seat)
    muted_before = seat_server.metrics()["sfu"]["packets_muted"]
    while seat_server.metrics()["sfu"]["packets_muted"] < muted_before + 100:
        time.sleep(0.05)  # polling a counter of the server (a measurement)
    assert console.page.evaluate(MIC_PACKETS, seat) == heard
    # Until the teacher allows it.
    console.page.get_by_role("button", name="Allow microphone: Ben").click()
    console.page.wait_for_function(
        MIC_PACKETS_ABOVE, arg=[seat, heard], timeout=TIMEOUT_MS, polling=100
    )
    student.context.close()


def test_a_reload_after_a_revoked_grant_does_not_publish(
    browser: Browser, seat_server: SeatServer, teacher: tuple[Participant, Frames]
) -> None:
    console, _ = teacher
    student = join(browser, seat_server.link("Cy", Role.STUDENT), "Cy", Role.STUDENT)
    seat = student.id
    console.page.get_by_role("button", name="Allow to publish: Cy").click()
    wait_decoding(console.page, seat, 0)
    console.page.get_by_role("button", name="Stop publishing: Cy").click()
    expect(student.page.locator("#publish-status")).to_have_attribute("data-allowed", "false")

    student.page.reload()
    student.page.get_by_role("button", name="Join", exact=True).click()
    student.page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
    assert student.id == seat
    expect(student.page.locator("#publish-status")).to_have_attribute("data-allowed", "false")
    assert "publish" not in student.state()["permissions"]
    # It publishes nothing: the teacher lists no track of it.
    row = console.page.locator(f"#people-groups li[data-participant-id='{seat}']")
    expect(row).not_to_contain_text("publishing")
    console.page.get_by_role("button", name="Allow to publish: Cy").click()
    wait_decoding(console.page, seat, 0)
    student.context.close()


def test_a_removed_student_cannot_reload_back_in(
    browser: Browser, seat_server: SeatServer, teacher: tuple[Participant, Frames]
) -> None:
    console, _ = teacher
    student = join(browser, seat_server.link("Dee", Role.STUDENT), "Dee", Role.STUDENT)
    console.page.once("dialog", lambda dialog: dialog.accept())
    row = console.page.locator(f"#people-groups li[data-participant-id='{student.id}']")
    row.locator("summary").click()
    row.get_by_role("button", name="Remove from lesson: Dee").click()
    expect(student.page.locator("#fatal-title")).to_have_text("You were removed from the lesson")
    student.page.reload()
    student.page.get_by_role("button", name="Join", exact=True).click()
    expect(student.page.locator("#fatal-title")).to_have_text("You were removed from the lesson")
    student.context.close()
