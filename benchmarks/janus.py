"""Baseline (c): Janus VideoRoom, a C SFU, driven through its HTTP API by the same load.

The orchestrator writes a configuration of its own into a temporary directory
(``janus.jcfg`` with ``event_loops = 2``, only the VideoRoom plugin and the HTTP
transport, bound to the namespace address, no STUN, no event handlers or
loggers) and starts ``janus -F DIR -C DIR/janus.jcfg`` so that nothing under
``/etc/janus`` is read. libnice skips loopback, so Janus only works inside the
network namespace made by ``scripts/netns-run`` (address ``LCO_TEST_HOST_ADDRESS``).

The load processes use :class:`JanusSession` (one session and handle per
participant, events by long poll): publishers ``join`` room 1234 as publishers
and ``publish`` an aiortc offer carrying the pre-encoded tracks; subscribers
``join`` as subscribers with one stream per publisher feed (multistream), answer
Janus's offer and ``start``. Janus holds a new subscriber until a keyframe and
sends the publisher a PLI; the pre-encoded publisher answers by jumping to its
next keyframe.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from media.client import ReceivedTrack
from media.peers import configuration

JANUS_BINARY = "/usr/bin/janus"
LIB_DIR = Path("/usr/lib/x86_64-linux-gnu/janus")
ROOM = 1234


def available() -> str | None:
    """Why Janus cannot run here, or ``None`` if it can."""
    if shutil.which("janus") is None and not Path(JANUS_BINARY).exists():
        return "janus is not installed (apt-get install -y janus)"
    return None


def _others(folder: Path, keep: str) -> str:
    names = sorted(p.name for p in folder.glob("*.so") if p.name != keep) if folder.is_dir() else []
    return ",".join(names)


def write_config(directory: Path, host: str, port: int, rtp_ports: str = "40000-49999") -> Path:
    """Write Janus's configuration for the benchmark into ``directory``; returns janus.jcfg."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "janus.jcfg").write_text(
        f"""general: {{
    configs_folder = "{directory}"
    plugins_folder = "{LIB_DIR / "plugins"}"
    transports_folder = "{LIB_DIR / "transports"}"
    events_folder = "{LIB_DIR / "events"}"
    loggers_folder = "{LIB_DIR / "loggers"}"
    debug_level = 3
    debug_timestamps = true
    # Fair for a 2-core machine: two shared event loops, not one thread per handle.
    event_loops = 2
    session_timeout = 120
    server_name = "lco-bench-janus"
}}
certificates: {{
}}
media: {{
    rtp_port_range = "{rtp_ports}"
    # Janus 1.x sizes each handle's retransmission buffer from the RTT, never below
    # this many milliseconds (``nack_queue`` was the 0.x name: 1.x ignores it, so the
    # earlier runs had Janus's default). 1 s is far more than the RTTs measured here.
    min_nack_queue = 1000
}}
nat: {{
    nice_debug = false
    full_trickle = false
    ice_lite = false
    ice_tcp = false
    ice_enforce_list = "{host}"
}}
plugins: {{
    disable = "{_others(LIB_DIR / "plugins", "libjanus_videoroom.so")}"
}}
transports: {{
    disable = "{_others(LIB_DIR / "transports", "libjanus_http.so")}"
}}
loggers: {{
    disable = "{_others(LIB_DIR / "loggers", "")}"
}}
events: {{
    broadcast = false
    disable = "{_others(LIB_DIR / "events", "")}"
}}
"""
    )
    (directory / "janus.transport.http.jcfg").write_text(
        f"""general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    port = {port}
    ip = "{host}"
    https = false
}}
admin: {{
    admin_http = false
    admin_https = false
}}
cors: {{
}}
"""
    )
    (directory / "janus.plugin.videoroom.jcfg").write_text(
        f"""general: {{
    string_ids = false
}}
room-{ROOM}: {{
    description = "lco bench"
    publishers = 32
    bitrate = 0
    fir_freq = 0
    videocodec = "vp8"
    audiocodec = "opus"
    notify_joining = false
    record = false
}}
"""
    )
    return directory / "janus.jcfg"


def argv(directory: Path, log: Path) -> list[str]:
    """The command line that starts Janus with only our configuration, logging to ``log``."""
    config = str(directory / "janus.jcfg")
    return [JANUS_BINARY, "-F", str(directory), "-C", config, "-N", "-o", "-L", str(log)]


class JanusError(RuntimeError):
    """Janus answered with an error."""


class JanusSession:
    """One Janus session with one VideoRoom handle, events by long poll."""

    def __init__(self, base: str, client: httpx.AsyncClient) -> None:
        self.base = base.rstrip("/")
        self.client = client
        self.session: int | None = None
        self.handle: int | None = None
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._poller: asyncio.Task[None] | None = None
        self.events: list[dict[str, Any]] = []

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {"transaction": secrets.token_hex(8), **body}
        response = await self.client.post(self.base + path, json=body, timeout=10.0)
        data: dict[str, Any] = response.json()
        if data.get("janus") == "error":
            raise JanusError(str(data.get("error")))
        return data

    async def open(self) -> None:
        """Create the session, attach the VideoRoom plugin, start polling events."""
        created = await self._post("", {"janus": "create"})
        self.session = int(created["data"]["id"])
        attached = await self._post(
            f"/{self.session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"}
        )
        self.handle = int(attached["data"]["id"])
        self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            try:
                response = await self.client.get(
                    f"{self.base}/{self.session}", params={"maxev": 10}, timeout=40.0
                )
                data = response.json()
            except (httpx.HTTPError, ValueError):
                await asyncio.sleep(0.2)
                continue
            for event in data if isinstance(data, list) else [data]:
                waiter = self._waiters.pop(str(event.get("transaction")), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
                else:
                    self.events.append(event)

    async def message(
        self, body: dict[str, Any], jsep: dict[str, Any] | None = None, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Send a plugin request; return its (possibly asynchronous) event."""
        transaction = secrets.token_hex(8)
        request: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            request["jsep"] = jsep
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[transaction] = future
        response = await self.client.post(
            f"{self.base}/{self.session}/{self.handle}", json=request, timeout=10.0
        )
        data: dict[str, Any] = response.json()
        if data.get("janus") == "success":
            self._waiters.pop(transaction, None)
            return data
        if data.get("janus") == "error":
            self._waiters.pop(transaction, None)
            raise JanusError(str(data.get("error")))
        async with asyncio.timeout(timeout):
            event = await future
        plugin = event.get("plugindata", {}).get("data", {})
        if "error" in plugin:
            raise JanusError(str(plugin["error"]))
        return event

    async def trickle_done(self) -> None:
        """Our candidates were all in the SDP."""
        await self._post(
            f"/{self.session}/{self.handle}", {"janus": "trickle", "candidate": {"completed": True}}
        )

    async def close(self) -> None:
        """Destroy the session and stop polling."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
        if self.session is not None:
            with contextlib.suppress(Exception):
                await self._post(f"/{self.session}", {"janus": "destroy"})


class JanusParticipant:
    """A publisher or subscriber of Janus VideoRoom with the attributes the load reads
    from our own participants (``media.client.LessonClient``)."""

    def __init__(self, base: str, name: str, http: Any) -> None:
        self.name = name
        self.session = JanusSession(base, http)
        self.participant_id: str | None = None
        self.received: dict[str, ReceivedTrack] = {}
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc: RTCPeerConnection | None = None
        self.mid_feed: dict[str, str] = {}
        self._consumers: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        """Create the session and attach the VideoRoom plugin."""
        await self.session.open()

    async def publish(self, tracks: list[tuple[Any, Any]]) -> dict[str, Any]:
        """Join as a publisher and publish ``tracks``; returns an answer like our server's."""
        joined = await self.session.message(
            {"request": "join", "ptype": "publisher", "room": ROOM, "display": self.name}
        )
        self.participant_id = str(joined["plugindata"]["data"]["id"])
        pc = RTCPeerConnection(configuration([]))
        self.publish_pc = pc
        for track, _ in tracks:
            pc.addTransceiver(track, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        reply = await self.session.message(
            {"request": "publish"}, jsep={"type": "offer", "sdp": pc.localDescription.sdp}
        )
        jsep = reply.get("jsep")
        if not jsep:
            return {"type": "error", "message": f"no answer from Janus: {reply}"}
        await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], "answer"))
        return {"type": "publish_answer", "sdp": jsep["sdp"]}

    async def subscribe(self, publishers: int, timeout: float, exclude: str | None = None) -> None:
        """Subscribe to every publisher's streams (but ``exclude``'s) once ``publishers``
        of them are in the room."""
        async with asyncio.timeout(timeout):
            while True:
                listed = await self.session.message({"request": "listparticipants", "room": ROOM})
                feeds = [
                    p["id"]
                    for p in listed["plugindata"]["data"].get("participants", [])
                    if p.get("publisher") and str(p["id"]) != exclude
                ]
                if len(feeds) >= publishers:
                    break
                await asyncio.sleep(0.1)
        attached = await self.session.message(
            {
                "request": "join",
                "ptype": "subscriber",
                "room": ROOM,
                "streams": [{"feed": feed} for feed in feeds],
            }
        )
        for stream in attached["plugindata"]["data"].get("streams", []):
            self.mid_feed[str(stream.get("mid"))] = str(stream.get("feed_id"))
        pc = RTCPeerConnection(configuration([]))
        self.subscribe_pc = pc
        pc.on("track", self._on_track)
        await pc.setRemoteDescription(RTCSessionDescription(attached["jsep"]["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.session.message(
            {"request": "start"}, jsep={"type": "answer", "sdp": pc.localDescription.sdp}
        )

    def _on_track(self, track: Any) -> None:
        assert self.subscribe_pc is not None
        mid = next(
            (t.mid for t in self.subscribe_pc.getTransceivers() if t.receiver.track is track),
            None,
        )
        feed = self.mid_feed.get(str(mid), "?")
        received = ReceivedTrack(f"{feed}/{mid}", feed, track.kind, "janus")
        self.received[received.track_id] = received
        self._consumers.append(asyncio.create_task(_consume(track, received)))

    def mid_owners(self) -> dict[str, str]:
        """{mid: publisher feed} of the subscribe connection."""
        return dict(self.mid_feed)

    async def close(self) -> None:
        """Close both connections and the session."""
        for pc in (self.publish_pc, self.subscribe_pc):
            if pc is not None:
                await pc.close()
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        await self.session.close()


async def _consume(track: Any, received: ReceivedTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
            received.frames += 1
            if received.first_frame_at is None:
                received.first_frame_at = time.monotonic()
