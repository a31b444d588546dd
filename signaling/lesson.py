"""The lesson state machine: who is in, who waits, what they publish and may do.

Plain objects, no I/O: every operation takes the acting participant's id (from
its session, never from a message), checks the permission table, changes the
state and returns effects for the server, the store and the SFU to carry out,
in order. A :class:`Record` effect is written durably before the effects after it.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from . import protocol as p
from .effects import (
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
from .permissions import (
    CHAT_POLICY_ROLES,
    TEACHING_ROLES,
    ChatPolicy,
    Permission,
    Role,
    Scope,
    can_be_granted,
    effective_permissions,
    may_ever_publish,
    scope_of,
    target_roles,
)
from .recording import (
    DirectorState,
    RecordingConsent,
    RecordingState,
    StartRecording,
    StopRecording,
)
from .records import (
    AttendanceEvent,
    AttendanceKind,
    BanRecord,
    ChatRecord,
    LessonEndedRecord,
    LessonHistory,
    ModerationRecord,
    PublishDecision,
)
from .tokens import Grant

# Seconds a seat is held for its link after the socket went (``lco serve --seat-grace``).
DEFAULT_SEAT_GRACE = 60.0
# Why a socket went, when its seat is freed at once instead of held: the participant
# left on purpose, was sent away, misbehaved, or the server is stopping.
RELEASED_AT_ONCE = frozenset(
    {"left", "removed", "denied", "lesson_ended", "flood", "server_shutdown"}
)

_EVERY_ROLE = frozenset(Role)
_PUBLISHING_ROLES = frozenset(r for r in Role if may_ever_publish(r))
_GRANTABLE_ROLES = frozenset(r for r in Role if can_be_granted(r, Permission.PUBLISH))

# Messages that act on another participant: the permission each needs and the roles
# it does something to (one cannot mute or present a role that never publishes, nor
# grant publishing to a role that publishes by the table or never may). With the
# actor's own reach (:func:`~signaling.permissions.target_roles` and its scope) this
# is what ``targets`` in ``welcome`` tells a client it may do to whom, so that the
# page offers only what does something; every handler checks the actor's reach again.
TARGETED_MESSAGES: dict[str, tuple[Permission, frozenset[Role]]] = {
    "grant_publish": (Permission.GRANT_PUBLISH, _GRANTABLE_ROLES),
    "revoke_publish": (Permission.GRANT_PUBLISH, _GRANTABLE_ROLES),
    "grant_floor": (Permission.GRANT_PUBLISH, _EVERY_ROLE),
    "admit": (Permission.ADMIT, _EVERY_ROLE),
    "deny": (Permission.ADMIT, _EVERY_ROLE),
    "mute": (Permission.MODERATE, _PUBLISHING_ROLES),
    "allow_unmute": (Permission.MODERATE, _PUBLISHING_ROLES),
    "remove": (Permission.MODERATE, _EVERY_ROLE),
    "lower_hand": (Permission.MODERATE, _EVERY_ROLE),
    "set_presenter": (Permission.RUN_LESSON, _PUBLISHING_ROLES),
    "spotlight": (Permission.RUN_LESSON, _EVERY_ROLE),
}


# --- state -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LessonSettings:
    """How a lesson runs; set when the lesson is created (defaults for ad-hoc lessons)."""

    lobby: bool = False
    wait_for_teacher: bool = False
    students_publish: bool = False
    chat_policy: ChatPolicy = ChatPolicy.EVERYONE
    invited_schools: frozenset[str] = frozenset()
    # Schools that declined recording: nothing of their participants is recorded.
    recording_declined: frozenset[str] = frozenset()


@dataclass(slots=True)
class Participant:
    """One participant in a lesson; identity fields come from the signed token."""

    id: str
    name: str
    role: Role
    school: str
    token_id: str
    headcount: int | None = None
    granted: set[Permission] = field(default_factory=set)
    tracks: dict[str, p.TrackInfo] = field(default_factory=dict)
    muted: set[p.Kind] = field(default_factory=set)
    presenter: bool = False
    hand_raised_at: float | None = None
    group: str | None = None
    # The seat: which socket holds it (bumped each time a socket takes it), and while
    # no socket does, since when, until when it is held and why its socket went.
    epoch: int = 0
    connected: bool = True
    disconnected_at: float | None = None
    held_until: float | None = None
    hold_reason: str = ""

    def may(self, permission: Permission) -> bool:
        """Whether this participant holds ``permission`` right now."""
        return scope_of(self.role, permission, frozenset(self.granted)) is not None

    def permissions(self, chat_policy: ChatPolicy) -> list[str]:
        """Sorted names of every permission held now; ``chat`` only where the lesson's
        chat policy lets this role write."""
        held = effective_permissions(self.role, frozenset(self.granted))
        if self.role not in CHAT_POLICY_ROLES[chat_policy]:
            held -= {Permission.CHAT}
        return sorted(held)

    def targets(self) -> dict[str, p.TargetRule]:
        """Whom this participant may send each message about that acts on another
        (:data:`TARGETED_MESSAGES`); messages it may not send at all are left out."""
        rules: dict[str, p.TargetRule] = {}
        for message, (permission, acts_on) in TARGETED_MESSAGES.items():
            scope = scope_of(self.role, permission, frozenset(self.granted))
            roles = acts_on & target_roles(self.role, permission)
            if scope is None or not roles:
                continue
            rules[message] = p.TargetRule(
                roles=sorted(roles),
                school=self.school if scope is Scope.OWN_SCHOOL else None,
            )
        return rules

    def info(self) -> p.ParticipantInfo:
        """The participant as other participants see it."""
        return p.ParticipantInfo(
            id=self.id,
            name=self.name,
            role=self.role.value,
            school=self.school,
            can_publish=self.may(Permission.PUBLISH),
            tracks=list(self.tracks.values()),
            muted=sorted(self.muted),
            presenter=self.presenter,
            hand_raised=self.hand_raised_at is not None,
            group=self.group,
            connected=self.connected,
        )


# The STUN/TURN servers for one participant's welcome: TURN credentials are issued
# per participant (signaling/turn.py), so the lesson asks when it welcomes someone.
IceServersFor = Callable[[str], list[p.IceServer]]


def _no_ice_servers(participant_id: str) -> list[p.IceServer]:
    return []


class Forbidden(p.ProtocolError):
    """An action that the permission table (or the lesson's state) does not allow."""

    def __init__(
        self, message: str, request_type: str | None = None, bye_reason: p.ByeReason = "forbidden"
    ) -> None:
        super().__init__("forbidden", message, request_type)
        self.bye_reason: p.ByeReason = bye_reason


@dataclass(slots=True)
class _Waiting:
    participant: Participant
    needs_admission: bool


@dataclass(frozen=True, slots=True)
class Entry:
    """A socket joined: the participant whose seat it holds now, what follows, and
    whether it took over a seat its link already held (same id, same state)."""

    participant: Participant
    effects: list[Effect]
    resumed: bool


class Lesson:
    """All live state of one lesson on this node.

    A participant's seat belongs to its join link (``Grant.token_id``), not to a
    socket: when the socket goes, the seat is held for ``seat_grace`` seconds and a
    socket of the same link takes it back (same id, same state); a second socket of
    a link takes the seat from the first.
    """

    def __init__(
        self,
        lesson_id: str,
        ice_servers: IceServersFor | None = None,
        settings: LessonSettings | None = None,
        history: LessonHistory | None = None,
        clock: Callable[[], float] = time.time,
        seat_grace: float = DEFAULT_SEAT_GRACE,
        keepalive: p.Keepalive | None = None,
    ) -> None:
        self.id = lesson_id
        self.settings = settings or LessonSettings()
        self.participants: dict[str, Participant] = {}
        self.waiting: dict[str, _Waiting] = {}
        self.locked = False
        self.ended = False
        self.spotlight: str | None = None
        self.breakout = False
        self.broadcast_audio_from: str | None = None
        self.seat_grace = seat_grace
        self._keepalive = keepalive
        self.director = DirectorState()
        self.recording = RecordingState(declined=set(self.settings.recording_declined))
        self._ice_servers = ice_servers or _no_ice_servers
        self._clock = clock
        self._track_numbers = itertools.count(1)
        self._forwarded: set[tuple[str, str]] = set()  # (subscriber, track id)
        self._started = False
        history = history or LessonHistory()
        self._chat: list[ChatRecord] = list(history.chat)
        self._banned: set[str] = set(history.banned)
        # Per link: what moderators decided (mute, publish grant or revocation).
        self._moderation: dict[str, ModerationRecord] = dict(history.moderation)
        # Links a moderator let in from the lobby: they do not wait again.
        self._admitted: set[str] = set()
        self.ended = history.ended
        self._chat_ids = itertools.count(max((c.entry.id for c in self._chat), default=0) + 1)

    # -- membership ------------------------------------------------------

    def join(self, grant: Grant, resume_media: bool = False) -> tuple[Participant, list[Effect]]:
        """:meth:`enter`, for callers that need not know whether a seat was resumed."""
        entry = self.enter(grant, resume_media)
        return entry.participant, entry.effects

    def enter(self, grant: Grant, resume_media: bool = False) -> Entry:
        """Let the holder of ``grant`` in (or into the lobby), into the seat its link
        holds if it holds one; the token is already verified.

        ``resume_media``: the client kept the peer connections of its previous socket;
        otherwise a resumed seat's media starts over (:class:`ResetMedia`)."""
        if grant.lesson != self.id:
            raise Forbidden("this join link is for another lesson", "join", "bad_token")
        if self.ended:
            raise Forbidden("this lesson has ended", "join", "lesson_ended")
        if grant.token_id in self._banned:
            raise Forbidden("you were removed from this lesson", "join", "removed")
        seat = self._seat_of(grant.token_id)
        if seat is not None:
            if seat.id in self.waiting:
                return Entry(seat, self._retake_lobby_seat(seat), resumed=True)
            return Entry(seat, self._retake_seat(seat, resume_media), resumed=True)
        participant = Participant(
            id=secrets.token_hex(6),
            name=grant.name,
            role=grant.role,
            school=grant.school,
            token_id=grant.token_id,
            headcount=grant.headcount,
        )
        if not participant.may(Permission.JOIN):
            raise Forbidden(f"role {grant.role.value!r} may not join lessons", "join")
        teaching = participant.role in TEACHING_ROLES
        if self.locked and not teaching:
            raise Forbidden("the lesson is locked; nobody new can join", "join", "locked")
        self._apply_link_moderation(participant)
        needs_admission = (
            self._needs_admission(participant) and participant.token_id not in self._admitted
        )
        if needs_admission or (self.settings.wait_for_teacher and not self._teacher_present()):
            if not teaching:
                return Entry(participant, self._to_lobby(participant, needs_admission), False)
        effects = self._enter(participant)
        if teaching:
            effects += self._admit_those_waiting_for_a_teacher()
        return Entry(participant, effects, resumed=False)

    def disconnect(self, participant_id: str, epoch: int, reason: str, now: float) -> list[Effect]:
        """The socket that took the seat at ``epoch`` went, for ``reason``.

        The seat is held until ``now + seat_grace`` (others see it disconnected, its
        tracks and everything decided about it stay), unless the participant left on
        purpose or was sent away (:data:`RELEASED_AT_ONCE`), the lesson ended, or it
        was waiting in the lobby: then it leaves at once. A socket that no longer holds
        the seat (another one took it) changes nothing."""
        waiting = self.waiting.get(participant_id)
        if waiting is not None:
            if waiting.participant.epoch != epoch:
                return []
            return self.leave(participant_id, reason)
        participant = self.participants.get(participant_id)
        if participant is None or participant.epoch != epoch or not participant.connected:
            return []
        if reason in RELEASED_AT_ONCE or self.ended or self.seat_grace <= 0:
            return self.leave(participant_id, reason)
        participant.connected = False
        participant.disconnected_at = now
        participant.held_until = now + self.seat_grace
        participant.hold_reason = reason
        gone = p.ParticipantDisconnected(
            participant_id=participant_id, reason=reason, seat_held_until=participant.held_until
        )
        return [
            self._attendance(participant, AttendanceKind.DISCONNECTED, reason=reason, at=now),
            *[Deliver(other, gone) for other in self.participants if other != participant_id],
            HoldSeat(self.id, participant_id, participant.held_until),
        ]

    def release(self, participant_id: str, now: float) -> list[Effect]:
        """Free a held seat whose time is up: the participant leaves, in attendance at
        the time its socket went. A seat taken again (or held anew, later) stays."""
        participant = self.participants.get(participant_id)
        if (
            participant is None
            or participant.connected
            or participant.held_until is None
            or now < participant.held_until
        ):
            return []
        return self.leave(participant_id, participant.hold_reason, at=participant.disconnected_at)

    def held_seats(self) -> list[Participant]:
        """Participants whose seat is held for a reconnect."""
        return [x for x in self.participants.values() if not x.connected]

    def leave(self, participant_id: str, reason: str, at: float | None = None) -> list[Effect]:
        """Remove a participant (left, disconnected, removed, released); its tracks end.
        ``at``: when, for attendance (now if not given)."""
        waiting = self.waiting.pop(participant_id, None)
        if waiting is not None:
            return [
                self._attendance(waiting.participant, AttendanceKind.LEFT, reason=reason, at=at),
                *self._lobby_changed(removed=[participant_id]),
                EndMedia(participant_id),
            ]
        participant = self.participants.pop(participant_id, None)
        if participant is None:
            return []
        effects: list[Effect] = [
            self._attendance(participant, AttendanceKind.LEFT, reason=reason, at=at),
            Announce("participant.left", {**self._about(participant), "reason": reason}),
        ]
        effects += [StopTrack(participant_id, track_id) for track_id in participant.tracks]
        self._forwarded = {
            (sub, tid)
            for sub, tid in self._forwarded
            if sub != participant_id and tid not in participant.tracks
        }
        left = p.ParticipantLeft(participant_id=participant_id, reason=reason)
        effects += [Deliver(other, left) for other in self.participants]
        if participant.hand_raised_at is not None:
            effects += self._hands_changed()
        forgotten = self.director.forget(participant_id)
        if (
            forgotten
            or self.spotlight == participant_id
            or self.broadcast_audio_from == participant_id
        ):
            if self.spotlight == participant_id:
                self.spotlight = None
            if self.broadcast_audio_from == participant_id:
                self.broadcast_audio_from = None
            effects += self._lesson_changed()
        effects.append(EndMedia(participant_id))
        if not self.participants:
            effects += self.stop_recording(None, "everyone left")
        return effects

    @property
    def is_empty(self) -> bool:
        """Nobody is in the lesson or waiting for it (held seats count as in)."""
        return not self.participants and not self.waiting

    def is_waiting(self, participant_id: str) -> bool:
        """Whether the participant is in the lobby."""
        return participant_id in self.waiting

    def epoch_of(self, participant_id: str) -> int | None:
        """Which socket holds the participant's seat now (see :meth:`disconnect`)."""
        waiting = self.waiting.get(participant_id)
        if waiting is not None:
            return waiting.participant.epoch
        participant = self.participants.get(participant_id)
        return None if participant is None else participant.epoch

    def _seat_of(self, token_id: str) -> Participant | None:
        for participant in self.participants.values():
            if participant.token_id == token_id:
                return participant
        for waiting in self.waiting.values():
            if waiting.participant.token_id == token_id:
                return waiting.participant
        return None

    def _retake_seat(self, participant: Participant, resume_media: bool) -> list[Effect]:
        """A socket of the seat's link takes it: held (a reconnect) or from another
        socket (a second tab, or a reconnect the server had not noticed yet)."""
        held = not participant.connected
        participant.epoch += 1
        participant.connected = True
        participant.disconnected_at = participant.held_until = None
        participant.hold_reason = ""
        effects: list[Effect] = []
        if held:
            back = p.ParticipantReconnected(participant_id=participant.id)
            effects += [
                self._attendance(participant, AttendanceKind.RECONNECTED),
                *[Deliver(other, back) for other in self.participants if other != participant.id],
            ]
        if not resume_media:
            # A new page: what the old one published ends, and what it received is
            # offered again on a new subscribe connection.
            for track_id in list(participant.tracks):
                effects += self.remove_track(participant.id, track_id, "reconnected")
            effects.append(ResetMedia(participant.id))
        effects += self._welcome(participant, resumed=True)
        return effects

    def _retake_lobby_seat(self, participant: Participant) -> list[Effect]:
        """Another socket of a waiting link: it takes the one lobby seat (moderators
        see no change)."""
        participant.epoch += 1
        waiting = self.waiting[participant.id]
        return [Deliver(participant.id, self._lobby_wait(participant, waiting.needs_admission))]

    def _apply_link_moderation(self, participant: Participant) -> None:
        """What moderators decided about this link holds for its new seat too."""
        decided = self._moderation.get(participant.token_id)
        revoked = decided is not None and decided.publish == "revoked"
        granted = decided is not None and decided.publish == "granted"
        if (granted or (self.settings.students_publish and not revoked)) and can_be_granted(
            participant.role, Permission.PUBLISH
        ):
            participant.granted.add(Permission.PUBLISH)
        if decided is not None:
            participant.muted = {k for k in ("audio", "video") if k in decided.muted}

    def _decided(
        self, participant: Participant, publish: PublishDecision | None = None
    ) -> list[Effect]:
        """Record what moderators decided about the participant's link (its mutes and,
        if given, a publish grant or revocation), if that changed."""
        before = self._moderation.get(participant.token_id)
        record = ModerationRecord(
            self.id,
            participant.token_id,
            tuple(sorted(participant.muted)),
            publish or (before.publish if before is not None else None),
        )
        if record == before:
            return []
        self._moderation[participant.token_id] = record
        return [Record(record)]

    # -- the lobby -------------------------------------------------------

    def admit(self, actor_id: str, target_id: str) -> list[Effect]:
        """Let a participant in from the lobby."""
        actor = self._get(actor_id)
        waiting = self.waiting.get(target_id)
        if waiting is None:
            raise _unknown(target_id, "admit")
        self._require_on(actor, Permission.ADMIT, waiting.participant, "admit")
        del self.waiting[target_id]
        participant = waiting.participant
        self._admitted.add(participant.token_id)
        return [
            self._attendance(participant, AttendanceKind.ADMITTED, by=actor.name),
            *self._enter(participant),
            *self._lobby_changed(removed=[target_id]),
        ]

    def deny(self, actor_id: str, target_id: str) -> list[Effect]:
        """Turn a participant away from the lobby."""
        actor = self._get(actor_id)
        waiting = self.waiting.get(target_id)
        if waiting is None:
            raise _unknown(target_id, "deny")
        self._require_on(actor, Permission.ADMIT, waiting.participant, "deny")
        del self.waiting[target_id]
        return [
            self._attendance(waiting.participant, AttendanceKind.DENIED, by=actor.name),
            Deliver(
                target_id,
                p.Bye(reason="denied", message="the teacher did not let you into this lesson"),
            ),
            *self._lobby_changed(removed=[target_id]),
            EndMedia(target_id),
        ]

    def lock(self, actor_id: str, locked: bool) -> list[Effect]:
        """Lock or unlock the lesson: while locked, only teachers get in."""
        self._require(actor_id, Permission.RUN_LESSON, "lock_lesson")
        self.locked = locked
        return self._lesson_changed()

    # -- publishing ------------------------------------------------------

    def require(self, participant_id: str, permission: Permission, request_type: str) -> None:
        """Raise :class:`Forbidden` unless the participant holds ``permission`` now."""
        self._require(participant_id, permission, request_type)

    def add_track(
        self, participant_id: str, kind: p.Kind, source: p.Source
    ) -> tuple[p.TrackInfo, list[Effect]]:
        """Record a track the participant now publishes; forward it to those who see it."""
        self._require(participant_id, Permission.PUBLISH, "publish_offer")
        publisher = self._get(participant_id)
        track = p.TrackInfo(
            id=f"{participant_id}-{next(self._track_numbers)}", kind=kind, source=source
        )
        publisher.tracks[track.id] = track
        announced = p.TrackPublished(participant_id=participant_id, track=track)
        # The publisher hears of its own track too: its page shows what the server forwards.
        effects: list[Effect] = [Deliver(other, announced) for other in self.participants]
        if kind in publisher.muted:
            effects.append(PauseTrack(track.id, True))
        return track, effects + self._reconcile()

    def remove_track(self, participant_id: str, track_id: str, reason: str) -> list[Effect]:
        """A published track ended (unpublished, revoked or its peer connection closed)."""
        participant = self.participants.get(participant_id)
        if participant is None or participant.tracks.pop(track_id, None) is None:
            return []
        self._forwarded = {(sub, tid) for sub, tid in self._forwarded if tid != track_id}
        gone = p.TrackUnpublished(participant_id=participant_id, track_id=track_id, reason=reason)
        effects: list[Effect] = [StopTrack(participant_id, track_id)]
        effects += [Deliver(other, gone) for other in self.participants]
        return effects

    def grant_publish(self, actor_id: str, target_id: str) -> list[Effect]:
        """Let ``target_id`` publish."""
        actor, target = self._get(actor_id), self._target(target_id, "grant_publish")
        self._require_on(actor, Permission.GRANT_PUBLISH, target, "grant_publish")
        if target.may(Permission.PUBLISH):
            return []
        if not can_be_granted(target.role, Permission.PUBLISH):
            raise Forbidden(
                f"a participant with role {target.role.value!r} cannot be allowed to publish",
                "grant_publish",
            )
        target.granted.add(Permission.PUBLISH)
        return self._decided(target, "granted") + self._rights_changed(target)

    def revoke_publish(self, actor_id: str, target_id: str) -> list[Effect]:
        """Take back a publish grant; the target's tracks stop at the server at once."""
        actor, target = self._get(actor_id), self._target(target_id, "revoke_publish")
        self._require_on(actor, Permission.GRANT_PUBLISH, target, "revoke_publish")
        if Permission.PUBLISH not in target.granted:
            if target.may(Permission.PUBLISH):
                raise Forbidden(
                    f"a {target.role.value} publishes by role; there is no grant to revoke",
                    "revoke_publish",
                )
            # Nothing to take back now, but it holds for the link's next seat too.
            return self._decided(target, "revoked")
        return self._withdraw_publishing(target)

    # -- moderation ------------------------------------------------------

    def mute(self, actor_id: str, target_id: str, kind: p.Kind) -> list[Effect]:
        """Stop forwarding a participant's audio or video at the server until allowed back."""
        actor, target = self._get(actor_id), self._target(target_id, "mute")
        self._require_on(actor, Permission.MODERATE, target, "mute")
        return self._mute(target, kind, f"{actor.name} muted your {_kind_word(kind)}")

    def mute_all(self, actor_id: str, kind: p.Kind) -> list[Effect]:
        """Mute everyone who does not teach."""
        actor = self._get(actor_id)
        self._require(actor_id, Permission.RUN_LESSON, "mute_all")
        effects: list[Effect] = []
        for target in list(self.participants.values()):
            if target.role not in TEACHING_ROLES and target.role is not Role.DELEGATE:
                effects += self._mute(target, kind, f"{actor.name} muted everyone")
        return effects

    def ask_to_unmute(self, participant_id: str, kind: p.Kind) -> list[Effect]:
        """A muted participant asks; every moderator who may lift the mute is told."""
        self._require(participant_id, Permission.ASK_TO_UNMUTE, "ask_to_unmute")
        participant = self._get(participant_id)
        if kind not in participant.muted:
            raise p.ProtocolError(
                "not_muted", f"your {_kind_word(kind)} is not muted", "ask_to_unmute"
            )
        request = p.UnmuteRequested(participant_id=participant_id, kind=kind)
        return [
            Deliver(moderator.id, request)
            for moderator in self.participants.values()
            if self._may_act_on(moderator, Permission.MODERATE, participant)
        ]

    def allow_unmute(self, actor_id: str, target_id: str, kind: p.Kind) -> list[Effect]:
        """Lift a mute: forwarding resumes and the participant may unmute itself."""
        actor, target = self._get(actor_id), self._target(target_id, "allow_unmute")
        self._require_on(actor, Permission.MODERATE, target, "allow_unmute")
        if kind not in target.muted:
            return []
        target.muted.discard(kind)
        effects: list[Effect] = [
            *self._decided(target),
            *[
                PauseTrack(track.id, False)
                for track in target.tracks.values()
                if track.kind == kind
            ],
        ]
        notice = p.Notice(
            code=f"unmute_allowed_{kind}",
            message=f"{actor.name} allowed you to turn your {_kind_word(kind)} back on",
        )
        return [*effects, Deliver(target.id, notice), *self._updated(target)]

    def remove(self, actor_id: str, target_id: str) -> list[Effect]:
        """Remove a participant; its link is refused from now on."""
        actor, target = self._get(actor_id), self._target(target_id, "remove")
        self._require_on(actor, Permission.MODERATE, target, "remove")
        if target.id == actor.id:
            raise Forbidden("you cannot remove yourself; leave instead", "remove")
        self._banned.add(target.token_id)
        bye = p.Bye(reason="removed", message=f"{actor.name} removed you from the lesson")
        return [
            Record(BanRecord(self.id, target.token_id)),
            self._attendance(target, AttendanceKind.REMOVED, by=actor.name),
            Deliver(target.id, bye),
            *self.leave(target.id, "removed"),
        ]

    def set_presenter(self, actor_id: str, target_id: str, presenter: bool) -> list[Effect]:
        """Make a participant presenter (may publish, shown large) or take it back."""
        self._require(actor_id, Permission.RUN_LESSON, "set_presenter")
        target = self._target(target_id, "set_presenter")
        if presenter == target.presenter:
            return []
        if presenter and not (
            target.may(Permission.PUBLISH) or can_be_granted(target.role, Permission.PUBLISH)
        ):
            raise Forbidden(f"a {target.role.value} cannot present", "set_presenter")
        target.presenter = presenter
        if presenter:
            if not target.may(Permission.PUBLISH):
                target.granted.add(Permission.PUBLISH)
                return self._decided(target, "granted") + self._rights_changed(target)
            return self._rights_changed(target)
        if Permission.PUBLISH in target.granted:
            return self._withdraw_publishing(target)
        return self._updated(target)

    def set_spotlight(self, actor_id: str, target_id: str | None) -> list[Effect]:
        """Show one participant large for everyone, or nobody."""
        self._require(actor_id, Permission.RUN_LESSON, "spotlight")
        if target_id is not None:
            self._target(target_id, "spotlight")
        self.spotlight = target_id
        return self._lesson_changed()

    def end(self, actor_id: str) -> list[Effect]:
        """A teacher ends the lesson for everyone; later joins are refused."""
        self._require(actor_id, Permission.RUN_LESSON, "end_lesson")
        return self.close(f"{self._get(actor_id).name} ended the lesson")

    def close(self, message: str) -> list[Effect]:
        """End the lesson (a teacher, or the operator through the API)."""
        if self.ended:
            return []
        self.ended = True
        bye = p.Bye(reason="lesson_ended", message=message)
        everyone = [*self.participants, *self.waiting]
        effects: list[Effect] = [
            *self.stop_recording(None, "the lesson ended"),
            Record(LessonEndedRecord(self.id, self._clock())),
            Announce("lesson.ended", {"lesson": self.id, "message": message}),
            *[Deliver(pid, bye) for pid in everyone],
        ]
        # Held seats have no socket to close: they are freed now, as of their drop.
        for held in self.held_seats():
            effects += self.leave(held.id, "lesson_ended", at=held.disconnected_at)
        return effects

    # -- director (signaling/recording.py holds the state) -----------------

    def direct_stage(
        self, actor_id: str, stage: p.Stage | None, classroom: str | None
    ) -> list[Effect]:
        """Choose what classroom stages show: every classroom's (``classroom`` None) or
        one classroom's; ``stage`` None gives the choice back."""
        self._require(actor_id, Permission.RUN_LESSON, "direct_stage")
        for item in stage.items if stage is not None else []:
            self._target(item.participant_id, "direct_stage")
        if classroom is None:
            self.director.stage = stage
        else:
            if self._target(classroom, "direct_stage").role is not Role.CLASSROOM:
                raise p.ProtocolError(
                    "not_a_classroom", f"{classroom!r} is not a classroom", "direct_stage"
                )
            if stage is None:
                self.director.classrooms.pop(classroom, None)
            else:
                self.director.classrooms[classroom] = stage
        return self._lesson_changed()

    # -- recording ---------------------------------------------------------

    def start_recording(self, actor_id: str | None, by: str = "") -> list[Effect]:
        """Start recording (a teacher, or the operator through the API with
        ``actor_id`` None): everyone is told before anything is written."""
        if actor_id is not None:
            self._require(actor_id, Permission.RECORD, "start_recording")
            by = self._get(actor_id).name
        if self.recording.active:
            return []
        self.recording.active = True
        self.recording.started_at = self._clock()
        self.recording.by = by
        declined = sorted(self.recording.declined)
        message = f"{by} started recording this lesson"
        if declined:
            message += f"; nothing of {', '.join(declined)} is recorded"
        notice = p.RecordingChanged(
            recording=True, by=by, reason="", declined_schools=declined, message=message
        )
        return [
            *[Deliver(pid, notice) for pid in self.participants],
            *self._lesson_changed(),
            Announce(
                "recording.started", {"lesson": self.id, "by": by, "declined_schools": declined}
            ),
            StartRecording(self.id, by, frozenset(self.recording.declined)),
        ]

    def stop_recording(self, actor_id: str | None, reason: str = "") -> list[Effect]:
        """Stop recording: a teacher, the operator (``actor_id`` None), a write error
        or the end of the lesson (``reason`` says which)."""
        if actor_id is not None:
            self._require(actor_id, Permission.RECORD, "stop_recording")
            reason = f"stopped by {self._get(actor_id).name}"
        if not self.recording.active:
            return []
        self.recording.active = False
        by = self.recording.by
        notice = p.RecordingChanged(
            recording=False,
            by=by,
            reason=reason,
            declined_schools=sorted(self.recording.declined),
            message=f"recording stopped: {reason}",
        )
        return [
            StopRecording(self.id, reason),
            *[Deliver(pid, notice) for pid in self.participants],
            *self._lesson_changed(),
            Announce("recording.stopped", {"lesson": self.id, "reason": reason}),
        ]

    def decline_recording(self, actor_id: str, declined: bool) -> list[Effect]:
        """A school (its delegate or teacher) declines recording, or withdraws that:
        nothing of its participants is written from now on."""
        self._require(actor_id, Permission.DECLINE_RECORDING, "decline_recording")
        school = self._get(actor_id).school
        if declined == (school in self.recording.declined):
            return []
        if declined:
            self.recording.declined.add(school)
        else:
            self.recording.declined.discard(school)
        effects: list[Effect] = self._lesson_changed()
        if self.recording.active:
            effects.append(RecordingConsent(self.id, frozenset(self.recording.declined)))
        return effects

    # -- hands -------------------------------------------------------------

    def raise_hand(self, participant_id: str) -> list[Effect]:
        """Put a hand up; the queue is kept in the order hands went up."""
        self._require(participant_id, Permission.RAISE_HAND, "raise_hand")
        participant = self._get(participant_id)
        if participant.hand_raised_at is not None:
            return []
        participant.hand_raised_at = self._clock()
        announce = Announce("hand.raised", self._about(participant))
        return [announce, *self._hands_changed(), *self._updated(participant)]

    def lower_hand(self, actor_id: str, target_id: str | None) -> list[Effect]:
        """Lower one's own hand, or (moderator) someone else's."""
        actor = self._get(actor_id)
        if target_id is None or target_id == actor_id:
            target = actor
        else:
            target = self._target(target_id, "lower_hand")
            self._require_on(actor, Permission.MODERATE, target, "lower_hand")
        if target.hand_raised_at is None:
            return []
        target.hand_raised_at = None
        return self._hands_changed() + self._updated(target)

    def grant_floor(self, actor_id: str, target_id: str) -> list[Effect]:
        """Take a raised hand: lower it and let that participant publish."""
        actor, target = self._get(actor_id), self._target(target_id, "grant_floor")
        self._require_on(actor, Permission.GRANT_PUBLISH, target, "grant_floor")
        if target.hand_raised_at is None:
            raise p.ProtocolError("no_hand", f"{target.name} has not raised a hand", "grant_floor")
        target.hand_raised_at = None
        effects = self._hands_changed()
        if not target.may(Permission.PUBLISH) and can_be_granted(target.role, Permission.PUBLISH):
            target.granted.add(Permission.PUBLISH)
            return effects + self._decided(target, "granted") + self._rights_changed(target)
        return effects + self._updated(target)

    def hands(self) -> list[p.Hand]:
        """Raised hands, first raised first."""
        raised = [x for x in self.participants.values() if x.hand_raised_at is not None]
        raised.sort(key=lambda x: x.hand_raised_at or 0.0)
        return [
            p.Hand(
                participant_id=x.id, name=x.name, school=x.school, raised_at=x.hand_raised_at or 0
            )
            for x in raised
        ]

    # -- chat ------------------------------------------------------------

    def chat(self, sender_id: str, text: str, to: str) -> list[Effect]:
        """Store a chat message, then deliver it (to one's group, or to the teachers)."""
        self._require(sender_id, Permission.CHAT, "chat")
        sender = self._get(sender_id)
        if sender.role not in CHAT_POLICY_ROLES[self.settings.chat_policy]:
            raise Forbidden("chat is closed for you in this lesson", "chat")
        if to == "teachers":
            recipients = {x.id for x in self.participants.values() if _teaches(x)} | {sender_id}
        else:
            recipients = {
                x.id
                for x in self.participants.values()
                if not self.breakout or x.group == sender.group
            }
        return self._post(sender, text, "teachers" if to == "teachers" else "everyone", recipients)

    def broadcast(self, actor_id: str, text: str) -> list[Effect]:
        """A teacher's chat message to every group at once."""
        self._require(actor_id, Permission.RUN_LESSON, "broadcast")
        return self._post(self._get(actor_id), text, "all_groups", set(self.participants))

    def chat_history_for(
        self,
        participant: Participant,
        before: int | None = None,
        limit: int = p.CHAT_HISTORY_ON_JOIN,
    ) -> tuple[list[p.ChatEntry], bool]:
        """The newest ``limit`` messages this participant may read that were sent
        before message ``before`` (all if None), oldest first, and whether they are
        all that is left: private messages to the teachers for those who teach and
        their sender; a breakout group's messages for its members, those who teach
        and their sender."""
        readable = [
            record.entry
            for record in self._chat
            if (before is None or record.entry.id < before)
            and (
                _teaches(participant)
                or record.from_identity == participant.token_id
                or (
                    record.entry.to != "teachers"
                    and record.entry.group in (None, participant.group)
                )
            )
        ]
        page = readable[-limit:] if limit > 0 else []
        return page, len(page) == len(readable)

    def fetch_chat(self, participant_id: str, before: int | None, limit: int) -> list[Effect]:
        """An older page of chat for one participant."""
        participant = self._get(participant_id)
        messages, complete = self.chat_history_for(participant, before, limit)
        return [Deliver(participant_id, p.ChatHistory(messages=messages, complete=complete))]

    # -- breakout groups -------------------------------------------------

    def start_breakout(
        self, actor_id: str, groups: list[list[str]] | None, count: int | None
    ) -> list[Effect]:
        """Split participants into groups, each with its own media and chat."""
        self._require(actor_id, Permission.RUN_LESSON, "start_breakout")
        if groups is not None:
            assignment = self._groups_by_hand(groups)
        elif count is not None:
            assignment = self._groups_mixing_schools(count)
        else:
            raise p.ProtocolError(
                "invalid_message", "give either groups or count", "start_breakout"
            )
        for participant in self.participants.values():
            participant.group = assignment.get(participant.id)
        self.breakout = True
        return self._lesson_changed() + self._all_updated() + self._reconcile()

    def visit_group(self, actor_id: str, group: str | None) -> list[Effect]:
        """Move a teacher into a group (or back to the main room)."""
        self._require(actor_id, Permission.RUN_LESSON, "visit_group")
        if group is not None and group not in self._group_names():
            raise p.ProtocolError("unknown_group", f"no group {group!r}", "visit_group")
        actor = self._get(actor_id)
        actor.group = group
        return self._lesson_changed() + self._updated(actor) + self._reconcile()

    def broadcast_audio(self, actor_id: str, on: bool) -> list[Effect]:
        """Forward a teacher's audio to every group, or stop."""
        self._require(actor_id, Permission.RUN_LESSON, "broadcast_audio")
        if on:
            self.broadcast_audio_from = actor_id
        elif self.broadcast_audio_from == actor_id:
            self.broadcast_audio_from = None
        return self._lesson_changed() + self._reconcile()

    def end_breakout(self, actor_id: str) -> list[Effect]:
        """Bring everyone back to the main room."""
        self._require(actor_id, Permission.RUN_LESSON, "end_breakout")
        self.breakout = False
        self.broadcast_audio_from = None
        for participant in self.participants.values():
            participant.group = None
        return self._lesson_changed() + self._all_updated() + self._reconcile()

    def state(self) -> p.LessonState:
        """Lesson-wide state as every participant sees it."""
        groups: dict[str, list[str]] = {}
        if self.breakout:
            for participant in self.participants.values():
                if participant.group is not None:
                    groups.setdefault(participant.group, []).append(participant.id)
        return p.LessonState(
            locked=self.locked,
            spotlight=self.spotlight,
            breakout=self.breakout,
            groups=groups,
            broadcast_audio_from=self.broadcast_audio_from,
            chat_policy=self.settings.chat_policy.value,
            stage=self.director.stage,
            classroom_stages=dict(self.director.classrooms),
            recording=self.recording.active,
            recording_declined=sorted(self.recording.declined),
        )

    # -- internals -------------------------------------------------------

    def _needs_admission(self, participant: Participant) -> bool:
        if not self.settings.lobby or participant.role in TEACHING_ROLES:
            return False
        if participant.role is Role.DELEGATE:
            return False
        if participant.role in (Role.CLASSROOM, Role.FIELD_TRIP):
            # A school's room, or its camera on a trip (WHIP cannot wait in a lobby).
            return participant.school not in self.settings.invited_schools
        return True

    def _teacher_present(self) -> bool:
        return any(x.role in TEACHING_ROLES for x in self.participants.values())

    def _lobby_wait(self, participant: Participant, needs_admission: bool) -> p.LobbyWait:
        reason: Literal["lobby", "waiting_for_teacher"] = (
            "lobby" if needs_admission else "waiting_for_teacher"
        )
        message = (
            "please wait: the teacher will let you in"
            if needs_admission
            else "please wait: the teacher has not joined yet"
        )
        return p.LobbyWait(
            participant_id=participant.id,
            reason=reason,
            message=message,
            keepalive=self._keepalive,
        )

    def _to_lobby(self, participant: Participant, needs_admission: bool) -> list[Effect]:
        self.waiting[participant.id] = _Waiting(participant, needs_admission)
        return [
            self._attendance(participant, AttendanceKind.WAITING),
            Deliver(participant.id, self._lobby_wait(participant, needs_admission)),
            *self._lobby_changed(added=[participant]),
        ]

    def _admit_those_waiting_for_a_teacher(self) -> list[Effect]:
        effects: list[Effect] = []
        admitted: list[str] = []
        for pid, waiting in list(self.waiting.items()):
            if not waiting.needs_admission:
                del self.waiting[pid]
                admitted.append(pid)
                effects += self._enter(waiting.participant)
        if admitted:
            effects += self._lobby_changed(removed=admitted)
        return effects

    def _enter(self, participant: Participant) -> list[Effect]:
        others = list(self.participants.values())
        self.participants[participant.id] = participant
        effects: list[Effect] = []
        if not others and not self._started:
            self._started = True
            effects.append(Announce("lesson.started", {"lesson": self.id}))
        effects += [
            self._attendance(participant, AttendanceKind.JOINED),
            Announce("participant.joined", self._about(participant)),
            *self._welcome(participant, resumed=False),
        ]
        joined = p.ParticipantJoined(participant=participant.info())
        effects += [Deliver(other.id, joined) for other in others]
        return effects + self._reconcile()

    def _welcome(self, participant: Participant, resumed: bool) -> list[Effect]:
        """What a participant's socket gets when it takes its seat: the welcome, the
        newest chat, the hands, and (for those who admit) the lobby."""
        pid = participant.id
        effects: list[Effect] = [
            Deliver(
                pid,
                p.Welcome(
                    participant_id=pid,
                    lesson=self.id,
                    you=participant.info(),
                    permissions=participant.permissions(self.settings.chat_policy),
                    targets=participant.targets(),
                    participants=[x.info() for x in self.participants.values() if x.id != pid],
                    ice_servers=self._ice_servers(pid),
                    state=self.state(),
                    resumed=resumed,
                    keepalive=self._keepalive,
                ),
            )
        ]
        history, complete = self.chat_history_for(participant)
        if history or resumed:
            effects.append(Deliver(pid, p.ChatHistory(messages=history, complete=complete)))
        if self.hands() or resumed:
            effects.append(Deliver(pid, p.HandsChanged(queue=self.hands())))
        if (self.waiting or resumed) and participant.may(Permission.ADMIT):
            effects.append(Deliver(pid, self._lobby_message()))
        return effects

    def _visible(self, subscriber: Participant, publisher: Participant, track: p.TrackInfo) -> bool:
        if subscriber.id == publisher.id or not subscriber.may(Permission.SUBSCRIBE):
            return False
        if not self.breakout or subscriber.group == publisher.group:
            return True
        return track.kind == "audio" and publisher.id == self.broadcast_audio_from

    def _reconcile(self) -> list[Effect]:
        """Subscribe and unsubscribe so that everyone receives exactly what they may see."""
        desired: dict[tuple[str, str], tuple[str, p.TrackInfo]] = {}
        for publisher in self.participants.values():
            for track in publisher.tracks.values():
                for subscriber in self.participants.values():
                    if self._visible(subscriber, publisher, track):
                        desired[(subscriber.id, track.id)] = (publisher.id, track)
        effects: list[Effect] = [
            Unsubscribe(sub, tid) for sub, tid in sorted(self._forwarded - desired.keys())
        ]
        for key in desired.keys() - self._forwarded:
            publisher_id, track = desired[key]
            effects.append(Subscribe(key[0], publisher_id, track))
        self._forwarded = set(desired)
        return effects

    def _mute(self, target: Participant, kind: p.Kind, message: str) -> list[Effect]:
        if kind in target.muted:
            return []
        target.muted.add(kind)
        effects: list[Effect] = [
            *self._decided(target),
            *[PauseTrack(track.id, True) for track in target.tracks.values() if track.kind == kind],
        ]
        notice = p.Notice(code=f"muted_{kind}", message=message)
        return [*effects, Deliver(target.id, notice), *self._updated(target)]

    def _withdraw_publishing(self, target: Participant) -> list[Effect]:
        target.granted.discard(Permission.PUBLISH)
        target.presenter = False
        effects: list[Effect] = self._decided(target, "revoked")
        for track_id in list(target.tracks):
            effects += self.remove_track(target.id, track_id, "publishing revoked")
        return effects + self._rights_changed(target)

    def _post(self, sender: Participant, text: str, to: str, recipients: set[str]) -> list[Effect]:
        entry = p.ChatEntry(
            id=next(self._chat_ids),
            from_id=sender.id,
            name=sender.name,
            role=sender.role.value,
            school=sender.school,
            text=text,
            to=to,  # type: ignore[arg-type]
            group=sender.group if self.breakout and to == "everyone" else None,
            sent_at=self._clock(),
        )
        record = ChatRecord(self.id, entry, sender.token_id)
        self._chat.append(record)
        message = p.ChatMessage(message=entry)
        return [Record(record), *[Deliver(pid, message) for pid in sorted(recipients)]]

    def _groups_by_hand(self, groups: list[list[str]]) -> dict[str, str]:
        assignment: dict[str, str] = {}
        for number, members in enumerate(groups, start=1):
            for pid in members:
                if pid not in self.participants:
                    raise _unknown(pid, "start_breakout")
                if pid in assignment:
                    raise p.ProtocolError(
                        "invalid_message", f"{pid} is in two groups", "start_breakout"
                    )
                assignment[pid] = str(number)
        return assignment

    def _groups_mixing_schools(self, count: int) -> dict[str, str]:
        # Deal the participants round the groups, one school after another: each
        # school is spread over all groups, so every group mixes schools.
        ordered = sorted(
            (x for x in self.participants.values() if not _teaches(x)),
            key=lambda x: (x.school, x.name, x.id),
        )
        return {x.id: str(i % count + 1) for i, x in enumerate(ordered)}

    def _group_names(self) -> set[str]:
        return {x.group for x in self.participants.values() if x.group is not None}

    def _about(self, participant: Participant) -> dict[str, object]:
        return {
            "lesson": self.id,
            "participant_id": participant.id,
            "name": participant.name,
            "role": participant.role.value,
            "school": participant.school,
        }

    def _attendance(
        self,
        participant: Participant,
        kind: AttendanceKind,
        reason: str = "",
        by: str = "",
        at: float | None = None,
    ) -> Record:
        return Record(
            AttendanceEvent(
                lesson=self.id,
                kind=kind,
                at=self._clock() if at is None else at,
                identity=participant.token_id,
                participant_id=participant.id,
                name=participant.name,
                role=participant.role.value,
                school=participant.school,
                headcount=participant.headcount,
                reason=reason,
                by=by,
            )
        )

    def _lobby_message(self) -> p.LobbyUpdated:
        return p.LobbyUpdated(waiting=[w.participant.info() for w in self.waiting.values()])

    def _lobby_changed(
        self, added: list[Participant] | None = None, removed: list[str] | None = None
    ) -> list[Effect]:
        """Tell those who admit who came into the lobby and who left it (not the whole
        list again: with many waiting that grew as the square of their number)."""
        message = p.LobbyChanged(added=[x.info() for x in added or []], removed=list(removed or []))
        return [
            Deliver(x.id, message) for x in self.participants.values() if x.may(Permission.ADMIT)
        ]

    def _lesson_changed(self) -> list[Effect]:
        message = p.LessonUpdated(state=self.state())
        return [Deliver(pid, message) for pid in self.participants]

    def _hands_changed(self) -> list[Effect]:
        message = p.HandsChanged(queue=self.hands())
        return [Deliver(pid, message) for pid in self.participants]

    def _updated(self, target: Participant) -> list[Effect]:
        updated = p.ParticipantUpdated(participant=target.info())
        return [Deliver(pid, updated) for pid in self.participants]

    def _all_updated(self) -> list[Effect]:
        effects: list[Effect] = []
        for participant in self.participants.values():
            effects += self._updated(participant)
        return effects

    def _rights_changed(self, target: Participant) -> list[Effect]:
        return [
            Deliver(
                target.id,
                p.PermissionsChanged(
                    permissions=target.permissions(self.settings.chat_policy),
                    targets=target.targets(),
                ),
            ),
            *self._updated(target),
        ]

    def _require(self, participant_id: str, permission: Permission, request_type: str) -> None:
        participant = self._get(participant_id)
        if not participant.may(permission):
            raise Forbidden(_refusal(participant.role, permission), request_type)

    def _may_act_on(self, actor: Participant, permission: Permission, target: Participant) -> bool:
        scope = scope_of(actor.role, permission, frozenset(actor.granted))
        if scope is None or target.role not in target_roles(actor.role, permission):
            return False
        return scope is Scope.ANY or target.school == actor.school

    def _require_on(
        self, actor: Participant, permission: Permission, target: Participant, request_type: str
    ) -> None:
        if self._may_act_on(actor, permission, target):
            return
        if scope_of(actor.role, permission, frozenset(actor.granted)) is None:
            raise Forbidden(_refusal(actor.role, permission), request_type)
        if target.role in TEACHING_ROLES:
            raise Forbidden("only a teacher may act on a teacher", request_type)
        raise Forbidden("you may only act on participants of your own school", request_type)

    def _get(self, participant_id: str) -> Participant:
        participant = self.participants.get(participant_id)
        if participant is None:
            if participant_id in self.waiting:
                raise p.ProtocolError("in_lobby", "you are waiting in the lobby")
            raise p.ProtocolError("not_joined", "you are not in this lesson")
        return participant

    def _target(self, target_id: str, request_type: str) -> Participant:
        target = self.participants.get(target_id)
        if target is None:
            raise _unknown(target_id, request_type)
        return target


def _teaches(participant: Participant) -> bool:
    return participant.role in TEACHING_ROLES or participant.role is Role.DELEGATE


def _unknown(target_id: str, request_type: str) -> p.ProtocolError:
    return p.ProtocolError(
        "unknown_participant", f"no participant {target_id!r} in this lesson", request_type
    )


def _kind_word(kind: p.Kind) -> str:
    return "microphone" if kind == "audio" else "camera"


def _refusal(role: Role, permission: Permission) -> str:
    if permission is Permission.PUBLISH and can_be_granted(role, permission):
        return "you may not publish until the teacher allows it"
    return f"a {role.value} may not {permission.value.replace('_', ' ')}"
