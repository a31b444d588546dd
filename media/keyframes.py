"""Keyframe detection on encoded frames, as reassembled by aiortc's receiver."""

from __future__ import annotations

# H264 NAL unit types that start a decodable picture (RFC 6184 table 1).
_H264_IDR = 5
_H264_SPS = 7


def _vp8_is_keyframe(frame: bytes) -> bool:
    # RFC 6386 section 9.1: bit 0 of the frame tag is 0 for key frames, and a key
    # frame header carries the start code 9d 01 2a.
    return len(frame) >= 6 and (frame[0] & 1) == 0 and frame[3:6] == b"\x9d\x01\x2a"


def _h264_is_keyframe(frame: bytes) -> bool:
    # aiortc reassembles H264 into Annex B: NAL units after 00 00 01 start codes.
    index = frame.find(b"\x00\x00\x01")
    while index != -1 and index + 3 < len(frame):
        nal_type = frame[index + 3] & 0x1F
        if nal_type in (_H264_IDR, _H264_SPS):
            return True
        index = frame.find(b"\x00\x00\x01", index + 3)
    return False


def is_keyframe(codec_name: str, frame: bytes) -> bool:
    """Whether an encoded frame can start decoding. Audio frames always can."""
    name = codec_name.upper()
    if name == "VP8":
        return _vp8_is_keyframe(frame)
    if name == "H264":
        return _h264_is_keyframe(frame)
    return True
