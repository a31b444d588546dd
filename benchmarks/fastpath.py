"""CPU per forwarded packet: stock ``pack()`` forwarding against the RTP fast path.

One run measures every variant on the same load, interleaved (round by round,
size by size), each in a fresh server process: a publisher (pre-encoded 640x480
VP8 at 20 fps + Opus, paced in real time) and N subscribers (aiortc, not
decoding) live in this process; the measured "SFU" process forwards with

- ``stock``: what ``media/sfu.py`` does (pass-through decoder hook,
  ``TrackForwarder``, ``SubscriberTrack``, each subscriber's ``RTCRtpSender``
  calling ``pack()``),
- ``fast``: :class:`media.rtp_forward.RtpForwarder` of the working tree, or
- ``base``: the same class as committed at ``--base`` (default ``HEAD``), taken
  with ``git archive`` into a temporary package, for before/after in one run, or
- ``mute``: ``fast``, paused for the measurement window: the server's cost of
  everything but the per-subscriber sends (receiving, RTCP, ICE consent, the
  loop); ``fast`` minus ``mute`` per forwarded packet is the marginal cost.

A variant may name its event loop: ``fast@uvloop``, ``base@asyncio`` (default
``asyncio``; the server proper runs under uvicorn, which picks uvloop), and
``fast~transport`` sends through the asyncio transport instead of a duplicate of
its socket (``media.rtp_subscriber.DIRECT_SOCKET = False``).

The server's CPU time (``getrusage``, all its threads, user and kernel) over the
measurement window is divided by the RTP packets it forwarded in that window.
Each variant's runs are summarised as median and spread (min-max); the results
are written as JSON under ``benchmarks/results/raw/`` (not committed).

    python -m benchmarks.fastpath --subscribers 8 16 32 --seconds 8 --rounds 2 \
        --modes base fast [--profile | --pyspy]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import fractions
import importlib
import io
import json
import multiprocessing
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from media import hooks, rtp_subscriber
from media.forwarder import TrackForwarder
from media.peers import configuration, negotiated_media, preferences_for
from media.rtp_forward import RtpForwarder

WIDTH, HEIGHT, FPS = 640, 480, 20
VIDEO_BITRATE = 1_000_000
# Not quoted by docs/benchmarks.md: beside the raw samples, which are not committed.
RESULTS = Path(__file__).resolve().parent / "results" / "raw"
ROOT = Path(__file__).resolve().parent.parent


def base_package(rev: str, into: Path) -> Path:
    """``media/`` as committed at ``rev``, unpacked as package ``media_base`` under ``into``
    (read-only ``git archive``; the working tree is not touched)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "media"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "media").rename(into / "media_base")
    return into


def commit_of(rev: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", rev], check=True, capture_output=True, text=True
    ).stdout.strip()


def start_pyspy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Sample the server process with py-spy for the measurement window."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds) - 1)),
            "--rate",
            "1000",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def forwarder_class(mode: str, base_dir: str | None) -> Any:
    if mode == "base":
        assert base_dir is not None
        sys.path.insert(0, base_dir)
        return importlib.import_module("media_base.rtp_forward").RtpForwarder
    return RtpForwarder


def encode_vp8(count: int) -> list[tuple[bytes, int, bool]]:
    """(frame, 90 kHz pts, keyframe) for ``count`` frames of a moving pattern."""
    context = av.CodecContext.create("libvpx", "w")
    context.width, context.height = WIDTH, HEIGHT
    context.pix_fmt = "yuv420p"
    context.time_base = fractions.Fraction(1, FPS)
    context.bit_rate = VIDEO_BITRATE
    context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    row = bytes(range(256)) * (WIDTH // 256 + 3)
    out: list[tuple[bytes, int, bool]] = []
    for i in range(count):
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        shift = (i * 6) % 256
        frame.planes[0].update(
            b"".join(
                row[shift + (y // 4) % 64 : shift + (y // 4) % 64 + WIDTH] for y in range(HEIGHT)
            )
        )
        noise = os.urandom(WIDTH * 48)  # some texture, for a realistic bitrate
        frame.planes[0].update(
            bytes(frame.planes[0])[: WIDTH * 96] + noise + bytes(frame.planes[0])[WIDTH * 144 :]
        )
        for plane in frame.planes[1:]:
            plane.update(bytes([(128 + i) % 256]) * plane.buffer_size)
        frame.pts = i
        for packet in context.encode(frame):
            out.append((bytes(packet), int(packet.pts or 0) * (90000 // FPS), packet.is_keyframe))
    return out


class PacedPackets(MediaStreamTrack):
    """Pre-encoded frames as ``av.Packet`` in real time (the sender calls ``pack()``)."""

    def __init__(self, kind: str, frames: list[tuple[bytes, int, bool]], period: float) -> None:
        super().__init__()
        self.kind = kind
        self._frames = frames
        self._period = period
        self._step = frames[1][1] - frames[0][1]
        self._clock = 90000 if kind == "video" else 48000
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet[Any]:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._index * self._period - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        data, _, key = self._frames[self._index % len(self._frames)]
        packet = av.Packet(data)
        packet.pts = self._index * self._step
        packet.time_base = fractions.Fraction(1, self._clock)
        packet.is_keyframe = key
        self._index += 1
        return packet


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(configuration([]))


async def recv(conn: Connection) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


# -- the measured server process ---------------------------------------------------------


async def serve(
    conn: Connection,
    mode: str,
    subscribers: int,
    seconds: float,
    profile: bool,
    base_dir: str | None,
) -> None:
    hooks.set_host_addresses(["127.0.0.1"])
    forwarder_cls = forwarder_class(mode, base_dir) if mode != "stock" else None
    if mode == "stock":
        hooks.install_forwarding_hooks()
    pcs: list[RTCPeerConnection] = []
    inbound = new_pc()
    pcs.append(inbound)
    offer = await recv(conn)
    await inbound.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await inbound.setLocalDescription(await inbound.createAnswer())
    negotiated = {m.mid: m for m in negotiated_media(inbound.localDescription.sdp)}
    stock: list[TrackForwarder] = []
    fast: list[Any] = []
    outbound = [new_pc() for _ in range(subscribers)]
    pcs += outbound
    for transceiver in inbound.getTransceivers():
        media = negotiated[transceiver.mid or ""]
        assert media.codec is not None
        receiver = transceiver.receiver
        if forwarder_cls is not None:
            forwarder = forwarder_cls(media.kind, receiver, media.codec)
            forwarder.start()
            fast.append(forwarder)
            for pc in outbound:
                forwarder.attach(pc)
        else:
            if media.kind == "audio":
                hooks.release_audio_immediately(receiver)
            tf = TrackForwarder(
                media.kind,
                receiver.track,
                request_keyframe=lambda r=receiver: hooks.send_pli(r),  # type: ignore[misc]
                on_ended=lambda _: None,
            )
            tf.start()
            stock.append(tf)
            for pc in outbound:
                t = pc.addTransceiver(tf.add_subscriber(), direction="sendonly")
                t.setCodecPreferences(preferences_for(media.kind, media.codec))
                hooks.on_keyframe_request(t.sender, tf.request_keyframe)
    conn.send(inbound.localDescription.sdp)
    offers = []
    for pc in outbound:
        await pc.setLocalDescription(await pc.createOffer())
        offers.append(pc.localDescription.sdp)
    conn.send(offers)
    answers = await recv(conn)
    for pc, sdp in zip(outbound, answers, strict=True):
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def sent_packets() -> int:
        if fast:
            return sum(f.stats.packets_forwarded + f.stats.retransmissions for f in fast)
        total = 0
        for pc in outbound:
            for sender in pc.getSenders():
                for stat in (await sender.getStats()).values():
                    if stat.type == "outbound-rtp":
                        total += stat.packetsSent
        return total

    for _ in range(300):  # until every subscriber receives (bounded: 30 s)
        if all(pc.connectionState == "connected" for pc in pcs):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(3.0)  # warm-up: keyframe reached every subscriber
    if mode == "mute":
        for f in fast:
            f.set_paused(True)
    conn.send(("measuring", os.getpid()))
    received0 = sum(f.stats.packets_received for f in fast)
    sent0 = await sent_packets()
    profiler = cProfile.Profile() if profile else None
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    if profiler:
        profiler.enable()
    await asyncio.sleep(seconds)
    if profiler:
        profiler.disable()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    user = usage.ru_utime - usage0.ru_utime
    system = usage.ru_stime - usage0.ru_stime
    sent = await sent_packets() - sent0
    report = ""
    if profiler:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(30)
        report = stream.getvalue()
    result = {
        "mode": mode,
        "loop": type(asyncio.get_running_loop()).__module__,
        "subscribers": subscribers,
        "seconds": seconds,
        "cpu_s": user + system,
        "user_s": user,
        "sys_s": system,
        "forwarded": sent,
        "received": sum(f.stats.packets_received for f in fast) - received0,
        "errors": sum(f.stats.errors for f in fast),
        "profile": report,
    }
    conn.send(result)
    await recv(conn)  # the load side is done
    for f in fast:
        await f.stop()
    for tf in stock:
        await tf.stop()
    for pc in pcs:
        await pc.close()
    hooks.uninstall_hooks()


def server_main(
    conn: Connection,
    variant: str,
    subscribers: int,
    seconds: float,
    profile: bool,
    base_dir: str | None,
) -> None:
    mode, _, loop = variant.partition("@")
    mode, _, option = mode.partition("~")
    if option == "transport":
        rtp_subscriber.DIRECT_SOCKET = False
    coroutine = serve(conn, mode, subscribers, seconds, profile, base_dir)
    if loop == "uvloop":
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


def pyspy_top(path: Path, limit: int = 25) -> str:
    """The functions with the most samples on top of the stack (own time), from
    py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        own[stack.split(";")[-1]] += int(count)
    lines = [f"py-spy: {total} samples, own time (top of stack)"]
    for frame, hits in own.most_common(limit):
        lines.append(f"  {100 * hits / max(1, total):5.1f}%  {frame}")
    return "\n".join(lines)


# -- the load (this process) -------------------------------------------------------------


async def run_once(
    variant: str,
    subscribers: int,
    seconds: float,
    profile: str,
    video: Any,
    base_dir: str | None,
) -> dict[str, Any]:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=server_main,
        args=(child, variant, subscribers, seconds, profile == "cprofile", base_dir),
    )
    process.start()
    pcs: list[RTCPeerConnection] = []
    drains: list[asyncio.Future[None]] = []
    try:
        publisher = new_pc()
        pcs.append(publisher)
        vt = publisher.addTransceiver(PacedPackets("video", video, 1 / FPS), direction="sendonly")
        vt.setCodecPreferences(
            [
                c
                for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType.lower() in ("video/vp8", "video/rtx")
            ]
        )
        opus = [(b"\xfc" + bytes(79), i * 960, True) for i in range(50)]
        publisher.addTransceiver(PacedPackets("audio", opus, 0.02), direction="sendonly")
        await publisher.setLocalDescription(await publisher.createOffer())
        parent.send(publisher.localDescription.sdp)
        answer = await recv(parent)
        await publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        answers = []
        for sdp in await recv(parent):
            pc = new_pc()
            pcs.append(pc)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            answers.append(pc.localDescription.sdp)

            @pc.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                async def drain() -> None:
                    for _ in range(10_000_000):
                        await track.recv()

                drains.append(asyncio.ensure_future(drain()))

        parent.send(answers)
        _, pid = await recv(parent)
        spy: subprocess.Popen[bytes] | None = None
        spy_out = Path(tempfile.mkdtemp()) / "pyspy.txt"
        if profile == "pyspy":
            spy = start_pyspy(pid, seconds, spy_out)
        result: dict[str, Any] = await recv(parent)
        if spy is not None:
            await asyncio.get_running_loop().run_in_executor(None, spy.wait, 30)
            if spy_out.exists():
                result["profile"] = pyspy_top(spy_out)
            shutil.rmtree(spy_out.parent, ignore_errors=True)
        result["variant"] = variant
        parent.send("done")
    finally:
        for pc in pcs:
            await pc.close()
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, process.join, 30)
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """µs per forwarded packet: pooled over runs, and each run's median and spread."""
    forwarded = sum(r["forwarded"] for r in runs)
    per_run = [r["cpu_s"] / max(1, r["forwarded"]) * 1e6 for r in runs]
    return {
        "runs": len(runs),
        "forwarded": forwarded,
        "us_per_packet": sum(r["cpu_s"] for r in runs) / max(1, forwarded) * 1e6,
        "user_us": sum(r["user_s"] for r in runs) / max(1, forwarded) * 1e6,
        "kernel_us": sum(r["sys_s"] for r in runs) / max(1, forwarded) * 1e6,
        "median_us": statistics.median(per_run),
        "min_us": min(per_run),
        "max_us": max(per_run),
        "errors": sum(r["errors"] for r in runs),
        "cpu_s_per_s": sum(r["cpu_s"] for r in runs) / sum(r["seconds"] for r in runs),
    }


async def main_async(args: argparse.Namespace) -> None:
    hooks.install_forwarding_hooks()  # subscribers here do not decode
    hooks.set_host_addresses(["127.0.0.1"])
    video = encode_vp8(60)
    sizes = [len(f[0]) for f in video]
    print(f"VP8 {WIDTH}x{HEIGHT} {FPS} fps, {sum(sizes) * 8 * FPS / len(sizes) / 1e6:.2f} Mbit/s")
    variants: list[str] = args.modes
    workdir = Path(tempfile.mkdtemp(prefix="fastpath-"))
    base_dir: str | None = None
    base_commit = ""
    if any(v.startswith("base") for v in variants):
        base_dir = str(base_package(args.base, workdir))
        base_commit = commit_of(args.base)
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    profiled = {v for v in variants if not v.startswith("stock")}
    try:
        for round_index in range(args.rounds):
            for n in args.subscribers:
                order = variants if round_index % 2 == 0 else variants[::-1]
                for variant in order:
                    profile = args.profile if variant in profiled else ""
                    r = await run_once(variant, n, args.seconds, profile, video, base_dir)
                    rows.setdefault((variant, n), []).append(r)
                    count = max(1, r["forwarded"])
                    print(
                        f"  {variant:12} n={n:2}: {r['forwarded']:6} packets,"
                        f" cpu {r['cpu_s']:.2f} s: {r['cpu_s'] / count * 1e6:5.1f} us/packet"
                        f" (user {r['user_s'] / count * 1e6:5.1f},"
                        f" kernel {r['sys_s'] / count * 1e6:5.1f}),"
                        f" errors {r['errors']}, loop {r['loop']},"
                        f" {100 * r['cpu_s'] / r['seconds']:.1f} % of a core",
                        flush=True,
                    )
                    if r["profile"]:
                        print(r["profile"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {f"{v} n={n}": summarise(runs) for (v, n), runs in rows.items()}
    header = " | ".join(f"{v} us/packet: total (user+kernel) [median, min-max]" for v in variants)
    print(
        f"\n| subscribers | {header} |"
        + "".join(f" {v}/{variants[-1]} |" for v in variants[:-1] if not v.startswith("mute"))
    )
    print("|---" * (len(variants) + 1 + len(variants) - 1) + "|")
    for n in args.subscribers:
        cells = []
        for v in variants:
            if v.startswith("mute"):
                mute = summary[f"{v} n={n}"]
                cells.append(f"{100 * mute['cpu_s_per_s']:.1f} % of a core")
                continue
            m = summary[f"{v} n={n}"]
            cells.append(
                f"{m['us_per_packet']:.1f} ({m['user_us']:.1f}+{m['kernel_us']:.1f})"
                f" [{m['median_us']:.1f}, {m['min_us']:.1f}-{m['max_us']:.1f}]"
            )
        last = summary[f"{variants[-1]} n={n}"]["us_per_packet"] or 1e-9
        ratios = "".join(
            f" {summary[f'{v} n={n}']['us_per_packet'] / max(last, 1e-9):.2f}x |"
            for v in variants[:-1]
            if not v.startswith("mute")
        )
        print(f"| {n} | " + " | ".join(cells) + " |" + ratios)
    plain = [v for v in variants if not v.startswith("mute")]
    for v in plain:
        for n in args.subscribers:
            mutes = [summary[f"{m} n={n}"] for m in variants if m.startswith("mute")]
            m = summary[f"{v} n={n}"]
            if not mutes or not m["forwarded"] or v.startswith("stock"):
                continue
            spent = m["cpu_s_per_s"] - mutes[0]["cpu_s_per_s"]
            m["marginal_us"] = spent * m["runs"] * args.seconds / m["forwarded"] * 1e6
            print(f"{v} n={n}: {m['marginal_us']:.1f} us per packet above mute")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    out = RESULTS / f"fastpath-{stamp}.json"
    document = {
        "benchmark": "fastpath",
        "started": stamp,
        "machine": {
            "nproc": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "python": platform.python_version(),
        },
        "args": vars(args),
        "base_commit": base_commit,
        "load": {"video": f"VP8 {WIDTH}x{HEIGHT} {FPS} fps", "audio": "Opus 20 ms"},
        "summary": summary,
        "runs": [r for runs in rows.values() for r in runs],
    }
    out.write_text(json.dumps(document, indent=2, default=str))
    print(f"results: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["stock", "fast"],
        help="variants: stock, base, fast, each optionally @asyncio or @uvloop",
    )
    parser.add_argument("--base", default="HEAD", help="the commit 'base' is taken from")
    profiling = parser.add_mutually_exclusive_group()
    profiling.add_argument(
        "--profile",
        action="store_const",
        const="cprofile",
        default="",
        help="cProfile the forwarding variants (inflates call-heavy code)",
    )
    profiling.add_argument(
        "--pyspy",
        dest="profile",
        action="store_const",
        const="pyspy",
        help="sample the forwarding variants with py-spy (own time per function)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
