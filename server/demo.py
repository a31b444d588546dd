"""The links ``lco serve`` prints when it starts: a demo lesson to try at once.

The demo lesson is an ad-hoc lesson (not in the catalogue) with a fresh id at each
start, so a demo someone ended never blocks the next one. Its links go to standard
output, for the person at the terminal; logs (standard error) never carry them.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from signaling.permissions import Role
from signaling.tokens import mint_token

from .config import Settings

DEMO_LINK_LIFETIME = 8 * 3600  # a school day


def base_url(settings: Settings) -> str:
    """Where people reach this server: ``--public-url``, else the listening address
    (a wildcard address is reached as 127.0.0.1 on this machine)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def demo_banner(settings: Settings, admin_key_file: Path | None, now: float | None = None) -> str:
    """What ``lco serve`` prints once it listens: a teacher and a student link for a
    new demo lesson, and how to make more. ``admin_key_file`` is where the admin key is
    kept, or None when it was given (flag or environment): never the key itself."""
    issued = time.time() if now is None else now
    lesson = f"demo-{secrets.token_hex(3)}"
    lifetime = min(DEMO_LINK_LIFETIME, settings.max_link_lifetime)
    base = base_url(settings)

    def link(name: str, role: Role) -> str:
        token = mint_token(
            settings.secret,
            lesson=lesson,
            name=name,
            role=role,
            school="demo",
            ttl_seconds=lifetime,
            now=issued,
        )
        return f"{base}/join#token={token}"

    key = (
        f"the admin key in {admin_key_file}"
        if admin_key_file is not None
        else "the admin key you set (--admin-key or LCO_ADMIN_KEY)"
    )
    hours = lifetime / 3600
    return "\n".join(
        [
            "",
            f"LCO Classroom is ready at {base}/",
            "",
            f"  Teach the demo lesson {lesson} (open this in a browser on this computer):",
            f"    {link('Demo teacher', Role.TEACHER)}",
            "  A student's link for it (another browser window or computer):",
            f"    {link('Demo student', Role.STUDENT)}",
            "",
            f"  Both links work for {hours:g} hours. To schedule lessons for your schools and",
            f"  hand out their links, open the console at {base}/console",
            f"  and sign in with {key};",
            "  or use `lco lesson links` (README). --no-demo prints no links.",
            "",
        ]
    )
