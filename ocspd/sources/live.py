"""The innermost Source: status from the database, signed now (or taken from the shared store).

Signing is bounded: at most `max_signing` signatures in flight and `max_waiters` waiting;
past that the answer is tryLater, never an unbounded queue.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from ocspd.config import ResponderConfig, UnknownSerials
from ocspd.errors import SigningKeyError, TryLater, Unavailable
from ocspd.metrics import ResponderMetrics
from ocspd.model import CertStatus, Reason
from ocspd.protocol.request import CertId, OcspRequest
from ocspd.protocol.response import AnswerStatus, ResponseBody, SingleAnswer, build_response
from ocspd.sources.base import Response
from ocspd.sources.issuers import IssuerTable, ServedIssuer
from ocspd.store.feed import Changed, ChangedRow
from ocspd.store.status import StatusRow, StatusStore, StoredResponse

# Errors that mean "the database cannot answer now": the client gets tryLater.
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class SigningLimiter:
    """A semaphore with a cap on waiters."""

    def __init__(self, in_flight: int, waiters: int, metrics: ResponderMetrics) -> None:
        self._semaphore = asyncio.Semaphore(in_flight)
        self._max_waiters = waiters
        self._waiting = 0
        self._metrics = metrics
        self.in_flight = 0
        metrics.on_flush(lambda: metrics.signing_in_flight.set(self.in_flight))

    async def __aenter__(self) -> None:
        if self._semaphore.locked():
            if self._waiting >= self._max_waiters:
                self._metrics.signing_refused.inc()
                raise TryLater("too many signatures waiting")
            self._waiting += 1
            try:
                await self._semaphore.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._semaphore.acquire()
        self.in_flight += 1

    async def __aexit__(self, *exc: object) -> None:
        self.in_flight -= 1
        self._semaphore.release()


def _answer(
    cert_id: CertId,
    row: StatusRow | None,
    unknown: UnknownSerials,
    this_update: dt.datetime,
    next_update: dt.datetime,
) -> SingleAnswer:
    if row is None:
        if unknown is UnknownSerials.REVOKED:
            return SingleAnswer.extended_revoked(cert_id, this_update, next_update)
        return SingleAnswer(cert_id, AnswerStatus.UNKNOWN, None, None, this_update, next_update)
    if row.status is CertStatus.GOOD:
        return SingleAnswer(cert_id, AnswerStatus.GOOD, None, None, this_update, next_update)
    # A hold is answered as revoked with certificateHold (RFC 6960 2.2).
    reason = Reason.certificateHold if row.status is CertStatus.HOLD else row.reason
    return SingleAnswer(
        cert_id, AnswerStatus.REVOKED, row.revoked_at, reason, this_update, next_update
    )


class LiveSource:
    def __init__(
        self,
        store: StatusStore,
        issuers: IssuerTable,
        config: ResponderConfig,
        clock: Callable[[], dt.datetime],
        metrics: ResponderMetrics,
        log: logging.Logger,
        status_current: Callable[[], bool] = lambda: False,
        catch_up: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._store = store
        self._issuers = issuers
        self._config = config
        self._clock = clock
        self._metrics = metrics
        self._log = log
        self._limiter = SigningLimiter(config.max_signing, config.max_signing_waiters, metrics)
        self._signing_latency = metrics.tally_histogram(metrics.signing_latency)
        self._stored_hit = metrics.tally(metrics.stored.labels("hit"))
        self._stored_miss = metrics.tally(metrics.stored.labels("miss"))
        self._background: set[asyncio.Task[None]] = set()
        # Cleared when the store refuses writes (a read-only replica): responses are then
        # kept in memory only.
        self._store_writes = True
        # Status rows read recently, so a nonce request for a certificate just looked up needs
        # no database round trip. Dropped by the change feed like the response cache, and used
        # only while the feed is current (`status_current`), so a status shown is never more
        # than the feed's delay behind the database.
        self._rows: OrderedDict[tuple[int, int], StatusRow | None] = OrderedDict()
        self._max_rows = config.cache_entries
        self._status_current = status_current
        # Certificates whose remembered row came from the change feed and has not answered a
        # cacheable request yet (see `changed`).
        self._pushed: set[tuple[int, int]] = set()
        # While the feed is behind: wait for its next poll (shared by all waiting requests)
        # rather than each request reading the database.
        self._catch_up = catch_up
        self._epoch = 0
        # Encoded answers for this second: thisUpdate and producedAt have whole-second
        # precision, so within a second the nonce responses for one certificate differ only
        # in their nonce. Keyed by CertID and status row, dropped when the second changes.
        self._bodies: dict[
            tuple[bytes, StatusRow | None], tuple[ResponseBody, tuple[AnswerStatus, ...]]
        ] = {}
        self._bodies_at: dt.datetime | None = None
        self._max_bodies = 10_000

    async def response(self, request: OcspRequest) -> Response:
        issuer = self._issuers.find(request.cert_ids[0])
        assert issuer is not None  # FilterSource has checked
        now = self._clock()
        try:
            if len(request.cert_ids) == 1:
                cert_id = request.cert_ids[0]
                memo = (issuer.id, cert_id.serial)
                # A nonce response is signed afresh anyway: any current row will do. A cached
                # one is looked up with the shared store (a fleet signs it once), unless the
                # feed has just brought this certificate's new row (no stored response can
                # show it yet).
                if (
                    (request.nonce is not None or memo in self._pushed)
                    and memo in self._rows
                    and (self._status_current() or await self._caught_up())
                    and memo in self._rows  # the poll waited for may have dropped it
                ):
                    row = self._rows[memo]
                    if request.nonce is None:
                        self._pushed.discard(memo)
                else:
                    epoch = self._epoch
                    row, stored = await self._store.lookup_one(
                        issuer.id, cert_id.serial, cert_id.der
                    )
                    if epoch == self._epoch:
                        self._remember(memo, row)
                    if stored is not None and request.nonce is None and self._fresh(stored, now):
                        self._stored_hit.inc()
                        return Response(
                            stored.der,
                            stored.this_update,
                            stored.next_update,
                            (_status(row),),
                            cert_ids=(cert_id.der,),
                            signer=issuer.identity.key_hash,
                        )
                    self._stored_miss.inc()
                rows = {cert_id.serial: row} if row else {}
            else:
                rows = await self._store.lookup_many(
                    issuer.id, [c.serial for c in request.cert_ids]
                )
        except DB_ERRORS as e:
            raise Unavailable(
                f"status database: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        response = await self._sign(issuer, request, rows)
        if len(request.cert_ids) == 1 and request.nonce is None and rows and self._store_writes:
            self._store_later(
                issuer, request.cert_ids[0], rows[request.cert_ids[0].serial], response
            )
        return response

    async def _caught_up(self) -> bool:
        return self._catch_up is not None and await self._catch_up()

    def _remember(self, memo: tuple[int, int], row: StatusRow | None) -> None:
        if self._max_rows <= 0:
            return
        self._rows[memo] = row
        self._rows.move_to_end(memo)
        while len(self._rows) > self._max_rows:
            self._rows.popitem(last=False)

    def invalidate(self, changed: Sequence[Changed]) -> None:
        """Forget these certificates' rows."""
        self._epoch += 1
        for item in changed:
            self._rows.pop(item, None)
            self._pushed.discard(item)

    def forget(self) -> None:
        """Forget every remembered row (a bulk change: see ChangeFeed)."""
        self._epoch += 1
        self._rows.clear()
        self._pushed.clear()

    def changed(self, rows: Sequence[ChangedRow]) -> None:
        """Fed by the change feed: the changed certificates' rows as its poll read them,
        current as of that poll. They replace what was remembered, and the next request for
        each is answered from them, without a database round trip of its own."""
        self.invalidate([(issuer_id, row.serial) for issuer_id, row in rows])
        if self._max_rows <= 0 or len(rows) > self._max_rows // 2:
            return  # a bulk change (an import): read on demand as before
        if len(self._pushed) + len(rows) > self._max_rows:
            self._pushed.clear()  # bounded; an entry forgotten costs one lookup
        for issuer_id, row in rows:
            memo = (issuer_id, row.serial)
            self._remember(memo, row)
            self._pushed.add(memo)

    def _fresh(self, stored: StoredResponse, now: dt.datetime) -> bool:
        return now < stored.this_update + self._config.refresh_after and now < stored.next_update

    async def _sign(
        self, issuer: ServedIssuer, request: OcspRequest, rows: dict[int, StatusRow]
    ) -> Response:
        started = time.perf_counter()
        async with self._limiter:
            # RS2.3: producedAt is the signing time; thisUpdate the time the status was read.
            now = self._clock().replace(microsecond=0)
            next_update = now + self._config.response_lifetime
            body, statuses = self._body(issuer, request, rows, now, next_update)
            try:
                der = await build_response(body, issuer.identity, issuer.signer, now, request.nonce)
            except SigningKeyError as e:
                # A token that went away: tryLater for this client. The key (a KeptKey) is
                # closed, reported not ready and opened again by its KeyKeeper.
                raise Unavailable(f"signer for {issuer.name}: {e}") from e
        self._signing_latency.observe(time.perf_counter() - started)
        return Response(
            der,
            now,
            next_update,
            statuses,
            cacheable=request.nonce is None,
            cert_ids=tuple(c.der for c in request.cert_ids),
            signer=issuer.identity.key_hash,
        )

    def _body(
        self,
        issuer: ServedIssuer,
        request: OcspRequest,
        rows: dict[int, StatusRow],
        now: dt.datetime,
        next_update: dt.datetime,
    ) -> tuple[ResponseBody, tuple[AnswerStatus, ...]]:
        key = None
        if len(request.cert_ids) == 1:
            if now != self._bodies_at:
                self._bodies.clear()
                self._bodies_at = now
            cert_id = request.cert_ids[0]
            key = (cert_id.der, rows.get(cert_id.serial))
            known = self._bodies.get(key)
            if known is not None:
                return known
        answers = [
            _answer(c, rows.get(c.serial), self._config.unknown_serials, now, next_update)
            for c in request.cert_ids
        ]
        encoded = (
            ResponseBody.encode(answers, issuer.identity, now),
            tuple(a.status for a in answers),
        )
        if key is not None and len(self._bodies) < self._max_bodies:
            self._bodies[key] = encoded
        return encoded

    def _store_later(
        self, issuer: ServedIssuer, cert_id: CertId, row: StatusRow, response: Response
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._store_one(issuer, cert_id, row, response)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _store_one(
        self, issuer: ServedIssuer, cert_id: CertId, row: StatusRow, response: Response
    ) -> None:
        try:
            await self._store.store(
                cert_id.der,
                issuer.id,
                row,
                StoredResponse(response.der, response.this_update, response.next_update),
            )
        except asyncpg.ReadOnlySQLTransactionError:
            self._store_writes = False
            self._log.info(
                "status database is read-only (a replica): signed responses stay in memory"
            )
        except DB_ERRORS as e:
            self._metrics.stored.labels("write_error").inc()
            self._log.warning(
                "could not store a signed response",
                extra={"error": str(e).splitlines()[0] if str(e) else type(e).__name__},
            )

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _status(row: StatusRow | None) -> AnswerStatus:
    if row is None:
        return AnswerStatus.UNKNOWN
    return AnswerStatus.GOOD if row.status is CertStatus.GOOD else AnswerStatus.REVOKED
