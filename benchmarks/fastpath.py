"""CPU per forwarded packet: stock ``pack()`` forwarding against the RTP fast path.

One run measures both paths on the same load, alternating, each in a fresh
server process: a publisher (pre-encoded 640x480 VP8 at 20 fps + Opus, paced in
real time) and N subscribers (aiortc, not decoding) live in this process; the
measured "SFU" process forwards with either

- ``stock``: what ``media/sfu.py`` does (pass-through decoder hook,
  ``TrackForwarder``, ``SubscriberTrack``, each subscriber's ``RTCRtpSender``
  calling ``pack()``), or
- ``fast``: :class:`media.rtp_forward.RtpForwarder`.

The server's CPU time (``time.process_time``, all its threads) over the
measurement window is divided by the RTP packets it forwarded in that window.

    python -m benchmarks.fastpath --subscribers 8 16 --seconds 8 [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import fractions
import io
import multiprocessing
import os
import pstats
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from media import hooks
from media.forwarder import TrackForwarder
from media.peers import configuration, negotiated_media, preferences_for
from media.rtp_forward import RtpForwarder

WIDTH, HEIGHT, FPS = 640, 480, 20
VIDEO_BITRATE = 1_000_000


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
    conn: Connection, mode: str, subscribers: int, seconds: float, profile: bool
) -> None:
    hooks.set_host_addresses(["127.0.0.1"])
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
    fast: list[RtpForwarder] = []
    outbound = [new_pc() for _ in range(subscribers)]
    pcs += outbound
    for transceiver in inbound.getTransceivers():
        media = negotiated[transceiver.mid or ""]
        assert media.codec is not None
        receiver = transceiver.receiver
        if mode == "fast":
            forwarder = RtpForwarder(media.kind, receiver, media.codec)
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
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(18)
        report = stream.getvalue()
    result = {
        "mode": mode,
        "subscribers": subscribers,
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
    conn: Connection, mode: str, subscribers: int, seconds: float, profile: bool
) -> None:
    asyncio.run(serve(conn, mode, subscribers, seconds, profile))


# -- the load (this process) -------------------------------------------------------------


async def run_once(
    mode: str, subscribers: int, seconds: float, profile: bool, video: Any
) -> dict[str, Any]:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=server_main, args=(child, mode, subscribers, seconds, profile)
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
        result: dict[str, Any] = await recv(parent)
        parent.send("done")
    finally:
        for pc in pcs:
            await pc.close()
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, process.join, 30)
    return result


async def main_async(args: argparse.Namespace) -> None:
    hooks.install_forwarding_hooks()  # subscribers here do not decode
    hooks.set_host_addresses(["127.0.0.1"])
    video = encode_vp8(60)
    sizes = [len(f[0]) for f in video]
    print(f"VP8 {WIDTH}x{HEIGHT} {FPS} fps, {sum(sizes) * 8 * FPS / len(sizes) / 1e6:.2f} Mbit/s")
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for n in args.subscribers:
            for mode in ("stock", "fast"):
                r = await run_once(mode, n, args.seconds, args.profile and mode == "fast", video)
                rows.setdefault((mode, n), []).append(r)
                count = max(1, r["forwarded"])
                print(
                    f"  {mode:5} n={n:2}: {r['forwarded']:6} packets, cpu {r['cpu_s']:.2f} s:"
                    f" {r['cpu_s'] / count * 1e6:5.1f} us/packet"
                    f" (user {r['user_s'] / count * 1e6:5.1f},"
                    f" kernel {r['sys_s'] / count * 1e6:5.1f}),"
                    f" errors {r['errors']}",
                    flush=True,
                )
                if r["profile"]:
                    print(r["profile"])
    print(
        "\n| subscribers | stock pack() us/packet (user+kernel) | fast path us/packet"
        " (user+kernel) | ratio total | ratio user |"
    )
    print("|---|---|---|---|---|")
    for n in args.subscribers:

        def per_packet(mode: str, key: str, n: int = n) -> float:
            runs = rows[(mode, n)]
            spent = float(sum(r[key] for r in runs))
            forwarded = int(sum(r["forwarded"] for r in runs))
            return spent / max(1, forwarded) * 1e6

        s, su = per_packet("stock", "cpu_s"), per_packet("stock", "user_s")
        f, fu = per_packet("fast", "cpu_s"), per_packet("fast", "user_s")
        print(
            f"| {n} | {s:.1f} ({su:.1f}+{s - su:.1f}) | {f:.1f} ({fu:.1f}+{f - fu:.1f})"
            f" | {s / f:.1f}x | {su / fu:.1f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile the fast path")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
