"""Which ICE candidates the SFU sends connectivity checks to (media/candidate_policy.py).

Sans-I/O: the addresses below are only strings here, no packet is sent to any of them.
"""

from __future__ import annotations

import pytest

from media.candidate_policy import MAX_CANDIDATES, CandidatePolicy


def candidate(address: str, port: int = 50_000, transport: str = "udp", kind: str = "host") -> str:
    return f"candidate:1 1 {transport} 2122260223 {address} {port} typ {kind}"


PUBLIC_SERVER = CandidatePolicy(own_addresses=["203.0.113.10"])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (candidate("93.184.216.34"), None),  # a client's public (server-reflexive) address
        (candidate("93.184.216.34", kind="relay"), None),
        (candidate("2a00:1450:4001:82a::200e"), None),
        (
            candidate("2001:db8::1"),
            "a private address outside the client's and the server's networks",
        ),
        (candidate("93.184.216.34", port=53), "port below 1024"),
        (candidate("93.184.216.34", port=70_000), "port below 1024"),
        (candidate("93.184.216.34", transport="tcp"), "not UDP"),
        (candidate("127.0.0.1"), "loopback"),
        (candidate("::1"), "loopback"),
        (candidate("10.9.9.9"), "a private address outside the client's and the server's networks"),
        (
            candidate("169.254.3.4"),
            "a private address outside the client's and the server's networks",
        ),
        (
            candidate("100.64.1.1"),
            "a private address outside the client's and the server's networks",
        ),
        (candidate("0.0.0.0"), "not a unicast address"),
        (candidate("224.0.0.251"), "not a unicast address"),
        (candidate("240.0.0.1"), "not a unicast address"),
        (candidate("victim.example.com"), "a host name"),
        (candidate("3b9a1e0c-6c2d-4e1e-9c2f-0d1f1a2b3c4d.local"), None),  # mDNS
        ("candidate:1 1 udp", "malformed"),
        ("candidate:1 1 udp 1 93.184.216.34 5000 host", "malformed"),
    ],
)
def test_a_public_server_checks_only_addresses_a_client_can_have(
    text: str, reason: str | None
) -> None:
    gate = PUBLIC_SERVER.gate("93.184.216.34")
    assert gate.admit(text) == reason


def test_private_addresses_of_the_clients_own_network_are_checked() -> None:
    """A classroom PC on the school's network, reaching a server on the same network."""
    school = CandidatePolicy(own_addresses=["10.1.0.5"])
    gate = school.gate("10.2.7.20")  # the client's signalling address
    assert gate.admit(candidate("10.2.7.20")) is None  # its own address
    assert gate.admit(candidate("10.2.7.99")) is None  # its own network
    assert gate.admit(candidate("10.1.0.77")) is None  # the server's network
    assert gate.admit(candidate("10.3.0.1")) is not None  # some other network of the district
    district = CandidatePolicy(own_addresses=["10.1.0.5"], allowed_networks=["10.0.0.0/8"])
    assert district.gate("10.2.7.20").admit(candidate("10.3.0.1")) is None


def test_loopback_is_checked_only_by_a_server_on_loopback() -> None:
    one_machine = CandidatePolicy(own_addresses=["127.0.0.1"])
    assert one_machine.gate("127.0.0.1").admit(candidate("127.0.0.1")) is None
    assert PUBLIC_SERVER.gate("127.0.0.1").admit(candidate("127.0.0.1")) == "loopback"


def test_a_peer_connection_admits_at_most_the_cap_and_counts_the_rest() -> None:
    gate = PUBLIC_SERVER.gate("93.184.216.34")
    for port in range(MAX_CANDIDATES):
        assert gate.admit(candidate("93.184.216.34", 40_000 + port)) is None
    assert (
        gate.admit(candidate("93.184.216.34", 41_000)) == f"more than {MAX_CANDIDATES} candidates"
    )
    assert gate.admit(candidate("10.0.0.1")) is not None
    assert (gate.admitted, gate.refused) == (MAX_CANDIDATES, 2)
    # Each peer connection has its own gate.
    assert PUBLIC_SERVER.gate("93.184.216.34").admit(candidate("93.184.216.34", 41_000)) is None


def test_candidates_in_sdp_pass_the_same_gate() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=" + candidate("93.184.216.34"),
            "a=" + candidate("127.0.0.1"),
            "a=" + candidate("93.184.216.34", port=80),
            "a=mid:0",
            "",
        ]
    )
    gate = PUBLIC_SERVER.gate("93.184.216.34")
    filtered = gate.filter_sdp(sdp).split("\r\n")
    assert [line for line in filtered if line.startswith("a=candidate")] == [
        "a=" + candidate("93.184.216.34")
    ]
    assert "a=mid:0" in filtered and gate.refused == 2


def sdp_with(ufrag: str, *candidates: str) -> str:
    return "\r\n".join(
        ["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", f"a=ice-ufrag:{ufrag}"]
        + ["a=" + c for c in candidates]
        + ["a=mid:0", ""]
    )


def test_candidates_repeated_by_renegotiations_count_once() -> None:
    """Every answer of a long lesson repeats the client's candidates: they stay admitted
    (the cap counts distinct ones), and refusals are counted once each."""
    gate = PUBLIC_SERVER.gate("93.184.216.34")
    ports = [candidate("93.184.216.34", 40_000 + n) for n in range(MAX_CANDIDATES)]
    answer = sdp_with("abcd", *ports, candidate("127.0.0.1"))
    for _ in range(50):
        kept = [line for line in gate.filter_sdp(answer).split("\r\n") if "candidate" in line]
        assert kept == ["a=" + c for c in ports]
    assert (gate.admitted, gate.refused) == (MAX_CANDIDATES, 1)
    # Past the cap, a new one is still refused.
    assert (
        gate.admit(candidate("93.184.216.34", 41_000)) == f"more than {MAX_CANDIDATES} candidates"
    )


def test_an_ice_restart_starts_a_new_count() -> None:
    """New ICE credentials (a phone moving from Wi-Fi to mobile data): the new network's
    candidates are admitted, up to the cap again."""
    gate = PUBLIC_SERVER.gate("93.184.216.34")
    first = [candidate("93.184.216.34", 40_000 + n) for n in range(MAX_CANDIDATES)]
    gate.filter_sdp(sdp_with("wifi", *first))
    moved = [candidate("93.184.216.35", 50_000 + n) for n in range(MAX_CANDIDATES)]
    assert gate.filter_sdp(sdp_with("wifi", *moved)).count("a=candidate") == 0
    assert gate.filter_sdp(sdp_with("mobile", *moved)).count("a=candidate") == MAX_CANDIDATES
