"""ocsp_audit_segments: storing the responder's request records and reading them back."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import asyncpg

from ocspd.audit.chain import KeyLookup, Problem
from ocspd.audit.requests import RequestRecord, Segment, SegmentVerifier, decode, unpack

TABLE = "ocsp_audit_segments"

_INSERT = f"""
    INSERT INTO {TABLE} (stream, first_seq, last_seq, first_at, last_at, key_id, records)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
_COLUMNS = "stream, first_seq, last_seq, first_at, last_at, key_id, records"


async def insert(conn: asyncpg.Connection | asyncpg.Pool, segment: Segment) -> bool:
    """Store `segment`; False when it was stored before (a retry after a lost answer)."""
    try:
        await conn.execute(
            _INSERT,
            segment.stream,
            segment.first_seq,
            segment.last_seq,
            segment.first_at,
            segment.last_at,
            segment.key_id,
            segment.records,
        )
    except asyncpg.UniqueViolationError:
        return False
    return True


async def insert_many(pool: asyncpg.Pool, segments: list[Segment], timeout: float = 30) -> None:
    """Store `segments` with one COPY (one transaction). Segments stored before (a retry
    after a lost answer) make the COPY fail as a whole; then each goes in on its own.

    The COPY has its own `timeout`, longer than the pool's command timeout: on a database
    slow to answer, a COPY cancelled half-way is work thrown away and sent again."""
    async with pool.acquire() as conn:
        try:
            await conn.copy_records_to_table(
                TABLE,
                records=[
                    (
                        s.stream,
                        s.first_seq,
                        s.last_seq,
                        s.first_at,
                        s.last_at,
                        s.key_id,
                        s.records,
                    )
                    for s in segments
                ],
                columns=[
                    "stream",
                    "first_seq",
                    "last_seq",
                    "first_at",
                    "last_at",
                    "key_id",
                    "records",
                ],
                timeout=timeout,
            )
        except asyncpg.UniqueViolationError:
            for segment in segments:
                await insert(conn, segment)


def _segment(row: asyncpg.Record) -> Segment:
    return Segment(
        row["stream"],
        row["first_seq"],
        row["last_seq"],
        row["first_at"],
        row["last_at"],
        row["key_id"],
        bytes(row["records"]),
    )


async def search(
    conn: asyncpg.Connection,
    since: dt.datetime | None,
    until: dt.datetime | None,
    clients: tuple[str, ...] = (),
    batch: int = 100,
) -> AsyncIterator[tuple[str, RequestRecord]]:
    """(stream, record) for records in [since, until), optionally from these client
    addresses; segments overlapping the range are read through a server-side cursor.
    Call inside a transaction."""
    query = f"""
        SELECT {_COLUMNS} FROM {TABLE}
        WHERE ($1::timestamptz IS NULL OR last_at >= $1)
          AND ($2::timestamptz IS NULL OR first_at < $2)
        ORDER BY first_at, stream, first_seq
    """
    async for row in conn.cursor(query, since, until, prefetch=batch):
        for data, _mac in unpack(bytes(row["records"]), row["first_seq"]):
            record = decode(data)
            at = record.at
            in_range = (since is None or at >= since) and (until is None or at < until)
            if in_range and (not clients or record.client in clients):
                yield row["stream"], record


class RequestAuditChecker:
    """`ocspd audit verify` for the responder's streams: every segment of every stream, in
    order, through one server-side cursor."""

    table = TABLE

    async def check(
        self, conn: asyncpg.Connection, keys: KeyLookup, batch: int = 100
    ) -> AsyncIterator[tuple[SegmentVerifier, Problem | None]]:
        """Yields each stream's verifier once the stream is walked (its problem, if any)."""
        current: SegmentVerifier | None = None
        query = f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY stream, first_seq"
        async for row in conn.cursor(query, prefetch=batch):
            segment = _segment(row)
            if current is None or current.stream != segment.stream:
                if current is not None:
                    yield current, current.problem
                current = SegmentVerifier(segment.stream, keys.get(segment.key_id), segment.key_id)
            current.feed(segment)
        if current is not None:
            yield current, current.problem
