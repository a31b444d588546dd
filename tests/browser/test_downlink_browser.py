"""A Chromium viewer on a slow link steps down to the small layer and climbs back.

One round of ``lco bench run --workload downlink --viewer browser``
(``benchmarks/downlink.py``, ``benchmarks/chromium_viewer.py``): an aiortc teacher
publishes simulcast (about 150 kbit/s, 500 kbit/s and 1.2 Mbit/s, with a voice); a
student's Chromium page and an aiortc classroom decode it. The page's downlink is
shaped with ``tc`` to 300 kbit/s: the server steps it down to the small layer while
the classroom keeps the large one, and when the shaping is lifted the page climbs
back. Real students use browsers, which tell the server more than an aiortc peer
does; how fast they follow their link is measured by the benchmark, the waits here
only bound a hang.
"""

from __future__ import annotations

import pytest

from benchmarks.browsers import BrowserStudents
from benchmarks.chromium_viewer import ChromiumViewer
from benchmarks.downlink import LARGE, SMALL, Lesson, Shaper, measure_round
from benchmarks.processes import decoding_at
from signaling.permissions import Role
from signaling.tokens import mint_token

from .conftest import Server

pytestmark = pytest.mark.browser


@pytest.mark.timeout(110)
async def test_a_chromium_viewer_on_a_slow_link_steps_down_and_climbs_back(
    server: Server, host_address: str
) -> None:
    why = Shaper.available()
    if why:
        pytest.skip(why)

    def token(name: str, role: Role) -> str:
        return mint_token(server.secret, lesson="slow-link", name=name, role=role)

    lesson = Lesson(server.url.replace("http://", "ws://", 1) + "/ws", token)
    browsers = BrowserStudents()
    # The aiortc teacher and classroom announce the veth address too: the server's
    # only one, the one Chromium can use.
    with decoding_at(host_address):
        try:
            await browsers.launch()
            # Long enough for the first probe (5 s after the step down).
            figures = await measure_round(lesson, Shaper(), ChromiumViewer(browsers), stay=8.0)
        finally:
            await browsers.close()
    print(
        f"\nChromium at 300 kbit/s: down to {SMALL[0]}x{SMALL[1]} in {figures['down_s']} s "
        f"(told in {figures['decided_s']} s); longest gap between frames shown "
        f"{figures['stall_s']:.2f} s from {figures['stall_from_s']} s (between frames "
        f"decoded {figures['decoded_stall_s']} s), the other viewer's "
        f"{figures['other_stall_s']:.2f} s; the longest while it stayed 8 s "
        f"{figures['stay_stall_s']:.2f} s; back up in {figures['up_s']} s; sizes "
        f"{figures['sizes']}; ports {figures['shaped_ports']}, selected "
        f"{figures['selected_port']} then {figures['selected_port_after']}, "
        f"{figures['pair_changes']} pair change(s); {figures['frames_shown']} frames shown "
        f"of {figures['frames_decoded']} decoded; Chromium counted "
        f"{figures['chromium_counters']}; negotiated {figures['negotiated']}"
    )
    assert figures["down_s"] is not None, "the Chromium viewer never got the small layer"
    assert figures["other_large_s"] is not None, "the other viewer was held down"
    assert figures["up_s"] is not None, "the Chromium viewer never climbed back"
    assert [w for _, w, _ in figures["sizes"]][-1] == LARGE[0]
    assert not figures["errors"]
