"""Roles and the one permission table.

Every action a participant can take names the permission it needs; a role is a
named set of permissions, each with a scope: whom the action may target. Anything
not in the table is denied. Run-time grants (a teacher letting a student publish,
making someone presenter) only count where the table says the role can hold them.
"""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """Who a participant is in a lesson; always taken from the signed join token."""

    TEACHER = "teacher"
    DELEGATE = "delegate"  # a school's own moderator: acts only on its own school
    STUDENT = "student"
    CLASSROOM = "classroom"  # a room endpoint: one participant for a whole class
    EXPERT = "expert"
    OBSERVER = "observer"
    # A field-trip camera (WHIP, lco publish): publishes to the stage, nothing more.
    FIELD_TRIP = "field_trip"


class Permission(enum.StrEnum):
    """An action that a message may ask for."""

    JOIN = "join"
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    CHAT = "chat"
    RAISE_HAND = "raise_hand"
    ASK_TO_UNMUTE = "ask_to_unmute"
    GRANT_PUBLISH = "grant_publish"  # grant and revoke publishing, give the floor
    MODERATE = "moderate"  # mute, remove, lower hands, approve unmute, presenter
    ADMIT = "admit"  # admit or deny from the lobby
    RUN_LESSON = "run_lesson"  # lock, mute all, spotlight, director, breakouts, end
    RECORD = "record"  # start and stop recording the lesson
    DECLINE_RECORDING = "decline_recording"  # refuse recording for one's own school


class Scope(enum.Enum):
    """Whom an action may target."""

    ANY = "any"
    OWN_SCHOOL = "own_school"


_ALL = Scope.ANY
_SCHOOL = Scope.OWN_SCHOOL

# Permissions a role holds from the moment it joins, with their scope.
ROLE_PERMISSIONS: dict[Role, dict[Permission, Scope]] = {
    Role.TEACHER: {
        Permission.JOIN: _ALL,
        Permission.SUBSCRIBE: _ALL,
        Permission.PUBLISH: _ALL,
        Permission.CHAT: _ALL,
        Permission.GRANT_PUBLISH: _ALL,
        Permission.MODERATE: _ALL,
        Permission.ADMIT: _ALL,
        Permission.RUN_LESSON: _ALL,
        Permission.RECORD: _ALL,
        Permission.DECLINE_RECORDING: _SCHOOL,
    },
    Role.DELEGATE: {
        Permission.JOIN: _ALL,
        Permission.SUBSCRIBE: _ALL,
        Permission.PUBLISH: _ALL,
        Permission.CHAT: _ALL,
        Permission.GRANT_PUBLISH: _SCHOOL,
        Permission.MODERATE: _SCHOOL,
        Permission.ADMIT: _SCHOOL,
        Permission.DECLINE_RECORDING: _SCHOOL,
    },
    Role.EXPERT: {
        Permission.JOIN: _ALL,
        Permission.SUBSCRIBE: _ALL,
        Permission.PUBLISH: _ALL,
        Permission.CHAT: _ALL,
        Permission.RAISE_HAND: _ALL,
        Permission.ASK_TO_UNMUTE: _ALL,
    },
    Role.CLASSROOM: {
        Permission.JOIN: _ALL,
        Permission.SUBSCRIBE: _ALL,
        Permission.PUBLISH: _ALL,
        Permission.CHAT: _ALL,
        Permission.RAISE_HAND: _ALL,
        Permission.ASK_TO_UNMUTE: _ALL,
    },
    Role.STUDENT: {
        Permission.JOIN: _ALL,
        Permission.SUBSCRIBE: _ALL,
        Permission.CHAT: _ALL,
        Permission.RAISE_HAND: _ALL,
        Permission.ASK_TO_UNMUTE: _ALL,
    },
    Role.OBSERVER: {
        Permission.JOIN: _ALL,
        Permission.SUBSCRIBE: _ALL,
        Permission.CHAT: _ALL,
    },
    Role.FIELD_TRIP: {
        Permission.JOIN: _ALL,
        Permission.PUBLISH: _ALL,
    },
}

# Permissions a moderator may hand to (and take from) a role at run time.
GRANTABLE: dict[Role, frozenset[Permission]] = {
    Role.STUDENT: frozenset({Permission.PUBLISH}),
}

# Roles that run a lesson: they are never held in the lobby and count as "the teacher
# has joined".
TEACHING_ROLES = frozenset({Role.TEACHER})


class ChatPolicy(enum.StrEnum):
    """A lesson setting: who may send chat messages."""

    EVERYONE = "everyone"
    NO_OBSERVERS = "no_observers"
    TEACHERS_ONLY = "teachers_only"
    OFF = "off"


# The lesson's chat policy narrows the CHAT permission of the table to these roles.
CHAT_POLICY_ROLES: dict[ChatPolicy, frozenset[Role]] = {
    ChatPolicy.EVERYONE: frozenset(Role),
    ChatPolicy.NO_OBSERVERS: frozenset(Role) - {Role.OBSERVER},
    ChatPolicy.TEACHERS_ONLY: frozenset({Role.TEACHER, Role.DELEGATE}),
    ChatPolicy.OFF: frozenset(),
}


def scope_of(role: Role, permission: Permission, granted: frozenset[Permission]) -> Scope | None:
    """The scope in which ``role`` (with run-time ``granted``) holds ``permission``, or None.

    A grant only counts when the table says the role can be granted that
    permission, so a stale or forged grant set cannot widen a role.
    """
    scope = ROLE_PERMISSIONS.get(role, {}).get(permission)
    if scope is not None:
        return scope
    if permission in granted and permission in GRANTABLE.get(role, frozenset()):
        return Scope.ANY
    return None


def is_allowed(role: Role, permission: Permission, granted: frozenset[Permission]) -> bool:
    """Whether a participant with ``role`` and ``granted`` may do ``permission`` at all."""
    return scope_of(role, permission, granted) is not None


def can_be_granted(role: Role, permission: Permission) -> bool:
    """Return whether ``permission`` may be granted at run time to ``role``."""
    return permission in GRANTABLE.get(role, frozenset())


def may_ever_publish(role: Role) -> bool:
    """Whether ``role`` publishes by the table or can be allowed to at run time."""
    return Permission.PUBLISH in ROLE_PERMISSIONS.get(role, {}) or can_be_granted(
        role, Permission.PUBLISH
    )


def target_roles(role: Role, permission: Permission) -> frozenset[Role]:
    """The roles that ``role`` may act on with ``permission`` (empty if it does not hold
    it): only a teacher acts on a teacher. The scope (:func:`scope_of`) narrows this to
    the actor's own school where it says so."""
    if permission not in ROLE_PERMISSIONS.get(role, {}):
        return frozenset()
    return frozenset(Role) if role in TEACHING_ROLES else frozenset(Role) - TEACHING_ROLES


def effective_permissions(role: Role, granted: frozenset[Permission]) -> frozenset[Permission]:
    """Every permission a participant holds right now (role plus valid grants)."""
    return frozenset(p for p in Permission if is_allowed(role, p, granted))
