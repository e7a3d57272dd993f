"""The responder's reads: certificate status with any stored signed response, in one query.

Runs as ocspd_responder (R11): it reads status and may only write ocsp_responses.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from ocspd.model import CertStatus, Reason, serial_to_bytes


@dataclass(frozen=True)
class StatusRow:
    serial: int
    status: CertStatus
    revoked_at: dt.datetime | None
    reason: Reason | None
    not_after: dt.datetime
    # The transaction that last wrote the row; a stored response is only valid for it.
    change_xid: int


@dataclass(frozen=True)
class StoredResponse:
    der: bytes
    this_update: dt.datetime
    next_update: dt.datetime


# xid8 has no binary codec in asyncpg; it travels as text and fits a Python int.
_ONE = """
    SELECT c.serial, c.status::text, c.revoked_at, c.reason, c.not_after,
           c.change_xid::text AS change_xid, r.der, r.this_update, r.next_update
    FROM certificates c
    LEFT JOIN ocsp_responses r ON r.cert_id = $3 AND r.change_xid = c.change_xid
    WHERE c.issuer_id = $1 AND c.serial = $2
"""

_MANY = """
    SELECT c.serial, c.status::text, c.revoked_at, c.reason, c.not_after,
           c.change_xid::text AS change_xid
    FROM certificates c
    WHERE c.issuer_id = $1 AND c.serial = ANY($2::bytea[])
"""

_STORE = """
    INSERT INTO ocsp_responses (cert_id, issuer_id, serial, change_xid, this_update, next_update, der)
    VALUES ($1, $2, $3, $4::text::xid8, $5, $6, $7)
    ON CONFLICT (cert_id) DO UPDATE
    SET change_xid = excluded.change_xid, this_update = excluded.this_update,
        next_update = excluded.next_update, der = excluded.der
    WHERE ocsp_responses.this_update < excluded.this_update
"""


def status_row(record: asyncpg.Record, serial: int) -> StatusRow:
    """A row of `certificates` as read by the queries here (and the change feed's)."""
    return StatusRow(
        serial=serial,
        status=CertStatus(record["status"]),
        revoked_at=record["revoked_at"],
        reason=None if record["reason"] is None else Reason(record["reason"]),
        not_after=record["not_after"],
        change_xid=int(record["change_xid"]),
    )


class StatusStore:
    """Status lookups and the shared store of signed responses, over a connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def lookup_one(
        self, issuer_id: int, serial: int, cert_id_der: bytes
    ) -> tuple[StatusRow | None, StoredResponse | None]:
        record = await self._pool.fetchrow(_ONE, issuer_id, serial_to_bytes(serial), cert_id_der)
        if record is None:
            return None, None
        stored = None
        if record["der"] is not None:
            stored = StoredResponse(record["der"], record["this_update"], record["next_update"])
        return status_row(record, serial), stored

    async def lookup_many(self, issuer_id: int, serials: Sequence[int]) -> dict[int, StatusRow]:
        raw = {serial_to_bytes(s): s for s in serials}
        records = await self._pool.fetch(_MANY, issuer_id, list(raw))
        return {raw[r["serial"]]: status_row(r, raw[r["serial"]]) for r in records}

    async def store(
        self, cert_id_der: bytes, issuer_id: int, row: StatusRow, response: StoredResponse
    ) -> None:
        await self._pool.execute(
            _STORE,
            cert_id_der,
            issuer_id,
            serial_to_bytes(row.serial),
            str(row.change_xid),
            response.this_update,
            response.next_update,
            response.der,
        )

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")
