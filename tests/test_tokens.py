"""Join tokens: minting, verification and every way a token is refused."""

from __future__ import annotations

import time

import jwt
import pytest

from signaling.permissions import Role
from signaling.tokens import TokenError, mint_token, verify_token

SECRET = b"s" * 48


def test_a_minted_token_verifies_to_its_grant() -> None:
    token = mint_token(
        SECRET, lesson="maths-7", name="Ms Rivera", role=Role.TEACHER, school="north"
    )
    grant = verify_token(SECRET, token)
    assert (grant.lesson, grant.name, grant.role, grant.school) == (
        "maths-7",
        "Ms Rivera",
        Role.TEACHER,
        "north",
    )
    assert grant.expires_at > time.time()


def test_an_expired_token_is_refused_with_the_reason() -> None:
    token = mint_token(
        SECRET, lesson="l", name="n", role=Role.STUDENT, ttl_seconds=60, now=time.time() - 120
    )
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = mint_token(b"x" * 48, lesson="l", name="n", role=Role.STUDENT)
    with pytest.raises(TokenError, match="bad signature"):
        verify_token(SECRET, token)


def test_a_tampered_token_is_refused() -> None:
    token = mint_token(SECRET, lesson="l", name="n", role=Role.STUDENT)
    header, _, signature = token.split(".")
    # Re-sign nothing: swap the payload for one that claims the teacher role.
    forged = jwt.encode(
        {**jwt.decode(token, options={"verify_signature": False}), "role": "teacher"},
        b"attacker-key-attacker-key-attacker!!",
        algorithm="HS256",
    ).split(".")[1]
    with pytest.raises(TokenError, match="bad signature"):
        verify_token(SECRET, f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("token", ["", "not-a-token", "a.b.c"])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, token)


def test_an_unsigned_token_is_refused() -> None:
    claims = jwt.decode(
        mint_token(SECRET, lesson="l", name="n", role=Role.TEACHER),
        options={"verify_signature": False},
    )
    unsigned = jwt.encode(claims, key=None, algorithm="none")
    with pytest.raises(TokenError):
        verify_token(SECRET, unsigned)


def test_an_unknown_role_is_refused() -> None:
    claims = jwt.decode(
        mint_token(SECRET, lesson="l", name="n", role=Role.TEACHER),
        options={"verify_signature": False},
    )
    token = jwt.encode({**claims, "role": "admin"}, SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match="bad fields"):
        verify_token(SECRET, token)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lesson": ""}, "lesson"),
        ({"lesson": "a b"}, "lesson"),
        ({"name": "  "}, "name"),
        ({"school": "x/y"}, "school"),
        ({"ttl_seconds": 0}, "ttl"),
    ],
)
def test_bad_fields_cannot_be_minted(fields: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"lesson": "l", "name": "n", "role": Role.STUDENT, **fields}
    with pytest.raises(ValueError, match=message):
        mint_token(SECRET, **arguments)  # type: ignore[arg-type]


def signed(header: str, payload: str, secret: bytes = SECRET) -> str:
    """A correctly signed token with exactly this header and payload text."""
    import base64
    import hashlib
    import hmac

    def b64(text: bytes) -> bytes:
        return base64.urlsafe_b64encode(text).rstrip(b"=")

    signing_input = b64(header.encode()) + b"." + b64(payload.encode())
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


HEADER = '{"alg":"HS256","typ":"JWT"}'


def payload(*pairs: str) -> str:
    now = int(time.time())
    base = [
        '"iss":"lco-classroom"',
        f'"iat":{now}',
        f'"exp":{now + 600}',
        '"jti":"abc"',
        '"lesson":"maths-7"',
        '"name":"Ana"',
        '"school":"south"',
    ]
    return "{" + ",".join([*base, *pairs]) + "}"


def test_a_hand_built_token_without_duplicates_verifies() -> None:
    grant = verify_token(SECRET, signed(HEADER, payload('"role":"student"')))
    assert grant.role is Role.STUDENT


@pytest.mark.parametrize(
    ("header", "claims", "key"),
    [
        (HEADER, payload('"role":"student"', '"role":"teacher"'), "role"),
        (HEADER, payload('"role":"student"', '"lesson":"other"'), "lesson"),
        ('{"alg":"HS256","typ":"JWT","alg":"none"}', payload('"role":"student"'), "alg"),
    ],
    ids=["role", "lesson", "header-alg"],
)
def test_duplicate_keys_in_a_token_are_refused_naming_the_key(
    header: str, claims: str, key: str
) -> None:
    with pytest.raises(TokenError, match=f"duplicate key '{key}'"):
        verify_token(SECRET, signed(header, claims))
