"""A first start, as a new user makes it: ``lco serve`` on an empty data directory
prints a teacher link, and that link works in Chromium (the teacher joins and sees
their own video). The root page is the landing page."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from ..conftest import LOG_CHECK
from .conftest import free_port, stop_server

pytestmark = pytest.mark.browser

TIMEOUT_MS = 30_000
LINK = re.compile(r"(http://\S+/join#token=\S+)")


def test_lco_serve_prints_a_teacher_link_that_works(browser: Browser, host_address: str) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lco-first-") as home:
        data_dir = Path(home) / "lco-data"
        log = Path(home) / "server.log"
        # A fresh machine: no secret or key from the environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LCO_")}
        with log.open("wb") as errors:
            process = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("lco")),
                    "serve",
                    "--port",
                    str(port),
                    "--ice-host",
                    host_address,
                    "--data-dir",
                    str(data_dir),
                ],
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
            )
        LOG_CHECK.watch(log, process)
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert process.stdout is not None
            for raw in process.stdout:
                lines.put(raw.decode())
            lines.put("")  # the server's standard output closed

        threading.Thread(target=read, daemon=True).start()
        try:
            shown: list[str] = []
            while "--no-demo" not in "".join(shown):  # the banner's last line
                line = lines.get(timeout=30)
                assert line, f"lco serve printed no links:\n{''.join(shown)}"
                shown.append(line)
            LOG_CHECK.hide((data_dir / "secret.key").read_text().strip(), "a fresh secret")
            LOG_CHECK.hide((data_dir / "admin.key").read_text().strip(), "a fresh admin key")
            text = "".join(shown)
            assert f"open the console at http://127.0.0.1:{port}/console" in text
            assert str(data_dir / "admin.key") in text
            assert (data_dir / "admin.key").read_text().strip() not in text
            teacher, student = LINK.findall(text)

            context = browser.new_context(viewport={"width": 1280, "height": 720})
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.get_by_role("heading", name="LCO Classroom")).to_be_visible()
            page.goto(teacher)
            join = page.get_by_role("button", name="Join")
            expect(join).to_be_enabled(timeout=TIMEOUT_MS)
            join.click()
            page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
            assert page.evaluate("() => window.lco.state().role") == "teacher"
            page.wait_for_function(
                """() => {
                  const v = document.querySelector('figure.tile[data-local="true"] video');
                  return Boolean(v && v.videoWidth > 0 && v.currentTime > 0);
                }""",
                timeout=TIMEOUT_MS,
            )
            context.close()
            assert "/join#token=" in student
        finally:
            stop_server(process)
