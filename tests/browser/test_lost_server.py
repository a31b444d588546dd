"""A page whose server goes away says so, keeps trying, and comes back by itself."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

from signaling.permissions import Role

from .conftest import Server, start_server, stop_server

pytestmark = pytest.mark.browser

TIMEOUT_MS = 30_000


def test_lost_server_is_explained_and_rejoined(
    browser: Browser, server: Server, host_address: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    context = browser.new_context()
    restarted = None
    try:
        page = context.new_page()
        page.goto(server.link("history-9", "Room 3", Role.CLASSROOM, "east-school"))
        page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)

        # A graceful stop says bye to everyone with reason "server_shutdown".
        stop_server(server.process)
        page.wait_for_function(
            "() => window.lco.state().banners.includes('Reconnecting…')", timeout=TIMEOUT_MS
        )
        # After a few failed tries the sentence says the server cannot be reached.
        expect(page.locator("#banner")).to_contain_text(
            "The lesson server cannot be reached", timeout=TIMEOUT_MS
        )
        assert not page.evaluate("() => window.lco.state().connected")

        # The server comes back on the same address with the same secret.
        port = int(server.url.rsplit(":", 1)[1])
        secret = server.secret.decode()
        data_dir = str(tmp_path_factory.mktemp("restarted"))
        restarted = start_server(port, secret, host_address, data_dir)
        page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
        expect(page.locator("#banner")).to_have_text("Reconnected to the lesson.")
        # A new server holds no seat for it: a new participant, its media started over.
        assert page.evaluate("() => window.lco.state().resumes") == 0
    finally:
        context.close()
        if restarted is not None:
            stop_server(restarted)
