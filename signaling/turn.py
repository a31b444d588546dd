"""Short-lived TURN credentials, in the format coturn's ``use-auth-secret`` checks.

The TURN REST API scheme (draft-uberti-behave-turn-rest-00), which coturn
implements: the username is ``<expiry>:<participant id>`` (``expiry`` in Unix
seconds) and the password is ``base64(HMAC-SHA1(static-auth-secret, username))``.
coturn recomputes the password from its copy of the secret and refuses a
username whose expiry has passed, so the lesson server and coturn share only
the secret: no per-user state, nothing to revoke.

coturn checks the expiry when an allocation is created; an allocation made in
time keeps being refreshed after its username expired. A client still needs
valid credentials whenever it allocates again (a new peer connection, an ICE
restart), so the server sends fresh ones well before the old ones expire:
:meth:`TurnRest.renewal_interval`.

Plain functions and values: the caller says what time it is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field

from . import protocol as p

DEFAULT_TTL_SECONDS = 3600
# Shorter lifetimes would renew faster than a client on a slow link can apply them.
MIN_TTL_SECONDS = 10
# Fresh credentials go out once this fraction of the lifetime has passed, so a
# client always holds credentials valid for at least half a lifetime more.
RENEW_AFTER_FRACTION = 0.5


@dataclass(frozen=True, slots=True)
class TurnCredential:
    """One username and password for a TURN server, valid until ``expires_at``."""

    username: str
    password: str = field(repr=False)
    expires_at: int


def turn_credential(secret: bytes, participant_id: str, now: float, ttl: int) -> TurnCredential:
    """The credential coturn accepts for ``participant_id`` until ``now + ttl``."""
    if not secret:
        raise ValueError("the TURN secret is empty")
    if ":" in participant_id:
        # coturn splits the username at the first ':' (its rest-api-separator).
        raise ValueError("a participant id must not contain ':'")
    expires_at = int(now) + ttl
    username = f"{expires_at}:{participant_id}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expires_at)


@dataclass(frozen=True, slots=True)
class TurnRest:
    """TURN servers that share ``secret`` with this server (coturn ``static-auth-secret``)."""

    secret: bytes = field(repr=False)
    urls: tuple[str, ...]
    ttl: int = DEFAULT_TTL_SECONDS

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the TURN secret is empty")
        if not self.urls:
            raise ValueError("at least one TURN URL is needed")
        for url in self.urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"TURN URL {url!r} must start with turn: or turns:")
        if self.ttl < MIN_TTL_SECONDS:
            raise ValueError(f"the TURN credential lifetime must be at least {MIN_TTL_SECONDS} s")

    @property
    def renewal_interval(self) -> float:
        """Seconds between fresh credentials for one participant."""
        return self.ttl * RENEW_AFTER_FRACTION

    def ice_server(self, participant_id: str, now: float) -> p.IceServer:
        """These TURN URLs with a credential for ``participant_id`` issued at ``now``."""
        credential = turn_credential(self.secret, participant_id, now, self.ttl)
        return p.IceServer(
            urls=list(self.urls), username=credential.username, credential=credential.password
        )
