"""Roles and the one permission table.

Every action a participant can take names the permission it needs; a role is a
named set of permissions. Anything not in the table is denied. The only state
that changes what a participant may do at run time is an explicit grant from a
teacher (for now: the right to publish), kept on the participant, never taken
from a client message.
"""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """Who a participant is in a lesson; always taken from the signed join token."""

    TEACHER = "teacher"
    STUDENT = "student"
    CLASSROOM = "classroom"  # a room endpoint: one participant for a whole class
    EXPERT = "expert"
    OBSERVER = "observer"


class Permission(enum.StrEnum):
    """An action that a message may ask for."""

    JOIN = "join"
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    GRANT_PUBLISH = "grant_publish"


# Permissions a role holds from the moment it joins.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.TEACHER: frozenset(
        {Permission.JOIN, Permission.SUBSCRIBE, Permission.PUBLISH, Permission.GRANT_PUBLISH}
    ),
    Role.EXPERT: frozenset({Permission.JOIN, Permission.SUBSCRIBE, Permission.PUBLISH}),
    Role.CLASSROOM: frozenset({Permission.JOIN, Permission.SUBSCRIBE, Permission.PUBLISH}),
    Role.STUDENT: frozenset({Permission.JOIN, Permission.SUBSCRIBE}),
    Role.OBSERVER: frozenset({Permission.JOIN, Permission.SUBSCRIBE}),
}

# Permissions that a holder of GRANT_PUBLISH may hand to (and take from) a role.
# A role absent here cannot be granted anything.
GRANTABLE: dict[Role, frozenset[Permission]] = {
    Role.STUDENT: frozenset({Permission.PUBLISH}),
}


def is_allowed(role: Role, permission: Permission, granted: frozenset[Permission]) -> bool:
    """Return whether a participant with ``role`` and run-time ``granted`` may do ``permission``.

    A grant only counts when the table says the role can be granted that
    permission, so a stale or forged grant set cannot widen a role.
    """
    if permission in ROLE_PERMISSIONS.get(role, frozenset()):
        return True
    return permission in granted and permission in GRANTABLE.get(role, frozenset())


def can_be_granted(role: Role, permission: Permission) -> bool:
    """Return whether ``permission`` may be granted at run time to ``role``."""
    return permission in GRANTABLE.get(role, frozenset())


def effective_permissions(role: Role, granted: frozenset[Permission]) -> frozenset[Permission]:
    """Every permission a participant holds right now (role plus valid grants)."""
    return frozenset(p for p in Permission if is_allowed(role, p, granted))
