"""Keyframe detection on real encoder output."""

from __future__ import annotations

import fractions

import av
import pytest

from media.keyframes import is_keyframe


def encode(codec: str, frames: int = 4) -> list[tuple[bytes, bool]]:
    """Encode a few frames with a real encoder; return (payload, encoder's keyframe flag)."""
    context = av.CodecContext.create(codec, "w")
    context.width, context.height = 160, 120
    context.pix_fmt = "yuv420p"
    context.time_base = fractions.Fraction(1, 30)
    context.options = {"g": "30"} if codec == "libx264" else {}
    out = []
    for i in range(frames):
        frame = av.VideoFrame(160, 120, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(i * 40) % 256]) * plane.buffer_size)
        frame.pts = i
        for packet in context.encode(frame):
            out.append((bytes(packet), packet.is_keyframe))
    for packet in context.encode(None):
        out.append((bytes(packet), packet.is_keyframe))
    return out


@pytest.mark.parametrize(("codec", "name"), [("libvpx", "VP8"), ("libx264", "H264")])
def test_detection_agrees_with_the_encoder(codec: str, name: str) -> None:
    packets = encode(codec)
    assert packets and packets[0][1]
    assert any(not key for _, key in packets)
    for payload, key in packets:
        assert is_keyframe(name, payload) is key


def test_short_or_empty_frames_are_not_keyframes() -> None:
    assert not is_keyframe("VP8", b"")
    assert not is_keyframe("VP8", b"\x00\x01")
    assert not is_keyframe("H264", b"\x00\x00\x01")


def test_audio_frames_always_start_decoding() -> None:
    assert is_keyframe("opus", b"\xfc\xff\xfe")
