"""TURN for clients behind firewalls, and an SFU that never relays its own media.

First the credential format and schedule (plain values), then coturn started with
the configuration of ``docs/turn.md`` (real allocations from aioice's TURN client),
then a real ``lco serve`` that hands out and renews credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aioice import stun, turn
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)

from media.client import LessonClient
from media.peers import IceSettings
from media.testsource import PatternVideoTrack
from server.cli import build_parser, settings_from_args
from signaling import protocol as p
from signaling.permissions import Role
from signaling.turn import TurnRest, turn_credential

from .conftest import RunningServer, start_server, stop_server
from .coturn import Coturn

SECRET = b"north-star"
URLS = ("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:443?transport=tcp")

# -- credentials (sans-I/O) -------------------------------------------------------


def test_a_credential_is_the_rest_api_username_with_coturns_hmac() -> None:
    credential = turn_credential(SECRET, "3f9c2a1b7d4e", now=1_700_000_000.7, ttl=3600)
    assert credential.username == "1700003600:3f9c2a1b7d4e"
    assert credential.expires_at == 1_700_003_600
    # Computed apart from this code:
    #   printf 1700003600:3f9c2a1b7d4e | openssl dgst -sha1 -hmac north-star -binary | base64
    assert credential.password == "DF2t5OqPFCSopr2sJcFjEAxjwyk="
    assert credential.password not in repr(credential)


def test_renewed_credentials_come_half_a_lifetime_before_the_old_ones_expire() -> None:
    rest = TurnRest(SECRET, URLS, ttl=3600)
    assert rest.renewal_interval == 1800
    first = rest.ice_server("3f9c2a1b7d4e", now=1_000_000.0)
    renewed = rest.ice_server("3f9c2a1b7d4e", now=1_000_000.0 + rest.renewal_interval)

    def expiry(server: Any) -> int:
        return int(server.username.split(":")[0])

    # When the renewal goes out, the first credential still has half its lifetime.
    assert expiry(first) - (1_000_000 + rest.renewal_interval) == 1800
    assert expiry(renewed) == expiry(first) + 1800
    assert renewed.credential != first.credential
    assert first.urls == list(URLS)
    assert "north-star" not in repr(rest)


def test_bad_turn_settings_are_refused_without_showing_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for bad in (
        {"secret": b""},
        {"urls": ()},
        {"urls": ("stun:turn.example.org:3478",)},
        {"ttl": 9},
    ):
        kwargs: dict[str, Any] = {"secret": SECRET, "urls": URLS, "ttl": 3600, **bad}
        with pytest.raises(ValueError):
            TurnRest(**kwargs)
    with pytest.raises(ValueError, match="':'"):
        turn_credential(SECRET, "a:b", now=0, ttl=60)

    def serve(*args: str) -> Any:
        return settings_from_args(build_parser().parse_args(["serve", *args]))

    for args, message in (
        (["--turn-url", URLS[0]], "needs --turn-secret"),
        (["--turn-secret", "north-star"], "needs a --turn-url"),
        (["--turn-secret", "north-star", "--turn-url", URLS[0], "--turn-ttl", "5"], "at least"),
        (["--turn-secret", "north-star", "--turn-url", "http://x"], "must start with turn"),
    ):
        with pytest.raises(SystemExit, match=message) as refused:
            serve("--secret", "s" * 40, "--admin-key", "k" * 40, *args)
        assert "north-star" not in str(refused.value)
    settings = serve(
        "--secret", "s" * 40, "--admin-key", "k" * 40,
        "--turn-secret", "north-star", "--turn-url", URLS[0], "--turn-url", URLS[1],
    )  # fmt: skip
    assert settings.turn == TurnRest(SECRET, URLS, 3600)
    # The same from the environment.
    monkeypatch.setenv("LCO_TURN_SECRET", "north-star")
    monkeypatch.setenv("LCO_TURN_URLS", ",".join(URLS))
    monkeypatch.setenv("LCO_TURN_TTL", "2h")
    settings = serve("--secret", "s" * 40, "--admin-key", "k" * 40)
    assert settings.turn == TurnRest(SECRET, URLS, 7200)


def test_the_sfu_refuses_turn_servers_for_its_own_connections() -> None:
    IceSettings(ice_servers=(RTCIceServer("stun:stun.example.org:3478"),))
    for url in ("turn:turn.example.org:3478", "turns:turn.example.org:443?transport=tcp"):
        with pytest.raises(ValueError, match="for clients only"):
            IceSettings(ice_servers=(RTCIceServer([url], "user", "pass"),))


# -- coturn as documented ----------------------------------------------------------


@contextlib.asynccontextmanager
async def turn_client(
    coturn: Coturn, username: str, password: str, transport: str
) -> AsyncIterator[Any]:
    """aioice's TURN client connected to coturn over ``udp``, ``tcp`` or ``tls`` (443,
    verifying coturn's certificate against the test CA); not yet allocated."""
    loop = asyncio.get_running_loop()
    server = (coturn.address, coturn.tls_port if transport == "tls" else coturn.port)
    options: dict[str, Any] = {"lifetime": 600, "channel_refresh_time": 500}
    if transport == "udp":
        connection, client = await loop.create_datagram_endpoint(
            lambda: turn.TurnClientUdpProtocol(server, username, password, **options),
            remote_addr=server,
        )
    else:
        context = ssl.create_default_context(cafile=coturn.ca.ca) if transport == "tls" else None
        connection, client = await loop.create_connection(
            lambda: turn.TurnClientTcpProtocol(server, username, password, **options),
            host=server[0],
            port=server[1],
            ssl=context,
        )
    try:
        yield client
    finally:
        if client.refresh_task is not None:
            await client.delete()  # gives the allocation back
        connection.close()


async def refused_with(coturn: Coturn, username: str, password: str) -> int:
    async with turn_client(coturn, username, password, "tcp") as client:
        with pytest.raises(stun.TransactionFailed) as refused:
            await client.connect()
        code = refused.value.response.error_code
        assert code is not None
        return code


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_coturn_allocates_with_our_credentials_on_each_documented_port(
    coturn: Coturn, transport: str
) -> None:
    credential = turn_credential(coturn.secret, "3f9c2a1b7d4e", time.time(), 3600)
    async with turn_client(coturn, credential.username, credential.password, transport) as c:
        relayed_ip, relayed_port = await c.connect()
    assert relayed_ip == coturn.address
    assert int(coturn.setting("min-port")) <= relayed_port <= int(coturn.setting("max-port"))


async def test_coturn_refuses_expired_or_forged_credentials(coturn: Coturn) -> None:
    expired = turn_credential(coturn.secret, "3f9c2a1b7d4e", time.time() - 3700, 3600)
    assert await refused_with(coturn, expired.username, expired.password) == 401
    forged = turn_credential(b"another secret", "3f9c2a1b7d4e", time.time(), 3600)
    assert await refused_with(coturn, forged.username, forged.password) == 401


async def test_the_relay_reaches_the_sfu_and_no_other_private_address(coturn: Coturn) -> None:
    sfu = coturn.setting("allowed-peer-ip")
    credential = turn_credential(coturn.secret, "3f9c2a1b7d4e", time.time(), 3600)
    async with turn_client(coturn, credential.username, credential.password, "tcp") as client:
        await client.connect()
        await client.channel_bind(0x4000, (sfu, 40000))
        refused: dict[str, int] = {}
        for number, peer in enumerate(
            [
                coturn.address,  # the TURN server's own (private, here) address
                "10.0.0.1",
                "100.64.0.1",
                "127.0.0.1",
                "169.254.169.254",  # cloud metadata services
                "172.16.0.1",
                "192.0.0.8",
                "192.168.1.1",
                "198.18.0.1",
                "224.0.0.251",  # multicast
                "240.0.0.1",
                "0.0.0.1",
                "::1",  # IPv6: the relay address is IPv4 only
            ],
            start=0x4001,
        ):
            with pytest.raises(stun.TransactionFailed) as error:
                await client.channel_bind(number, (peer, 40000))
            refused[peer] = error.value.response.error_code or 0
    ipv6 = refused.pop("::1")
    assert refused == dict.fromkeys(refused, 403)  # Forbidden
    assert ipv6 == 443  # Peer Address Family Mismatch


def test_coturn_runs_as_its_own_user_without_a_cli(coturn: Coturn) -> None:
    status = Path(f"/proc/{coturn.process.pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(map(int, uids)) == {pwd.getpwnam(coturn.setting("proc-user")).pw_uid}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 5766), timeout=5)  # coturn's CLI port


# -- lco serve hands out and renews credentials --------------------------------------


@pytest.fixture
def turn_server(tmp_path: Path, coturn: Coturn) -> Iterator[RunningServer]:
    static = turn_credential(coturn.secret, "static", time.time(), 3600)
    running = start_server(
        tmp_path,
        "--turn-url",
        coturn.urls[0],
        "--turn-url",
        coturn.urls[2],
        "--turn-ttl",
        "10",
        # Given to the SFU too before: it must now reach clients only.
        "--ice-server",
        f"{coturn.urls[0]}|{static.username}|{static.password}",
        # The address coturn may relay to (it refuses loopback).
        "--ice-host",
        os.environ["LCO_TEST_HOST_ADDRESS"],
        env={"LCO_TURN_SECRET": coturn.secret.decode()},
    )
    try:
        yield running
    finally:
        stop_server(running)


async def test_clients_get_credentials_renewed_in_time_and_the_sfu_never_relays(
    turn_server: RunningServer, coturn: Coturn, decoding_clients: None
) -> None:
    # A lesson whose lobby holds students: renewals reach them there too.
    for path, body in (
        ("/api/communities", {"id": "valley", "name": "Valley"}),
        ("/api/communities/valley/schools", {"id": "north", "name": "North"}),
        (
            "/api/lessons",
            {
                "id": "held",
                "community_id": "valley",
                "title": "Held",
                "host_teacher": "Ms T",
                "host_school": "north",
                "starts_at": "2026-12-01T09:00:00Z",
                "ends_at": "2026-12-01T10:00:00Z",
                "settings": {"lobby": True},
            },
        ),
    ):
        assert turn_server.api("POST", path, json=body).status_code == 201
    waiting = LessonClient(turn_server.ws, turn_server.token("Ana", Role.STUDENT, "held"))
    client = LessonClient(turn_server.ws, turn_server.token("Ms T", Role.TEACHER))
    try:
        renewed_in_lobby = waiting.wait_for(lambda m: m["type"] == "ice_servers", timeout=15)
        assert (await waiting.connect())["type"] == "lobby_wait"
        renewed = client.wait_for(lambda m: m["type"] == "ice_servers", timeout=15)
        welcome = await client.connect()
        static, rest = welcome["ice_servers"]
        assert static["urls"] == [coturn.urls[0]] and static["username"].endswith(":static")
        assert rest["urls"] == [coturn.urls[0], coturn.urls[2]]
        assert rest["username"].endswith(f":{client.participant_id}")
        first_expiry = int(rest["username"].split(":")[0])

        # A client given these servers relays through coturn; the SFU, given the
        # same static server, answers with its own address only.
        answer = await client.publish([(PatternVideoTrack(), "camera")], video_codec="VP8")
        assert client.publish_pc is not None
        offer = client.publish_pc.localDescription.sdp
        assert " typ relay" in offer
        sfu_candidates = [
            line for line in answer["sdp"].splitlines() if line.startswith("a=candidate:")
        ]
        assert sfu_candidates and all(" typ host" in line for line in sfu_candidates)

        message = await renewed
        assert time.time() < first_expiry  # arrived before the first credential expired
        (static_again, fresh) = message["ice_servers"]
        assert static_again == static
        assert int(fresh["username"].split(":")[0]) > first_expiry
        assert fresh["credential"] != rest["credential"]
        assert client.ice_servers[1].username == fresh["username"]  # used from now on

        in_lobby = (await renewed_in_lobby)["ice_servers"]
        assert in_lobby[1]["username"].endswith(f":{waiting.participant_id}")
        assert waiting.welcome is None  # renewed before it was even let in
    finally:
        await client.close()
        await waiting.close()
    stop_server(turn_server)
    log = turn_server.log()
    assert coturn.secret.decode() not in log
    assert rest["credential"] not in log and fresh["credential"] not in log
    assert "is for clients only" in log


async def test_a_relayed_client_counts_as_relayed_even_if_its_checks_came_first(
    turn_server: RunningServer, coturn: Coturn, decoding_clients: None
) -> None:
    """A browser trickles its candidates; its checks through the relay may reach the SFU
    before the candidate does. aioice then knows that end as peer-reflexive until the
    candidate arrives: /metrics counts the connection as relayed from then on."""
    client = LessonClient(turn_server.ws, turn_server.token("Ms T", Role.TEACHER))
    credential = turn_credential(coturn.secret, "relay-only", time.time(), 600)
    pc = RTCPeerConnection(
        RTCConfiguration(
            iceServers=[RTCIceServer(coturn.urls[0], credential.username, credential.password)],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        )
    )
    connected = asyncio.Event()
    pc.on("connectionstatechange", lambda: pc.connectionState == "connected" and connected.set())
    try:
        await client.connect()
        pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        lines = pc.localDescription.sdp.splitlines()
        relay = [line for line in lines if line.startswith("a=candidate:") and "typ relay" in line]
        assert relay
        # The offer without its candidates (and without saying there are no more).
        offer = [line for line in lines if line not in relay and line != "a=end-of-candidates"]
        answered = client.wait_for(lambda m: m["type"] in ("publish_answer", "error"))
        await client.send(
            p.PublishOffer(
                sdp="\r\n".join(offer) + "\r\n",
                tracks=[p.PublishedTrackSpec(mid="0", source="camera")],
            )
        )
        answer = await answered
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await asyncio.wait_for(connected.wait(), 15)
        assert turn_server.metrics()["sfu"]["relayed_peer_connections"] == 0  # type: ignore[index]

        await client.send(p.IceCandidate(pc="publish", candidate=relay[0][2:], sdp_mid="0"))
        pong = client.wait_for(lambda m: m["type"] == "pong")
        await client.send(p.Ping())  # answered after the candidate was handled
        await pong
        assert turn_server.metrics()["sfu"]["relayed_peer_connections"] == 1  # type: ignore[index]
    finally:
        await pc.close()
        await client.close()
