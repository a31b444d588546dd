"""Simulcast from a browser, and what each viewer chooses to receive, in Chromium.

The teacher's page publishes its camera as simulcast layers; a student's page shows
the teacher large and receives the largest layer, then picks "Low data" (a small
layer, the tile says so), "Audio only" (no video at all, the tile says "paused")
and "Best my connection allows" again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from signaling.permissions import Role

from .conftest import Server, wait_until
from .test_web_client import INBOUND, TIMEOUT_MS, Participant, open_participant

pytestmark = pytest.mark.browser

LESSON = "physics-7b"

# The frame width of the teacher's camera as the page decodes it now.
FRAME_WIDTH = """async (pid) => {
  const stats = await window.lco.inboundStats();
  const s = stats.find(s => s.participant_id === pid && s.source === 'camera');
  return s ? s.frameWidth : 0;
}"""


@pytest.fixture(scope="module")
def pages(browser: Browser, server: Server) -> Iterator[tuple[Participant, Participant]]:
    teacher = open_participant(browser, server, "Ms Rivera", Role.TEACHER, "north-high")
    student = open_participant(browser, server, "Ana", Role.STUDENT, "south-school")
    try:
        yield teacher, student
    finally:
        for participant in (teacher, student):
            participant.context.close()


def width_becomes(student: Participant, teacher_id: str, condition: str) -> int:
    """Wait until the decoded width of the teacher's camera satisfies ``condition``
    (JavaScript on ``w``); return it."""
    width: int = wait_until(
        student.page,
        f"async (pid) => {{ const w = await ({FRAME_WIDTH})(pid); return ({condition}) && w; }}",
        teacher_id,
        timeout_ms=TIMEOUT_MS,
        polling_ms=250,
    )
    return width


def test_a_viewer_chooses_low_data_or_audio_only_and_the_tile_says_so(
    pages: tuple[Participant, Participant],
) -> None:
    teacher, student = pages
    teacher_id = teacher.id
    offer = teacher.page.evaluate("() => window.lco.page.publisher.pc.localDescription.sdp")
    assert "a=simulcast:send h;m;l" in offer
    answer = teacher.page.evaluate("() => window.lco.page.publisher.pc.remoteDescription.sdp")
    assert "a=simulcast:recv h;m;l" in answer
    large = width_becomes(student, teacher_id, "w >= 640")
    tile = student.page.locator(f"#main-view figure[data-participant-id='{teacher_id}']")
    # The top layer: 1280 wide from the 720p camera, less if the browser adapted it.
    expect(tile).to_have_attribute("data-quality", re.compile("^(HD|SD)$"), timeout=TIMEOUT_MS)

    student.page.select_option("#quality-select", "low_data")
    small = width_becomes(student, teacher_id, f"w > 0 && w < {large}")
    expect(tile).to_have_attribute("data-quality", "low", timeout=TIMEOUT_MS)

    student.page.select_option("#quality-select", "audio_only")
    expect(tile).to_have_attribute("data-quality", "paused", timeout=TIMEOUT_MS)
    decoded = student.page.evaluate(INBOUND, [teacher_id, "camera", "framesDecoded"])
    heard = student.page.evaluate(INBOUND, [teacher_id, "microphone", "packetsReceived"])
    wait_until(  # audio goes on ...
        student.page,
        f"async ([args, above]) => (await ({INBOUND})(args)) > above",
        [[teacher_id, "microphone", "packetsReceived"], heard + 50],
        timeout_ms=TIMEOUT_MS,
    )
    # ... while no more video came than the frame or two in flight when it stopped.
    assert student.page.evaluate(INBOUND, [teacher_id, "camera", "framesDecoded"]) <= decoded + 2

    student.page.select_option("#quality-select", "auto")
    assert width_becomes(student, teacher_id, f"w >= {large}") >= large > small
    assert not teacher.errors and not student.errors


def test_the_viewers_browser_reports_when_each_packet_arrived(
    pages: tuple[Participant, Participant], server: Server
) -> None:
    """Chromium accepts transport-wide congestion control feedback on the teacher's
    video and sends it: the server sees a queue on its downlink before any loss."""
    teacher, student = pages
    width_becomes(student, teacher.id, "w > 0")
    offer = student.page.evaluate("() => window.lco.page.subscriber.pc.remoteDescription.sdp")
    answer = student.page.evaluate("() => window.lco.page.subscriber.pc.localDescription.sdp")
    uri = "draft-holmer-rmcat-transport-wide-cc-extensions-01"
    video = answer.split("m=video")[1].split("m=")[0]
    assert uri in offer and uri in video and " transport-cc" in video
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:  # feedback comes every 50 to 250 ms; the gauge reads it
        metrics = httpx.get(f"{server.url}/metrics.json", timeout=5).json()
        if metrics["sfu"]["transport_feedback_connections"] >= 1:
            break
        assert time.monotonic() < deadline, "no transport-wide feedback reached the server"
        student.page.wait_for_timeout(200)
