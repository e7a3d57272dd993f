"""The people's roles (M1.1, M1.4): memberships of logins in ocspd_officer, _auditor, _admin."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ocspd.store.db import PERSON_ROLES, Role

_SHORT = {role.value: short for short, role in PERSON_ROLES.items()}


@dataclass(frozen=True)
class Member:
    login: str
    superuser: bool
    # Short names (officer, auditor, admin) the login holds, directly or through a role.
    roles: tuple[str, ...]
    # Those held only through another role, e.g. ocspd_operator.
    indirect: tuple[str, ...]


async def set_membership(conn: asyncpg.Connection, role: Role, login: str, member: bool) -> str:
    """Grant or revoke through ocspd_role_membership() (ocspd_admin only; refuses what M1.4
    forbids). Returns granted, revoked, unchanged or indirect."""
    result: str = await conn.fetchval(
        "SELECT ocspd_role_membership($1, $2, $3)", role.value, login, member
    )
    return result


async def members(conn: asyncpg.Connection) -> list[Member]:
    """Every login holding one of the roles, and the superusers (who hold them all)."""
    names = list(_SHORT)
    rows = await conn.fetch(
        """SELECT l.rolname AS login, l.rolsuper AS superuser,
                  array(SELECT r FROM unnest($1::text[]) r WHERE pg_has_role(l.oid, r, 'MEMBER')) AS held,
                  array(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                        WHERE m.member = l.oid AND g.rolname = ANY($1)) AS direct
           FROM pg_roles l
           WHERE l.rolcanlogin
             AND (l.rolsuper OR EXISTS (SELECT FROM unnest($1::text[]) r
                                         WHERE pg_has_role(l.oid, r, 'MEMBER')))
           ORDER BY l.rolname""",
        names,
    )
    found = []
    for row in rows:
        held = [_SHORT[r] for r in names if r in row["held"]]
        indirect = (
            ()
            if row["superuser"]
            else tuple(_SHORT[r] for r in names if r in row["held"] and r not in row["direct"])
        )
        found.append(Member(row["login"], row["superuser"], tuple(held), indirect))
    return found
