"""Communities, schools, classroom endpoints and lessons: what the HTTP API manages.

Models are pydantic (they are also the API's schemas) and say what is valid; the
store is SQLite in the data directory (``signaling/adapters/sqlite_catalogue.py``),
shared by the server and the ``lco`` command line.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from .lesson import LessonSettings
from .permissions import ChatPolicy
from .tokens import MAX_NAME_LENGTH, check_name

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Name = Annotated[str, Field(min_length=1, max_length=120)]
# A person's or a room's name, which join links carry: the token's own rule.
PersonName = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(check_name)
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CommunityIn(_Model):
    """A learning community: schools that teach together."""

    id: Identifier | None = None
    name: Name


class Community(_Model):
    id: Identifier
    name: Name


class SchoolIn(_Model):
    id: Identifier | None = None
    name: Name


class School(_Model):
    id: Identifier
    community_id: Identifier
    name: Name


class EndpointIn(_Model):
    """A classroom endpoint: the room PC that joins for a whole class."""

    id: Identifier | None = None
    name: PersonName
    headcount: int = Field(ge=0, le=1000, description="students in front of this endpoint")


class Endpoint(_Model):
    id: Identifier
    school_id: Identifier
    name: Name
    headcount: int


class LessonSettingsModel(_Model):
    lobby: bool = Field(default=False, description="students and guests wait until admitted")
    wait_for_teacher: bool = Field(default=False, description="nobody is admitted before a teacher")
    students_publish: bool = Field(default=False, description="students may publish from the start")
    chat_policy: ChatPolicy = ChatPolicy.EVERYONE
    recording_declined: list[Identifier] = Field(
        default_factory=list,
        description="schools that decline recording: nothing of their participants is recorded",
    )

    def to_settings(self, invited: list[str]) -> LessonSettings:
        """The lesson state machine's settings."""
        return LessonSettings(
            lobby=self.lobby,
            wait_for_teacher=self.wait_for_teacher,
            students_publish=self.students_publish,
            chat_policy=self.chat_policy,
            invited_schools=frozenset(invited),
            recording_declined=frozenset(self.recording_declined),
        )


def _utc_if_naive(value: datetime.datetime) -> datetime.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)


StoredDatetime = Annotated[datetime.datetime, AfterValidator(_utc_if_naive)]


class LessonIn(_Model):
    id: Identifier | None = None
    community_id: Identifier
    title: Name
    host_teacher: PersonName
    host_school: Identifier
    # With a time zone: naive and aware times cannot be compared or ordered.
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    invited_schools: list[Identifier] = Field(default_factory=list, max_length=200)
    settings: LessonSettingsModel = Field(default_factory=lambda: LessonSettingsModel())

    @field_validator("ends_at")
    @classmethod
    def _ends_after_start(cls, value: datetime.datetime, info: object) -> datetime.datetime:
        starts = getattr(info, "data", {}).get("starts_at")
        if starts is not None and value <= starts:
            raise ValueError("must be after starts_at")
        return value


class LessonPatch(_Model):
    title: Name | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    invited_schools: list[Identifier] | None = Field(default=None, max_length=200)
    settings: LessonSettingsModel | None = None


class Lesson(LessonIn):
    id: Identifier
    state: Literal["scheduled", "ended"] = "scheduled"
    # Stored lessons are read back as they were written: names from before names
    # were limited like tokens, and times without a zone (taken as UTC).
    host_teacher: Name
    starts_at: StoredDatetime
    ends_at: StoredDatetime


class CatalogueError(Exception):
    """A request that names something missing or conflicting; ``status`` is the HTTP one."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
