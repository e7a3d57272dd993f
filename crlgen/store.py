"""crlgen's queries: revoked entries as a stream, the CRL archive, and pending changes."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from ocspd.store.db import Role

# crlgen works as its own role: reads status, appends to the CRL archive (sql/0003).
PUBLISHER = Role.PUBLISHER

# Serialises signing per issuer across processes: (class, issuer id) advisory locks.
SIGN_LOCK_CLASS = 0x63726C31  # "crl1"
# Held for a whole session by the one `crlgen run` that schedules (the leader).
LEADER_LOCK = (0x63726C32, 0)  # "crl2"

# Rows of revoked and held certificates, read through a server-side cursor so a million
# entries never sit in memory as Python objects at once.
_ENTRIES = """
    SELECT serial, revoked_at, reason, invalidity_date
    FROM certificates
    WHERE issuer_id = $1 AND status <> 'good'
      AND ($2::timestamptz IS NULL OR not_after >= $2)
"""


@dataclass(frozen=True)
class ArchivedCrl:
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    entries: int
    sha256: bytes
    snapshot: str


async def latest_crl(conn: asyncpg.Connection, issuer_id: int) -> ArchivedCrl | None:
    row = await conn.fetchrow(
        """SELECT crl_number, this_update, next_update, entries, sha256, snapshot
           FROM crls WHERE issuer_id = $1 ORDER BY crl_number DESC LIMIT 1""",
        issuer_id,
    )
    if row is None:
        return None
    return ArchivedCrl(
        int(row["crl_number"]),
        row["this_update"],
        row["next_update"],
        row["entries"],
        row["sha256"],
        row["snapshot"],
    )


async def latest_der(conn: asyncpg.Connection, issuer_id: int) -> bytes | None:
    der: bytes | None = await conn.fetchval(
        "SELECT der FROM crls WHERE issuer_id = $1 ORDER BY crl_number DESC LIMIT 1", issuer_id
    )
    return der


async def oldest_unsigned_change(
    conn: asyncpg.Connection, issuer_id: int, snapshot: str
) -> dt.datetime | None:
    """When the earliest status change the CRL read in `snapshot` does not hold was received."""
    value: dt.datetime | None = await conn.fetchval(
        """SELECT min(received_at) FROM revocation_requests
           WHERE issuer_id = $1 AND applied_at IS NOT NULL
             AND change_xid >= pg_snapshot_xmin($2::text::pg_snapshot)
             AND NOT pg_visible_in_snapshot(change_xid, $2::text::pg_snapshot)""",
        issuer_id,
        snapshot,
    )
    return value


async def stream_entries(
    conn: asyncpg.Connection,
    issuer_id: int,
    expired_before: dt.datetime | None,
    batch: int = 10_000,
) -> AsyncIterator[list[tuple[bytes, dt.datetime, int | None, dt.datetime | None]]]:
    """Yield batches of (serial, revoked_at, reason, invalidity_date); call inside a transaction."""
    cursor = await conn.cursor(_ENTRIES, issuer_id, expired_before)
    while True:
        rows = await cursor.fetch(batch)
        if not rows:
            return
        yield [(r[0], r[1], r[2], r[3]) for r in rows]


async def archive(
    conn: asyncpg.Connection,
    issuer_id: int,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    entries: int,
    sha256: bytes,
    der: bytes,
    snapshot: str,
) -> None:
    await conn.execute(
        """INSERT INTO crls (issuer_id, crl_number, this_update, next_update, entries, sha256, der, snapshot)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        issuer_id,
        number,
        this_update,
        next_update,
        entries,
        sha256,
        der,
        snapshot,
    )
