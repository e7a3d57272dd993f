"""RequestAudit: the responder worker's record of every OCSP request (RS3.1, pkio80).

The HTTP handler calls `record()` once per request: it appends a tuple, nothing more, so the
hot path pays for a list append. Every `flush_interval` the worker seals what was recorded
into a chained segment (ocspd.audit.requests) and stores it in PostgreSQL. When that fails:

- on_failure = tryLater: sealed segments stay in memory and are retried; once `max_pending`
  records wait, `refusing` turns true and the handler answers tryLater (and /readyz fails),
  so the responder never serves more than it can put on record;
- on_failure = spool: the segment is written to the spool directory (fsync'd, renamed into
  place) and shipped to PostgreSQL once it answers again, by this worker or any other.

At shutdown whatever could not be stored is spooled (whatever the policy) or, if even that
fails, reported in the log with its count: records are never dropped without a word.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from ocspd import heap
from ocspd.audit.mac import AuditKey
from ocspd.audit.requests import (
    Sealer,
    Segment,
    answer_fields,
    field,
    make_segment,
    stream_key,
)
from ocspd.config import AuditConfig, AuditFailure
from ocspd.store import audit as audit_store
from ocspd.store import request_audit

DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# Octets per COPY (at least one segment; about 60 000 records of the bench's mix): small
# enough to commit within seconds on a busy database, large enough that a backlog goes in
# at several times the rate records arrive. What makes a COPY slow on a busy server is
# mostly waiting (for the CPU, the WAL flush, the relation extension lock: seconds at
# times), not its size, so the records a COPY carries are what sets the audit's pace.
COPY_BYTES = 8_000_000
# Once a backlog of at least this many octets has mostly been stored, the heap pages it
# used go back to the system (ocspd.heap), at most once per TRIM_INTERVAL seconds: RSS
# then follows the backlog down instead of staying at its largest.
TRIM_AFTER_BYTES = 1_000_000
TRIM_INTERVAL = 5.0


def new_stream_name(worker: int) -> str:
    """One stream per worker process and start: ocsp/<host>/<pid>.<worker>/<start µs>."""
    host = "".join(c if c.isalnum() or c in ".-" else "-" for c in socket.gethostname())[:60]
    return f"ocsp/{host or 'host'}/{os.getpid()}.{worker}/{time.time_ns() // 1000}"


class RequestAudit:
    def __init__(
        self,
        stream: str,
        key: AuditKey,
        pool: asyncpg.Pool,
        config: AuditConfig,
        log: logging.Logger,
        on_stored: Callable[[int], None] = lambda n: None,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.stream = stream
        self._key = key
        self._sealer = Sealer(stream, key.key_id, stream_key(key, stream))
        self._pending = self._sealer.pending
        self._append = self._pending.append
        # The tryLater policy's bound on records in memory; the spool policy has none.
        self._refuse_at = (
            config.max_pending if config.on_failure is AuditFailure.TRY_LATER else sys.maxsize
        )
        # Seconds the handler holds a request for room before tryLater (see wait_for_room).
        self.hold = config.hold.total_seconds()
        self._pool = pool
        self._config = config
        self._spool = Path(config.spool_dir)
        self._log = log
        self._on_stored = on_stored
        self._on_error = on_error
        self._unsent: collections.deque[Segment] = collections.deque()
        self._unsent_records = 0
        self._unsent_bytes = 0
        self._high_bytes = 0  # the most _unsent_bytes since the heap was last trimmed
        self._trimmed_at = 0.0
        self.heap_trims = 0
        self.spooled_records = 0
        # tryLater policy: true while the backlog in memory is full (see _check_backlog).
        self.refusing = False
        # Set while there is room: requests held by the handler wait on it (wait_for_room).
        self._room = asyncio.Event()
        self._room.set()
        self._failing_since: float | None = None
        self._storing: asyncio.Task[None] | None = None
        # The stream's first segment while open() has not succeeded (see open).
        self._first: Segment | None = None
        self._detail: dict[str, Any] = {}
        self.opened = False
        # Record 1 of every stream says where it starts; requests answered before the
        # stream is registered follow it.
        empty = field(b"")
        self.record(
            False, empty * 2, empty + field(b"stream-open"), answer_fields(b"", b"", (), ())
        )
        self._next_ship = 0.0

    # --- the hot path -----------------------------------------------------------------------

    def record(self, nonce: bool, addresses: bytes, method_outcome: bytes, answer: bytes) -> None:
        """One request, its fields already encoded (and shared between requests): client and
        server address, method and outcome, then ocspd.audit.requests.answer_fields. A tuple
        appended to a list: chaining and encoding wait for the next flush (Sealer.take)."""
        self._append((time.time_ns() // 1000, nonce, addresses, method_outcome, answer))

    @property
    def pending(self) -> int:
        """Records not in PostgreSQL yet (in memory or in this worker's spool)."""
        return len(self._pending) + self._unsent_records + self.spooled_records

    def _check_backlog(self) -> None:
        # Checked at every flush and store, not per request: the backlog can overshoot
        # max_pending by one flush interval's requests, and the hot path reads a bool.
        self.refusing = len(self._pending) + self._unsent_records >= self._refuse_at
        if self.refusing:
            self._room.clear()
        else:
            self._room.set()

    async def wait_for_room(self, timeout: float) -> None:
        """Return once the backlog is below max_pending, or after `timeout` seconds (then
        `refusing` is still true). The handler holds requests here before tryLater."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), timeout)

    # --- the stream ------------------------------------------------------------------------

    async def open(self, detail: dict[str, Any]) -> None:
        """Register the stream (in audit_events' registry) and store its first segment in one
        transaction: verify then knows the stream exists and notices if it goes missing.

        Safe to call again after a failure (the database away at start): the first segment is
        sealed once and kept, with the stream-open record and whatever was answered while
        waiting, so nothing recorded before the stream existed is lost or sealed twice.
        """
        self._detail = detail
        if self._first is None:
            self._first = self._seal()
            assert self._first is not None  # at least the stream-open record
        async with self._pool.acquire() as conn, conn.transaction():
            await audit_store.register_stream(
                conn, self._key, request_audit.TABLE, self.stream, detail
            )
            await request_audit.insert(conn, self._first)
        self._first = None
        self.opened = True

    def _seal(self) -> Segment | None:
        taken = self._sealer.take()
        if taken is None:
            return None
        return make_segment(self.stream, self._sealer.key_id, *taken)

    # --- writing ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Seal what was recorded every flush_interval; store sealed segments in the
        background, one COPY at a time, so a slow commit never stops the sealing (which
        would otherwise pile up and then hold the event loop all at once)."""
        interval = self._config.flush_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await self._seal_all()
                if self._storing is None or self._storing.done():
                    self._storing = asyncio.create_task(self._store_unsent())
            except Exception:  # never let the writer die: the backlog would grow unseen
                self._log.exception("audit writer failed; retrying")

    async def flush(self) -> None:
        """Seal and store everything recorded so far (waits for a store in flight)."""
        if self._storing is not None:
            with contextlib.suppress(Exception):
                await self._storing
        await self._seal_all()
        while self._unsent:
            left = len(self._unsent)
            await self._store_unsent()
            if len(self._unsent) >= left:
                return  # storage failed: the caller spools or retries

    async def _seal_all(self) -> None:
        while (taken := self._sealer.take()) is not None:
            sealed = make_segment(self.stream, self._sealer.key_id, *taken)
            self._unsent.append(sealed)
            self._unsent_records += _count(sealed)
            self._unsent_bytes += len(sealed.records)
        self._high_bytes = max(self._high_bytes, self._unsent_bytes)
        self._check_backlog()

    async def _store_unsent(self) -> None:
        # COPY after COPY until nothing is left (segments sealed meanwhile included) or one
        # fails: the next flush_interval is no time to wait when the backlog grows. At most
        # COPY_BYTES per COPY (at least one segment), so none nears the command timeout.
        while self._unsent:
            batch: list[Segment] = []
            size = 0
            for segment in self._unsent:
                if batch and size + len(segment.records) > COPY_BYTES:
                    break
                batch.append(segment)
                size += len(segment.records)
            # One COPY for all of them: one transaction, so one WAL flush per batch.
            if not await self._store(batch):
                if self._config.on_failure is AuditFailure.SPOOL:
                    self._spool_unsent()
                break
            for _ in batch:
                self._unsent.popleft()
            self._unsent_records -= sum(_count(s) for s in batch)
            self._unsent_bytes -= size
            self._check_backlog()
            self._trim_heap()
        # Spooled segments (this worker's, or left by one that stopped) go in once storage
        # answers; while it fails, one try a second is enough.
        now = time.monotonic()
        if not self._unsent and now >= self._next_ship and self._spool.is_dir():
            self._next_ship = now + (1.0 if self._failing_since is not None else 0.0)
            await self._ship_spool()

    def _trim_heap(self) -> None:
        # After a large backlog has mostly gone: its pages would otherwise stay in RSS.
        now = time.monotonic()
        if (
            self._high_bytes >= TRIM_AFTER_BYTES
            and self._unsent_bytes <= self._high_bytes // 4
            and now - self._trimmed_at >= TRIM_INTERVAL
        ):
            heap.release_free_memory()
            self._trimmed_at = now
            self._high_bytes = self._unsent_bytes
            self.heap_trims += 1

    async def _store(self, segments: list[Segment]) -> bool:
        try:
            await asyncio.wait_for(
                request_audit.insert_many(self._pool, segments, timeout=30), timeout=35
            )
        except DB_ERRORS as e:
            self._on_error()
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                self._log.error(
                    "audit storage failed; records are kept and retried",
                    extra={
                        "error": str(e).splitlines()[0] if str(e) else type(e).__name__,
                        "policy": self._config.on_failure.value,
                        "pending": self.pending,
                    },
                )
            return False
        if self._failing_since is not None:
            self._log.warning(
                "audit storage is back",
                extra={"seconds": round(time.monotonic() - self._failing_since, 1)},
            )
            self._failing_since = None
        self._on_stored(sum(_count(s) for s in segments))
        return True

    # --- the spool -------------------------------------------------------------------------

    def _spool_unsent(self) -> bool:
        """Move every unsent segment to disk; False (and nothing moved) if that fails."""
        try:
            self._spool.mkdir(parents=True, exist_ok=True)
            for segment in self._unsent:
                write_spooled(self._spool, segment)
        except OSError as e:
            self._log.error(
                "cannot spool audit records; they stay in memory",
                extra={"error": str(e), "spool_dir": str(self._spool)},
            )
            return False
        self.spooled_records += self._unsent_records
        self._unsent.clear()
        self._unsent_records = 0
        self._unsent_bytes = 0
        return True

    async def _ship_spool(self) -> None:
        for path in sorted(self._spool.glob("*.seg")):
            try:
                with path.open("rb") as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # another worker ships it
                    if not path.exists():
                        continue  # shipped and removed while we opened it
                    segment = read_spooled(f.read())
                    if not await self._store([segment]):
                        return
                    path.unlink()
                    if segment.stream == self.stream:
                        self.spooled_records = max(0, self.spooled_records - _count(segment))
            except (OSError, ValueError) as e:
                self._log.error(
                    "cannot ship a spooled audit segment",
                    extra={"file": str(path), "error": str(e)},
                )

    async def close(self) -> None:
        """Store what is left; spool what cannot be stored; say so if even that fails."""
        if not self.opened:
            # Never registered (the database never answered): one last try, else the first
            # segment goes to the spool with the rest, to be shipped by a later worker.
            try:
                await asyncio.wait_for(self.open(self._detail), timeout=10)
            except Exception:
                if self._first is not None:
                    self._unsent.appendleft(self._first)
                    self._unsent_records += _count(self._first)
                    self._unsent_bytes += len(self._first.records)
                    self._first = None
                await self._seal_all()
                if self._unsent and not self._spool_unsent():
                    self._log.error(
                        "audit records could not be stored or spooled at shutdown",
                        extra={"records": self._unsent_records, "stream": self.stream},
                    )
                return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout=30)
        if self._unsent and not self._spool_unsent():
            self._log.error(
                "audit records could not be stored or spooled at shutdown",
                extra={"records": self._unsent_records, "stream": self.stream},
            )


def _count(segment: Segment) -> int:
    return segment.last_seq - segment.first_seq + 1


# A spooled segment: one JSON header line, then the records as stored.


def write_spooled(directory: Path, segment: Segment) -> Path:
    safe = segment.stream.replace("/", "_")
    path = directory / f"{safe}.{segment.first_seq:020d}.seg"
    header = {
        "stream": segment.stream,
        "first_seq": segment.first_seq,
        "last_seq": segment.last_seq,
        "first_at": segment.first_at.isoformat(),
        "last_at": segment.last_at.isoformat(),
        "key_id": segment.key_id,
    }
    partial = path.with_suffix(".partial")
    with partial.open("wb") as f:
        f.write(json.dumps(header).encode() + b"\n" + segment.records)
        f.flush()
        os.fsync(f.fileno())
    partial.rename(path)  # complete or absent, never half there
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)
    return path


def read_spooled(data: bytes) -> Segment:
    line, sep, records = data.partition(b"\n")
    if not sep:
        raise ValueError("spooled segment has no header")
    header = json.loads(line)
    return Segment(
        header["stream"],
        int(header["first_seq"]),
        int(header["last_seq"]),
        dt.datetime.fromisoformat(header["first_at"]),
        dt.datetime.fromisoformat(header["last_at"]),
        header["key_id"],
        records,
    )
