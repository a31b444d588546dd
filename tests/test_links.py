"""Join links minted from the catalogue: their lifetime caps."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.cli import build_parser
from server.links import (
    DEFAULT_MAX_LINK_LIFETIME,
    LINK_MARGIN_AFTER_END,
    LinkError,
    LinkMaker,
)
from signaling.adapters.sqlite_catalogue import Catalogue
from signaling.catalogue import CommunityIn, LessonIn, LessonPatch, SchoolIn
from signaling.permissions import Role
from signaling.tokens import verify_token

SECRET = b"s" * 48


@pytest.fixture
def catalogue(tmp_path: Path) -> Iterator[Catalogue]:
    made = Catalogue(tmp_path / "catalogue.sqlite3")
    made.add_community(CommunityIn(id="valley", name="Valley"))
    made.add_school("valley", SchoolIn(id="north", name="North"))
    starts = datetime.datetime(2026, 12, 1, 9, tzinfo=datetime.UTC)
    made.add_lesson(
        LessonIn(
            id="forever",
            community_id="valley",
            title="Forever",
            host_teacher="Ms Rivera",
            host_school="north",
            starts_at=starts,
            ends_at=datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC),
        )
    )
    yield made
    made.close()


def expiries(links: list[str]) -> list[int]:
    return [verify_token(SECRET, link.split("#token=", 1)[1]).expires_at for link in links]


def test_by_default_no_link_lives_longer_than_seven_days(catalogue: Catalogue) -> None:
    assert DEFAULT_MAX_LINK_LIFETIME == 7 * 86400
    assert build_parser().parse_args(["serve"]).max_link_lifetime == 7 * 86400
    before = int(time.time())
    maker = LinkMaker(catalogue, SECRET, "http://x")
    links = [x.link for x in maker.standard("forever")]
    links += [x.link for x in maker.named("forever", Role.STUDENT, ["Ana"], "", 10 * 86400)]
    for expires in expiries(links):
        assert before + 7 * 86400 <= expires <= int(time.time()) + 7 * 86400


def test_links_never_outlive_the_token_that_asked(catalogue: Catalogue) -> None:
    not_after = int(time.time()) + 600
    maker = LinkMaker(catalogue, SECRET, "http://x", not_after=not_after)
    assert all(e <= not_after for e in expiries([x.link for x in maker.standard("forever")]))
    expired = LinkMaker(catalogue, SECRET, "http://x", not_after=int(time.time()) - 1)
    with pytest.raises(LinkError, match="expires now"):
        expired.standard("forever")


def test_no_link_outlives_the_lessons_end_by_more_than_an_hour(catalogue: Catalogue) -> None:
    now = int(time.time())
    ends = now + 3 * 3600
    catalogue.update_lesson(
        "forever", LessonPatch(ends_at=datetime.datetime.fromtimestamp(ends, datetime.UTC))
    )
    maker = LinkMaker(catalogue, SECRET, "http://x")
    asked = [x.link for x in maker.named("forever", Role.STUDENT, ["Ana"], "", 5 * 86400)]
    asked += [x.link for x in maker.standard("forever")]
    assert all(e <= ends + LINK_MARGIN_AFTER_END for e in expiries(asked))
    # A lesson whose end has passed: an hour from now at most.
    catalogue.update_lesson(
        "forever",
        LessonPatch(ends_at=datetime.datetime.fromtimestamp(now - 86400, datetime.UTC)),
    )
    late = [x.link for x in maker.named("forever", Role.STUDENT, ["Ben"], "", 5 * 86400)]
    assert all(e <= int(time.time()) + LINK_MARGIN_AFTER_END for e in expiries(late))
