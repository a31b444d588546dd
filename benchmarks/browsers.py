"""Real Chromium students for the soak (``lco bench run --workload soak --browsers N``)
and the downlink workload's Chromium viewer (``--viewer browser``).

Debian's ``chromium`` driven by Playwright, headless, with the flags the browser
tests use (``tests/browser/conftest.py``): fake camera and microphone, no GPU, no
background throttling. Chromium gathers no ICE candidates on loopback, so this
needs the test network namespace (``scripts/netns-run``), like Janus. Each page
opens a student's join link on ``http://127.0.0.1`` (a secure context), clicks
Join, and is read every tick through the page's own ``window.lco.inboundStats()``:
packets received and frames decoded per track, named by publisher and kind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("LCO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]
TIMEOUT_MS = 30_000
# Cumulative counts per track of one page, keyed like the load processes' ticks.
_STATS = """async () => {
  const out = {};
  for (const s of await window.lco.inboundStats()) {
    if (!s.participant_id) continue;
    const key = `${s.participant_id}/${s.kind}`;
    const entry = out[key] || (out[key] = {packets: 0, frames: 0});
    entry.packets += s.packetsReceived || 0;
    entry.frames += s.framesDecoded || 0;
  }
  return out;
}"""


# Which of the client's screens (web_client/ui.js) is shown, and its text.
_SCREEN = """() => {
  const shown = [...document.querySelectorAll("body > main, #room")].filter((e) => !e.hidden);
  return shown.map((e) => `${e.id}: ${e.innerText.replace(/\\s+/g, " ").slice(0, 200)}`)
    .join("; ") || `no screen (readyState ${document.readyState})`;
}"""


async def _screen(page: Any) -> str:
    """What ``page`` shows, to say why it never offered Join."""
    try:
        return str(await page.evaluate(_SCREEN))
    except Exception as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"


def unavailable(host: str) -> str | None:
    """Why browsers cannot run here, or ``None``."""
    if host.startswith("127."):
        return "browsers need the test namespace: run under scripts/netns-run"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    return None


class BrowserStudents:
    """N headless Chromium pages, each a student of the lesson."""

    def __init__(self) -> None:
        self._playwright: Any = None
        self._browser: Any = None
        self.pages: list[tuple[str, Any]] = []
        self.errors: list[str] = []

    async def start(self, links: list[str]) -> None:
        """Launch Chromium and join with every link (students click Join)."""
        await self.launch()
        for link in links:
            self.pages.append((f"browser{len(self.pages)}", await self.join(link)))

    async def launch(self) -> None:
        """Launch Chromium (no page yet)."""
        from playwright.async_api import async_playwright

        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )

    async def join(self, link: str, name: str = "") -> Any:
        """A page of its own (a fresh context) that opens ``link``, clicks Join and is
        connected; its uncaught errors go to :attr:`errors` under ``name``."""
        name = name or f"browser{len(self.pages)}"
        context = await self._browser.new_context(viewport={"width": 1280, "height": 720})
        page = await context.new_page()
        page.on("pageerror", lambda error: self.errors.append(f"{name}: {error}"))
        await page.goto(link)
        join = page.get_by_role("button", name="Join")
        try:
            await join.wait_for(timeout=TIMEOUT_MS)
        except Exception as exc:
            raise RuntimeError(f"{name}: no Join button: {await _screen(page)}") from exc
        await join.click()
        await page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
        return page

    async def wait_tracks(self, video: int, audio: int, timeout_ms: int = TIMEOUT_MS) -> None:
        """Until every page receives ``video`` and ``audio`` tracks with packets."""
        check = """([video, audio]) => window.lco.inboundStats().then(stats => {
          const flowing = (kind) => stats.filter(s => s.kind === kind && s.packetsReceived > 0);
          return flowing('video').length >= video && flowing('audio').length >= audio;
        })"""
        for _, page in self.pages:
            await page.wait_for_function(check, arg=[video, audio], timeout=timeout_ms, polling=200)

    async def sample(self) -> list[dict[str, Any]]:
        """Each page's cumulative counts per track; a page that does not answer is left
        out (the soak counts its window as "no report")."""
        out = []
        for name, page in self.pages:
            try:
                tracks = await page.evaluate(_STATS)
            except Exception as exc:
                self.errors.append(f"{name}: stats: {type(exc).__name__}: {exc}")
                continue
            out.append({"name": name, "tracks": tracks})
        return out

    async def close(self) -> None:
        """Close every page and the browser."""
        with contextlib.suppress(Exception):
            if self._browser is not None:
                await self._browser.close()
        with contextlib.suppress(Exception):
            if self._playwright is not None:
                await self._playwright.stop()
