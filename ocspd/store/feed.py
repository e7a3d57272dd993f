"""The change feed: which certificates changed since the last poll, on a primary or a replica.

NOTIFY does not reach streaming replicas, so responders poll. Each poll runs in one
REPEATABLE READ snapshot and asks for rows written by transactions that the previous poll's
snapshot did not see (sql/0002). A transaction that commits late is still caught, because
"not visible in the old snapshot" does not depend on when it started.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import asyncpg

from ocspd.model import serial_from_bytes

Changed = tuple[int, int]  # (issuer_id, serial)

_BASELINE = "SELECT pg_current_snapshot()::text"
_POLL = """
    SELECT issuer_id, serial FROM certificates
    WHERE change_xid >= pg_snapshot_xmin($1::text::pg_snapshot)
      AND NOT pg_visible_in_snapshot(change_xid, $1::text::pg_snapshot)
"""


class ChangeFeed:
    """Polls for status changes and hands them to `on_change`; tracks its own health."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        interval: float,
        on_change: Callable[[Sequence[Changed]], None],
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._interval = interval
        self._on_change = on_change
        self._log = log
        self._clock = clock
        self._snapshot: str | None = None
        self.last_success: float | None = None

    async def poll(self) -> int:
        """One poll; returns the number of changed rows seen."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            snapshot: str = await conn.fetchval(_BASELINE)
            rows: list[asyncpg.Record] = []
            if self._snapshot is not None:
                rows = await conn.fetch(_POLL, self._snapshot)
        self._snapshot = snapshot
        self.last_success = self._clock()
        if rows:
            self._on_change([(r["issuer_id"], serial_from_bytes(r["serial"])) for r in rows])
        return len(rows)

    def seconds_since_success(self) -> float:
        return float("inf") if self.last_success is None else self._clock() - self.last_success

    def healthy(self, within: float) -> bool:
        return self.seconds_since_success() <= within

    async def run(self) -> None:
        """Poll until cancelled. Errors are logged and retried; the snapshot survives them, so
        changes made while the database was unreachable are delivered once it is back."""
        failing = False
        while True:
            try:
                await self.poll()
                if failing:
                    self._log.info("change feed recovered")
                failing = False
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
                if not failing:
                    self._log.error(
                        "change feed poll failed",
                        extra={"error": str(e).splitlines()[0] if str(e) else type(e).__name__},
                    )
                failing = True
            await asyncio.sleep(self._interval)
