"""Publishing one camera as simulcast layers from Python (aiortc sends one stream).

Browsers publish simulcast themselves; this lets the Python client
(``LessonClient.publish(..., simulcast=...)``), and so the tests and the benchmarks,
do the same with aiortc: the transceiver's own sender stays idle, and each
layer (RID, scale, bitrate) is encoded from the same frames and sent as its own SSRC
on the transceiver's DTLS transport, with the MID and RID header extensions, as a
browser does (RFC 8853: the offer says ``a=simulcast:send`` and announces no SSRC).
A PLI for a layer's SSRC makes that layer's next frame a keyframe.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import RTCRtpTransceiver
from aiortc.codecs import get_encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket, RtpPacket
from aiortc.sdp import SessionDescription

from . import hooks


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One layer: its RID, how much smaller than the source, its bitrate."""

    rid: str
    scale: int
    bitrate: int


# About 150 kbit/s, 500 kbit/s and 1.2 Mbit/s: a browser's two lower layers, and a top
# layer below its 1.7 Mbit/s (web_client/peers.js), enough for the tests' sources.
DEFAULT_LAYERS = (
    LayerSpec("l", 4, 150_000),
    LayerSpec("m", 2, 500_000),
    LayerSpec("h", 1, 1_200_000),
)


@dataclass(eq=False)
class _Layer:
    spec: LayerSpec
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    sequence: int = field(default_factory=lambda: random.getrandbits(16))
    timestamp_origin: int = field(default_factory=lambda: random.getrandbits(32))
    keyframe_wanted: bool = True
    encoder: Any = None  # libvpx at the layer's bitrate (aiortc's own cannot go that low)
    packer: Any = None  # aiortc's VP8 packetiser
    frames: int = 0

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        """What the transport gives this layer's SSRC: a PLI or FIR asks for a keyframe."""
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self.keyframe_wanted = True

    def encode(self, frame: Any) -> list[Any]:
        """The layer's encoded frames (``av.Packet``) for one source frame."""
        if self.encoder is None or self.encoder.width != frame.width:
            self.encoder = av.CodecContext.create("libvpx", "w")
            self.encoder.width, self.encoder.height = frame.width, frame.height
            self.encoder.pix_fmt = "yuv420p"
            self.encoder.time_base = frame.time_base
            self.encoder.bit_rate = self.spec.bitrate
            self.encoder.options = {
                "deadline": "realtime",
                "cpu-used": "8",
                "lag-in-frames": "0",
                "minrate": str(self.spec.bitrate),
                "maxrate": str(self.spec.bitrate),
                "bufsize": str(self.spec.bitrate),
            }
            self.keyframe_wanted = True
        if self.keyframe_wanted:
            frame.pict_type = av.video.frame.PictureType.I
            self.keyframe_wanted = False
        return list(self.encoder.encode(frame))


class SimulcastCamera:
    """Sends ``source`` as several layers on one transceiver's m-line."""

    def __init__(self, source: MediaStreamTrack, layers: Sequence[LayerSpec] = DEFAULT_LAYERS):
        self.source = source
        self.layers = [_Layer(spec) for spec in layers]
        self._task: asyncio.Task[None] | None = None

    @property
    def rids(self) -> list[str]:
        """The layers' RIDs, smallest first."""
        return [layer.spec.rid for layer in self.layers]

    def describe(self, sdp: str, mid: str) -> str:
        """The offer with the m-section ``mid`` made a simulcast one: its RIDs and
        ``a=simulcast:send``, and no SSRC of its own (the layers bring theirs)."""
        head, *sections = sdp.split("\r\nm=")
        for index, section in enumerate(sections):
            lines = section.split("\r\n")
            if f"a=mid:{mid}" not in lines:
                continue
            kept = [x for x in lines if not x.startswith(("a=ssrc:", "a=ssrc-group:"))]
            at = kept.index(f"a=mid:{mid}") + 1
            added = [f"a=rid:{rid} send" for rid in self.rids]
            added.append("a=simulcast:send " + ";".join(self.rids))
            sections[index] = "\r\n".join([*kept[:at], *added, *kept[at:]])
        return "\r\nm=".join([head, *sections])

    def start(self, transceiver: RTCRtpTransceiver, answer: str) -> None:
        """Start sending, once the answer is applied (its codec and extensions)."""
        codec = _vp8_of(answer, transceiver.mid)
        self._task = asyncio.create_task(self._run(transceiver, codec), name="simulcast")

    async def stop(self) -> None:
        """Stop sending."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, transceiver: RTCRtpTransceiver, codec: RTCRtpCodecParameters) -> None:
        transport = transceiver.sender.transport
        connected = asyncio.Event()

        @transport.on("statechange")
        def state_changed() -> None:
            if transport.state == "connected":
                connected.set()

        if transport.state != "connected":
            await connected.wait()
        for layer in self.layers:
            layer.packer = get_encoder(codec)
            hooks.route_rtcp_to(transport, layer.ssrc, layer)
        mid = transceiver.mid
        try:
            while True:
                frame = await self.source.recv()
                for layer in self.layers:
                    await self._send(transport, codec, mid, layer, frame)
        except (MediaStreamError, ConnectionError):
            return

    async def _send(
        self,
        transport: Any,
        codec: RTCRtpCodecParameters,
        mid: str | None,
        layer: _Layer,
        frame: Any,
    ) -> None:
        scale = layer.spec.scale
        scaled = frame
        if scale != 1:
            scaled = frame.reformat(width=frame.width // scale, height=frame.height // scale)
            scaled.pts, scaled.time_base = frame.pts, frame.time_base
        for encoded in layer.encode(scaled):
            payloads, timestamp = layer.packer.pack(encoded)
            for position, payload in enumerate(payloads):
                packet = RtpPacket(
                    payload_type=codec.payloadType or 0,
                    marker=int(position == len(payloads) - 1),
                    sequence_number=layer.sequence,
                    timestamp=(layer.timestamp_origin + timestamp) & 0xFFFFFFFF,
                    ssrc=layer.ssrc,
                    payload=payload,
                )
                packet.extensions.mid = mid
                packet.extensions.rtp_stream_id = layer.spec.rid
                layer.sequence = (layer.sequence + 1) & 0xFFFF
                await hooks.send_rtp(transport, packet)
            layer.frames += 1


def _vp8_of(answer: str, mid: str | None) -> RTCRtpCodecParameters:
    for media in SessionDescription.parse(answer).media:
        if media.rtp.muxId == mid:
            for codec in media.rtp.codecs:
                if codec.name.lower() == "vp8":
                    return codec
    raise ValueError("the answer has no VP8 for the simulcast m-line")
