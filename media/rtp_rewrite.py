"""Sans-I/O helpers of the RTP fast path: keyframe starts, header rewriting, RTX.

Nothing here touches a socket, aiortc's objects or the event loop: bytes and
integers in, bytes and integers out, so that each rule is tested on its own.
"""

from __future__ import annotations

import struct

SEQ_MOD = 0x10000
TS_MOD = 0x100000000

# RFC 8285 section 4.2: the one-byte header extension profile.
_ONE_BYTE_PROFILE = 0xBEDE

# H264 NAL unit types (RFC 6184 table 1 and section 5.4).
_H264_IDR = 5
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28


def vp8_keyframe_start(payload: bytes) -> bool:
    """Whether an RTP payload starts a VP8 keyframe (RFC 7741 section 4.2, RFC 6386 9.1).

    The payload descriptor must have S=1 and PID=0 (start of partition 0), and
    the VP8 payload header after it must be a key frame (P bit 0, start code).
    """
    return _vp8_keyframe_header(payload) >= 0


def vp8_keyframe_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) of the picture a VP8 keyframe start carries (RFC 6386 9.1: 14
    bits each after the start code), or None for any other payload."""
    offset = _vp8_keyframe_header(payload)
    if offset < 0 or len(payload) < offset + 10:
        return None
    width = int.from_bytes(payload[offset + 6 : offset + 8], "little") & 0x3FFF
    height = int.from_bytes(payload[offset + 8 : offset + 10], "little") & 0x3FFF
    return width, height


def _vp8_keyframe_header(payload: bytes) -> int:
    """Where the VP8 payload header of a keyframe start begins, or -1."""
    size = len(payload)
    if size < 1:
        return -1
    first = payload[0]
    if not first & 0x10 or first & 0x07:
        return -1
    offset = 1
    if first & 0x80:  # X: extension byte follows
        if size < 2:
            return -1
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if size <= offset:
                return -1
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            offset += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            offset += 1
    if size < offset + 6:
        return -1
    if (payload[offset] & 1) == 0 and payload[offset + 3 : offset + 6] == b"\x9d\x01\x2a":
        return offset
    return -1


def h264_keyframe_start(payload: bytes) -> bool:
    """Whether an RTP payload starts an H264 keyframe: IDR or SPS, alone, aggregated
    (STAP-A) or as the first fragment (FU-A with S=1), RFC 6184 section 5."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (_H264_IDR, _H264_SPS):
        return True
    if nal_type == _H264_FU_A:
        return (
            len(payload) >= 2
            and bool(payload[1] & 0x80)
            and (payload[1] & 0x1F)
            in (
                _H264_IDR,
                _H264_SPS,
            )
        )
    if nal_type == _H264_STAP_A:
        offset = 1
        while offset + 2 < len(payload):
            size = (payload[offset] << 8) | payload[offset + 1]
            if size == 0:
                return False
            if (payload[offset + 2] & 0x1F) in (_H264_IDR, _H264_SPS):
                return True
            offset += 2 + size
    return False


def keyframe_detector(codec_name: str) -> object | None:
    """The keyframe-start test for a codec, or None when every packet can start (audio)."""
    name = codec_name.upper()
    if name == "VP8":
        return vp8_keyframe_start
    if name == "H264":
        return h264_keyframe_start
    return None


def one_byte_extension(elements: list[tuple[int, bytes]]) -> bytes:
    """An RFC 8285 one-byte header extension block (profile, length, padded elements)."""
    body = b""
    for ext_id, value in elements:
        if not 1 <= ext_id <= 14 or not 1 <= len(value) <= 16:
            raise ValueError(f"extension {ext_id} of {len(value)} bytes needs two-byte headers")
        body += bytes([(ext_id << 4) | (len(value) - 1)]) + value
    if not body:
        return b""
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", _ONE_BYTE_PROFILE, len(body) // 4) + body


NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 to 1970 (RFC 5905)


def abs_send_time(wall: float) -> bytes:
    """The abs-send-time header extension's value for a packet sent at ``wall`` (Unix
    time): NTP seconds in 6.18 fixed point, 24 bits. Subscribers estimate their
    downlink from it (and report REMB)."""
    value = int((wall + NTP_EPOCH_OFFSET) * (1 << 18)) & 0xFFFFFF
    return value.to_bytes(3, "big")


def extension_value_offsets(elements: list[tuple[int, bytes]]) -> list[int]:
    """Where each element's value starts in :func:`one_byte_extension`'s block."""
    offsets = []
    at = 4  # profile and length
    for _, value in elements:
        offsets.append(at + 1)
        at += 1 + len(value)
    return offsets


_VARYING = struct.Struct("!BHI")

write_varying = _VARYING.pack_into
"""``write_varying(buffer, 1, marker << 7 | payload_type, sequence_number, timestamp)``:
rewrite, in place, the only header bytes that change per packet (1 to 7) of a
header whose constant bytes (V/P/X/CC, SSRC, extension block) are already there
(:meth:`HeaderWriter.header` with any values writes them)."""

write_transport_sequence = struct.Struct("!H").pack_into
"""``write_transport_sequence(buffer, offset, number)``: the transport-wide sequence
number's two bytes, in place, in a header whose extension block has room for them."""


class HeaderWriter:
    """Writes one outgoing stream's fixed RTP header (RFC 3550 5.1) plus a constant
    extension block; only marker, sequence number and timestamp change per packet."""

    __slots__ = (
        "_first",
        "_pack",
        "_pt_marker",
        "_pt_plain",
        "ext",
        "header_size",
        "payload_type",
        "ssrc",
    )

    def __init__(self, payload_type: int, ssrc: int, extension: bytes = b"") -> None:
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload type {payload_type} out of range")
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.ext = extension
        self.header_size = 12 + len(extension)
        self._first = 0x90 if extension else 0x80  # V=2, X if an extension follows
        self._pt_plain = payload_type
        self._pt_marker = payload_type | 0x80
        if extension:
            self._pack = struct.Struct(f"!BBHII{len(extension)}s").pack
        else:
            self._pack = struct.Struct("!BBHII").pack

    def header(self, marker: int, sequence_number: int, timestamp: int) -> bytes:
        """The header bytes for one packet (marker is 0 or 1)."""
        second = self._pt_marker if marker else self._pt_plain
        if self.ext:
            return self._pack(self._first, second, sequence_number, timestamp, self.ssrc, self.ext)
        return self._pack(self._first, second, sequence_number, timestamp, self.ssrc)


def rtx_packet(
    rtx: HeaderWriter, rtx_sequence_number: int, original: bytes, header_size: int
) -> bytes:
    """Wrap a packet we sent (header of ``header_size`` bytes) as RTX (RFC 4588 section 4):
    same timestamp and marker, RTX SSRC and payload type, the original sequence
    number (OSN) before the original payload."""
    marker = original[1] >> 7
    timestamp = int.from_bytes(original[4:8], "big")
    return b"".join(
        (rtx.header(marker, rtx_sequence_number, timestamp), original[2:4], original[header_size:])
    )


def sequence_of(packet: bytes) -> int:
    """The sequence number of a serialised RTP packet."""
    return (packet[2] << 8) | packet[3]


def seq_newer_or_equal(a: int, b: int) -> bool:
    """RFC 3550 serial comparison: ``a`` is ``b`` or comes after it (mod 2^16)."""
    return ((a - b) & 0xFFFF) < 0x8000
