"""A student behind a school firewall joins through coturn, over TCP and over TLS on 443.

Everything runs inside the namespace of ``scripts/netns-run``; nothing leaves the
machine::

    school namespace (tests/netns.py)          test namespace
    ┌──────────────────────────────┐  veth    ┌──────────────────────────────────────┐
    │ Chromium: the student        │─────────▶│ lco serve  :PORT, SFU on 10.213.0.1  │
    │ 10.214.N.2                   │          │ coturn     10.213.0.2 :3478 UDP/TCP, │
    │ nftables: UDP dropped        │          │            :443 TLS (test CA)        │
    │ (strict: TCP only to 443 and │          │ Chromium: the teacher (127.0.0.1)    │
    │  the lesson's web port)      │          └──────────────────────────────────────┘
    └──────────────────────────────┘

The student's UDP never leaves its namespace, so the only way its media can reach
the SFU is a relay allocated over TCP or TLS; coturn relays it as UDP to the SFU,
the one private address coturn's configuration allows.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect

from signaling.permissions import Role
from signaling.tokens import mint_token
from signaling.turn import turn_credential

from ..coturn import Coturn, trust_ca_for_chromium
from ..netns import NestedNamespace
from .conftest import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    free_port,
    start_server,
    stop_server,
    wait_until,
)
from .test_web_client import TIMEOUT_MS, Participant, wait_video_plays

pytestmark = pytest.mark.browser

LESSON = "turn-lesson"
# Short, so that the first credential expires during the test (the minimum is 10 s).
TURN_TTL = 10

# The selected candidate pair of the page's publish or subscribe connection.
SELECTED_PAIR = """async (which) => {
  const peer = window.lco.page[which];
  if (!peer) return null;
  const stats = await peer.pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      pair = stats.get(s.selectedCandidatePairId);
    }
  });
  if (!pair || pair.state !== "succeeded") return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return {
    local: {type: local.candidateType, relayProtocol: local.relayProtocol ?? null,
            url: local.url ?? null, port: local.port},
    remote: {type: remote.candidateType, address: remote.address},
  };
}"""

# Frames of a participant's camera decoded by the page so far.
DECODED = """async (pid) => (await window.lco.inboundStats())
  .filter((s) => s.participant_id === pid && s.source === "camera")
  .reduce((sum, s) => sum + s.framesDecoded, 0)"""

DECODED_ABOVE = """async ([pid, above]) => (await window.lco.inboundStats())
  .filter((s) => s.participant_id === pid && s.source === "camera")
  .reduce((sum, s) => sum + s.framesDecoded, 0) > above"""


@dataclass(frozen=True, slots=True)
class TurnLessonServer:
    """``lco serve`` with TURN credentials for coturn's three documented URLs."""

    url: str  # for pages in the test namespace (127.0.0.1)
    school_url: str  # for pages in a school namespace (the server's veth address)
    port: int
    secret: bytes
    log: Path

    def link(self, name: str, role: Role, *, school: bool = False) -> str:
        token = mint_token(self.secret, lesson=LESSON, name=name, role=role, school="north")
        return f"{self.school_url if school else self.url}/join#token={token}"


@pytest.fixture(scope="module")
def turn_lesson_server(host_address: str, coturn: Coturn) -> Iterator[TurnLessonServer]:
    port = free_port()
    secret = secrets.token_urlsafe(32)
    urls = [arg for url in coturn.urls for arg in ("--turn-url", url)]
    with tempfile.TemporaryDirectory(prefix="lco-turn-") as data_dir:
        log = Path(data_dir) / "server.log"
        process = start_server(
            port,
            secret,
            host_address,
            data_dir,
            *urls,
            "--turn-ttl",
            str(TURN_TTL),
            "--log-level",
            "info",
            # Pages in a school namespace reach it on the veth address.
            host="0.0.0.0",
            env={"LCO_TURN_SECRET": coturn.secret.decode()},
            log=log,
        )
        try:
            yield TurnLessonServer(
                f"http://127.0.0.1:{port}",
                f"http://{host_address}:{port}",
                port,
                secret.encode(),
                log,
            )
        finally:
            stop_server(process)
            # Whatever else the server logged, never the secret it shares with coturn.
            assert coturn.secret.decode() not in log.read_text(errors="replace")


def school_firewall(tcp_ports: tuple[int, ...] | None) -> str:
    """nftables rules of a school network: UDP out is dropped (counted); with
    ``tcp_ports``, so is TCP to any other port."""
    tcp = ""
    if tcp_ports:
        ports = ", ".join(map(str, tcp_ports))
        tcp = f'meta l4proto tcp tcp dport != {{ {ports} }} counter name "tcp_dropped" drop'
    return f"""
table inet school {{
    counter udp_dropped {{}}
    counter tcp_dropped {{}}
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "lo" accept
        meta l4proto udp counter name "udp_dropped" drop
        {tcp}
    }}
}}
"""


@contextmanager
def school_browser(
    playwright: Playwright,
    coturn: Coturn,
    origin: str,
    tcp_ports: tuple[int, ...] | None,
    *,
    trust_ca: bool = True,
) -> Iterator[tuple[NestedNamespace, Browser]]:
    """Chromium in a school namespace behind ``school_firewall(tcp_ports)``, trusting
    the test CA (as browsers trust the public CAs) unless told not to."""
    with NestedNamespace() as school, tempfile.TemporaryDirectory(prefix="lco-school-") as tmp:
        school.firewall(school_firewall(tcp_ports))
        home = Path(tmp) / "home"
        home.mkdir()
        if trust_ca:
            trust_ca_for_chromium(home, coturn.ca.ca)
        launcher = school.launcher(CHROMIUM, Path(tmp) / "chromium")
        browser = playwright.chromium.launch(
            executable_path=str(launcher),
            headless=True,
            # The page is served from the server's veth address, not 127.0.0.1:
            # only this flag makes it a secure context (camera, microphone).
            args=[*CHROMIUM_FLAGS, f"--unsafely-treat-insecure-origin-as-secure={origin}"],
            env={**os.environ, "HOME": str(home)},
        )
        try:
            yield school, browser
        finally:
            browser.close()


# Gather relay candidates only, from one TURN URL; the candidates and errors seen.
GATHER_RELAY = """async ([url, username, credential]) => {
  const pc = new RTCPeerConnection(
    {iceServers: [{urls: [url], username, credential}], iceTransportPolicy: "relay"});
  pc.createDataChannel("probe");
  const seen = {candidates: [], errors: []};
  const gathered = new Promise((resolve) => {
    pc.onicecandidate = (e) => e.candidate ? seen.candidates.push(e.candidate.type) : resolve();
  });
  pc.onicecandidateerror = (e) => seen.errors.push(e.errorCode);
  await pc.setLocalDescription(await pc.createOffer());
  await gathered;
  pc.close();
  return seen;
}"""


def join(browser: Browser, link: str, name: str, role: Role) -> Participant:
    context = browser.new_context()
    page = context.new_page()
    participant = Participant(name, role, context, page, link)
    page.on("pageerror", lambda error: participant.errors.append(str(error)))
    page.goto(link)
    join_button = page.get_by_role("button", name="Join")
    expect(join_button).to_be_enabled(timeout=TIMEOUT_MS)
    join_button.click()
    page.wait_for_function("() => window.lco.state().connected", timeout=TIMEOUT_MS)
    return participant


def selected_pair(page: Page, which: str) -> dict[str, Any]:
    """The succeeded, selected candidate pair of ``which`` connection, once there is one."""
    pair: dict[str, Any] = wait_until(page, SELECTED_PAIR, which, timeout_ms=TIMEOUT_MS)
    return pair


def wait_decoding(viewer: Page, publisher_id: str) -> None:
    """More frames of ``publisher_id``'s camera get decoded from now on."""
    before: int = viewer.evaluate(DECODED, publisher_id)
    wait_until(viewer, DECODED_ABOVE, [publisher_id, before], timeout_ms=TIMEOUT_MS)


def relayed_peer_connections(server: TurnLessonServer) -> int:
    metrics = httpx.get(f"{server.url}/metrics.json", timeout=5).json()
    count: int = metrics["sfu"]["relayed_peer_connections"]
    return count


def print_first_frame(page: Page, how: str) -> None:
    """Say how long the teacher's first frame took (pytest -s shows it)."""
    metrics = page.evaluate("() => window.lco.metrics")
    first, welcome = metrics["firstTeacherFrameMs"], metrics["welcomeMs"]
    print(
        f"\n{how}: first decoded teacher frame {first:.0f} ms after opening the link, "
        f"{first - welcome:.0f} ms after welcome"
    )


def turn_credential_of(servers: list[dict[str, Any]]) -> dict[str, Any]:
    (server,) = [s for s in servers if s.get("username")]
    return server


def leave(participant: Participant, seen_by: Participant) -> None:
    """Leave (the Leave button) and close the page; return once ``seen_by`` was told
    (the server has closed its media). A page closed without leaving keeps its seat
    for the grace period."""
    pid = participant.id
    participant.page.get_by_role("button", name="Leave", exact=True).click()
    participant.context.close()
    seen_by.page.wait_for_function(
        "(id) => !window.lco.state().participants.some((p) => p.id === id)",
        arg=pid,
        timeout=TIMEOUT_MS,
    )


@pytest.fixture
def teacher(browser: Browser, turn_lesson_server: TurnLessonServer) -> Iterator[Participant]:
    participant = join(
        browser, turn_lesson_server.link("Ms Rivera", Role.TEACHER), "Ms Rivera", Role.TEACHER
    )
    try:
        yield participant
    finally:
        participant.context.close()


def test_udp_blocked_the_student_relays_over_turn_tcp(
    playwright: Playwright,
    coturn: Coturn,
    turn_lesson_server: TurnLessonServer,
    teacher: Participant,
) -> None:
    server = turn_lesson_server
    relayed_before = relayed_peer_connections(server)
    with school_browser(playwright, coturn, server.school_url, tcp_ports=None) as (school, b):
        student = join(b, server.link("Ana", Role.STUDENT, school=True), "Ana", Role.STUDENT)
        wait_video_plays(student, teacher.id)
        pair = selected_pair(student.page, "subscriber")
        assert pair["local"]["type"] == "relay"
        assert pair["local"]["relayProtocol"] == "tcp"
        assert pair["local"]["url"] == coturn.urls[1]
        assert int(coturn.setting("min-port")) <= pair["local"]["port"]
        assert pair["local"]["port"] <= int(coturn.setting("max-port"))
        # The student did try UDP (to coturn's UDP port, to the SFU): all dropped.
        assert school.counter("inet", "school", "udp_dropped") > 0
        # The SFU sees the student's connection come from the relay.
        assert relayed_peer_connections(server) >= relayed_before + 1
        print_first_frame(student.page, "TURN/TCP")
        assert not student.errors
        leave(student, teacher)


def test_only_443_open_the_student_relays_over_turn_tls_and_renews_its_credentials(
    playwright: Playwright,
    coturn: Coturn,
    turn_lesson_server: TurnLessonServer,
    teacher: Participant,
) -> None:
    server = turn_lesson_server
    open_ports = (coturn.tls_port, server.port)  # TURN over TLS, and the lesson's web port
    with school_browser(playwright, coturn, server.school_url, open_ports) as (school, b):
        student = join(b, server.link("Ben", Role.STUDENT, school=True), "Ben", Role.STUDENT)
        page = student.page
        welcome = turn_credential_of(page.evaluate("() => window.lco.iceServers().page"))
        first_expiry = int(welcome["username"].split(":")[0])

        wait_video_plays(student, teacher.id)
        pair = selected_pair(page, "subscriber")
        assert (pair["local"]["type"], pair["local"]["relayProtocol"]) == ("relay", "tls"), pair
        relayed_watching = relayed_peer_connections(server)
        assert pair["local"]["url"] == coturn.urls[2]
        assert school.counter("inet", "school", "tcp_dropped") > 0  # TURN/TCP on 3478 tried
        assert school.counter("inet", "school", "udp_dropped") > 0
        print_first_frame(page, "TURN/TLS")

        # The renewal arrives before the first credential expires, and the open
        # connection holds it.
        page.wait_for_function(
            "() => window.lco.metrics.iceServerRenewals.length > 0",
            timeout=TURN_TTL * 1000,
            polling=200,
        )
        renewed_at_ms: float = page.evaluate("() => window.lco.metrics.iceServerRenewals[0]")
        assert renewed_at_ms / 1000 < first_expiry
        held = page.evaluate("() => window.lco.iceServers()")
        renewed = turn_credential_of(held["subscribe"])
        assert renewed["username"] != welcome["username"]
        assert int(renewed["username"].split(":")[0]) > first_expiry
        print(
            f"renewal {first_expiry - renewed_at_ms / 1000:.1f} s before the first "
            f"credential expired (lifetime {TURN_TTL} s)"
        )

        # The first credential expires (there is no event for a clock passing a time,
        # so poll it); media keeps flowing on the relay it allocated.
        page.wait_for_function(
            "(t) => Date.now() / 1000 > t",
            arg=first_expiry + 1,
            timeout=(TURN_TTL + 5) * 1000,
            polling=250,
        )
        wait_decoding(page, teacher.id)

        # A connection opened only now (publishing, once allowed) allocates with the
        # renewed credential: with the expired one coturn would refuse it.
        teacher.page.get_by_role("button", name="Allow to publish: Ben").click()
        wait_video_plays(teacher, student.id)
        pair = selected_pair(page, "publisher")
        assert (pair["local"]["type"], pair["local"]["relayProtocol"]) == ("relay", "tls"), pair
        publish = turn_credential_of(page.evaluate("() => window.lco.iceServers().publish"))
        assert int(publish["username"].split(":")[0]) > first_expiry, publish["username"]
        relayed = relayed_peer_connections(server)
        assert relayed >= relayed_watching + 1, (relayed, relayed_watching)
        assert not student.errors, student.errors
        leave(student, teacher)
    log = server.log.read_text(errors="replace")
    for credential in (welcome, renewed, publish):
        assert credential["credential"] not in log


def test_turn_over_tls_needs_a_certificate_the_browser_trusts(
    playwright: Playwright, coturn: Coturn, turn_lesson_server: TurnLessonServer
) -> None:
    """Chromium checks a turns: server's certificate as it checks a web site's; the tests
    make it trust their own CA, nothing is switched off."""
    credential = turn_credential(coturn.secret, "probe", time.time(), 600)
    probe = [coturn.urls[2], credential.username, credential.password]
    origin = turn_lesson_server.school_url
    for trusted in (False, True):
        with school_browser(playwright, coturn, origin, (coturn.tls_port,), trust_ca=trusted) as (
            _,
            browser,
        ):
            page = browser.new_page()
            seen = page.evaluate(GATHER_RELAY, probe)
        if trusted:
            assert seen["candidates"] == ["relay"], seen
        else:
            assert seen["candidates"] == [] and seen["errors"] == [701], seen
