"""``lco publish``: a participant from Python that publishes and reports what it receives."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import websockets
from aiortc.mediastreams import MediaStreamTrack

from media import hooks
from media.client import LessonClient
from media.source import PulledSource, probe
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling import protocol as p


def websocket_url(base: str) -> str:
    """``http://host:port`` (or a ws URL) to the signalling socket's URL."""
    if base.startswith(("ws://", "wss://")):
        return base
    base = base.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/ws"
    return "ws://" + base.removeprefix("http://") + "/ws"


def _tracks(source: str) -> list[tuple[MediaStreamTrack, p.Source]]:
    if source == "none":
        return []
    return [(PatternVideoTrack(), "camera"), (ToneAudioTrack(), "microphone")]


async def _pull(source: str) -> PulledSource:
    """Open a file or URL; raises ``ConnectionError`` if it cannot be read at all."""
    try:
        found = await asyncio.to_thread(probe, source)
    except Exception as exc:
        raise ConnectionError(f"cannot read {source}: {exc}") from None
    pulled = PulledSource(source, found)
    pulled.start()
    return pulled


async def run_publish(
    url: str,
    token: str,
    *,
    source: str,
    duration: float | None,
    ice_hosts: list[str] | None,
) -> dict[str, Any]:
    """Join, publish ``source``, stay until ``duration`` or the server says bye."""
    hooks.install_counting_hooks()
    if ice_hosts:
        hooks.set_host_addresses(ice_hosts)
    # A dropped connection takes the seat back (same id, same media); what ends the
    # session for good is reported, and makes ``lco publish`` exit non-zero.
    client = LessonClient(websocket_url(url), token, reconnect=True)
    try:
        welcome = await client.connect()
    except (OSError, websockets.WebSocketException) as exc:
        await client.close()
        return {"error": str(exc) or type(exc).__name__, "errors": client.errors}
    result: dict[str, Any] = {"participant_id": welcome["participant_id"]}
    pulled: PulledSource | None = None
    try:
        video_codec = None
        if source in ("none", "test-pattern"):
            tracks = _tracks(source)
        else:
            try:
                pulled = await _pull(source)
            except ConnectionError as exc:
                result["error"] = str(exc)
                return result
            tracks = [
                (track, "camera" if track.kind == "video" else "microphone")
                for track in pulled.tracks()
            ]
            if pulled.video is not None and pulled.video.passthrough:
                # Sent as it is: offer only the source's codec.
                video_codec = (pulled.probe.video or "").upper()
            result["source"] = {
                "video": pulled.probe.video,
                "audio": pulled.probe.audio,
                "passthrough": [t.kind for t in pulled.tracks() if t.passthrough],
            }
        if tracks:
            reply = await client.publish(tracks, video_codec=video_codec)
            if reply["type"] == "error":
                result["error"] = reply["message"]
                return result
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.closed.wait(), duration)
        if client.failure is not None:
            result["error"] = client.failure
        elif client.bye is not None and client.bye.get("reason") != "left":
            result["error"] = f"the server ended the session: {client.bye.get('message')}"
        refused = [e for e in client.errors if e.get("request_type") is not None]
        if refused and "error" not in result:
            first = refused[0]
            result["error"] = f"the server refused {first['request_type']}: {first['message']}"
    except ConnectionError as exc:
        result["error"] = client.failure or str(exc)
    finally:
        result["received"] = [
            {
                "track_id": r.track_id,
                "from": r.participant_id,
                "kind": r.kind,
                "source": r.source,
                "frames": r.frames,
                "size": [r.width, r.height],
            }
            for r in client.received.values()
        ]
        result["errors"] = client.errors
        result["reconnects"] = client.reconnects
        result["resumes"] = client.resumes
        if pulled is not None:
            await pulled.stop()
            result["source"]["connections"] = pulled.connections
            result["source"]["sent"] = {t.kind: t.sent for t in pulled.tracks()}
        await client.close()
    return result
