"""The permission table, role by role and permission by permission."""

from __future__ import annotations

import pytest

from signaling.permissions import (
    ROLE_PERMISSIONS,
    Permission,
    Role,
    can_be_granted,
    effective_permissions,
    is_allowed,
)

P = Permission
EXPECTED: dict[Role, set[Permission]] = {
    Role.TEACHER: {P.JOIN, P.SUBSCRIBE, P.PUBLISH, P.GRANT_PUBLISH},
    Role.EXPERT: {P.JOIN, P.SUBSCRIBE, P.PUBLISH},
    Role.CLASSROOM: {P.JOIN, P.SUBSCRIBE, P.PUBLISH},
    Role.STUDENT: {P.JOIN, P.SUBSCRIBE},
    Role.OBSERVER: {P.JOIN, P.SUBSCRIBE},
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_every_role_against_every_permission(role: Role, permission: Permission) -> None:
    assert is_allowed(role, permission, frozenset()) is (permission in EXPECTED[role])


def test_every_role_is_in_the_table() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)


def test_a_student_publishes_only_with_a_grant() -> None:
    assert not is_allowed(Role.STUDENT, P.PUBLISH, frozenset())
    assert is_allowed(Role.STUDENT, P.PUBLISH, frozenset({P.PUBLISH}))


@pytest.mark.parametrize("role", [Role.OBSERVER, Role.STUDENT])
def test_a_grant_outside_the_table_changes_nothing(role: Role) -> None:
    # A forged grant set (say, from a bug elsewhere) cannot widen a role.
    forged = frozenset({P.GRANT_PUBLISH, P.PUBLISH})
    assert not is_allowed(role, P.GRANT_PUBLISH, forged)
    if role is Role.OBSERVER:
        assert not is_allowed(role, P.PUBLISH, forged)
        assert not can_be_granted(role, P.PUBLISH)


def test_effective_permissions_lists_role_and_grants() -> None:
    assert effective_permissions(Role.STUDENT, frozenset({P.PUBLISH})) == {
        P.JOIN,
        P.SUBSCRIBE,
        P.PUBLISH,
    }
