"""Connections to the status database under the right role."""

from __future__ import annotations

import enum

import asyncpg

from ocspd.errors import NotPermitted, Unavailable


class Role(enum.Enum):
    """The PostgreSQL roles the migrations create; each program works under one."""

    # Reads status, changes nothing (R11).
    RESPONDER = "ocspd_responder"
    # Before 0004 the revocation manager's one role; now officer plus administrator.
    OPERATOR = "ocspd_operator"
    # Revocation officer: imports certificates, records and approves status changes.
    OFFICER = "ocspd_officer"
    # Reads the audit trail and the status tables, changes nothing (AA5.1, M1.4).
    AUDITOR = "ocspd_auditor"
    # Registers issuers, grants the roles above, purges rows past retention.
    ADMIN = "ocspd_admin"
    # crlgen: reads status, appends to the CRL archive.
    PUBLISHER = "ocspd_publisher"
    # Whoever the DSN logs in as, unchanged: `ocspd db migrate` works as the owner; other
    # commands start as the person's login and SET ROLE with assume_role().
    OWNER = ""
    LOGIN = ""  # an alias of OWNER, for readability where the login is a person


async def connect(dsn: str, role: Role, timeout: float = 10.0) -> asyncpg.Connection:
    """Connect with a libpq DSN and switch to `role`.

    SET ROLE keeps session_user (the login) for the record while privileges come from the role.
    """
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        raise Unavailable(f"cannot connect to the status database: {describe_error(e)}") from e
    try:
        if role is not Role.OWNER:
            await conn.execute(f"SET ROLE {role.value}")
    except asyncpg.PostgresError as e:
        await conn.close()
        raise Unavailable(
            f"cannot switch to role {role.value}: {e}; run `ocspd db migrate` as the database owner first"
        ) from e
    return conn


# How commands name the roles people hold (`ocspd role grant NAME LOGIN`).
PERSON_ROLES: dict[str, Role] = {
    "officer": Role.OFFICER,
    "auditor": Role.AUDITOR,
    "admin": Role.ADMIN,
}
_TITLES = {
    Role.OFFICER: "a revocation officer",
    Role.AUDITOR: "an auditor",
    Role.ADMIN: "an administrator",
}


async def assume_role(conn: asyncpg.Connection, *roles: Role) -> Role:
    """SET ROLE to the first of `roles` the login holds (superusers hold all).

    The login stays session_user, which the database records as the actor; the role only
    decides what the connection may do. Raises NotPermitted naming what is missing.
    """
    names = [r.value for r in roles]
    known = {
        r["rolname"]
        for r in await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname = ANY($1)", names)
    }
    if missing := [n for n in names if n not in known]:
        raise Unavailable(
            f"role {missing[0]} does not exist; run `ocspd db migrate` as the database owner first"
        )
    held = await conn.fetch(
        "SELECT r FROM unnest($1::text[]) WITH ORDINALITY AS t(r, n) "
        "WHERE pg_has_role(session_user, r, 'MEMBER') ORDER BY n",
        names,
    )
    if not held:
        login = await conn.fetchval("SELECT session_user")
        wanted = " or ".join(_TITLES.get(r, r.value) for r in roles)
        short = {v: k for k, v in PERSON_ROLES.items()}.get(roles[0])
        hint = (
            f"; an administrator grants it with: ocspd role grant {short} {login}" if short else ""
        )
        raise NotPermitted(f"login {login} is not {wanted}{hint}")
    role = Role(held[0]["r"])
    await conn.execute(f"SET ROLE {role.value}")
    return role


def describe_error(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
