"""Certificate status rows: bulk import, lookups, and status changes (revoke, hold, release)."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from ocspd.errors import NotFound, StatusTransitionRefused
from ocspd.model import (
    CertRecord,
    CertStatus,
    Reason,
    format_serial,
    serial_from_bytes,
    serial_to_bytes,
)
from ocspd.store.issuers import Issuer
from ocspd.store.keycerts import mark_registered


@dataclass(frozen=True)
class CertRow:
    """A certificate as an import brings it: from a certificate file or an openssl index."""

    serial: int
    not_after: dt.datetime
    not_before: dt.datetime | None = None
    # None: the source says nothing about status (a certificate file); new rows start good
    # and known rows keep theirs.
    status: CertStatus | None = None
    revoked_at: dt.datetime | None = None
    reason: Reason | None = None
    invalidity_date: dt.datetime | None = None
    # 'ca' or 'ocsp' when the certificate's key is a TSP signing key (RM1.4, keycerts.py).
    key_use: str | None = None


@dataclass(frozen=True)
class AppliedChange:
    """A status change an import applied, as its revocation request recorded it."""

    request_id: int
    serial: int
    action: str
    reason: Reason | None
    revoked_at: dt.datetime | None
    invalidity_date: dt.datetime | None
    received_at: dt.datetime
    applied_at: dt.datetime


@dataclass(frozen=True)
class ImportResult:
    added: int
    # Known certificates whose status the import moved forward (good -> revoked or hold,
    # hold -> revoked); each is recorded as a revocation request.
    status_changed: int
    unchanged: int
    # Rows where the database already holds a status the import would move backwards
    # (e.g. revoked here, valid in the index): kept as they are (RM1.3).
    kept: int
    # CA and responder certificates whose status the import would move: left as they are,
    # their status changes need two officers (RM1.4).
    needs_approval: int = 0
    changes: tuple[AppliedChange, ...] = ()


# COPY is the fast path for large imports; rows go to a temporary table and are merged from
# there in one statement, so a re-run of the same import changes nothing (idempotent).
_STAGE = """
    CREATE TEMPORARY TABLE import_rows (
        serial bytea, not_before timestamptz, not_after timestamptz, status text,
        revoked_at timestamptz, reason smallint, invalidity_date timestamptz, key_use text
    ) ON COMMIT DROP
"""

_MERGE_NEW = """
    INSERT INTO certificates (issuer_id, serial, not_before, not_after, status, revoked_at, reason, invalidity_date, key_use)
    SELECT DISTINCT ON (serial) $1, serial, not_before, not_after, coalesce(status, 'good')::cert_status, revoked_at, reason, invalidity_date, key_use
    FROM import_rows
    ORDER BY serial, key_use NULLS LAST
    ON CONFLICT (issuer_id, serial) DO NOTHING
"""

# A certificate file seen again can tell what an index import could not: its key's use.
_MARK_KEY_USE = """
    UPDATE certificates c SET key_use = t.key_use
    FROM import_rows t
    WHERE c.issuer_id = $1 AND c.serial = t.serial AND c.key_use IS NULL AND t.key_use IS NOT NULL
"""

_CHANGES_OF_KEY_CERTS = """
    SELECT count(DISTINCT c.serial) FROM certificates c JOIN import_rows t ON c.serial = t.serial
    WHERE c.issuer_id = $1 AND c.key_use IS NOT NULL
      AND ((c.status = 'good' AND t.status <> 'good') OR (c.status = 'hold' AND t.status = 'revoked'))
"""

_MERGE_CHANGES = """
    WITH moved AS (
        UPDATE certificates c
        SET status = t.status::cert_status, revoked_at = t.revoked_at, reason = t.reason,
            invalidity_date = t.invalidity_date
        FROM import_rows t
        WHERE c.issuer_id = $1 AND c.serial = t.serial AND c.key_use IS NULL
          AND ((c.status = 'good' AND t.status <> 'good')
               OR (c.status = 'hold' AND t.status = 'revoked'))
        RETURNING c.serial, c.status, c.reason, c.revoked_at, c.invalidity_date
    )
    INSERT INTO revocation_requests
        (issuer_id, serial, action, reason, revoked_at, invalidity_date, received_at, applied_at)
    SELECT $1, serial, (CASE WHEN status = 'hold' THEN 'hold' ELSE 'revoke' END)::status_action,
           reason, revoked_at, invalidity_date, $2, clock_timestamp()
    FROM moved
    RETURNING id, serial, action::text AS action, reason, revoked_at, invalidity_date,
              received_at, applied_at
"""

_COUNT_BACKWARDS = """
    SELECT count(*) FROM import_rows t JOIN certificates c ON c.issuer_id = $1 AND c.serial = t.serial
    WHERE (c.status = 'revoked' AND t.status <> 'revoked') OR (c.status = 'hold' AND t.status = 'good')
"""


async def import_rows(
    conn: asyncpg.Connection,
    issuer: Issuer,
    rows: Sequence[CertRow],
    received_at: dt.datetime,
    progress: Callable[[int], None] = lambda n: None,
    chunk: int = 20_000,
) -> ImportResult:
    """Add new certificates and move known ones forward, in the caller's transaction."""
    if not conn.is_in_transaction():
        raise RuntimeError("import_rows runs inside the caller's transaction")
    await conn.execute(_STAGE)
    for start in range(0, len(rows), chunk):
        batch = rows[start : start + chunk]
        await conn.copy_records_to_table(
            "import_rows",
            records=[
                (
                    serial_to_bytes(r.serial),
                    r.not_before,
                    r.not_after,
                    None if r.status is None else r.status.value,
                    r.revoked_at,
                    None if r.reason is None else int(r.reason),
                    r.invalidity_date,
                    r.key_use,
                )
                for r in batch
            ],
        )
        progress(len(batch))
    added = _count(await conn.execute(_MERGE_NEW, issuer.id))
    await conn.execute(_MARK_KEY_USE, issuer.id)
    await mark_registered(conn)
    needs_approval = await conn.fetchval(_CHANGES_OF_KEY_CERTS, issuer.id)
    applied = await conn.fetch(_MERGE_CHANGES, issuer.id, received_at)
    kept = await conn.fetchval(_COUNT_BACKWARDS, issuer.id)
    changes = tuple(
        AppliedChange(
            request_id=r["id"],
            serial=serial_from_bytes(r["serial"]),
            action=r["action"],
            reason=None if r["reason"] is None else Reason(r["reason"]),
            revoked_at=r["revoked_at"],
            invalidity_date=r["invalidity_date"],
            received_at=r["received_at"],
            applied_at=r["applied_at"],
        )
        for r in applied
    )
    distinct = len({r.serial for r in rows})
    unchanged = distinct - added - len(changes) - kept - needs_approval
    return ImportResult(added, len(changes), unchanged, kept, needs_approval, changes)


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


_SELECT_CERT = """
    SELECT serial, not_before, not_after, status, revoked_at, reason, invalidity_date
    FROM certificates WHERE issuer_id = $1 AND serial = $2
"""


def _record(issuer: Issuer, row: asyncpg.Record) -> CertRecord:
    return CertRecord(
        issuer=issuer.name,
        serial=serial_from_bytes(row["serial"]),
        status=CertStatus(row["status"]),
        not_before=row["not_before"],
        not_after=row["not_after"],
        revoked_at=row["revoked_at"],
        reason=None if row["reason"] is None else Reason(row["reason"]),
        invalidity_date=row["invalidity_date"],
    )


async def get_record(conn: asyncpg.Connection, issuer: Issuer, serial: int) -> CertRecord:
    row = await conn.fetchrow(_SELECT_CERT, issuer.id, serial_to_bytes(serial))
    if row is None:
        raise NotFound(
            f"issuer {issuer.name!r} has no certificate with serial {format_serial(serial)}"
        )
    return _record(issuer, row)


class Action(enum.Enum):
    REVOKE = "revoke"
    HOLD = "hold"
    RELEASE = "release"


@dataclass(frozen=True)
class StatusChange:
    """What an operator asks for; `received_at` starts the RM1.1 60-minute clock."""

    action: Action
    received_at: dt.datetime
    reason: Reason | None = None
    revoked_at: dt.datetime | None = None
    invalidity_date: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.action is Action.REVOKE and self.reason in (
            None,
            Reason.certificateHold,
            Reason.removeFromCRL,
        ):
            raise ValueError(f"revoke needs a revocation reason, got {self.reason}")


@dataclass(frozen=True)
class Locked:
    """A status row locked for a change (SELECT ... FOR UPDATE), with its key_use mark."""

    record: CertRecord
    key_use: str | None


async def lock(conn: asyncpg.Connection, issuer: Issuer, serial: int) -> Locked:
    """Lock the row until the caller's transaction ends; NotFound if there is none."""
    row = await conn.fetchrow(
        """SELECT serial, not_before, not_after, status, revoked_at, reason, invalidity_date, key_use
           FROM certificates WHERE issuer_id = $1 AND serial = $2 FOR UPDATE""",
        issuer.id,
        serial_to_bytes(serial),
    )
    if row is None:
        raise NotFound(
            f"issuer {issuer.name!r} has no certificate with serial {format_serial(serial)}; "
            "import it first (ocspd cert import)"
        )
    return Locked(_record(issuer, row), row["key_use"])


def stored_values(
    change: StatusChange,
) -> tuple[str, dt.datetime | None, int | None, dt.datetime | None]:
    """(status, revoked_at, reason code, invalidity date) as the row will hold them."""
    if change.action is Action.RELEASE:
        return ("good", None, None, None)
    if change.action is Action.HOLD:
        return ("hold", change.revoked_at, int(Reason.certificateHold), None)
    assert change.reason is not None
    return ("revoked", change.revoked_at, int(change.reason), change.invalidity_date)


async def write_status(
    conn: asyncpg.Connection, issuer: Issuer, serial: int, change: StatusChange
) -> CertRecord:
    """Apply `change` to a row locked with lock() and checked with check_transition().

    The checks give operators a clear message; the database trigger (RM1.3, RM1.4) is the
    guarantee behind them.
    """
    raw = serial_to_bytes(serial)
    await conn.execute(
        """UPDATE certificates SET status = $3::cert_status, revoked_at = $4, reason = $5, invalidity_date = $6
           WHERE issuer_id = $1 AND serial = $2""",
        issuer.id,
        raw,
        *stored_values(change),
    )
    updated = await conn.fetchrow(_SELECT_CERT, issuer.id, raw)
    return _record(issuer, updated)


def check_transition(current: CertRecord, change: StatusChange) -> None:
    """Refuse what RM1.3 forbids, and changes that would change nothing."""
    serial = format_serial(current.serial)
    if current.status is CertStatus.REVOKED:
        assert current.revoked_at is not None and current.reason is not None
        raise StatusTransitionRefused(
            f"certificate {serial} was revoked at {current.revoked_at:%Y-%m-%dT%H:%M:%SZ} "
            f"({current.reason.name}); revocation is final (RM1.3)"
        )
    if change.action is Action.HOLD and current.status is CertStatus.HOLD:
        raise StatusTransitionRefused(f"certificate {serial} is already on hold")
    if change.action is Action.RELEASE and current.status is not CertStatus.HOLD:
        raise StatusTransitionRefused(
            f"certificate {serial} is not on hold; only a hold can be released"
        )
