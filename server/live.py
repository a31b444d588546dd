"""The operator's live view of running lessons: who is in, who publishes, bitrate, loss.

Read only: the lesson's participants come from the live lesson, the media figures from
the SFU's counters (:meth:`media.sfu.Sfu.participant_stats`). Bitrate and loss are the
change between two looks at a participant, so the first look shows none; a console
asks every few seconds.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from pydantic import BaseModel, Field

from media.sfu import ParticipantMediaStats, Sfu
from signaling.adapters.sqlite_catalogue import Catalogue
from signaling.lesson import Lesson
from signaling.permissions import Role
from signaling.registry import LessonRegistry

# Loss above this share of the packets of an interval earns a warning.
LOSS_WARNING = 0.05
# Looks closer together than this reuse the previous figures (several consoles open).
MIN_INTERVAL = 0.5


class LiveTrack(BaseModel):
    """A track a participant publishes."""

    id: str
    kind: str
    source: str
    muted: bool = Field(description="a moderator muted it: the server does not forward it")
    packets_per_s: float | None = Field(description="packets received, last interval")
    loss_pct: float | None = Field(description="packets lost on the way in, last interval")


class LiveParticipant(BaseModel):
    """One participant in a live lesson (not the lobby)."""

    id: str
    name: str
    role: str
    school: str
    headcount: int | None
    tracks: list[LiveTrack]
    kbps_in: float | None = Field(description="everything it sends the server, last interval")
    kbps_out: float | None = Field(description="media forwarded to it, last interval")
    loss_out_pct: float | None = Field(
        description="what it reports losing of the media it receives, last interval"
    )
    warnings: list[str]


class LiveSchool(BaseModel):
    """One school's presence in a live lesson."""

    school: str
    participants: int
    # Students in front of its classroom endpoints (their links' headcount).
    headcount: int


class LiveLesson(BaseModel):
    """A running lesson as the console shows it."""

    id: str
    title: str | None = Field(description="its title if it was scheduled")
    scheduled: bool
    at: float = Field(description="Unix time of these figures")
    participants: int
    waiting: int
    kbps_in: float = Field(description="sum over participants, last interval")
    kbps_out: float
    schools: list[LiveSchool]
    people: list[LiveParticipant]
    warnings: list[str]


@dataclass(slots=True)
class _Sample:
    at: float
    stats: ParticipantMediaStats
    # The figures computed when this sample was taken (reused by close looks).
    kbps_in: float | None = None
    kbps_out: float | None = None
    loss_out: float | None = None
    tracks: dict[str, tuple[float | None, float | None]] | None = None


def _kbps(before: int, after: int, seconds: float) -> float:
    return round(max(0, after - before) * 8 / seconds / 1000, 1)


def _loss(received: int, lost: int) -> float | None:
    total = received + lost
    return round(100 * lost / total, 1) if total > 0 else None


class LiveView:
    """Figures for the live view, from the SFU's counters sampled on each look."""

    def __init__(self, registry: LessonRegistry, catalogue: Catalogue, sfu: Sfu) -> None:
        self._registry = registry
        self._catalogue = catalogue
        self._sfu = sfu
        self._samples: dict[str, _Sample] = {}

    async def lessons(self) -> list[LiveLesson]:
        """Every live lesson on this server."""
        return [await self.lesson(lesson) for lesson in self._registry.lessons()]

    async def lesson(self, lesson: Lesson) -> LiveLesson:
        """One live lesson."""
        now = time.time()
        self._forget_departed()
        scheduled = self._catalogue.find_lesson(lesson.id)
        people: list[LiveParticipant] = []
        schools: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for participant in lesson.participants.values():
            figures = await self._figures(participant.id, now)
            tracks = [
                LiveTrack(
                    id=track.id,
                    kind=track.kind,
                    source=track.source,
                    muted=track.kind in participant.muted,
                    packets_per_s=(figures.tracks or {}).get(track.id, (None, None))[0],
                    loss_pct=(figures.tracks or {}).get(track.id, (None, None))[1],
                )
                for track in participant.tracks.values()
            ]
            person = LiveParticipant(
                id=participant.id,
                name=participant.name,
                role=participant.role.value,
                school=participant.school,
                headcount=participant.headcount,
                tracks=tracks,
                kbps_in=figures.kbps_in,
                kbps_out=figures.kbps_out,
                loss_out_pct=figures.loss_out,
                warnings=[],
            )
            person.warnings = _warnings(person)
            people.append(person)
            school = schools[participant.school]
            school[0] += 1
            school[1] += participant.headcount or 0
        people.sort(key=lambda x: (x.school, x.role != Role.TEACHER.value, x.name))
        warnings = [f"{p.name}: {w}" for p in people for w in p.warnings]
        if people and not any(p.role == Role.TEACHER.value for p in people):
            warnings.insert(0, "no teacher is in the lesson")
        return LiveLesson(
            id=lesson.id,
            title=scheduled.title if scheduled else None,
            scheduled=scheduled is not None,
            at=now,
            participants=len(people),
            waiting=len(lesson.waiting),
            kbps_in=round(sum(p.kbps_in or 0 for p in people), 1),
            kbps_out=round(sum(p.kbps_out or 0 for p in people), 1),
            schools=[
                LiveSchool(school=name, participants=count, headcount=headcount)
                for name, (count, headcount) in sorted(schools.items())
            ],
            people=people,
            warnings=warnings,
        )

    async def _figures(self, participant_id: str, now: float) -> _Sample:
        """Rates since the previous look at this participant (none on the first)."""
        previous = self._samples.get(participant_id)
        if previous is not None and now - previous.at < MIN_INTERVAL:
            return previous
        stats = await self._sfu.participant_stats(participant_id)
        if stats is None:
            return _Sample(now, ParticipantMediaStats(0, 0, 0, 0, ()))
        sample = _Sample(now, stats)
        if previous is not None:
            seconds = now - previous.at
            before = previous.stats
            sample.kbps_in = _kbps(before.bytes_received, stats.bytes_received, seconds)
            sample.kbps_out = _kbps(before.bytes_sent, stats.bytes_sent, seconds)
            sent = stats.packets_sent - before.packets_sent
            lost = stats.reported_lost - before.reported_lost
            sample.loss_out = _loss(max(0, sent - lost), max(0, lost))
            earlier = {t.track_id: t for t in before.tracks}
            sample.tracks = {}
            for track in stats.tracks:
                old = earlier.get(track.track_id)
                if old is not None:
                    received = max(0, track.packets_received - old.packets_received)
                    lost_in = max(0, track.packets_lost - old.packets_lost)
                    sample.tracks[track.track_id] = (
                        round(received / seconds, 1),
                        _loss(received, lost_in),
                    )
        self._samples[participant_id] = sample
        return sample

    def _forget_departed(self) -> None:
        present = {pid for lesson in self._registry.lessons() for pid in lesson.participants}
        for participant_id in list(self._samples):
            if participant_id not in present:
                del self._samples[participant_id]


def _warnings(person: LiveParticipant) -> list[str]:
    """What an operator should look at for this participant."""
    warnings = []
    audio = [t for t in person.tracks if t.kind == "audio"]
    if person.role == Role.CLASSROOM.value:
        if not audio:
            warnings.append("no audio: the classroom sends no microphone")
        elif all(t.muted for t in audio):
            warnings.append("the classroom's microphone is muted by a moderator")
    for track in person.tracks:
        if track.packets_per_s == 0 and not track.muted:
            warnings.append(f"nothing arrives from its {track.source}")
        if track.loss_pct is not None and track.loss_pct > 100 * LOSS_WARNING:
            warnings.append(f"{track.loss_pct} % of its {track.source} packets are lost")
    if person.loss_out_pct is not None and person.loss_out_pct > 100 * LOSS_WARNING:
        warnings.append(f"it loses {person.loss_out_pct} % of what it receives")
    return warnings
