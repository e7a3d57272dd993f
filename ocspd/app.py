"""build_app(config): the responder's wiring, with every resource opened in cleanup_ctx."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from ocspd.config import Config
from ocspd.crlfiles import CrlFiles
from ocspd.http import OcspHandler, Readiness
from ocspd.metrics import ResponderMetrics
from ocspd.protocol.response import ResponderIdentity
from ocspd.signing.keys import KeyOpener
from ocspd.sources.cache import CacheSource
from ocspd.sources.filter import FilterSource
from ocspd.sources.issuers import IssuerTable, ServedIssuer
from ocspd.sources.live import LiveSource
from ocspd.store import issuers as issuer_store
from ocspd.store.db import Role
from ocspd.store.feed import Changed, ChangeFeed
from ocspd.store.status import StatusStore

CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", asyncpg.Pool)
ISSUERS = web.AppKey("issuers", IssuerTable)
READINESS = web.AppKey("readiness", Readiness)
METRICS = web.AppKey("metrics", ResponderMetrics)
CACHE = web.AppKey("cache", CacheSource)
FEED = web.AppKey("feed", ChangeFeed)

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def build_app(
    config: Config,
    registry: CollectorRegistry,
    log: logging.Logger,
    clock: Clock = utcnow,
) -> web.Application:
    # client_max_size bounds what aiohttp itself buffers; the handler enforces the OCSP cap.
    app = web.Application(client_max_size=config.responder.max_request_bytes + 1024)
    app[CONFIG] = config
    app[READINESS] = Readiness()
    app[METRICS] = ResponderMetrics(registry)

    async def database(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = await _create_pool(config)
        yield
        await app[POOL].close()

    async def issuers(app: web.Application) -> AsyncIterator[None]:
        with KeyOpener(config.pkcs11) as keys:
            app[ISSUERS] = await _load_issuers(app[POOL], keys, clock(), log)
            yield

    async def sources(app: web.Application) -> AsyncIterator[None]:
        metrics = app[METRICS]
        interval = config.responder.feed_interval.total_seconds()
        live = LiveSource(
            StatusStore(app[POOL]),
            app[ISSUERS],
            config.responder,
            clock,
            metrics,
            log,
            # Remembered status is current while the feed polled within the 1-second budget.
            status_current=lambda: feed.healthy(within=1.0),
        )
        cache = CacheSource(
            live,
            app[ISSUERS],
            clock,
            config.responder.refresh_after,
            config.responder.cache_entries,
            config.responder.nonce,
            metrics,
        )
        source = FilterSource(cache, app[ISSUERS])
        app[CACHE] = cache

        def changed(items: Sequence[Changed]) -> None:
            cache.invalidate(items)
            live.invalidate(items)

        feed = ChangeFeed(app[POOL], interval, changed, log)
        await feed.poll()  # the baseline snapshot, before the first request is answered
        app[FEED] = feed
        # Ready while the feed keeps up: without it a cached answer could outlive its status.
        app[READINESS].checks["database"] = lambda: feed.healthy(within=max(2.0, 10 * interval))
        app[READINESS].checks["signer"] = lambda: not live.signer_failing
        # CRLs: max-age capped like OCSP responses, and never past nextUpdate.
        crls = CrlFiles(Path(config.crl.directory), config.responder.max_cache_age, clock)
        handler = OcspHandler(
            source,
            config.responder,
            crls,
            app[READINESS],
            metrics,
            log,
            clock,
            cache.lookup_request,
        )
        app.router.add_route("*", "/{tail:.*}", handler)
        tasks = [asyncio.create_task(feed.run()), asyncio.create_task(_gauges(app, clock))]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await live.close()

    app.cleanup_ctx.extend([database, issuers, sources])
    return app


async def _create_pool(config: Config) -> asyncpg.Pool:
    own_login = config.database.responder_url
    dsn = own_login or config.require_database_url()

    async def as_responder(conn: asyncpg.Connection) -> None:
        # With only OCSPD_DATABASE_URL, switch to the read-only role (R11).
        if not own_login:
            await conn.execute(f"SET ROLE {Role.RESPONDER.value}")

    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=8,
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


async def _gauges(app: web.Application, clock: Clock) -> None:
    """Gauges that are states rather than events, refreshed every few seconds."""
    metrics, pool, cache, feed = app[METRICS], app[POOL], app[CACHE], app[FEED]
    while True:
        now = clock()
        for issuer in app[ISSUERS]:
            metrics.responder_cert_expiry.labels(issuer.name).set(issuer.seconds_until_expiry(now))
        metrics.db_pool_size.set(pool.get_size())
        metrics.db_pool_in_use.set(pool.get_size() - pool.get_idle_size())
        metrics.cache_entries.set(len(cache))
        oldest = cache.oldest_this_update()
        metrics.oldest_cached.set((now - oldest).total_seconds() if oldest else 0)
        metrics.feed_lag.set(feed.seconds_since_success())
        await asyncio.sleep(5)
