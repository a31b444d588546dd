"""The lesson state machine: who is in, what they publish, what they may do.

Plain objects, no I/O: every operation takes the acting participant's id (from
its session, never from a message), checks the permission table, changes the
state and returns effects for the server and the SFU to carry out.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field

from . import protocol as p
from .permissions import Permission, Role, can_be_granted, effective_permissions, is_allowed
from .tokens import Grant

# --- effects -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send ``message`` to one participant."""

    to: str
    message: p.ServerMessage


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Start forwarding ``track`` of ``publisher`` to ``subscriber``."""

    subscriber: str
    publisher: str
    track: p.TrackInfo


@dataclass(frozen=True, slots=True)
class StopTrack:
    """Stop forwarding a published track at the server; it ends for every subscriber."""

    publisher: str
    track_id: str


Effect = Deliver | Subscribe | StopTrack


# --- state -------------------------------------------------------------------


@dataclass(slots=True)
class Participant:
    """One participant in a lesson; identity fields come from the signed token."""

    id: str
    name: str
    role: Role
    school: str
    token_id: str
    granted: set[Permission] = field(default_factory=set)
    tracks: dict[str, p.TrackInfo] = field(default_factory=dict)

    def may(self, permission: Permission) -> bool:
        """Whether this participant holds ``permission`` right now."""
        return is_allowed(self.role, permission, frozenset(self.granted))

    def permissions(self) -> list[str]:
        """Sorted names of every permission held now."""
        return sorted(effective_permissions(self.role, frozenset(self.granted)))

    def info(self) -> p.ParticipantInfo:
        """The participant as other participants see it."""
        return p.ParticipantInfo(
            id=self.id,
            name=self.name,
            role=self.role.value,
            school=self.school,
            can_publish=self.may(Permission.PUBLISH),
            tracks=list(self.tracks.values()),
        )


class Forbidden(p.ProtocolError):
    """An action that the permission table does not allow."""

    def __init__(self, message: str, request_type: str | None = None) -> None:
        super().__init__("forbidden", message, request_type)


class Lesson:
    """All state of one live lesson on this node."""

    def __init__(self, lesson_id: str, ice_servers: list[p.IceServer] | None = None) -> None:
        self.id = lesson_id
        self.participants: dict[str, Participant] = {}
        self._ice_servers = list(ice_servers or [])
        self._track_numbers = itertools.count(1)

    # -- membership ------------------------------------------------------

    def join(self, grant: Grant) -> tuple[Participant, list[Effect]]:
        """Admit the holder of ``grant``; the caller has verified the token."""
        if grant.lesson != self.id:
            raise Forbidden("this join link is for another lesson", "join")
        participant = Participant(
            id=secrets.token_hex(6),
            name=grant.name,
            role=grant.role,
            school=grant.school,
            token_id=grant.token_id,
        )
        if not participant.may(Permission.JOIN):
            raise Forbidden(f"role {grant.role.value!r} may not join lessons", "join")
        others = list(self.participants.values())
        self.participants[participant.id] = participant
        effects: list[Effect] = [
            Deliver(
                participant.id,
                p.Welcome(
                    participant_id=participant.id,
                    lesson=self.id,
                    you=participant.info(),
                    permissions=participant.permissions(),
                    participants=[other.info() for other in others],
                    ice_servers=self._ice_servers,
                ),
            )
        ]
        joined = p.ParticipantJoined(participant=participant.info())
        effects += [Deliver(other.id, joined) for other in others]
        if participant.may(Permission.SUBSCRIBE):
            for other in others:
                effects += [
                    Subscribe(participant.id, other.id, track) for track in other.tracks.values()
                ]
        return participant, effects

    def leave(self, participant_id: str, reason: str) -> list[Effect]:
        """Remove a participant (left, disconnected or removed); its tracks end."""
        participant = self.participants.pop(participant_id, None)
        if participant is None:
            return []
        effects: list[Effect] = [
            StopTrack(participant_id, track_id) for track_id in participant.tracks
        ]
        left = p.ParticipantLeft(participant_id=participant_id, reason=reason)
        effects += [Deliver(other, left) for other in self.participants]
        return effects

    @property
    def is_empty(self) -> bool:
        """No participant is left."""
        return not self.participants

    # -- publishing ------------------------------------------------------

    def require(self, participant_id: str, permission: Permission, request_type: str) -> None:
        """Raise :class:`Forbidden` unless the participant holds ``permission`` now."""
        participant = self._get(participant_id)
        if not participant.may(permission):
            raise Forbidden(_refusal(participant.role, permission), request_type)

    def add_track(
        self, participant_id: str, kind: p.Kind, source: p.Source
    ) -> tuple[p.TrackInfo, list[Effect]]:
        """Record a track the participant now publishes; subscribe everyone else to it."""
        self.require(participant_id, Permission.PUBLISH, "publish_offer")
        publisher = self._get(participant_id)
        track = p.TrackInfo(
            id=f"{participant_id}-{next(self._track_numbers)}", kind=kind, source=source
        )
        publisher.tracks[track.id] = track
        announced = p.TrackPublished(participant_id=participant_id, track=track)
        effects: list[Effect] = []
        for other in self.participants.values():
            if other.id == participant_id:
                continue
            effects.append(Deliver(other.id, announced))
            if other.may(Permission.SUBSCRIBE):
                effects.append(Subscribe(other.id, participant_id, track))
        return track, effects

    def remove_track(self, participant_id: str, track_id: str, reason: str) -> list[Effect]:
        """A published track ended (unpublished, revoked or its peer connection closed)."""
        participant = self.participants.get(participant_id)
        if participant is None or participant.tracks.pop(track_id, None) is None:
            return []
        gone = p.TrackUnpublished(participant_id=participant_id, track_id=track_id, reason=reason)
        effects: list[Effect] = [StopTrack(participant_id, track_id)]
        effects += [Deliver(other, gone) for other in self.participants if other != participant_id]
        return effects

    # -- moderation ------------------------------------------------------

    def grant_publish(self, actor_id: str, target_id: str) -> list[Effect]:
        """Let ``target_id`` publish (teacher action)."""
        self.require(actor_id, Permission.GRANT_PUBLISH, "grant_publish")
        target = self._target(target_id, "grant_publish")
        if target.may(Permission.PUBLISH):
            return []
        if not can_be_granted(target.role, Permission.PUBLISH):
            raise Forbidden(
                f"a participant with role {target.role.value!r} cannot be allowed to publish",
                "grant_publish",
            )
        target.granted.add(Permission.PUBLISH)
        return self._rights_changed(target)

    def revoke_publish(self, actor_id: str, target_id: str) -> list[Effect]:
        """Take back a publish grant; the target's tracks stop at the server at once."""
        self.require(actor_id, Permission.GRANT_PUBLISH, "revoke_publish")
        target = self._target(target_id, "revoke_publish")
        if Permission.PUBLISH not in target.granted:
            if target.may(Permission.PUBLISH):
                raise Forbidden(
                    f"a {target.role.value} publishes by role; there is no grant to revoke",
                    "revoke_publish",
                )
            return []
        target.granted.discard(Permission.PUBLISH)
        effects: list[Effect] = []
        for track_id in list(target.tracks):
            effects += self.remove_track(target.id, track_id, "publishing revoked")
        return effects + self._rights_changed(target)

    # -- helpers ---------------------------------------------------------

    def _rights_changed(self, target: Participant) -> list[Effect]:
        updated = p.ParticipantUpdated(participant=target.info())
        effects: list[Effect] = [
            Deliver(target.id, p.PermissionsChanged(permissions=target.permissions()))
        ]
        effects += [Deliver(other, updated) for other in self.participants]
        return effects

    def _get(self, participant_id: str) -> Participant:
        participant = self.participants.get(participant_id)
        if participant is None:
            raise p.ProtocolError("not_joined", "you are not in this lesson")
        return participant

    def _target(self, target_id: str, request_type: str) -> Participant:
        target = self.participants.get(target_id)
        if target is None:
            raise p.ProtocolError(
                "unknown_participant", f"no participant {target_id!r} in this lesson", request_type
            )
        return target


def _refusal(role: Role, permission: Permission) -> str:
    if permission is Permission.PUBLISH and can_be_granted(role, permission):
        return "you may not publish until the teacher allows it"
    return f"a {role.value} may not {permission.value.replace('_', ' ')}"
