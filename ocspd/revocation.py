"""The revocation manager's operations: each one transaction together with its audit record.

Every operation switches to the role it needs (M1.2), then does its work and appends its
record to the operator stream in one transaction, so a change and its record commit together
or not at all (RM3.1, AA3.1). A refused request (by the checks here, by the database's
guards, or because the login lacks the role) rolls back; the refusal is then recorded in a
transaction of its own and the error raised on.

Dual control (RM1.4): a status change of a CA or OCSP responder certificate is recorded as a
pending request; another officer's `approve` applies it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ocspd.audit.chain import JsonValue
from ocspd.audit.mac import AuditKey
from ocspd.errors import (
    InvalidInput,
    NotPermitted,
    OcspdError,
    StatusTransitionRefused,
    Unavailable,
)
from ocspd.model import CertRecord, format_serial
from ocspd.signing.keys import describe_keyref
from ocspd.store import audit, certificates, issuers, keycerts, purge, requests, roles
from ocspd.store.audit import Event, EventType, Outcome, iso
from ocspd.store.certificates import CertRow, ImportResult, StatusChange
from ocspd.store.db import PERSON_ROLES, Role, assume_role, describe_error
from ocspd.store.keycerts import KeyUse
from ocspd.store.purge import PurgeCounts
from ocspd.store.requests import Request

T = TypeVar("T")

# What counts as a refused request, to be recorded: the domain's own refusals and the
# database's guards (triggers, privileges, bad parameters to its functions).
REFUSALS = (
    OcspdError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.InsufficientPrivilegeError,
    asyncpg.DataError,
)


def refusal_message(e: BaseException) -> str:
    if isinstance(e, asyncpg.PostgresError):
        hint = getattr(e, "hint", None)
        return describe_error(e) + (f" ({hint})" if hint else "")
    return describe_error(e)


@dataclass(frozen=True)
class ChangeResult:
    record: CertRecord
    request: Request
    key_use: KeyUse | None

    @property
    def pending(self) -> bool:
        return self.request.pending


def _change_detail(issuer: str, serial: int, change: StatusChange) -> dict[str, JsonValue]:
    detail: dict[str, JsonValue] = {
        "issuer": issuer,
        "serial": format_serial(serial),
        "received_at": iso(change.received_at),
    }
    if change.reason is not None:
        detail["reason"] = change.reason.name
    if change.revoked_at is not None:
        detail["revoked_at"] = iso(change.revoked_at)
    if change.invalidity_date is not None:
        detail["invalidity_date"] = iso(change.invalidity_date)
    return detail


def _request_detail(request: Request) -> dict[str, JsonValue]:
    detail = _change_detail(request.issuer, request.serial, request.change())
    detail.update(
        request=request.id,
        action=request.action.value,
        requested_by=request.requested_by,
        applied_at=iso(request.applied_at),
    )
    return detail


def _sha256(cert: x509.Certificate | None) -> str | None:
    if cert is None:
        return None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class RevocationManager:
    """Operations on one connection opened as the operator's own login (no SET ROLE yet)."""

    def __init__(self, conn: asyncpg.Connection, key: AuditKey) -> None:
        self._conn = conn
        self._key = key

    async def _run(
        self,
        role: Role,
        event: EventType,
        detail: dict[str, JsonValue],
        work: Callable[[], Awaitable[T]],
    ) -> T:
        """Run `work` under `role` in one transaction; record a refusal with `detail`
        (which `work` may add to as it learns more)."""
        try:
            await assume_role(self._conn, role)
            async with self._conn.transaction():
                return await work()
        except REFUSALS as e:
            if isinstance(e, Unavailable):
                raise  # not a refusal: the database (or a token) could not be asked
            await self._record_refusal(event, {**detail, "error": refusal_message(e)}, e)
            raise

    async def _record_refusal(
        self, event: EventType, detail: dict[str, JsonValue], original: BaseException
    ) -> None:
        try:
            await audit.record_refusal(self._conn, self._key, event, detail)
        except (asyncpg.PostgresError, OSError, OcspdError) as e:
            raise OcspdError(
                f"{refusal_message(original)}; and the refusal could not be recorded: "
                f"{refusal_message(e)}"
            ) from original

    # --- status changes (officer) ------------------------------------------------------------

    async def change(self, issuer_name: str, serial: int, change: StatusChange) -> ChangeResult:
        """Apply a revoke, hold or release, or record it pending when RM1.4 needs a second
        officer."""
        detail = _change_detail(issuer_name, serial, change)
        conn = self._conn

        async def work() -> ChangeResult:
            issuer = await issuers.get_issuer(conn, issuer_name)
            await keycerts.mark_registered(conn)
            locked = await certificates.lock(conn, issuer, serial)
            certificates.check_transition(locked.record, change)
            _, revoked_at, reason, invalidity = certificates.stored_values(change)
            values = (reason, revoked_at, invalidity)
            key_use = KeyUse(locked.key_use) if locked.key_use else None
            if key_use is not None:
                detail["key_use"] = key_use.value
                waiting = await requests.pending_for(conn, issuer.id, serial)
                if waiting is not None:
                    raise StatusTransitionRefused(
                        f"certificate {format_serial(serial)} already has request {waiting.id} "
                        f"waiting for a second officer (ocspd pending)"
                    )
                request = await requests.record(conn, issuer, serial, change, values, pending=True)
                record = locked.record
                outcome = Outcome.PENDING
            else:
                record = await certificates.write_status(conn, issuer, serial, change)
                request = await requests.record(conn, issuer, serial, change, values, pending=False)
                outcome = Outcome.APPLIED
            detail.update(request=request.id, applied_at=iso(request.applied_at))
            await audit.append(
                conn, self._key, [Event(EventType(change.action.value), outcome, detail)]
            )
            return ChangeResult(record, request, key_use)

        return await self._run(Role.OFFICER, EventType(change.action.value), detail, work)

    async def approve(self, request_id: int) -> ChangeResult:
        """RM1.4: a second officer applies a pending request; its maker cannot."""
        detail: dict[str, JsonValue] = {"request": request_id}
        conn = self._conn

        async def work() -> ChangeResult:
            request = await requests.get(conn, request_id, lock=True)
            detail.update(_request_detail(request))
            if not request.pending:
                raise StatusTransitionRefused(f"request {request_id} is {request.state} already")
            login = await conn.fetchval("SELECT session_user")
            if login == request.requested_by:
                raise NotPermitted(
                    f"request {request_id} was made by {login}; the same officer cannot approve "
                    "it, a second officer must (RM1.4)"
                )
            issuer = await issuers.get_issuer(conn, request.issuer)
            locked = await certificates.lock(conn, issuer, request.serial)
            certificates.check_transition(locked.record, request.change())
            request = await requests.mark_approved(conn, request_id)
            record = await certificates.write_status(conn, issuer, request.serial, request.change())
            detail.update(_request_detail(request))
            await audit.append(conn, self._key, [Event(EventType.APPROVE, Outcome.APPLIED, detail)])
            key_use = KeyUse(locked.key_use) if locked.key_use else None
            return ChangeResult(record, request, key_use)

        return await self._run(Role.OFFICER, EventType.APPROVE, detail, work)

    async def refuse(self, request_id: int, comment: str | None = None) -> Request:
        """Reject a pending request (its maker may withdraw it too)."""
        detail: dict[str, JsonValue] = {"request": request_id}
        if comment:
            detail["comment"] = comment
        conn = self._conn

        async def work() -> Request:
            request = await requests.get(conn, request_id, lock=True)
            detail.update(_request_detail(request))
            if not request.pending:
                raise StatusTransitionRefused(f"request {request_id} is {request.state} already")
            request = await requests.mark_refused(conn, request_id)
            detail.update(refused_at=iso(request.refused_at))
            await audit.append(conn, self._key, [Event(EventType.REFUSE, Outcome.APPLIED, detail)])
            return request

        return await self._run(Role.OFFICER, EventType.REFUSE, detail, work)

    async def import_certificates(
        self,
        issuer_name: str,
        load: Callable[[issuers.Issuer], Sequence[CertRow]],
        received_at: dt.datetime,
        source: dict[str, JsonValue],
        progress: Callable[[int], None] = lambda n: None,
    ) -> tuple[issuers.Issuer, ImportResult]:
        """Import rows `load` reads for the issuer: one record for the import and one per
        status change it applied."""
        detail: dict[str, JsonValue] = {
            "issuer": issuer_name,
            **source,
            "received_at": iso(received_at),
        }
        conn = self._conn

        async def work() -> tuple[issuers.Issuer, ImportResult]:
            issuer = await issuers.get_issuer(conn, issuer_name)
            rows = load(issuer)
            result = await certificates.import_rows(conn, issuer, rows, received_at, progress)
            detail.update(
                added=result.added,
                status_changed=result.status_changed,
                unchanged=result.unchanged,
                kept=result.kept,
                needs_approval=result.needs_approval,
            )
            events = [Event(EventType.IMPORT, Outcome.APPLIED, detail)]
            for c in result.changes:
                events.append(
                    Event(
                        EventType(c.action),
                        Outcome.APPLIED,
                        {
                            "issuer": issuer.name,
                            "serial": format_serial(c.serial),
                            "reason": None if c.reason is None else c.reason.name,
                            "revoked_at": iso(c.revoked_at),
                            "invalidity_date": iso(c.invalidity_date),
                            "request": c.request_id,
                            "received_at": iso(c.received_at),
                            "applied_at": iso(c.applied_at),
                            "via": "import",
                        },
                    )
                )
            await audit.append(conn, self._key, events)
            return issuer, result

        return await self._run(Role.OFFICER, EventType.IMPORT, detail, work)

    # --- administration (admin) -----------------------------------------------------------

    async def add_issuer(
        self,
        name: str,
        ca_cert: x509.Certificate,
        responder_cert: x509.Certificate | None,
        responder_key: str,
        ca_key: str | None,
    ) -> issuers.Issuer:
        detail: dict[str, JsonValue] = {
            "issuer": name,
            "subject": ca_cert.subject.rfc4514_string(),
            "ca_cert_sha256": _sha256(ca_cert),
            "responder_cert_sha256": _sha256(responder_cert),
            "responder_key": describe_keyref(responder_key),
            "ca_key": None if ca_key is None else describe_keyref(ca_key),
        }
        conn = self._conn

        async def work() -> issuers.Issuer:
            issuer = await issuers.add_issuer(
                conn, name, ca_cert, responder_cert, responder_key, ca_key
            )
            # Its CA and responder certificates may be status rows already (RM1.4).
            detail["key_certificates_marked"] = await keycerts.mark_registered(conn)
            await audit.append(
                conn, self._key, [Event(EventType.ISSUER_ADD, Outcome.APPLIED, detail)]
            )
            return issuer

        return await self._run(Role.ADMIN, EventType.ISSUER_ADD, detail, work)

    async def set_role(self, short: str, login: str, member: bool) -> str:
        """Grant or revoke officer, auditor or admin; only an administrator may."""
        role = PERSON_ROLES[short]
        event = EventType.ROLE_GRANT if member else EventType.ROLE_REVOKE
        detail: dict[str, JsonValue] = {"role": short, "login": login}
        conn = self._conn

        async def work() -> str:
            result = await roles.set_membership(conn, role, login, member)
            detail["result"] = result
            changed = result in ("granted", "revoked")
            outcome = Outcome.APPLIED if changed else Outcome.UNCHANGED
            await audit.append(conn, self._key, [Event(event, outcome, detail)])
            return result

        return await self._run(Role.ADMIN, event, detail, work)

    async def purge(self, before: dt.datetime, dry_run: bool) -> PurgeCounts:
        """pkio70: remove status rows expired, and revoked if at all, before `before`, which
        must be at least 6 months ago. A dry run counts and changes nothing (and is not
        recorded)."""
        conn = self._conn
        detail: dict[str, JsonValue] = {"before": iso(before)}

        async def check() -> None:
            limit = await purge.retention_limit(conn)
            if before > limit:
                raise InvalidInput(
                    f"--before {iso(before)} is within the 6 months status rows are kept after "
                    f"expiry and revocation (pkio70); the latest cutoff allowed now is {iso(limit)}"
                )

        if dry_run:
            await assume_role(conn, Role.ADMIN)
            async with conn.transaction():
                await check()
                return await purge.count(conn, before)

        async def work() -> PurgeCounts:
            await check()
            counts = await purge.count(conn, before)
            detail.update(
                certificates=counts.certificates,
                responses=counts.responses,
                requests=counts.requests,
                kept_pending=counts.kept_pending,
                digest=counts.digest,
            )
            outcome = Outcome.APPLIED if counts.certificates else Outcome.UNCHANGED
            await audit.append(conn, self._key, [Event(EventType.PURGE, outcome, detail)])
            if counts.certificates:
                done = await purge.apply(conn, before)
                if done != counts:
                    raise OcspdError(
                        f"purge removed {done.certificates} rows where it counted "
                        f"{counts.certificates}; rolled back"
                    )
            return counts

        return await self._run(Role.ADMIN, EventType.PURGE, detail, work)
