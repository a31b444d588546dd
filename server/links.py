"""Join links for a scheduled lesson: shared by the HTTP API and ``lco lesson links``.

No link lives longer than the server's cap (``--max-link-lifetime``, 7 days by
default) whatever the lesson's schedule says, nor longer than the token of the
teacher who asked for it, nor past an hour after the lesson's scheduled end (an
hour from now for a lesson whose end has passed), whatever lifetime was asked for.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from signaling.adapters.sqlite_catalogue import Catalogue
from signaling.permissions import Role
from signaling.tokens import mint_token

DEFAULT_MAX_LINK_LIFETIME = 7 * 24 * 3600
# How long after a lesson's scheduled end its links still work (a lesson that runs
# over, a student who rejoins late).
LINK_MARGIN_AFTER_END = 3600


class LinkError(ValueError):
    """A link cannot be made; ``field`` names the lesson's or request's field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field!r}: {message}")
        self.field = field


class JoinLink(BaseModel):
    """One person's link; the token is in the fragment, never in a request line."""

    role: Role
    name: str
    school: str
    link: str
    expires_at: int
    endpoint: str | None = None
    headcount: int | None = None
    # With ?qr=svg: the link's QR code as an SVG data: URL.
    qr_svg: str | None = None


class LinkMaker:
    """Mints links for the lessons of one catalogue.

    ``max_lifetime`` caps every link (seconds); ``not_after`` (a Unix time) is the
    expiry of the teacher token the links are minted for, which none outlives.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        secret: bytes,
        base_url: str,
        max_lifetime: int = DEFAULT_MAX_LINK_LIFETIME,
        not_after: int | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._secret = secret
        self._base = base_url.rstrip("/")
        self._max_lifetime = max_lifetime
        self._not_after = not_after

    def default_ttl(self, lesson_id: str) -> int:
        """Valid until an hour after the scheduled end, and at least an hour from now."""
        lesson = self._catalogue.lesson(lesson_id)
        return max(
            LINK_MARGIN_AFTER_END,
            int(lesson.ends_at.timestamp() - time.time()) + LINK_MARGIN_AFTER_END,
        )

    def _lifetime(self, lesson_id: str, wanted: int, now: int) -> int:
        lifetime = min(wanted, self._max_lifetime)
        if self._not_after is not None:
            lifetime = min(lifetime, self._not_after - now)
        ends = int(self._catalogue.lesson(lesson_id).ends_at.timestamp())
        lifetime = min(lifetime, max(ends, now) + LINK_MARGIN_AFTER_END - now)
        if lifetime < 1:
            raise LinkError("authorization", "the token asking for links expires now")
        return lifetime

    def link(
        self,
        lesson_id: str,
        role: Role,
        name: str,
        school: str,
        ttl: int,
        endpoint: str | None = None,
        headcount: int | None = None,
        field: str = "name",
    ) -> JoinLink:
        """One link, valid for ``ttl`` seconds within the caps; ``field`` names ``name``
        in a :class:`LinkError` if a token cannot carry it."""
        now = int(time.time())
        lifetime = self._lifetime(lesson_id, ttl, now)
        try:
            token = mint_token(
                self._secret,
                lesson=lesson_id,
                name=name,
                role=role,
                school=school,
                ttl_seconds=lifetime,
                now=now,
                headcount=headcount,
            )
        except ValueError as exc:
            raise LinkError(field, str(exc)) from None
        return JoinLink(
            role=role,
            name=name,
            school=school,
            link=f"{self._base}/join#token={token}",
            expires_at=now + lifetime,
            endpoint=endpoint,
            headcount=headcount,
        )

    def standard(self, lesson_id: str) -> list[JoinLink]:
        """The teacher, a guest expert, and one link per invited classroom endpoint."""
        lesson = self._catalogue.lesson(lesson_id)
        ttl = self.default_ttl(lesson_id)
        links = [
            self.link(
                lesson_id,
                Role.TEACHER,
                lesson.host_teacher,
                lesson.host_school,
                ttl,
                field="host_teacher",
            ),
            self.link(lesson_id, Role.EXPERT, "Guest expert", "", ttl),
        ]
        for school_id in lesson.invited_schools:
            for endpoint in self._catalogue.endpoints(school_id):
                links.append(
                    self.link(
                        lesson_id,
                        Role.CLASSROOM,
                        endpoint.name,
                        school_id,
                        ttl,
                        endpoint=endpoint.id,
                        headcount=endpoint.headcount,
                        field=f"endpoint {endpoint.id!r} name",
                    )
                )
        return links

    def named(
        self, lesson_id: str, role: Role, names: list[str], school: str, ttl: int | None
    ) -> list[JoinLink]:
        """One link per name, for people of one role and school. Raises :class:`LinkError`."""
        lesson = self._catalogue.lesson(lesson_id)
        if school and school not in {lesson.host_school, *lesson.invited_schools}:
            raise LinkError("school", f"school {school!r} is not invited to this lesson")
        lifetime = ttl or self.default_ttl(lesson_id)
        return [
            self.link(lesson_id, role, name, school, lifetime, field=f"names.{index}")
            for index, name in enumerate(names)
        ]
