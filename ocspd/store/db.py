"""Connections to the status database under the right role."""

from __future__ import annotations

import enum

import asyncpg

from ocspd.errors import Unavailable


class Role(enum.Enum):
    """The PostgreSQL roles the migrations create; each program works under one."""

    # Reads status, changes nothing (R11).
    RESPONDER = "ocspd_responder"
    # The revocation manager: imports certificates and records status changes.
    OPERATOR = "ocspd_operator"
    # crlgen: reads status, appends to the CRL archive.
    PUBLISHER = "ocspd_publisher"
    # Whoever the DSN logs in as, unchanged: only `ocspd db migrate` needs this.
    OWNER = ""


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


def describe_error(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
