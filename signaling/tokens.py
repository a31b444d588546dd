"""Signed join tokens.

A join token is a JWT (HS256) signed with the server's secret. It carries
everything that decides who a participant is: lesson, display name, role and
school. Nothing a client sends later can change those.
"""

from __future__ import annotations

import binascii
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.utils import base64url_decode

from .permissions import Role

ALGORITHM = "HS256"
ISSUER = "lco-classroom"
# Minimum secret length: HS256 keys shorter than the hash output are weak.
MIN_SECRET_BYTES = 32
# One limit for every name that travels in a token: the catalogue's teacher and
# endpoint names and the API's link names are checked with check_name too.
MAX_NAME_LENGTH = 80
MAX_ID_LENGTH = 64


class TokenError(Exception):
    """A join token was refused; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token grants: the identity a participant joins with."""

    lesson: str
    name: str
    role: Role
    school: str
    token_id: str
    expires_at: int
    # For classroom endpoints: how many students sit in front of it.
    headcount: int | None = None


def check_identifier(field: str, value: str) -> None:
    """A lesson or school id as tokens carry it; raises ``ValueError`` naming ``field``."""
    if not value or len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{field} must be 1 to {MAX_ID_LENGTH} characters")
    if not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError(f"{field} may contain only letters, digits, '-', '_' and '.'")


def check_name(name: str) -> str:
    """A display name as tokens carry it (not blank, at most 80 characters).

    Returns it unchanged; raises ``ValueError``. A pydantic validator as well, so
    that the catalogue and the API refuse what a token could not carry.
    """
    if not name.strip():
        raise ValueError("must not be blank")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"must be at most {MAX_NAME_LENGTH} characters")
    return name


def mint_token(
    secret: bytes,
    *,
    lesson: str,
    name: str,
    role: Role,
    school: str = "",
    ttl_seconds: int = 4 * 3600,
    now: float | None = None,
    headcount: int | None = None,
) -> str:
    """Sign a join token for one participant. Raises ``ValueError`` on bad fields."""
    check_identifier("lesson", lesson)
    if school:
        check_identifier("school", school)
    try:
        check_name(name)
    except ValueError as exc:
        raise ValueError(f"name {exc}") from None
    if ttl_seconds <= 0:
        raise ValueError("ttl must be positive")
    if headcount is not None and not 0 <= headcount <= 1000:
        raise ValueError("headcount must be between 0 and 1000")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "iss": ISSUER,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "jti": secrets.token_urlsafe(12),
        "lesson": lesson,
        "name": name.strip(),
        "role": role.value,
        "school": school,
    }
    if headcount is not None:
        claims["headcount"] = headcount
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _refuse_duplicate_keys(token: str) -> None:
    """Refuse a header or payload that repeats a key, as the protocol refuses messages.

    PyJWT's JSON decoding keeps the last of repeated keys, so ``{"role":"student",
    "role":"teacher"}`` would mean whatever a reader's parser picks. Anything else
    wrong with the segments is left to PyJWT, which names it.
    """
    for segment in token.split(".")[:2]:
        try:
            json.loads(base64url_decode(segment), object_pairs_hook=_no_duplicates)
        except _DuplicateKey as exc:
            raise TokenError(
                f"the join link is not valid (duplicate key {exc.key!r} in the token)"
            ) from None
        except (ValueError, binascii.Error, RecursionError):
            return


def verify_token(secret: bytes, token: str) -> Grant:
    """Check a token's signature, expiry and fields; raise ``TokenError`` with a reason."""
    if not isinstance(token, str) or not token:
        raise TokenError("no join token was given")
    _refuse_duplicate_keys(token)
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the join link has expired; ask the teacher for a new one") from None
    except jwt.InvalidSignatureError:
        raise TokenError("the join link is not valid for this server (bad signature)") from None
    except jwt.DecodeError:
        raise TokenError("the join link is damaged (token cannot be read)") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"the join link is not valid ({exc})") from None
    try:
        role = Role(str(claims["role"]))
        lesson = str(claims["lesson"])
        name = str(claims["name"])
        school = str(claims.get("school", ""))
        headcount = claims.get("headcount")
        if headcount is not None and not isinstance(headcount, int):
            raise ValueError("headcount")
        check_identifier("lesson", lesson)
    except (KeyError, ValueError):
        raise TokenError("the join link is not valid (missing or bad fields)") from None
    return Grant(
        lesson=lesson,
        name=name,
        role=role,
        school=school,
        token_id=str(claims["jti"]),
        expires_at=int(claims["exp"]),
        headcount=headcount,
    )
