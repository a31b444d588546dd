"""What recording costs the server per forwarded packet, and its disk use per track.

One ``lco serve`` process, one publisher (a 640x480 test pattern at 30 fps and a
tone, encoded by aiortc in this process) and N subscribers (aiortc, not decoding)
in this process. Rounds alternate recording off and on, on the same load: for
each window the server's CPU seconds (all its threads: the writers too, from
``/proc``) are divided by the RTP packets it forwarded in that window (its
``/metrics.json``). Disk use per minute and track comes from the recordings'
manifests (bytes written over each file's duration). Results are printed and
written as JSON under ``benchmarks/results/``.

    python -m benchmarks.recording --subscribers 4 --seconds 10 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from media import hooks
from media.client import LessonClient
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling.permissions import Role
from signaling.tokens import mint_token

from .procstat import sample

RESULTS = Path(__file__).resolve().parent / "results"
LESSON = "bench-recording"
NOTE = (
    "measured on a shared 2-core machine: other engineers' test runs used the same "
    "cores, so absolute figures vary from run to run; off and on alternate on the "
    "same load, which keeps their difference meaningful"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_server(
    data_dir: Path, secret: str, admin_key: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--ice-host",
            "127.0.0.1",
            "--log-level",
            "warning",
        ],
        env={**os.environ, "LCO_SECRET": secret, "LCO_ADMIN_KEY": admin_key},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError("lco serve exited")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # start-up polling
    process.kill()
    raise RuntimeError("lco serve did not start")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    hooks.install_forwarding_hooks()  # subscribers do not decode
    hooks.set_host_addresses(["127.0.0.1"])
    secret = secrets.token_urlsafe(32)
    admin_key = secrets.token_urlsafe(32)
    data_dir = Path(tempfile.mkdtemp(prefix="lco-bench-rec-"))
    process, url = _start_server(data_dir, secret, admin_key)
    api = httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
    )
    clients: list[LessonClient] = []
    windows: list[dict[str, Any]] = []
    try:
        ws = url.replace("http://", "ws://") + "/ws"

        def token(name: str, role: Role) -> str:
            return mint_token(secret.encode(), lesson=LESSON, name=name, role=role, school="x")

        publisher = LessonClient(ws, token("Teacher", Role.TEACHER))
        await publisher.connect()
        clients.append(publisher)
        for number in range(args.subscribers):
            viewer = LessonClient(ws, token(f"Viewer {number}", Role.OBSERVER))
            await viewer.connect()
            clients.append(viewer)
        await publisher.publish(
            [(PatternVideoTrack(640, 480, 30), "camera"), (ToneAudioTrack(), "microphone")]
        )
        for viewer in clients[1:]:
            await viewer.wait_track(publisher.participant_id or "", "video", timeout=30)
        await asyncio.sleep(args.warmup)
        for number in range(args.rounds):
            for recording in (False, True):
                if recording:
                    (
                        await api.post(f"/api/lessons/{LESSON}/recording", json={"recording": True})
                    ).raise_for_status()
                    await asyncio.sleep(1.0)  # the files begin on the next keyframe
                before_cpu = sample(process.pid).total
                sfu = (await api.get("/metrics.json")).json()["sfu"]
                before, received_before = sfu["packets_forwarded"], sfu["packets_received"]
                started = time.monotonic()
                await asyncio.sleep(args.seconds)
                after_cpu = sample(process.pid).total
                sfu = (await api.get("/metrics.json")).json()["sfu"]
                after, received_after = sfu["packets_forwarded"], sfu["packets_received"]
                elapsed = time.monotonic() - started
                if recording:
                    (
                        await api.post(
                            f"/api/lessons/{LESSON}/recording", json={"recording": False}
                        )
                    ).raise_for_status()
                packets = after - before
                windows.append(
                    {
                        "round": number,
                        "recording": recording,
                        "seconds": round(elapsed, 2),
                        "packets_forwarded": packets,
                        "packets_received": received_after - received_before,
                        "cpu_seconds": round(after_cpu - before_cpu, 3),
                        "cpu_us_per_packet": round((after_cpu - before_cpu) / packets * 1e6, 2),
                    }
                )
                print(
                    f"round {number} recording {'on ' if recording else 'off'}: "
                    f"{windows[-1]['cpu_us_per_packet']:7.2f} us/packet "
                    f"({packets} packets, {windows[-1]['cpu_seconds']} s CPU)",
                    flush=True,
                )
        listing = (await api.get(f"/api/lessons/{LESSON}/recordings")).json()
    finally:
        for client in clients:
            await client.close()
        await api.aclose()
        process.terminate()
        process.wait(15)
    tracks = [t for r in listing for t in r["manifest"]["tracks"] if t.get("duration")]
    disk: dict[str, list[float]] = {}
    for track in tracks:
        disk.setdefault(track["kind"], []).append(track["bytes_written"] / track["duration"] * 60)
    shutil.rmtree(data_dir, ignore_errors=True)
    off = [w["cpu_us_per_packet"] for w in windows if not w["recording"]]
    on = [w["cpu_us_per_packet"] for w in windows if w["recording"]]
    # What recording adds per packet it records (each received packet is recorded
    # once, whatever the number of subscribers): the difference of CPU per second,
    # over the packets received per second.
    per_second = {
        flag: statistics.median(
            w["cpu_seconds"] / w["seconds"] for w in windows if w["recording"] is flag
        )
        for flag in (False, True)
    }
    received = statistics.median(w["packets_received"] / w["seconds"] for w in windows)
    return {
        "benchmark": "recording",
        "note": NOTE,
        "command": "python -m benchmarks.recording " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load": {
            "publisher": "640x480 VP8 test pattern at 30 fps + Opus tone (aiortc)",
            "subscribers": args.subscribers,
        },
        "windows": windows,
        "cpu_us_per_packet": {
            "off": {"median": statistics.median(off), "min": min(off), "max": max(off)},
            "on": {"median": statistics.median(on), "min": min(on), "max": max(on)},
            "difference_of_medians": round(statistics.median(on) - statistics.median(off), 2),
        },
        "recording_cpu_us_per_recorded_packet": round(
            (per_second[True] - per_second[False]) / received * 1e6, 1
        ),
        "recording_cpu_percent_of_a_core_per_track_pair": round(
            (per_second[True] - per_second[False]) * 100, 2
        ),
        "disk_bytes_per_minute_per_track": {
            kind: round(statistics.median(values)) for kind, values in disk.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subscribers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args))
    cost = result["cpu_us_per_packet"]
    print(
        f"\nserver CPU per forwarded packet ({NOTE}):\n"
        f"  recording off: {cost['off']['median']:.2f} us (median; "
        f"{cost['off']['min']:.2f}-{cost['off']['max']:.2f})\n"
        f"  recording on:  {cost['on']['median']:.2f} us (median; "
        f"{cost['on']['min']:.2f}-{cost['on']['max']:.2f})\n"
        f"  recording adds {result['recording_cpu_us_per_recorded_packet']} us per recorded "
        f"packet ({result['recording_cpu_percent_of_a_core_per_track_pair']} % of a core for "
        "this camera and microphone)\n"
        f"disk per minute and track: "
        + ", ".join(
            f"{kind} {value / 1e6:.2f} MB"
            for kind, value in result["disk_bytes_per_minute_per_track"].items()
        )
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"recording-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
