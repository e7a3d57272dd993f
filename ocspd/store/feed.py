"""The change feed: which certificates changed since the last poll, on a primary or a replica.

NOTIFY does not reach streaming replicas, so responders poll. Each poll is one statement:
it reads the statement's own snapshot (pg_current_snapshot() is the active snapshot) and the
rows written by transactions that the previous poll's snapshot did not see (sql/0002). A
transaction that commits late is still caught, because "not visible in the old snapshot"
does not depend on when it started. One statement is one round trip: on a busy database a
poll's time is mostly waiting its turn, once per round trip.

What a poll delivers is every change committed before the poll started, so the feed's
currency is counted from there (`current_as_of`), not from when the answer arrived.

A poll reads at most `max_rows` changed rows. More than that (a bulk import, a mass
revocation) is not handed over row by row: `on_bulk` tells the responder to forget
everything it cached, which is correct for any number of changes and keeps a poll's memory
and time bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import asyncpg

from ocspd.model import serial_from_bytes
from ocspd.store.status import StatusRow, status_row

Changed = tuple[int, int]  # (issuer_id, serial)
ChangedRow = tuple[int, StatusRow]  # (issuer_id, the row as the poll read it)

_BASELINE = "SELECT pg_current_snapshot()::text"
# Beyond this many changed rows in one poll, the responder forgets its caches instead.
MAX_ROWS = 10_000
# The changed rows whole, so responders can answer for them without reading each again
# (one round trip per change would make propagation wait on a busy database). Joined to a
# one-row relation so that a poll with no changes still returns its snapshot.
_POLL = """
    SELECT pg_current_snapshot()::text AS snapshot,
           c.issuer_id, c.serial, c.status::text AS status, c.revoked_at, c.reason,
           c.not_after, c.change_xid::text AS change_xid
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN certificates c
      ON c.change_xid >= pg_snapshot_xmin($1::text::pg_snapshot)
     AND NOT pg_visible_in_snapshot(c.change_xid, $1::text::pg_snapshot)
    LIMIT $2
"""


class ChangeFeed:
    """Polls for status changes and hands them to `on_change` (or, past `max_rows` in one
    poll, calls `on_bulk`: anything may have changed); tracks its own health."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        interval: float,
        on_change: Callable[[Sequence[ChangedRow]], None],
        on_bulk: Callable[[], None],
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self._pool = pool
        self._interval = interval
        self._on_change = on_change
        self._on_bulk = on_bulk
        self._max_rows = max_rows
        self._log = log
        self._clock = clock
        self._snapshot: str | None = None
        # Clock reading taken just before the last successful poll was sent.
        self.current_as_of: float | None = None
        self._wake = asyncio.Event()
        self._polled: asyncio.Future[None] | None = None
        self.failing = False  # the last poll `run` made failed

    async def poll(self) -> int:
        """One poll; returns the number of changed rows seen (`max_rows` + 1 for a bulk
        change, however many there were)."""
        started = self._clock()
        records: list[asyncpg.Record] = []
        async with self._pool.acquire() as conn:
            if self._snapshot is None:
                snapshot: str = await conn.fetchval(_BASELINE)
            else:
                records = await conn.fetch(_POLL, self._snapshot, self._max_rows + 1)
                snapshot = records[0]["snapshot"]  # at least one row (see _POLL)
        self._snapshot = snapshot
        if self.current_as_of is None or started > self.current_as_of:
            self.current_as_of = started
        if len(records) > self._max_rows:
            # Decided on the count: the rows themselves are not needed.
            self._log.info(
                "change feed: a bulk change; cached answers forgotten",
                extra={"rows": f"more than {self._max_rows}"},
            )
            self._on_bulk()
            return len(records)
        changed = [
            (r["issuer_id"], status_row(r, serial_from_bytes(r["serial"])))
            for r in records
            if r["issuer_id"] is not None
        ]
        if changed:
            self._on_change(changed)
        return len(changed)

    def seconds_since_success(self) -> float:
        """How old the feed's view is: since the last successful poll started."""
        return float("inf") if self.current_as_of is None else self._clock() - self.current_as_of

    def healthy(self, within: float) -> bool:
        return self.seconds_since_success() <= within

    async def catch_up(self, timeout: float) -> bool:
        """Waits for a poll that starts after this call (asking `run` for one now); True once
        one has succeeded, so every change committed before the call is delivered, False if
        none did within `timeout` or the last poll failed (the database is not answering, so
        waiting would only delay the caller). However many requests wait, it is one poll for
        them all."""
        if self.failing:
            return False
        asked = self._clock()
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                while self.current_as_of is None or self.current_as_of < asked:
                    if self.failing:
                        return False
                    if self._polled is None:
                        self._polled = asyncio.get_running_loop().create_future()
                    await asyncio.shield(self._polled)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Poll until cancelled. Errors are logged and retried; the snapshot survives them, so
        changes made while the database was unreachable are delivered once it is back."""
        while True:
            self._wake.clear()
            try:
                await self.poll()
                if self.failing:
                    self._log.info("change feed recovered")
                self.failing = False
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
                if not self.failing:
                    self._log.error(
                        "change feed poll failed",
                        extra={"error": str(e).splitlines()[0] if str(e) else type(e).__name__},
                    )
                self.failing = True
            polled, self._polled = self._polled, None
            if polled is not None:
                polled.set_result(None)  # waiters look at current_as_of again
            # The next poll after the interval, or as soon as catch_up asks for one.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
