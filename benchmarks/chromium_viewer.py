"""A headless Chromium page as the viewer whose link drops (``--workload downlink
--viewer browser``).

The page joins by link as a student (:class:`benchmarks.browsers.BrowserStudents`)
and a recorder installed in it notes every frame of the teacher's camera that its
tile ``<video>`` shows (``requestVideoFrameCallback``: the frame's presentation time,
how many frames the element presented so far, its size) and every change of the
level the server says it receives (``receive_quality``, which the page writes into
``body[data-receive-level]``). Python reads what the recorder noted every
:data:`POLL` seconds into a :class:`media.client.ReceivedTrack`, the same record an
aiortc viewer keeps, so that the round measures both viewers with the same code.
Every 40 ms the recorder also reads the frames the page decoded (``getStats``) with
Chromium's own counters of that video (PLIs, NACKs, losses, freezes): a check on
the frames shown (Chromium decodes frames it never shows when they come in a burst)
and what the server heard from it, in each round's results.

Page times are ``performance.now()``; they become this process's ``time.monotonic()``
through an offset measured when the recorder starts (the round trip to the page that
measures it is a few milliseconds, and both clocks are the system's monotonic one).

The page's subscribe connection may receive on any of its ICE candidates (one per
address of the namespace) and Chromium moves to another pair of them when it likes:
all of them are shaped together, and the round notes which port was in use and how
often the pair changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

from media.client import ReceivedTrack
from signaling.permissions import Role

from .browsers import BrowserStudents
from .downlink import DOWN_TIMEOUT, SMALL, Lesson

POLL = 0.1  # seconds between two reads of the page's recorder
FIRST_FRAME_TIMEOUT = 30.0

# Installed once per page with the publisher's id: follows the tile of its camera
# (looked up again every 200 ms, should the tile's element change), the level, and
# every 40 ms the frames the page decoded (getStats, ``read()``), a check on the
# frames shown, with Chromium's own counters of that video (what it asked for, lost
# and froze).
RECORDER = """(pid) => {
  if (window.__lcoDownlink) return;
  const rec = { frames: [], levels: [], decoded: [], video: null, generation: 0 };
  const selector =
    `#stage figure.tile[data-participant-id="${CSS.escape(pid)}"][data-source="camera"] video`;
  const follow = (video, generation) => {
    const frame = (now, m) => {
      if (rec.video !== video) return;
      rec.frames.push([m.presentationTime, m.presentedFrames, m.width, m.height, generation]);
      video.requestVideoFrameCallback(frame);
    };
    video.requestVideoFrameCallback(frame);
  };
  const find = () => {
    const video = document.querySelector(selector);
    if (video && video !== rec.video) {
      rec.video = video;
      rec.generation += 1;
      follow(video, rec.generation);
    }
  };
  find();
  rec.finder = setInterval(find, 200);
  let mid = null; // of the camera's inbound-rtp on the subscribe connection
  // [when, frames decoded, width, height, Chromium's counters] now, or null.
  rec.read = async () => {
    const at = performance.now();
    if (mid === null) {
      const s = (await window.lco.inboundStats()).find(
        (s) => s.participant_id === pid && s.source === "camera");
      if (!s) return null;
      mid = s.mid;
    }
    let s = null;
    (await window.lco.page.subscriber.pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.mid === mid) s = r;
    });
    if (!s) {
      mid = null; // another connection: look the camera up again
      return null;
    }
    return [at, s.framesDecoded ?? 0, s.frameWidth ?? 0, s.frameHeight ?? 0, {
      plis: s.pliCount, nacks: s.nackCount, firs: s.firCount, lost: s.packetsLost,
      keyframes: s.keyFramesDecoded, dropped: s.framesDropped, freezes: s.freezeCount,
      frozen_s: s.totalFreezesDuration,
    }];
  };
  let last = -1;
  let busy = false;
  rec.poller = setInterval(async () => {
    if (busy) return;
    busy = true;
    try {
      const now = await rec.read();
      if (now && now[1] !== last) {
        last = now[1];
        rec.decoded.push(now);
      }
    } catch (error) {
      // the connection is being replaced: the next poll reads the new one
    } finally {
      busy = false;
    }
  }, 40);
  new MutationObserver(() => {
    rec.levels.push([performance.now(), document.body.dataset.receiveLevel]);
  }).observe(document.body, { attributes: true, attributeFilter: ["data-receive-level"] });
  rec.take = () => {
    const out = [rec.frames, rec.levels, rec.decoded];
    rec.frames = [];
    rec.levels = [];
    rec.decoded = [];
    return out;
  };
  window.__lcoDownlink = rec;
}"""

# The subscribe connection's local UDP candidates, the one of the selected pair, and
# how often the selected pair changed so far.
CANDIDATES = """async () => {
  const stats = await window.lco.page.subscriber.pc.getStats();
  let transport = null;
  const ports = [];
  stats.forEach((s) => {
    if (s.type === "transport") transport = s;
    if (s.type === "local-candidate" && s.protocol === "udp") ports.push(s.port);
  });
  let pair = transport && stats.get(transport.selectedCandidatePairId);
  if (!pair) {
    stats.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
    });
  }
  const local = pair && stats.get(pair.localCandidateId);
  return {
    selected: local ? local.port : null,
    ports,
    changes: transport ? transport.selectedCandidatePairChanges ?? null : null,
  };
}"""


# What the page's answer agreed to for video on the subscribe connection: the RTCP
# feedback (transport-cc, goog-remb, nack, ccm fir...) and the header extensions,
# so that a results file says what the server could hear from Chromium.
NEGOTIATED = """() => {
  const sdp = window.lco.page.subscriber.pc.localDescription?.sdp ?? "";
  const video = sdp.split(/\\r?\\nm=/).find((section) => section.startsWith("video")) ?? "";
  const feedback = new Set();
  const extensions = new Set();
  for (const line of video.split(/\\r?\\n/)) {
    let found = line.match(/^a=rtcp-fb:\\S+ (.+)$/);
    if (found) feedback.add(found[1].trim());
    found = line.match(/^a=extmap:\\S+ (\\S+)/);
    if (found) extensions.add(found[1]);
  }
  return { rtcp_fb: [...feedback].sort(), extmap: [...extensions].sort() };
}"""


class ChromiumViewer:
    """One page of ``browsers`` as the viewer on the slow link (see the module)."""

    kind = "browser"

    def __init__(self, browsers: BrowserStudents) -> None:
        self.browsers = browsers
        self.page: Any = None
        self.track: ReceivedTrack | None = None
        self.offset = 0.0  # monotonic seconds = page milliseconds / 1000 + offset
        self.levels: list[tuple[float, str]] = []  # (monotonic, level) as the page noted
        self._levels_seen = asyncio.Event()
        self._watch_since: float | None = None
        self._pump: asyncio.Task[None] | None = None
        self._generation = 0
        self._presented = 0
        self._first_error = 0
        self._own_errors: list[str] = []
        self._candidates: dict[str, Any] = {}
        self._baseline: list[Any] | None = None  # the recorder's read() before the shaping
        # (monotonic, frames decoded so far, width, height, Chromium's counters) when
        # the count changed.
        self.decoded: list[tuple[float, int, int, int, dict[str, float | None]]] = []

    async def join(self, lesson: Lesson, name: str, role: Role) -> None:
        self._first_error = len(self.browsers.errors)
        self.page = await self.browsers.join(lesson.link(name, role), name)

    async def video(self, publisher_id: str) -> ReceivedTrack:
        await self.page.evaluate(RECORDER, publisher_id)
        self.offset = await self._clock_offset()
        self.track = ReceivedTrack(f"{publisher_id}/camera", publisher_id, "video", "camera")
        self._pump = asyncio.create_task(self._read_page())
        async with asyncio.timeout(FIRST_FRAME_TIMEOUT):
            await self.track.first_frame.wait()
        return self.track

    async def ports(self) -> list[int]:
        # Chromium's counters as the shaping begins: what the round's are counted from.
        self._baseline = await self.page.evaluate("() => window.__lcoDownlink.read()")
        found = await self.page.evaluate(CANDIDATES)
        self._candidates = found
        ports = sorted(set(found["ports"]))
        if not ports:
            raise RuntimeError("the page's subscribe connection has no local UDP candidate")
        return ports

    def watch_level(self) -> None:
        self._watch_since = time.monotonic()

    async def lowered_at(self) -> float | None:
        since = self._watch_since if self._watch_since is not None else time.monotonic()
        deadline = since + DOWN_TIMEOUT
        while True:
            told = next((t for t, level in self.levels if t >= since and level != "high"), None)
            if told is not None or time.monotonic() >= deadline:
                return told
            self._levels_seen.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._levels_seen.wait(), deadline - time.monotonic())

    async def details(self, shaped_at: float, stall_until: float) -> dict[str, Any]:
        """What the page agreed to for video (RTCP feedback, header extensions); the
        ports shaped, the one in use then and at the end, how often Chromium changed
        its selected candidate pair meanwhile; and the figures again from the frames
        the page decoded (getStats, read every 40 ms) rather than those its tile
        showed, with how many of each from the shaping to ``stall_until`` and how much
        Chromium's own counters of the video grew then (PLIs and NACKs it sent, packets
        lost, key frames decoded, frames dropped, freezes and their length)."""
        assert self.track is not None
        before = self._candidates
        after = await self.page.evaluate(CANDIDATES)
        changes = None
        if before.get("changes") is not None and after.get("changes") is not None:
            changes = after["changes"] - before["changes"]
        window = [d for d in self.decoded if shaped_at <= d[0] <= stall_until]
        times = [t for t, *_ in window]
        small_at = next(
            (t for t, _, w, h, _ in self.decoded if t >= shaped_at and (w, h) == SMALL), None
        )
        # Frames decoded and frames shown in the same window as the stall, and what
        # Chromium counted meanwhile.
        decoded = counters = None
        if window and self._baseline is not None:
            decoded = window[-1][1] - self._baseline[1]
            counters = _differences(self._baseline[4], window[-1][4])
        shown = sum(1 for t in self.track.arrivals if shaped_at <= t <= stall_until)
        return {
            "negotiated": await self.page.evaluate(NEGOTIATED),
            "shaped_ports": sorted(set(before.get("ports", []))),
            "selected_port": before.get("selected"),
            "selected_port_after": after.get("selected"),
            "pair_changes": changes,
            "decoded_down_s": None if small_at is None else round(small_at - shaped_at, 3),
            "decoded_stall_s": round(
                max((b - a for a, b in itertools.pairwise(times)), default=0.0), 3
            ),
            "frames_decoded": decoded,
            "frames_shown": shown,
            "chromium_counters": counters,
        }

    @property
    def errors(self) -> list[str]:
        return [*self.browsers.errors[self._first_error :], *self._own_errors]

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self.page is not None:
            with contextlib.suppress(Exception):
                await self.page.context.close()

    async def _clock_offset(self) -> float:
        """``time.monotonic()`` minus the page's ``performance.now()`` (seconds), from
        the quickest of a few round trips."""
        best: tuple[float, float] | None = None
        for _ in range(5):
            before = time.monotonic()
            page_ms = await self.page.evaluate("() => performance.now()")
            after = time.monotonic()
            if best is None or after - before < best[0]:
                best = (after - before, (before + after) / 2 - page_ms / 1000)
        assert best is not None
        return best[1]

    async def _read_page(self) -> None:
        """Every :data:`POLL` seconds, what the recorder noted into the track."""
        while True:
            try:
                taken = await self.page.evaluate("() => window.__lcoDownlink.take()")
            except Exception as exc:
                self._own_errors.append(f"recorder: {type(exc).__name__}: {exc}")
                return
            self._note(*taken)
            await asyncio.sleep(POLL)

    def _note(
        self, frames: list[list[Any]], levels: list[list[Any]], decoded: list[list[Any]]
    ) -> None:
        track = self.track
        assert track is not None
        for page_ms, presented, width, height, generation in frames:
            at = page_ms / 1000 + self.offset
            if generation != self._generation:  # another element: counts anew
                self._generation, count = generation, 1
            else:
                count = max(1, presented - self._presented)
            self._presented = presented
            track.frames += count
            track.arrivals.append(at)
            if track.first_frame_at is None:
                track.first_frame_at = at
                track.first_frame.set()
            if (width, height) != (track.width, track.height):
                track.width, track.height = width, height
                track.sizes.append((at, width, height))
        if frames:
            track.progress.set()
        for page_ms, level in levels:
            self.levels.append((page_ms / 1000 + self.offset, str(level)))
        if levels:
            self._levels_seen.set()
        for page_ms, count, width, height, counters in decoded:
            at = page_ms / 1000 + self.offset
            self.decoded.append((at, count, width, height, counters))


def _differences(
    before: dict[str, float | None], after: dict[str, float | None]
) -> dict[str, float | None]:
    """How much each of Chromium's counters grew (None where it has none)."""
    out: dict[str, float | None] = {}
    for key, value in after.items():
        start = before.get(key)
        out[key] = None if value is None or start is None else round(value - start, 3)
    return out
