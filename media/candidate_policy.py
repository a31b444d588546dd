"""Which ICE candidates of a client the SFU will send connectivity checks to.

Every remote candidate makes the server send STUN requests (with retransmissions)
to the address it names. Unchecked, a client could aim that traffic at any host
and port: loopback services, the school's private network, or a public victim (a
few bytes of signalling turn into kilobytes of STUN). A candidate is checked only
if it could really be the client:

- UDP (aioice checks nothing else) on a port from 1024 up;
- an IP address (a client cannot make the server look up names), or an mDNS
  ``.local`` name (resolved on the server's own link only);
- not unspecified, multicast or reserved;
- loopback only when the server itself announces a loopback address (one machine);
- private, link-local and other non-global addresses only within the client's own
  network (that of its signalling address), one of the server's own networks, or a
  network the operator allows (``--ice-allow-network``);
- public addresses: yes (a client behind NAT is reached there, and relays are);
- at most :data:`MAX_CANDIDATES` per peer connection.

Sans-I/O: addresses in, a verdict out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Candidates a gate remembers (admitted or refused), so that repeats are not counted.
MAX_REMEMBERED = 256
MAX_CANDIDATES = 16  # per peer connection: more than any real client has
MIN_PORT = 1024
IPV4_NETWORK = 24  # "the same network": this prefix around an address
IPV6_NETWORK = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network_of(address: str) -> Network | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    prefix = IPV4_NETWORK if ip.version == 4 else IPV6_NETWORK
    return ipaddress.ip_network(f"{ip}/{prefix}", strict=False)


@dataclass(frozen=True, slots=True)
class CandidatePolicy:
    """The server's side of the rule: its own addresses and the networks allowed."""

    own_addresses: Sequence[str] = ()
    allowed_networks: Sequence[str] = ()
    max_candidates: int = MAX_CANDIDATES
    _own_networks: tuple[Network, ...] = field(init=False, default=())
    _allowed: tuple[Network, ...] = field(init=False, default=())
    _loopback: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        own = tuple(n for n in map(_network_of, self.own_addresses) if n is not None)
        object.__setattr__(self, "_own_networks", own)
        allowed = tuple(ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)
        object.__setattr__(self, "_allowed", allowed)
        object.__setattr__(self, "_loopback", any(n.network_address.is_loopback for n in own))

    def gate(self, client_address: str | None) -> CandidateGate:
        """The gate for one peer connection of a client signalling from ``client_address``."""
        client = _network_of(client_address or "")
        networks = (*self._own_networks, *self._allowed, *((client,) if client else ()))
        return CandidateGate(self, networks)

    def refusal(self, candidate: str, networks: Iterable[Network]) -> str | None:
        """Why ``candidate`` (SDP ``candidate:`` text) must not be checked, or None."""
        text = candidate[len("candidate:") :] if candidate.startswith("candidate:") else candidate
        parts = text.split()
        if len(parts) < 8 or parts[6] != "typ":
            return "malformed"
        transport, address, port_text = parts[2].lower(), parts[4], parts[5]
        if transport != "udp":
            return "not UDP"
        if not port_text.isdigit() or not MIN_PORT <= int(port_text) <= 65535:
            return f"port below {MIN_PORT}"
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            if address.lower().endswith(".local") and len(address) <= 255:
                return None
            return "a host name"
        if ip.is_loopback:  # before "reserved": ::1 is both
            return None if self._loopback else "loopback"
        if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            return "not a unicast address"
        if not ip.is_global:  # private, link-local, shared (CGNAT), documentation
            if any(ip in network for network in networks if network.version == ip.version):
                return None
            return "a private address outside the client's and the server's networks"
        return None


@dataclass(slots=True)
class CandidateGate:
    """Counts the distinct candidates one peer connection admitted in its current ICE
    generation; says no past the cap.

    Each renegotiation repeats the client's candidates in its SDP: one seen before is
    neither counted again nor refused for the cap (else a long lesson's answers would
    refuse every candidate, and an ICE restart would then find none). New ICE
    credentials (a restart) start a new generation with a fresh count."""

    policy: CandidatePolicy
    networks: tuple[Network, ...]
    admitted: int = 0
    refused: int = 0  # distinct candidates refused, over every generation
    _ufrag: str | None = None
    _seen: dict[str, str | None] = field(default_factory=dict)  # candidate -> refusal

    def admit(self, candidate: str) -> str | None:
        """Admit one candidate (None), or say why not."""
        key = " ".join(candidate.split())
        if key in self._seen:
            return self._seen[key]
        reason = self.policy.refusal(candidate, self.networks)
        if reason is None and self.admitted >= self.policy.max_candidates:
            reason = f"more than {self.policy.max_candidates} candidates"
        if reason is None:
            self.admitted += 1
        else:
            self.refused += 1
        if len(self._seen) < MAX_REMEMBERED:
            self._seen[key] = reason
        return reason

    def filter_sdp(self, sdp: str) -> str:
        """``sdp`` without the candidate lines this gate refuses."""
        lines = sdp.split("\r\n")
        ufrag = next((line[12:] for line in lines if line.startswith("a=ice-ufrag:")), None)
        if ufrag is not None and ufrag != self._ufrag:
            if self._ufrag is not None:  # an ICE restart: a new generation of candidates
                self.admitted = 0
                self._seen.clear()
            self._ufrag = ufrag
        kept = [
            line
            for line in lines
            if not line.startswith("a=candidate:") or self.admit(line[2:]) is None
        ]
        return "\r\n".join(kept)
