"""open_responder(config): the responder's wiring. Each resource is opened in order and
closed in reverse when the block ends, like an aiohttp app's cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from ocspd.audit.log import RequestAudit, new_stream_name
from ocspd.audit.mac import open_audit_key
from ocspd.config import Config
from ocspd.crlfiles import CrlFiles
from ocspd.http import OcspHandler, Readiness
from ocspd.metrics import ResponderMetrics
from ocspd.protocol.response import ResponderIdentity
from ocspd.signing.keys import KeyOpener
from ocspd.sources.cache import CacheSource
from ocspd.sources.filter import FilterSource
from ocspd.sources.issuers import IssuerTable, ServedIssuer
from ocspd.sources.live import DB_ERRORS, LiveSource
from ocspd.store import issuers as issuer_store
from ocspd.store.db import Role
from ocspd.store.feed import Changed, ChangeFeed
from ocspd.store.requests import oldest_pending_seconds
from ocspd.store.status import StatusStore

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Responder:
    """What a worker serves: the HTTP handler, and the readiness it reports."""

    handler: OcspHandler
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
    async with contextlib.AsyncExitStack() as stack:
        pool = await _create_pool(config)
        stack.push_async_callback(pool.close)
        keys = stack.enter_context(KeyOpener(config.pkcs11))
        issuers = await _load_issuers(pool, keys, clock(), log)

        interval = config.responder.feed_interval.total_seconds()
        live = LiveSource(
            StatusStore(pool),
            issuers,
            config.responder,
            clock,
            metrics,
            log,
            # Remembered status is current while the feed polled within the 1-second budget.
            status_current=lambda: feed.healthy(within=1.0),
        )
        stack.push_async_callback(live.close)
        cache = CacheSource(
            live,
            issuers,
            clock,
            config.responder.refresh_after,
            config.responder.cache_entries,
            config.responder.nonce,
            metrics,
        )
        source = FilterSource(cache, issuers)

        def changed(items: Sequence[Changed]) -> None:
            cache.invalidate(items)
            live.invalidate(items)

        feed = ChangeFeed(pool, interval, changed, log)
        await feed.poll()  # the baseline snapshot, before the first request is answered
        # Ready while the feed keeps up: without it a cached answer could outlive its status.
        readiness.checks["database"] = lambda: feed.healthy(within=max(2.0, 10 * interval))
        readiness.checks["signer"] = lambda: not live.signer_failing
        audit = None
        if config.audit.requests:
            audit_pool = pool
            if config.database.audit_url:
                audit_pool = await _create_pool(config, config.database.audit_url, max_size=2)
                stack.push_async_callback(audit_pool.close)
            audit = await _start_audit(config, audit_pool, metrics, log, worker)
            readiness.checks["audit"] = lambda: not audit.refusing
        # CRLs: max-age capped like OCSP responses, and never past nextUpdate.
        crls = CrlFiles(Path(config.crl.directory), config.responder.max_cache_age, clock)
        handler = OcspHandler(
            source,
            config.responder,
            crls,
            readiness,
            metrics,
            log,
            clock,
            cache.lookup_request,
            cache.alias_request,
            audit,
        )
        tasks = [
            asyncio.create_task(feed.run()),
            asyncio.create_task(_gauges(metrics, pool, issuers, cache, feed, clock)),
            asyncio.create_task(_flush_metrics(metrics)),
        ]
        if audit is not None:
            tasks.append(asyncio.create_task(audit.run()))
        try:
            yield Responder(handler, readiness)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if audit is not None:
                await audit.close()  # before the pool closes: the last records go there
            metrics.flush()  # what was counted since the last flush


async def _start_audit(
    config: Config, pool: asyncpg.Pool, metrics: ResponderMetrics, log: logging.Logger, worker: int
) -> RequestAudit:
    """This worker's stream of request records (RS3.1), registered before the first request.
    The audit key is needed only to derive the stream's MAC key and to sign the registration,
    so it is closed again at once (a PKCS#11 key is not held by a second token thread)."""
    key = await open_audit_key(config.require_audit_key(), config.pkcs11)
    try:
        audit = RequestAudit(
            new_stream_name(worker),
            key,
            pool,
            config.audit,
            log,
            on_stored=metrics.audit_stored.inc,
            on_error=metrics.audit_errors.inc,
        )
        host, port = config.responder.listen
        await audit.open({"pid": os.getpid(), "worker": worker, "listen": f"{host}:{port}"})
    finally:
        key.close()
    metrics.on_flush(lambda: metrics.audit_pending.set(audit.pending))
    log.info("audit stream opened", extra={"stream": audit.stream})
    return audit


async def _create_pool(config: Config, url: str = "", max_size: int = 8) -> asyncpg.Pool:
    """The responder's pool: to its own login (responder_url) as it is, or to `url` (or the
    shared OCSPD_DATABASE_URL) switched to the ocspd_responder role (R11)."""
    own_login = not url and config.database.responder_url
    dsn = url or own_login or config.require_database_url()

    async def as_responder(conn: asyncpg.Connection) -> None:
        if not own_login:
            await conn.execute(f"SET ROLE {Role.RESPONDER.value}")

    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
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


async def _load_issuers(
    pool: asyncpg.Pool, keys: KeyOpener, now: dt.datetime, log: logging.Logger
) -> IssuerTable:
    async with pool.acquire() as conn:
        found = await issuer_store.list_issuers(conn, with_counts=False)
    served = []
    for issuer in found:
        # CG2.3 / KM3.5: refuses a key that does not match or a certificate not valid now.
        signer = await keys.open(issuer.responder_key, issuer.signing_cert, now)
        identity = ResponderIdentity.from_certificate(issuer.signing_cert)
        served.append(
            (issuer, ServedIssuer(issuer.id, issuer.name, signer, identity, issuer.signing_cert))
        )
        log.info("serving issuer", extra={"issuer": issuer.name, "key": signer.description})
    if not served:
        log.warning("no issuers in the status database: every request will get unauthorized")
    return IssuerTable(served)


async def _flush_metrics(metrics: ResponderMetrics) -> None:
    """Hot-path counters are tallied in memory (ocspd.metrics.Tally); publish them."""
    while True:
        await asyncio.sleep(1.0)
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
