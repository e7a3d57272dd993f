"""The audit trail in audit_events: appending chained records, reading them back, verifying.

Appends run inside the caller's transaction, so a change and its record commit together or
not at all (RM3.1); audit_head() takes the stream's advisory lock until that transaction ends,
so concurrent writers of one stream queue instead of forking the chain.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from ocspd.audit.chain import (
    GENESIS,
    ChainRecord,
    JsonValue,
    KeyLookup,
    Problem,
    StreamVerifier,
    canonical_json,
    chain_mac,
)
from ocspd.audit.mac import AuditKey

TABLE = "audit_events"
# Operator actions: status changes, approvals, imports, issuers, roles, purges.
OPERATOR_STREAM = "operator"
# Registrations of other streams ('stream-open'), so verify notices a stream that vanished.
REGISTRY_STREAM = "streams"


class EventType(enum.Enum):
    REVOKE = "revoke"
    HOLD = "hold"
    RELEASE = "release"
    APPROVE = "approve"
    REFUSE = "refuse"
    IMPORT = "import"
    ISSUER_ADD = "issuer-add"
    ROLE_GRANT = "role-grant"
    ROLE_REVOKE = "role-revoke"
    PURGE = "purge"
    STREAM_OPEN = "stream-open"


class Outcome(enum.Enum):
    APPLIED = "applied"  # took effect
    PENDING = "pending"  # recorded; waits for a second officer (RM1.4)
    REFUSED = "refused"  # the request was refused and changed nothing
    UNCHANGED = "unchanged"  # accepted, but there was nothing to change


@dataclass(frozen=True)
class Event:
    type: EventType
    outcome: Outcome
    detail: Mapping[str, JsonValue] = field(default_factory=dict)


def iso(value: dt.datetime | None) -> str | None:
    """Times in details: UTC, microseconds, a trailing Z."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_HEAD = "SELECT seq, mac, at, actor FROM audit_head($1)"
_COLUMNS = ("stream", "seq", "at", "type", "actor", "outcome", "detail", "key_id", "mac")


async def _chain(
    conn: asyncpg.Connection,
    key: AuditKey,
    stream: str,
    events: Sequence[Event],
    outcome: Outcome | None = None,
) -> list[tuple[ChainRecord, bytes]]:
    head = await conn.fetchrow(_HEAD, stream)
    previous: bytes = head["mac"] or GENESIS
    chained = []
    for number, event in enumerate(events, start=head["seq"] + 1):
        record = ChainRecord(
            stream=stream,
            seq=number,
            at=head["at"],
            type=event.type.value,
            actor=head["actor"],
            outcome=(outcome or event.outcome).value,
            detail=event.detail,
            key_id=key.key_id,
        )
        previous = chain_mac(key, previous, record)
        chained.append((record, previous))
    return chained


def _row(record: ChainRecord, mac: bytes) -> tuple[Any, ...]:
    return (
        record.stream,
        record.seq,
        record.at,
        record.type,
        record.actor,
        record.outcome,
        canonical_json(record.detail).decode("utf-8"),
        record.key_id,
        mac,
    )


async def append(
    conn: asyncpg.Connection,
    key: AuditKey,
    events: Sequence[Event],
    stream: str = OPERATOR_STREAM,
) -> list[ChainRecord]:
    """Append `events` to `stream` in the caller's transaction (needs INSERT on audit_events)."""
    if not conn.is_in_transaction():
        raise RuntimeError("audit records are appended inside the transaction of what they record")
    if not events:
        return []
    chained = await _chain(conn, key, stream, events)
    rows = [_row(r, m) for r, m in chained]
    if len(rows) == 1:
        await conn.execute(
            f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9)",
            *rows[0],
        )
    else:
        await conn.copy_records_to_table(TABLE, records=rows, columns=list(_COLUMNS))
    return [r for r, _ in chained]


async def record_refusal(
    conn: asyncpg.Connection, key: AuditKey, type: EventType, detail: Mapping[str, JsonValue]
) -> ChainRecord:
    """Record a refused request in a transaction of its own (the refused one rolled back).

    Goes through audit_refusal(), which any login may call, so a login without the role a
    command needs is on record too (RM3.1).
    """
    async with conn.transaction():
        [(record, mac)] = await _chain(
            conn, key, OPERATOR_STREAM, [Event(type, Outcome.REFUSED, detail)]
        )
        await conn.execute(
            "SELECT audit_refusal($1, $2, $3, $4::jsonb, $5, $6)",
            record.seq,
            record.at,
            record.type,
            canonical_json(record.detail).decode("utf-8"),
            record.key_id,
            mac,
        )
    return record


async def register_stream(
    conn: asyncpg.Connection,
    key: AuditKey,
    table: str,
    stream: str,
    detail: Mapping[str, JsonValue] | None = None,
) -> ChainRecord:
    """Announce a new stream of `table` in the registry stream, in the caller's transaction.

    Write the new stream's first record in the same transaction: verify reports a registered
    stream without records as deleted.
    """
    [record] = await append(
        conn,
        key,
        [
            Event(
                EventType.STREAM_OPEN,
                Outcome.APPLIED,
                {**(detail or {}), "table": table, "stream": stream},
            )
        ],
        stream=REGISTRY_STREAM,
    )
    return record


# --- reading back -----------------------------------------------------------------------------

_SELECT = f"SELECT stream, seq, at, type, actor, outcome, detail::text AS detail, key_id, mac FROM {TABLE}"


def record_of(row: asyncpg.Record) -> tuple[ChainRecord, bytes]:
    return (
        ChainRecord(
            stream=row["stream"],
            seq=row["seq"],
            at=row["at"],
            type=row["type"],
            actor=row["actor"],
            outcome=row["outcome"],
            detail=json.loads(row["detail"]),
            key_id=row["key_id"],
        ),
        bytes(row["mac"]),
    )


@dataclass(frozen=True)
class SearchFilter:
    """AA4.1: by time, type of event and identity of the user."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    types: Sequence[str] = ()
    actors: Sequence[str] = ()
    streams: Sequence[str] = ()


async def search(
    conn: asyncpg.Connection, where: SearchFilter, limit: int | None = None, batch: int = 1000
) -> AsyncIterator[tuple[ChainRecord, bytes]]:
    """Matching records in time order, through a server-side cursor; call in a transaction."""
    query = (
        _SELECT
        + """ WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at < $2)
              AND (cardinality($3::text[]) = 0 OR type = ANY($3))
              AND (cardinality($4::text[]) = 0 OR actor = ANY($4))
              AND (cardinality($5::text[]) = 0 OR stream = ANY($5))
            ORDER BY at, stream, seq LIMIT $6"""
    )
    async for row in conn.cursor(
        query,
        where.since,
        where.until,
        list(where.types),
        list(where.actors),
        list(where.streams),
        limit,
        prefetch=batch,
    ):
        yield record_of(row)


# --- verifying --------------------------------------------------------------------------------


class ChainSource(Protocol):
    """A table of chained records, read by stream then seq (one server-side cursor)."""

    @property
    def table(self) -> str: ...

    def records(
        self, conn: asyncpg.Connection, batch: int
    ) -> AsyncIterator[tuple[ChainRecord, bytes]]: ...


class StreamChecker(Protocol):
    """A table whose streams verify themselves (ocspd.store.request_audit's segments):
    yields each stream's final state once it is walked, with its first problem if any."""

    @property
    def table(self) -> str: ...

    def check(
        self, conn: asyncpg.Connection, keys: KeyLookup, batch: int = 100
    ) -> AsyncIterator[tuple[Any, Problem | None]]: ...


class AuditEventsSource:
    table = TABLE

    async def records(
        self, conn: asyncpg.Connection, batch: int
    ) -> AsyncIterator[tuple[ChainRecord, bytes]]:
        async for row in conn.cursor(_SELECT + " ORDER BY stream, seq", prefetch=batch):
            yield record_of(row)


@dataclass(frozen=True)
class StreamSummary:
    table: str
    stream: str
    records: int
    last_seq: int
    head: bytes
    last_at: dt.datetime | None


@dataclass
class VerifyReport:
    streams: list[StreamSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.streams)


_UNRECORDED_REQUEST = """
    SELECT r.id, m.missing FROM revocation_requests r, LATERAL (
        SELECT CASE
            WHEN NOT EXISTS (
                SELECT FROM audit_events e
                WHERE e.detail ? 'request' AND e.detail->>'request' = r.id::text
                  AND e.stream = 'operator' AND e.type = r.action::text
                  AND e.outcome = CASE WHEN r.needs_approval THEN 'pending' ELSE 'applied' END)
                THEN 'request'
            WHEN r.needs_approval AND r.applied_at IS NOT NULL AND NOT EXISTS (
                SELECT FROM audit_events e
                WHERE e.detail ? 'request' AND e.detail->>'request' = r.id::text
                  AND e.stream = 'operator' AND e.type = 'approve' AND e.outcome = 'applied')
                THEN 'approval'
            WHEN r.refused_at IS NOT NULL AND NOT EXISTS (
                SELECT FROM audit_events e
                WHERE e.detail ? 'request' AND e.detail->>'request' = r.id::text
                  AND e.stream = 'operator' AND e.type = 'refuse' AND e.outcome = 'applied')
                THEN 'refusal'
        END AS missing) m
    WHERE r.audited AND m.missing IS NOT NULL ORDER BY r.id LIMIT 1
"""


async def verify(
    conn: asyncpg.Connection,
    keys: KeyLookup,
    sources: Sequence[ChainSource] = (AuditEventsSource(),),
    batch: int = 1000,
    checkers: Sequence[StreamChecker] = (),
) -> VerifyReport:
    """Check every stream of every source, in one snapshot; the first problem of each stream.

    Also: each stream the registry announced still has records, and each revocation request
    still has the records of its request and decision (a deleted tail shows there).
    """
    report = VerifyReport()
    registered: list[tuple[int, str, str]] = []  # (registry seq, table, stream)
    seen: set[tuple[str, str]] = set()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for source in sources:
            current: StreamVerifier | None = None

            def close(v: StreamVerifier | None, table: str) -> None:
                if v is None:
                    return
                seen.add((table, v.stream))
                report.streams.append(
                    StreamSummary(table, v.stream, v.count, v.last_seq, v.head, v.last_at)
                )
                if v.problem is not None:
                    report.problems.append(v.problem)

            async for record, mac in source.records(conn, batch):
                if current is None or current.stream != record.stream:
                    close(current, source.table)
                    current = StreamVerifier(record.stream, keys)
                if current.feed(record, mac) is None and (
                    source.table == TABLE
                    and record.stream == REGISTRY_STREAM
                    and record.type == EventType.STREAM_OPEN.value
                ):
                    table, stream = record.detail.get("table"), record.detail.get("stream")
                    if isinstance(table, str) and isinstance(stream, str):
                        registered.append((record.seq, table, stream))
            close(current, source.table)
        for checker in checkers:
            async for walked, problem in checker.check(conn, keys):
                seen.add((checker.table, walked.stream))
                report.streams.append(
                    StreamSummary(
                        checker.table,
                        walked.stream,
                        walked.count,
                        walked.last_seq,
                        walked.head,
                        walked.last_at,
                    )
                )
                if problem is not None:
                    report.problems.append(problem)
        known = {s.table for s in sources} | {c.table for c in checkers}
        for seq, table, stream in registered:
            if table not in known:
                report.problems.append(
                    Problem(
                        REGISTRY_STREAM,
                        seq,
                        f"registers stream {stream} of table {table}, which this verifier cannot read",
                    )
                )
            elif (table, stream) not in seen:
                report.problems.append(
                    Problem(
                        REGISTRY_STREAM,
                        seq,
                        f"registers stream {stream} of table {table}, which has no records (stream deleted)",
                    )
                )
        if any(s.table == TABLE for s in sources):
            row = await conn.fetchrow(_UNRECORDED_REQUEST)
            if row is not None:
                report.problems.append(
                    Problem(
                        OPERATOR_STREAM,
                        None,
                        f"revocation request {row['id']} has no record of its {row['missing']} (record deleted)",
                    )
                )
    return report
