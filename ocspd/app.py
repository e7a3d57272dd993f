"""open_responder(config): the responder's wiring. Each resource is opened in order and
closed in reverse when the block ends, like an aiohttp app's cleanup_ctx.

A worker serves from its first second, whatever else is down (SO2.1: withstand a single
failure): /healthz, /readyz and the CRLs need nothing else, and OCSP requests get tryLater
until `Startup` has reached the status database (issuers loaded, the change feed's baseline
taken, the audit stream registered), which it retries in the background with backoff. Then
the full handler takes over. Signing keys are held by a KeyKeeper, which opens again a key
whose token was away or failed; meanwhile only live signing gets tryLater.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from ocspd.audit.log import RequestAudit, new_stream_name
from ocspd.audit.mac import AuditKey, open_audit_key
from ocspd.audit.requests import CHAIN_IN_C
from ocspd.config import Config
from ocspd.crlfiles import CrlFiles
from ocspd.errors import Unavailable
from ocspd.http import OcspHandler, Readiness
from ocspd.httpserver import Answer, HttpReply, HttpRequest
from ocspd.metrics import PUBLISH_INTERVAL, ResponderMetrics
from ocspd.protocol.request import OcspRequest
from ocspd.protocol.response import ResponderIdentity
from ocspd.signing.keys import KeptKey, KeyKeeper
from ocspd.sources.base import Response
from ocspd.sources.cache import CacheSource
from ocspd.sources.filter import FilterSource
from ocspd.sources.issuers import IssuerTable, ServedIssuer
from ocspd.sources.live import DB_ERRORS, LiveSource
from ocspd.store import issuers as issuer_store
from ocspd.store.db import Role
from ocspd.store.feed import ChangedRow, ChangeFeed
from ocspd.store.issuers import Issuer
from ocspd.store.requests import oldest_pending_seconds
from ocspd.store.status import StatusStore

Clock = Callable[[], dt.datetime]

# While the status database cannot be reached at start, it is tried again after this long,
# doubling up to DB_RETRY_MAX: a refused connection costs nothing, and the cap bounds how long
# the worker stays on tryLater after the database is back.
DB_RETRY_FIRST = 0.25
DB_RETRY_MAX = 2.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Entrance:
    """The listener's handler: until the responder is connected, an OcspHandler whose Source
    answers tryLater (health, readiness and CRLs are served as always); then the full one."""

    def __init__(self, handler: OcspHandler) -> None:
        self.current = handler

    def __call__(self, request: HttpRequest) -> Answer:
        return self.current(request)

    def refusal(self, http_status: int, request: HttpRequest) -> HttpReply:
        return self.current.refusal(http_status, request)


class NotConnected:
    """The Source before the status database has answered."""

    async def response(self, request: OcspRequest) -> Response:
        raise Unavailable("starting: the status database has not answered yet")


@dataclass(frozen=True)
class Responder:
    """What a worker serves: the HTTP handler, and the readiness it reports."""

    handler: Entrance
    readiness: Readiness


@contextlib.asynccontextmanager
async def open_responder(
    config: Config,
    registry: CollectorRegistry,
    log: logging.Logger,
    clock: Clock = utcnow,
    worker: int = 0,
) -> AsyncIterator[Responder]:
    readiness = Readiness()
    metrics = ResponderMetrics(registry)
    # What /readyz says, for Prometheus too (the alert OcspdNotReady), at every flush.
    metrics.on_flush(lambda: metrics.ready.set(0 if readiness.failing() else 1))
    # CRLs: max-age capped like OCSP responses, and never past nextUpdate.
    crls = CrlFiles(Path(config.crl.directory), config.responder.max_cache_age, clock)
    async with contextlib.AsyncExitStack() as stack:
        pool = await _create_pool(config)
        stack.push_async_callback(pool.close)
        # The change feed has a connection of its own: it is what keeps cached answers
        # current and what /readyz reports, so requests queueing for the pool (after a
        # database restart, say) must not hold it up.
        feed_pool = await _create_pool(config, max_size=1)
        stack.push_async_callback(feed_pool.close)
        audit, audit_key = None, None
        if config.audit.requests:
            audit_pool = pool
            if config.database.audit_url:
                audit_pool = await _create_pool(config, config.database.audit_url, max_size=2)
                stack.push_async_callback(audit_pool.close)
            # Needed to derive the stream's key and to sign its registration, then closed
            # (Startup._open_audit).
            audit_key = await open_audit_key(config.require_audit_key(), config.pkcs11)
            audit = RequestAudit(
                new_stream_name(worker),
                audit_key,
                audit_pool,
                config.audit,
                log,
                on_stored=metrics.audit_stored.inc,
                on_error=metrics.audit_errors.inc,
            )
            metrics.on_flush(lambda: metrics.audit_pending.set(audit.pending))
            if not CHAIN_IN_C:
                log.warning(
                    "request audit records are chained in Python: ocspd.audit._chain was not "
                    "built (it needs gcc and libssl-dev when ocspd is installed); every "
                    "request costs several µs more"
                )
        # Until connected, every OCSP request gets tryLater, and is on record like any other
        # (RS3.1): the audit stream keeps it until the stream can be registered.
        entrance = Entrance(
            OcspHandler(
                NotConnected(), config.responder, crls, readiness, metrics, log, clock, audit=audit
            )
        )
        keys = KeyKeeper(config.pkcs11, log, clock)
        stack.callback(keys.close)
        startup = Startup(
            config, pool, feed_pool, audit, audit_key, keys, metrics, crls, readiness,
            entrance, log, clock, worker,
        )  # fmt: skip
        stack.push_async_callback(startup.close)
        await startup.start()
        yield Responder(entrance, readiness)


class Startup:
    """Brings the responder up on the status database, and owns what then runs on it.

    The first attempt runs before the worker listens: with the database there, nothing is
    answered before the issuers, the feed's baseline and the audit stream are in place, and a
    key the rules refuse (an expired certificate, CG2.3) stops the start as a configuration
    error. While the database cannot be reached, attempts go on in the background.
    """

    def __init__(
        self,
        config: Config,
        pool: asyncpg.Pool,
        feed_pool: asyncpg.Pool,
        audit: RequestAudit | None,
        audit_key: AuditKey | None,
        keys: KeyKeeper,
        metrics: ResponderMetrics,
        crls: CrlFiles,
        readiness: Readiness,
        entrance: Entrance,
        log: logging.Logger,
        clock: Clock,
        worker: int,
    ) -> None:
        self._config = config
        self._pool = pool
        self._feed_pool = feed_pool
        self._audit = audit
        self._audit_key = audit_key
        self._keys = keys
        self._metrics = metrics
        self._crls = crls
        self._readiness = readiness
        self._entrance = entrance
        self._log = log
        self._clock = clock
        self._worker = worker
        self._interval = config.responder.feed_interval.total_seconds()
        self._tasks: list[asyncio.Task[None]] = []
        self._error: str | None = None
        self._feed: ChangeFeed | None = None
        self._live: LiveSource | None = None
        self._cache: CacheSource | None = None
        readiness.checks["database"] = self._database_ready

    def _database_ready(self) -> bool:
        # Ready while the feed keeps up: without it a cached answer could outlive its status.
        feed = self._feed
        return feed is not None and feed.healthy(within=max(2.0, 10 * self._interval))

    async def start(self) -> None:
        self._spawn(_flush_metrics(self._metrics))
        if not await self._attempt(first=True):
            self._spawn(self._retry())

    async def _retry(self) -> None:
        delay = DB_RETRY_FIRST
        while True:
            await asyncio.sleep(delay)
            if await self._attempt():
                return
            delay = min(2 * delay, DB_RETRY_MAX)

    async def _attempt(self, first: bool = False) -> bool:
        """One try at what needs the database; False when it could not be reached."""
        try:
            await self._connect(first)
        except DB_ERRORS as e:
            error = str(e).splitlines()[0] if str(e) else type(e).__name__
            if error != self._error:
                self._log.error(
                    "status database not usable yet; OCSP requests get tryLater until it is",
                    extra={"error": error},
                )
            self._error = error
            return False
        except Exception:
            if first:
                raise  # at start-up, as a start failure with its message
            self._log.exception("starting the responder failed; retrying")
            return False
        if self._error is not None:
            self._log.warning("status database reached; serving")
        return True

    async def _connect(self, first: bool) -> None:
        async with self._pool.acquire() as conn:
            found = await issuer_store.list_issuers(conn, with_counts=False)
        feed = ChangeFeed(
            self._feed_pool, self._interval, self._changed, self._changed_in_bulk, self._log
        )
        await feed.poll()  # the baseline snapshot, before the first request is answered
        audit = self._audit
        if audit is not None and self._audit_key is not None:
            await self._open_audit(audit, self._audit_key)
        # Nothing below needs the database: this attempt succeeds.
        issuers = self._issuers(found)
        max_age = self._config.responder.max_status_age.total_seconds()
        live = self._live = LiveSource(
            StatusStore(self._pool),
            issuers,
            self._config.responder,
            self._clock,
            self._metrics,
            self._log,
            # Remembered status is current while the feed's view is within max_status_age,
            # or once it has caught up.
            status_current=lambda: feed.healthy(within=max_age),
            catch_up=lambda: feed.catch_up(timeout=1.0),
        )
        cache = self._cache = CacheSource(
            live,
            issuers,
            self._clock,
            self._config.responder.refresh_after,
            self._config.responder.cache_entries,
            self._config.responder.nonce,
            self._metrics,
            # A cached answer is served as current only while the feed is (max_status_age);
            # otherwise requests wait up to a second for the feed to catch up.
            status_current=lambda: feed.healthy(within=max_age),
            catch_up=lambda: feed.catch_up(timeout=1.0),
        )
        handler = OcspHandler(
            FilterSource(cache, issuers),
            self._config.responder,
            self._crls,
            self._readiness,
            self._metrics,
            self._log,
            self._clock,
            cache.lookup_request,
            cache.alias_request,
            audit,
        )
        for key in self._keys.keys:
            self._readiness.checks[f"signer {key.name}"] = _is_ready(key)
        if audit is not None:
            self._readiness.checks["audit"] = lambda: not audit.refusing
        # A key that cannot be opened now (token away, PIN refused) is retried by keys.run;
        # only at start-up does one the rules refuse stop the worker.
        await self._keys.open_all(raise_refused=first)
        self._feed = feed
        self._entrance.current = handler
        self._spawn(feed.run())
        self._spawn(self._keys.run())
        self._spawn(_gauges(self._metrics, self._pool, issuers, cache, feed, self._clock))
        if audit is not None:
            self._spawn(audit.run())

    def _issuers(self, found: list[Issuer]) -> IssuerTable:
        served, kept = [], []
        for issuer in found:
            # Opened by the keeper, which refuses a key that does not match its certificate
            # or a certificate not valid now (CG2.3, KM3.5).
            key = self._keys.key(issuer.name, issuer.responder_key, issuer.signing_cert)
            identity = ResponderIdentity.from_certificate(issuer.signing_cert)
            served.append(
                (
                    issuer,
                    ServedIssuer(
                        issuer.id,
                        issuer.name,
                        key,
                        identity,
                        issuer.signing_cert,
                        issuer.ca_cert,
                    ),
                )
            )
            kept.append(key)
            self._log.info("serving issuer", extra={"issuer": issuer.name, "key": key.description})
        if not served:
            self._log.warning(
                "no issuers in the status database: every request will get unauthorized"
            )
        self._keys.keep(kept)
        return IssuerTable(served)

    async def _open_audit(self, audit: RequestAudit, key: AuditKey) -> None:
        """Register this worker's stream of request records (RS3.1) with its first segment,
        which holds what was answered while waiting (RequestAudit.open may be retried). The
        audit key is needed only to derive the stream's MAC key and to sign the
        registration, so it is closed at once after (a PKCS#11 key is then not held by a
        second token thread beside the signing keys)."""
        host, port = self._config.responder.listen
        await audit.open({"pid": os.getpid(), "worker": self._worker, "listen": f"{host}:{port}"})
        key.close()
        self._audit_key = None
        self._log.info("audit stream opened", extra={"stream": audit.stream})

    def _changed(self, rows: Sequence[ChangedRow]) -> None:
        if self._cache is not None and self._live is not None:
            self._cache.invalidate([(issuer_id, row.serial) for issuer_id, row in rows])
            self._live.changed(rows)

    def _changed_in_bulk(self) -> None:
        if self._cache is not None and self._live is not None:
            self._cache.clear()
            self._live.forget()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(work))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._audit is not None:
            await self._audit.close()  # before the pool closes: the last records go there
        if self._audit_key is not None:
            self._audit_key.close()
        self._metrics.flush()  # what was counted since the last flush
        if self._live is not None:
            await self._live.close()


def _is_ready(key: KeptKey) -> Callable[[], bool]:
    return lambda: key.ready


async def _create_pool(config: Config, url: str = "", max_size: int = 8) -> asyncpg.Pool:
    """The responder's pool: to its own login (responder_url) as it is, or to `url` (or the
    shared OCSPD_DATABASE_URL) switched to the ocspd_responder role (R11). It connects on
    first use (min_size 0), so it is made whether the database answers or not."""
    own_login = not url and config.database.responder_url
    dsn = url or own_login or config.require_database_url()

    async def as_responder(conn: asyncpg.Connection) -> None:
        if not own_login:
            await conn.execute(f"SET ROLE {Role.RESPONDER.value}")

    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        init=as_responder,
        reset=_keep_session,
        command_timeout=5,
        timeout=3,
    )
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The responder leaves no session state behind (no LISTEN, locks or settings besides the
    role), so the reset asyncpg runs on every release, a round trip per request, is skipped."""


async def _flush_metrics(metrics: ResponderMetrics) -> None:
    """Hot-path counters are tallied in memory (ocspd.metrics.Tally); publish them."""
    while True:
        await asyncio.sleep(PUBLISH_INTERVAL)
        metrics.flush()


async def _gauges(
    metrics: ResponderMetrics,
    pool: asyncpg.Pool,
    issuers: IssuerTable,
    cache: CacheSource,
    feed: ChangeFeed,
    clock: Clock,
) -> None:
    """Gauges that are states rather than events, refreshed every few seconds."""
    while True:
        now = clock()
        for issuer in issuers:
            metrics.responder_cert_expiry.labels(issuer.name).set(issuer.seconds_until_expiry(now))
            ca_left = issuer.seconds_until_ca_expiry(now)
            if ca_left is not None:
                metrics.ca_cert_expiry.labels(issuer.name).set(ca_left)
        metrics.db_pool_size.set(pool.get_size())
        metrics.db_pool_in_use.set(pool.get_size() - pool.get_idle_size())
        metrics.cache_entries.set(len(cache))
        oldest = cache.oldest_this_update()
        metrics.oldest_cached.set((now - oldest).total_seconds() if oldest else 0)
        metrics.feed_lag.set(feed.seconds_since_success())
        try:
            async with pool.acquire(timeout=2) as conn:
                metrics.revocation_pending_age.set(await oldest_pending_seconds(conn))
        except DB_ERRORS:
            pass  # the database is away: /readyz says so; the gauge keeps its last value
        await asyncio.sleep(5)
