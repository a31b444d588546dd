"""Carrying out the lesson state machine's effects, in order, on the server's parts.

Whatever changes a lesson (a socket's owner task, a WHIP session, the HTTP API, the
cluster's answers, held seats, recordings) hands its effects here. What this needs
of the server is :class:`EffectTargets`, which ``ServerState`` fulfils: so the state
can carry out effects without this module, or the connections, knowing the state.
"""

from __future__ import annotations

from typing import Protocol

from signaling import protocol as p
from signaling import records
from signaling.bus import EventBus, participant_topic
from signaling.effects import (
    Announce,
    Deliver,
    Effect,
    EndMedia,
    HoldSeat,
    PauseTrack,
    Record,
    ResetMedia,
    StopTrack,
    Subscribe,
    Unsubscribe,
)
from signaling.recording import RecordingConsent, StartRecording, StopRecording

from .media_router import MediaRouter
from .recordings import RecordingService
from .seats import SeatKeeper
from .webhooks import Webhooks


class EffectTargets(Protocol):
    """The parts of the server that lesson effects act on."""

    @property
    def bus(self) -> EventBus: ...

    @property
    def media(self) -> MediaRouter: ...

    @property
    def webhooks(self) -> Webhooks: ...

    @property
    def seats(self) -> SeatKeeper: ...

    @property
    def recordings(self) -> RecordingService: ...

    def record(self, record: records.Record) -> None:
        """Write a lesson record durably."""
        ...


async def execute_lesson_effect(targets: EffectTargets, effect: Effect) -> None:
    """Carry out one effect of the lesson state machine, in order."""
    if isinstance(effect, Record):
        # Durable before anything that follows is delivered (acknowledged).
        targets.record(effect.data)
    elif isinstance(effect, Deliver):
        await targets.bus.publish(
            participant_topic(effect.to), p.encode_server_message(effect.message)
        )
    elif isinstance(effect, Subscribe):
        track = effect.track
        await targets.media.subscribe(
            effect.subscriber, effect.publisher, track.id, track.kind, track.source
        )
    elif isinstance(effect, Unsubscribe):
        await targets.media.unsubscribe(effect.subscriber, effect.track_id)
    elif isinstance(effect, StopTrack):
        await targets.media.stop_track(effect.track_id)
    elif isinstance(effect, PauseTrack):
        targets.media.set_paused(effect.track_id, effect.paused)
    elif isinstance(effect, Announce):
        targets.webhooks.notify(effect.event, effect.data)
    elif isinstance(effect, HoldSeat):
        targets.seats.hold(effect)
    elif isinstance(effect, ResetMedia):
        await targets.media.reset(effect.participant_id)
    elif isinstance(effect, EndMedia):
        await targets.media.close(effect.participant_id)
    elif isinstance(effect, (StartRecording, StopRecording, RecordingConsent)):
        await targets.recordings.carry_out(effect)
    # The timeline of a recording in progress (server/recordings.py).
    targets.recordings.observe(effect)
