"""Revocation requests: the record of each status change asked for, and its decision.

A request for an ordinary certificate is applied as it is recorded. One for a CA or OCSP
responder certificate (RM1.4) is recorded pending and applied when a second officer approves
it; the database (sql/0004) fills in who asked and who decided from session_user.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from ocspd.errors import NotFound
from ocspd.model import Reason, serial_from_bytes, serial_to_bytes
from ocspd.store.certificates import Action, StatusChange
from ocspd.store.issuers import Issuer


@dataclass(frozen=True)
class Request:
    id: int
    issuer: str
    issuer_id: int
    serial: int
    action: Action
    reason: Reason | None
    revoked_at: dt.datetime | None
    invalidity_date: dt.datetime | None
    requested_by: str
    received_at: dt.datetime
    applied_at: dt.datetime | None
    needs_approval: bool
    approved_by: str | None = None
    refused_by: str | None = None
    refused_at: dt.datetime | None = None

    @property
    def pending(self) -> bool:
        return self.applied_at is None and self.refused_at is None

    @property
    def state(self) -> str:
        if self.applied_at is not None:
            return "applied"
        return "refused" if self.refused_at is not None else "pending"

    def change(self) -> StatusChange:
        """The change this request asks for."""
        return StatusChange(
            self.action,
            received_at=self.received_at,
            reason=self.reason,
            revoked_at=self.revoked_at,
            invalidity_date=self.invalidity_date,
        )


_RETURNING = """
    RETURNING id, issuer_id, serial, action::text AS action, reason, revoked_at, invalidity_date,
              requested_by, received_at, applied_at, needs_approval, approved_by, refused_by,
              refused_at, (SELECT name FROM issuers i WHERE i.id = issuer_id) AS issuer
"""
_SELECT = """
    SELECT r.id, r.issuer_id, r.serial, r.action::text AS action, r.reason, r.revoked_at,
           r.invalidity_date, r.requested_by, r.received_at, r.applied_at, r.needs_approval,
           r.approved_by, r.refused_by, r.refused_at, i.name AS issuer
    FROM revocation_requests r JOIN issuers i ON i.id = r.issuer_id
"""


def _request(row: asyncpg.Record) -> Request:
    return Request(
        id=row["id"],
        issuer=row["issuer"],
        issuer_id=row["issuer_id"],
        serial=serial_from_bytes(row["serial"]),
        action=Action(row["action"]),
        reason=None if row["reason"] is None else Reason(row["reason"]),
        revoked_at=row["revoked_at"],
        invalidity_date=row["invalidity_date"],
        requested_by=row["requested_by"],
        received_at=row["received_at"],
        applied_at=row["applied_at"],
        needs_approval=row["needs_approval"],
        approved_by=row["approved_by"],
        refused_by=row["refused_by"],
        refused_at=row["refused_at"],
    )


async def record(
    conn: asyncpg.Connection,
    issuer: Issuer,
    serial: int,
    change: StatusChange,
    values: tuple[int | None, dt.datetime | None, dt.datetime | None],
    pending: bool,
) -> Request:
    """Insert a request; `values` = (reason code, revocation time, invalidity date) as stored.

    Applied now (applied_at = the database clock) unless `pending`.
    """
    reason, revoked_at, invalidity_date = values
    row = await conn.fetchrow(
        """INSERT INTO revocation_requests
               (issuer_id, serial, action, reason, revoked_at, invalidity_date, received_at,
                applied_at, needs_approval)
           VALUES ($1, $2, $3::status_action, $4, $5, $6, $7,
                   CASE WHEN $8 THEN NULL ELSE clock_timestamp() END, $8)"""
        + _RETURNING,
        issuer.id,
        serial_to_bytes(serial),
        change.action.value,
        reason,
        revoked_at,
        invalidity_date,
        change.received_at,
        pending,
    )
    return _request(row)


async def get(conn: asyncpg.Connection, request_id: int, lock: bool = False) -> Request:
    row = await conn.fetchrow(
        _SELECT + " WHERE r.id = $1" + (" FOR UPDATE OF r" if lock else ""), request_id
    )
    if row is None:
        raise NotFound(f"there is no revocation request {request_id}")
    return _request(row)


async def pending_for(conn: asyncpg.Connection, issuer_id: int, serial: int) -> Request | None:
    row = await conn.fetchrow(
        _SELECT
        + " WHERE r.issuer_id = $1 AND r.serial = $2 AND r.applied_at IS NULL AND r.refused_at IS NULL",
        issuer_id,
        serial_to_bytes(serial),
    )
    return None if row is None else _request(row)


async def pending(conn: asyncpg.Connection) -> list[Request]:
    rows = await conn.fetch(
        _SELECT
        + " WHERE r.applied_at IS NULL AND r.refused_at IS NULL ORDER BY r.received_at, r.id"
    )
    return [_request(r) for r in rows]


async def mark_approved(conn: asyncpg.Connection, request_id: int) -> Request:
    """Approved by the connected login and applied now. change_xid moves to this transaction,
    which both crlgen (changes a CRL lacks) and the RM1.4 guard on certificates look at."""
    row = await conn.fetchrow(
        """UPDATE revocation_requests
           SET approved_by = session_user, applied_at = clock_timestamp(),
               change_xid = pg_current_xact_id()
           WHERE id = $1"""
        + _RETURNING,
        request_id,
    )
    return _request(row)


async def mark_refused(conn: asyncpg.Connection, request_id: int) -> Request:
    row = await conn.fetchrow(
        """UPDATE revocation_requests SET refused_by = session_user, refused_at = clock_timestamp()
           WHERE id = $1"""
        + _RETURNING,
        request_id,
    )
    return _request(row)


async def oldest_pending_seconds(conn: asyncpg.Connection) -> float:
    """RM1.1: how long the oldest request not yet decided has waited; 0 when none waits.

    For the metric ocspd_revocation_request_oldest_pending_seconds; readable by the responder.
    """
    value = await conn.fetchval(
        """SELECT coalesce(extract(epoch FROM clock_timestamp() - min(received_at)), 0)::float8
           FROM revocation_requests WHERE applied_at IS NULL AND refused_at IS NULL"""
    )
    return max(0.0, float(value))
