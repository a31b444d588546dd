"""Join links for a scheduled lesson: shared by the HTTP API and ``lco lesson links``."""

from __future__ import annotations

import time

from pydantic import BaseModel

from signaling.catalogue import Catalogue
from signaling.permissions import Role
from signaling.tokens import mint_token


class JoinLink(BaseModel):
    """One person's link; the token is in the fragment, never in a request line."""

    role: Role
    name: str
    school: str
    link: str
    expires_at: int
    endpoint: str | None = None
    headcount: int | None = None


class LinkMaker:
    """Mints links for the lessons of one catalogue."""

    def __init__(self, catalogue: Catalogue, secret: bytes, base_url: str) -> None:
        self._catalogue = catalogue
        self._secret = secret
        self._base = base_url.rstrip("/")

    def default_ttl(self, lesson_id: str) -> int:
        """Valid until an hour after the scheduled end, and at least an hour from now."""
        lesson = self._catalogue.lesson(lesson_id)
        return max(3600, int(lesson.ends_at.timestamp() - time.time()) + 3600)

    def link(
        self,
        lesson_id: str,
        role: Role,
        name: str,
        school: str,
        ttl: int,
        endpoint: str | None = None,
        headcount: int | None = None,
    ) -> JoinLink:
        """One link."""
        token = mint_token(
            self._secret,
            lesson=lesson_id,
            name=name,
            role=role,
            school=school,
            ttl_seconds=ttl,
            headcount=headcount,
        )
        return JoinLink(
            role=role,
            name=name,
            school=school,
            link=f"{self._base}/join#token={token}",
            expires_at=int(time.time()) + ttl,
            endpoint=endpoint,
            headcount=headcount,
        )

    def standard(self, lesson_id: str) -> list[JoinLink]:
        """The teacher, a guest expert, and one link per invited classroom endpoint."""
        lesson = self._catalogue.lesson(lesson_id)
        ttl = self.default_ttl(lesson_id)
        links = [
            self.link(lesson_id, Role.TEACHER, lesson.host_teacher, lesson.host_school, ttl),
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
                    )
                )
        return links

    def named(
        self, lesson_id: str, role: Role, names: list[str], school: str, ttl: int | None
    ) -> list[JoinLink]:
        """One link per name, for people of one role and school. Raises ``ValueError``."""
        lesson = self._catalogue.lesson(lesson_id)
        if school and school not in {lesson.host_school, *lesson.invited_schools}:
            raise ValueError(f"school {school!r} is not invited to this lesson")
        lifetime = ttl or self.default_ttl(lesson_id)
        return [self.link(lesson_id, role, name, school, lifetime) for name in names]
