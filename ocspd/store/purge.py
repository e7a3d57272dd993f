"""Removing status rows past retention (pkio70): through purge_certificates() only.

pkio70 keeps OCSP information at least 6 months after a certificate expires or is revoked.
purge_certificates() (sql/0004) refuses any cutoff later than 6 months ago and deletes only
in a transaction whose newest operator record is the purge's own, written first with the
counts and digest the counting call returned (ocspd/revocation.py does both).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class PurgeCounts:
    certificates: int
    responses: int
    requests: int
    # Rows past the cutoff kept because a request for them still waits for a decision.
    kept_pending: int
    # SHA-256 (hex) of the purged (issuer id, serial) list, for the audit record.
    digest: str


async def retention_limit(conn: asyncpg.Connection) -> dt.datetime:
    """The latest cutoff pkio70 allows now: 6 calendar months ago, by the database clock."""
    value: dt.datetime = await conn.fetchval("SELECT now() - interval '6 months'")
    return value


async def _call(conn: asyncpg.Connection, before: dt.datetime, apply: bool) -> PurgeCounts:
    row = await conn.fetchrow("SELECT * FROM purge_certificates($1, $2)", before, apply)
    return PurgeCounts(
        row["certificates"], row["responses"], row["requests"], row["kept_pending"], row["digest"]
    )


async def count(conn: asyncpg.Connection, before: dt.datetime) -> PurgeCounts:
    """Lock and count what a purge would remove (in the caller's transaction)."""
    return await _call(conn, before, False)


async def apply(conn: asyncpg.Connection, before: dt.datetime) -> PurgeCounts:
    """Remove them; the transaction's newest operator record must be this purge's."""
    return await _call(conn, before, True)
