"""A server that does not take simulcast (the frame path) gets the camera's full
size: the page lists its largest layer first, the one a browser keeps when the
answer has no simulcast."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from signaling.permissions import Role

from .conftest import Server, free_port, start_server, stop_server, wait_until
from .test_web_client import TIMEOUT_MS, open_participant

pytestmark = pytest.mark.browser

SENDING = """async () => {
  const stats = await window.lco.page.publisher.pc.getStats();
  const sending = [];
  stats.forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video' && s.framesEncoded > 0) sending.push(s.rid);
  });
  return sending.length > 0 && sending;
}"""

DECODED_WIDTH = """async (pid) => {
  const s = (await window.lco.inboundStats()).find(
    (s) => s.participant_id === pid && s.source === 'camera' && s.framesDecoded > 0);
  return s ? s.frameWidth : 0;
}"""


@pytest.fixture(scope="module")
def server(host_address: str) -> Iterator[Server]:
    port = free_port()
    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="lco-browser-") as data_dir:
        process = start_server(port, secret, host_address, data_dir, "--forwarding", "frames")
        try:
            yield Server(
                url=f"http://127.0.0.1:{port}",
                secret=secret.encode(),
                process=process,
                data_dir=Path(data_dir),
            )
        finally:
            stop_server(process)


def test_without_simulcast_the_camera_is_sent_at_full_size(
    browser: Browser, server: Server
) -> None:
    teacher = open_participant(browser, server, "Ms Rivera", Role.TEACHER, "north-high")
    student = open_participant(browser, server, "Ana", Role.STUDENT, "south-school")
    try:
        answer = teacher.page.evaluate("() => window.lco.page.publisher.pc.remoteDescription.sdp")
        assert "a=simulcast" not in answer
        assert wait_until(teacher.page, SENDING, timeout_ms=TIMEOUT_MS) == ["h"]
        # The smallest layer would be 320 wide; the browser may lower the full one
        # while its bandwidth estimate ramps up, never below half.
        width = wait_until(
            student.page,
            f"async (pid) => (await ({DECODED_WIDTH})(pid)) || false",
            teacher.id,
            timeout_ms=TIMEOUT_MS,
        )
        assert width >= 640
        assert not teacher.errors and not student.errors
    finally:
        teacher.context.close()
        student.context.close()
