"""A viewer on a slow link steps down to the small layer and climbs back, by itself.

One round of ``lco bench run --workload downlink`` (``benchmarks/downlink.py``): the
teacher publishes simulcast (about 150 kbit/s, 500 kbit/s and 1.2 Mbit/s, with a
browser-like voice); two viewers decode it. One viewer's downlink is shaped with
``tc`` to 300 kbit/s (in the test namespace): the server sees what it loses (its
NACKs, its receiver reports) and steps it down to the small layer; the other keeps
the large one. When the shaping is lifted the first climbs back (the server probes
with padding before each step up). How fast, over five rounds on a quiet machine,
is in ``docs/benchmarks.md``; the waits here only bound a hang.
"""

from __future__ import annotations

import pytest

from benchmarks.downlink import LARGE, SMALL, Lesson, Shaper, measure_round
from signaling.permissions import Role

from .conftest import RunningServer

pytestmark = pytest.mark.usefixtures("decoding_clients")


@pytest.mark.timeout(240)
async def test_a_viewer_on_a_slow_link_steps_down_and_climbs_back(server: RunningServer) -> None:
    why = Shaper.available()
    if why:
        pytest.skip(why)

    def token(name: str, role: Role) -> str:
        return server.token(name, role, lesson="slow-link")

    # The stay on the slow link is the benchmark's to measure (its probes, every 5 to
    # 10 s); the lab shows what one does (test_simulcast_forward.py).
    figures = await measure_round(Lesson(server.ws, token), Shaper(), stay=0.0)
    print(
        f"\n300 kbit/s: down to {SMALL[0]}x{SMALL[1]} in {figures['down_s']} s (longest gap "
        f"between frames {figures['stall_s']:.2f} s); back up in {figures['up_s']} s; "
        f"sizes {figures['sizes']}"
    )
    assert figures["down_s"] is not None, "the slow viewer never got the small layer"
    assert figures["other_large_s"] is not None, "the other viewer was held down"
    assert figures["up_s"] is not None, "the slow viewer never climbed back"
    assert [w for _, w, _ in figures["sizes"]][-1] == LARGE[0]
    assert not figures["errors"]
