"""What a client can make the SFU do with its SDP and ICE candidates, on a real server.

A client must not make the server send connectivity checks wherever it likes, nor
end its own socket (or anyone else's) with SDP that aiortc's parser chokes on.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from media.candidate_policy import MAX_CANDIDATES
from media.client import LessonClient
from media.peers import accept_simulcast, configuration, simulcast_rids
from media.testsource import PatternVideoTrack
from signaling import protocol as p
from signaling.permissions import Role

from .conftest import RunningServer, start_server, stop_server

pytestmark = pytest.mark.usefixtures("decoding_clients")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("media-input"))
    yield running
    stop_server(running)
    assert "Traceback" not in running.log()


def udp_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def trickled(address: str, port: int, priority: int = 1000, transport: str = "udp") -> str:
    return p.encode_client_message(
        p.IceCandidate(
            pc="publish",
            candidate=f"candidate:9 1 {transport} {priority} {address} {port} typ host",
            sdp_mid="0",
            sdp_mline_index=0,
        )
    )


def refused_so_far(server: RunningServer) -> int:
    sfu = server.metrics()["sfu"]
    assert isinstance(sfu, dict)
    value: int = sfu["ice_candidates_refused"]
    return value


async def test_the_server_checks_only_candidates_its_policy_admits(server: RunningServer) -> None:
    teacher = LessonClient(server.ws, server.token("T", Role.TEACHER, lesson="ice"))
    await teacher.connect()
    pc = RTCPeerConnection(configuration([]))
    control, over_cap = udp_listener(), udp_listener()
    try:
        pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        # As a browser that trickles: more candidates may follow the offer.
        offer = pc.localDescription.sdp.replace("a=end-of-candidates\r\n", "")
        in_sdp = offer.count("a=candidate:")
        before = refused_so_far(server)
        answered = teacher.wait_for(lambda m: m["type"] in ("publish_answer", "error"))
        await teacher.send(p.PublishOffer(sdp=offer, tracks=[]))
        # Refused by what they name: a low port, other networks, not unicast, a name, TCP.
        for address, port, transport in [
            ("127.0.0.1", 53, "udp"),
            ("10.99.0.1", 5000, "udp"),
            ("169.254.1.1", 5000, "udp"),
            ("224.0.0.1", 5000, "udp"),
            ("0.0.0.0", 5000, "udp"),
            ("victim.example.com", 5000, "udp"),
            ("127.0.0.1", 5000, "tcp"),
        ]:
            await teacher.send(trickled(address, port, transport=transport))
        # Fill the cap with loopback candidates (admitted: this server is on loopback),
        # the last one a socket of ours; then one more, more urgent than all the others.
        for n in range(MAX_CANDIDATES - in_sdp - 1):
            await teacher.send(trickled("127.0.0.1", 20_000 + n, priority=10))
        await teacher.send(trickled("127.0.0.1", control.getsockname()[1], priority=100))
        await teacher.send(trickled("127.0.0.1", over_cap.getsockname()[1], priority=1 << 30))
        assert (await answered)["type"] == "publish_answer"
        # The admitted candidate is checked (a STUN binding request arrives); the one
        # past the cap, which would have been checked first, never is.
        control.settimeout(10)
        request = control.recv(2048)
        assert request[:2] == b"\x00\x01"  # STUN Binding Request (RFC 5389 6)
        over_cap.setblocking(False)
        with pytest.raises(BlockingIOError):
            over_cap.recv(2048)
        assert refused_so_far(server) - before == 7 + 1
        pong = teacher.wait_for(lambda m: m["type"] == "pong")
        await teacher.send(p.Ping())
        await pong
        assert not teacher.errors  # policy refusals are not errors: browsers send such
    finally:
        control.close()
        over_cap.close()
        await pc.close()
        await teacher.close()


async def test_a_malformed_candidate_gets_an_error_and_the_socket_goes_on(
    server: RunningServer,
) -> None:
    teacher = LessonClient(server.ws, server.token("T", Role.TEACHER, lesson="bad-candidate"))
    await teacher.connect()
    await teacher.publish([(PatternVideoTrack(), "camera")])
    error = teacher.wait_for(lambda m: m["type"] == "error")
    await teacher.send(
        p.IceCandidate(pc="publish", candidate="candidate:1 1 udp", sdp_mid="0", sdp_mline_index=0)
    )
    message = await error
    assert message["code"] == "bad_sdp" and "malformed" in message["message"]
    await teacher.close()


# Each was found by fuzzing aiortc's parser with mutated offers: it raised
# AssertionError, StopIteration or AttributeError, and the sender's socket ended
# with a traceback.
def broken_offers(valid: str) -> dict[str, str]:
    lines = valid.split("\r\n")
    m_line = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    return {
        "payload type out of range": valid.replace(lines[m_line], lines[m_line] + " 300"),
        "a bad m= line": valid.replace(lines[m_line], "m=video x UDP/TLS/RTP/SAVPF 96"),
        "a format for no codec": valid.replace(
            lines[m_line], lines[m_line] + "\r\na=fmtp:77 apt=96"
        ),
        "no fingerprint": "\r\n".join(x for x in lines if not x.startswith("a=fingerprint")),
        "no MID": "\r\n".join(x for x in lines if not x.startswith("a=mid")),
        "a bad connection line": valid.replace("c=IN IP4", "c=IN IPX"),
        "a data channel": valid + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
        "a bad candidate": valid.replace("a=candidate:", "a=candidate:1 1 udp\r\na=x:", 1),
    }


async def test_offers_aiortc_cannot_parse_get_bad_sdp_and_the_socket_goes_on(
    server: RunningServer,
) -> None:
    teacher = LessonClient(server.ws, server.token("T", Role.TEACHER, lesson="bad-sdp"))
    room = LessonClient(server.ws, server.token("R", Role.CLASSROOM, lesson="bad-sdp"))
    for client in (teacher, room):
        await client.connect()
    pc = RTCPeerConnection(configuration([]))
    pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    valid: str = pc.localDescription.sdp
    try:
        for what, sdp in broken_offers(valid).items():
            error = teacher.wait_for(lambda m: m["type"] in ("error", "publish_answer"))
            await teacher.send(p.PublishOffer(sdp=sdp, tracks=[]))
            message = await error
            assert message["type"] == "error" and message["code"] == "bad_sdp", what
        # The same socket then publishes for real, and a bystander receives it.
        answered = teacher.wait_for(lambda m: m["type"] == "publish_answer")
        await teacher.send(
            p.PublishOffer(sdp=valid, tracks=[p.PublishedTrackSpec(mid="0", source="camera")])
        )
        await pc.setRemoteDescription(RTCSessionDescription((await answered)["sdp"], "answer"))
        video = await room.wait_track(teacher.participant_id or "", "video")
        await room.wait_frames(video, 5)
    finally:
        await pc.close()
        for client in (teacher, room):
            await client.close()


async def test_a_subscribe_answer_aiortc_cannot_parse_gets_bad_sdp(server: RunningServer) -> None:
    teacher = LessonClient(server.ws, server.token("T", Role.TEACHER, lesson="bad-answer"))
    room = LessonClient(server.ws, server.token("R", Role.CLASSROOM, lesson="bad-answer"))
    offers: list[dict[str, Any]] = []

    async def hold(message: dict[str, Any]) -> None:
        offers.append(message)

    room._answer_subscribe_offer = hold  # type: ignore[method-assign]
    for client in (teacher, room):
        await client.connect()
    offered = room.wait_for(lambda m: m["type"] == "subscribe_offer")
    await teacher.publish([(PatternVideoTrack(), "camera")])
    await offered
    error = room.wait_for(lambda m: m["type"] == "error")
    await room.send(json.dumps({"v": 1, "type": "subscribe_answer", "sdp": "v=0\r\nm=video x"}))
    assert (await error)["code"] == "bad_sdp"
    for client in (teacher, room):
        await client.close()


def test_offered_simulcast_streams_are_read_and_bounded() -> None:
    """Only declared RIDs of browser shape are taken, at most four per m-line, and
    the answer names exactly those."""

    def section(mid: str, rids: list[str], simulcast: str) -> str:
        lines = ["m=video 9 UDP/TLS/RTP/SAVPF 96", f"a=mid:{mid}"]
        lines += [f"a=rid:{rid} send" for rid in rids]
        return "\r\n".join([*lines, f"a=simulcast:send {simulcast}"])

    offer = "\r\n".join(
        [
            "v=0",
            section("0", ["h", "m", "l"], "h;~m;l"),
            section("1", ["a", "b"], "a,b;c"),  # c is not declared
            section("2", ["x!", "ok"], "x!;ok"),  # "x!" is not a RID
            section("3", list("abcdef"), "a;b;c;d;e;f"),
            section("4", ["with=sign"], "with=sign"),
            "",
        ]
    )
    rids = simulcast_rids(offer)
    assert rids == {"0": ["h", "m", "l"], "1": ["a", "b"], "2": ["ok"], "3": list("abcd")}
    answer = accept_simulcast("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n", rids)
    assert "a=rid:h recv\r\na=rid:m recv\r\na=rid:l recv" in answer
    assert "a=simulcast:recv h;m;l" in answer
