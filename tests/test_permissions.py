"""The permission table itself: roles, scopes and grants."""

from __future__ import annotations

import pytest

from signaling.permissions import (
    CHAT_POLICY_ROLES,
    ROLE_PERMISSIONS,
    ChatPolicy,
    Permission,
    Role,
    Scope,
    can_be_granted,
    effective_permissions,
    is_allowed,
    may_ever_publish,
    scope_of,
    target_roles,
)

P = Permission
LISTENERS = {P.JOIN, P.SUBSCRIBE, P.CHAT}
PARTICIPANTS = LISTENERS | {P.RAISE_HAND, P.ASK_TO_UNMUTE}
EXPECTED: dict[Role, set[Permission]] = {
    Role.TEACHER: LISTENERS
    | {
        P.PUBLISH,
        P.GRANT_PUBLISH,
        P.MODERATE,
        P.ADMIT,
        P.RUN_LESSON,
        P.RECORD,
        P.DECLINE_RECORDING,
    },
    Role.DELEGATE: LISTENERS
    | {P.PUBLISH, P.GRANT_PUBLISH, P.MODERATE, P.ADMIT, P.DECLINE_RECORDING},
    Role.EXPERT: PARTICIPANTS | {P.PUBLISH},
    Role.CLASSROOM: PARTICIPANTS | {P.PUBLISH},
    Role.STUDENT: PARTICIPANTS,
    Role.OBSERVER: LISTENERS,
    # A camera: in the lesson to publish, nothing else.
    Role.FIELD_TRIP: {P.JOIN, P.PUBLISH},
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_every_role_against_every_permission(role: Role, permission: Permission) -> None:
    assert is_allowed(role, permission, frozenset()) is (permission in EXPECTED[role])


def test_every_role_is_in_the_table() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)


@pytest.mark.parametrize("permission", [P.GRANT_PUBLISH, P.MODERATE, P.ADMIT])
def test_a_delegate_acts_only_on_its_own_school(permission: Permission) -> None:
    assert scope_of(Role.DELEGATE, permission, frozenset()) is Scope.OWN_SCHOOL
    assert scope_of(Role.TEACHER, permission, frozenset()) is Scope.ANY


def test_a_student_publishes_only_with_a_grant() -> None:
    assert not is_allowed(Role.STUDENT, P.PUBLISH, frozenset())
    assert is_allowed(Role.STUDENT, P.PUBLISH, frozenset({P.PUBLISH}))


@pytest.mark.parametrize("role", [Role.OBSERVER, Role.STUDENT])
def test_a_grant_outside_the_table_changes_nothing(role: Role) -> None:
    # A forged grant set (say, from a bug elsewhere) cannot widen a role.
    forged = frozenset(Permission)
    for permission in (P.GRANT_PUBLISH, P.MODERATE, P.ADMIT, P.RUN_LESSON):
        assert not is_allowed(role, permission, forged)
    if role is Role.OBSERVER:
        assert not is_allowed(role, P.PUBLISH, forged)
        assert not can_be_granted(role, P.PUBLISH)


def test_effective_permissions_lists_role_and_grants() -> None:
    assert effective_permissions(Role.STUDENT, frozenset({P.PUBLISH})) == PARTICIPANTS | {P.PUBLISH}


def test_chat_policies_narrow_chat() -> None:
    assert CHAT_POLICY_ROLES[ChatPolicy.EVERYONE] == set(Role)
    assert Role.OBSERVER not in CHAT_POLICY_ROLES[ChatPolicy.NO_OBSERVERS]
    assert CHAT_POLICY_ROLES[ChatPolicy.TEACHERS_ONLY] == {Role.TEACHER, Role.DELEGATE}
    assert not CHAT_POLICY_ROLES[ChatPolicy.OFF]


def test_only_observers_never_publish() -> None:
    assert {r for r in Role if not may_ever_publish(r)} == {Role.OBSERVER}


def test_only_a_teacher_acts_on_a_teacher() -> None:
    assert target_roles(Role.TEACHER, P.MODERATE) == set(Role)
    assert target_roles(Role.DELEGATE, P.MODERATE) == set(Role) - {Role.TEACHER}
    # Without the permission, nobody.
    assert target_roles(Role.DELEGATE, P.RUN_LESSON) == set()
    assert target_roles(Role.STUDENT, P.MODERATE) == set()
