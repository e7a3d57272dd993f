"""The change feed against a real PostgreSQL: what a poll delivers, late commits, how its
currency is counted, and catch_up (one poll for every waiting request)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from ocspd.model import CertStatus, Reason
from ocspd.store.feed import Changed, ChangedRow, ChangeFeed

LOG = logging.getLogger("test")


@pytest.fixture
async def conn(db_url: str, issuer: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(db_url)
    yield c
    await c.close()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    assert p is not None
    yield p
    await p.close()


async def add_cert(conn: asyncpg.Connection, serial: int) -> int:
    issuer_id: int = await conn.fetchval("SELECT id FROM issuers WHERE name = 'ca'")
    await conn.execute(
        "INSERT INTO certificates (issuer_id, serial, not_after) "
        "VALUES ($1, $2, now() + interval '1 year')",
        issuer_id,
        serial.to_bytes(8, "big"),
    )
    return issuer_id


REVOKE = (
    "UPDATE certificates SET status = 'revoked', revoked_at = now(), reason = 1 "
    "WHERE issuer_id = $1 AND serial = $2"
)


class Seen:
    def __init__(self) -> None:
        self.changes: list[Changed] = []
        self.rows: list[ChangedRow] = []
        self.bulks = 0

    def __call__(self, changed: Sequence[ChangedRow]) -> None:
        self.rows.extend(changed)
        self.changes.extend((issuer_id, row.serial) for issuer_id, row in changed)

    def bulk(self) -> None:
        self.bulks += 1


def no_bulk() -> None:
    raise AssertionError("no bulk change was expected")


async def test_a_poll_delivers_what_changed_since_the_last(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    seen = Seen()
    feed = ChangeFeed(pool, 60, seen, no_bulk, LOG)
    issuer_id = await add_cert(conn, 1)
    assert await feed.poll() == 0  # the baseline: what exists is not a change
    assert await feed.poll() == 0
    await add_cert(conn, 2)
    await conn.execute(REVOKE, issuer_id, (1).to_bytes(8, "big"))
    assert await feed.poll() == 2
    assert sorted(seen.changes) == [(issuer_id, 1), (issuer_id, 2)]
    # Whole rows, as the poll read them: responders answer from them without a lookup.
    rows = {row.serial: row for _, row in seen.rows}
    assert rows[1].status is CertStatus.REVOKED and rows[1].reason is Reason.keyCompromise
    assert rows[1].revoked_at is not None and rows[2].status is CertStatus.GOOD
    [current] = await conn.fetch(
        "SELECT change_xid::text AS x FROM certificates WHERE serial = $1", (1).to_bytes(8, "big")
    )
    assert rows[1].change_xid == int(current["x"])
    assert await feed.poll() == 0  # delivered once


async def test_a_bulk_change_is_not_handed_over_row_by_row(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """More changed rows than a poll reads (an import of many certificates in one go): the
    poll reads max_rows + 1 of them, tells the responder to forget its caches, and moves on;
    the next change is handed over as usual."""
    seen = Seen()
    feed = ChangeFeed(pool, 60, seen, seen.bulk, LOG, max_rows=5)
    issuer_id = await add_cert(conn, 100)
    await feed.poll()
    await conn.execute(
        "INSERT INTO certificates (issuer_id, serial, not_after) "
        "SELECT $1, int8send(n), now() + interval '1 year' FROM generate_series(101, 150) n",
        issuer_id,
    )
    assert await feed.poll() == 6
    assert seen.bulks == 1 and seen.changes == []
    assert await feed.poll() == 0  # the bulk change is behind it
    await conn.execute(REVOKE, issuer_id, (120).to_bytes(8, "big"))
    assert await feed.poll() == 1
    assert seen.bulks == 1 and seen.changes == [(issuer_id, 120)]


async def test_a_transaction_that_commits_late_is_still_delivered(
    conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str
) -> None:
    """The writer's transaction starts (and takes its xid) before a poll and commits after
    it: the next poll still sees it, since it was not visible in the previous snapshot."""
    seen = Seen()
    feed = ChangeFeed(pool, 60, seen, no_bulk, LOG)
    issuer_id = await add_cert(conn, 7)
    await feed.poll()
    writer = await asyncpg.connect(db_url)
    try:
        tx = writer.transaction()
        await tx.start()
        await writer.execute(REVOKE, issuer_id, (7).to_bytes(8, "big"))
        assert await feed.poll() == 0  # not committed yet
        await add_cert(conn, 8)  # a later transaction that commits first
        assert await feed.poll() == 1
        await tx.commit()
    finally:
        await writer.close()
    assert await feed.poll() == 1
    assert seen.changes == [(issuer_id, 8), (issuer_id, 7)]


async def test_currency_counts_from_when_the_poll_started(pool: asyncpg.Pool) -> None:
    """A poll shows changes committed before it started: a slow answer does not make the
    feed's view any younger than that."""
    now = [100.0]

    def clock() -> float:
        now[0] += 5.0  # every reading five seconds later: the poll "takes" five seconds
        return now[0]

    feed = ChangeFeed(pool, 60, Seen(), no_bulk, LOG, clock=clock)
    assert feed.seconds_since_success() == float("inf") and not feed.healthy(within=1e9)
    await feed.poll()
    assert feed.current_as_of == 105.0  # read before the query went out
    assert feed.seconds_since_success() == 5.0  # read at 110
    assert not feed.healthy(within=1.0)


async def test_catch_up_is_one_poll_for_every_waiter(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    seen = Seen()
    polls = [0]

    class Counting(ChangeFeed):
        async def poll(self) -> int:
            polls[0] += 1
            return await super().poll()

    feed = Counting(pool, 3600, seen, no_bulk, LOG)  # no timed poll during the test
    await feed.poll()
    runner = asyncio.create_task(feed.run())
    try:
        await asyncio.sleep(0.2)
        before = polls[0]
        issuer_id = await add_cert(conn, 21)
        started = time.monotonic()
        results = await asyncio.gather(*(feed.catch_up(timeout=5) for _ in range(50)))
        assert all(results) and time.monotonic() - started < 2
        # The change committed before catch_up was called is delivered; one or two polls
        # served all fifty waiters (a second one only if the first had already started).
        assert (issuer_id, 21) in seen.changes
        assert 1 <= polls[0] - before <= 2
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_catch_up_gives_up_when_no_poll_succeeds(pool: asyncpg.Pool) -> None:
    feed = ChangeFeed(pool, 3600, Seen(), no_bulk, LOG)
    await feed.poll()
    # Nothing runs the feed (as while the database does not answer): no poll, False in time.
    started = time.monotonic()
    assert not await feed.catch_up(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5


async def test_catch_up_does_not_wait_on_a_failing_database(db_url: str) -> None:
    """While polls fail, waiting for one would only delay every request: catch_up says no
    at once, and the caller falls back to asking the database itself."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    assert pool is not None
    feed = ChangeFeed(pool, 0.05, Seen(), no_bulk, LOG)
    await feed.poll()
    await pool.close()  # every poll from now on fails
    runner = asyncio.create_task(feed.run())
    try:
        async with asyncio.timeout(5):
            while not feed.failing:
                await asyncio.sleep(0.01)
        started = time.monotonic()
        assert not await feed.catch_up(timeout=5)
        assert time.monotonic() - started < 0.5
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
