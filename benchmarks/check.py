"""``python -m benchmarks check``: prove the replayed media is valid through the server.

Starts ``lco serve`` as a subprocess and, in this process, a publisher replaying
the pre-encoded media and one subscriber that really decodes (aiortc's decoders,
counted). The subscriber joins in the middle of a keyframe interval, so its first
frame needs the server to relay a keyframe request and the replay to jump to its
next keyframe; it then stays long enough to cross the loop boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from media import hooks
from media.client import LessonClient
from signaling.permissions import Role
from signaling.tokens import mint_token

from .encoded import PreEncodedTrack, load_audio, load_video
from .processes import REPO_ROOT, free_port


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # loopback only
            return bool(response.status == 200)
    except OSError:
        return False


async def check(variant: str, seconds: float, cache_dir: Path | None) -> dict[str, Any]:
    """Publish ``variant`` + Opus, decode it at one subscriber, report what arrived."""
    secret = secrets.token_urlsafe(48)
    port = free_port()
    data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"lco-bench-check-{port}"
    server = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
        *["--ice-host", "127.0.0.1", "--data-dir", str(data_dir), "--log-level", "warning"],
        cwd=REPO_ROOT,
        env={**os.environ, "LCO_SECRET": secret},
    )
    publisher: LessonClient | None = None
    subscriber: LessonClient | None = None
    try:
        hooks.install_counting_hooks()  # this process decodes for real
        decoded_before = hooks.COUNTERS.snapshot()["frames_decoded"]
        hooks.set_host_addresses(["127.0.0.1"])
        async with asyncio.timeout(20):
            while True:
                if server.returncode is not None:
                    raise RuntimeError("the server exited")
                if await asyncio.to_thread(_healthy, f"http://127.0.0.1:{port}/healthz"):
                    break
                await asyncio.sleep(0.1)
        url = f"ws://127.0.0.1:{port}/ws"
        key = secret.encode()
        publisher = LessonClient(url, mint_token(key, lesson="check", name="t", role=Role.TEACHER))
        await publisher.connect()
        stream = load_video(variant, cache_dir)
        video = PreEncodedTrack(stream)
        audio = PreEncodedTrack(load_audio(cache_dir))
        await publisher.publish([(video, "camera"), (audio, "microphone")])
        assert publisher.publish_pc is not None
        for transceiver in publisher.publish_pc.getTransceivers():
            if transceiver.sender.track is video:
                hooks.on_keyframe_request(transceiver.sender, video.request_keyframe)
        # Join between two periodic keyframes (1.65 intervals in).
        keyframe_interval = float(stream.info["keyframe_interval"])
        await asyncio.sleep(keyframe_interval * 1.65)
        subscriber = LessonClient(url, mint_token(key, lesson="check", name="s", role=Role.STUDENT))
        started = time.monotonic()
        await subscriber.connect()
        assert publisher.participant_id is not None
        received = await subscriber.wait_track(publisher.participant_id, "video", 15)
        assert received.first_frame_at is not None
        first_frame = received.first_frame_at - started
        await asyncio.sleep(seconds)
        heard = subscriber.track_from(publisher.participant_id, "audio")
        elapsed = time.monotonic() - received.first_frame_at
        counters = hooks.COUNTERS.snapshot()
        return {
            "variant": variant,
            "first_video_frame_s": round(first_frame, 3),
            "video_frames_decoded": received.frames,
            "video_fps": round(received.frames / elapsed, 1),
            "size": [received.width, received.height],
            "audio_frames": heard.frames if heard else 0,
            "frames_decoded_by_subscriber": counters["frames_decoded"] - decoded_before,
            "keyframe_jumps": video.keyframe_jumps,
            "ok": received.width == stream.info["width"]
            and received.frames >= 0.9 * stream.info["fps"] * elapsed
            and video.keyframe_jumps >= 1,
        }
    finally:
        for client in (subscriber, publisher):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5.0)
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 15)
            except TimeoutError:
                server.kill()
                await server.wait()
