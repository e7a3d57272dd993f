"""`crlgen run`: keep one current CRL per issuer, with one signer at a time across instances.

Every instance polls. The one holding a session advisory lock (the leader) signs what is due:
the first CRL, the regular cadence, and soon after any status change. When the leader dies its
database session ends, the lock is free, and another instance takes over at its next poll.
Every instance, leader or not, mirrors the latest archived CRL into its own directory, so
responders next to any instance serve the current CRL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from crlgen import store
from crlgen.metrics import CrlMetrics
from crlgen.pipeline import sign_issuer
from crlgen.publish import publish
from ocspd.config import Config
from ocspd.errors import OcspdError, SigningKeyError
from ocspd.signing.base import Signer
from ocspd.signing.keys import RETRY_FIRST, RETRY_MAX, KeyOpener
from ocspd.store import issuers as issuer_store
from ocspd.store.db import Role, connect, describe_error
from ocspd.store.issuers import Issuer

DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def settle_time(config: Config) -> dt.timedelta:
    """How long to let a burst of revocations gather before signing: a fifth of the allowed
    delay, at most a minute."""
    return min(config.crl.revocation_delay / 5, dt.timedelta(minutes=1))


class Scheduler:
    def __init__(
        self,
        config: Config,
        keys: KeyOpener,
        metrics: CrlMetrics,
        log: logging.Logger,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._config = config
        self._keys = keys
        self._metrics = metrics
        self._log = log
        self._clock = clock
        self._out = Path(config.crl.directory)
        self._signers: dict[int, Signer] = {}
        # Per issuer: when its CA key may be tried again, and the wait after that. Keys are
        # not retried at every poll: each wrong PIN counts towards locking the token (see
        # ocspd.signing.keys.RETRY_FIRST).
        self._key_retry: dict[int, tuple[float, float]] = {}
        self._published: dict[str, int] = {}
        self._leader_conn: asyncpg.Connection | None = None
        # What was reported as failing, per (issuer, stage), so it is logged once, not per poll.
        self._reported: dict[tuple[str, str], str] = {}
        self.leader = False

    async def run(self) -> None:
        poll = self._config.crl.poll_interval.total_seconds()
        while True:
            try:
                await self.tick()
            except DB_ERRORS as e:
                self._log.error("crlgen: database error", extra={"error": describe_error(e)})
                await self.step_down()
            await asyncio.sleep(poll)

    async def tick(self) -> None:
        await self._elect()
        conn = await connect(self._config.require_database_url(), Role.PUBLISHER)
        try:
            for issuer in await issuer_store.list_issuers(conn, with_counts=False):
                if self.leader:
                    await self._sign_if_due(conn, issuer)
                await self._mirror(conn, issuer)
        finally:
            await conn.close()

    async def _elect(self) -> None:
        if self._leader_conn is not None and not self._leader_conn.is_closed():
            await self._leader_conn.fetchval("SELECT 1")  # still holding the session and lock
            return
        self._leader_conn = await connect(self._config.require_database_url(), Role.PUBLISHER)
        got = await self._leader_conn.fetchval(
            "SELECT pg_try_advisory_lock($1, $2)", *store.LEADER_LOCK
        )
        if got:
            self.leader = True
            self._metrics.leader.set(1)
            self._log.info("crlgen: this instance is the leader and signs CRLs")
        else:
            await self._leader_conn.close()
            self._leader_conn = None

    async def step_down(self) -> None:
        if self.leader:
            self._log.warning("crlgen: lost the leader lock")
        self.leader = False
        self._metrics.leader.set(0)
        if self._leader_conn is not None:
            self._leader_conn.terminate()
            self._leader_conn = None

    async def _sign_if_due(self, conn: asyncpg.Connection, issuer: Issuer) -> None:
        now = self._clock()
        latest = await store.latest_crl(conn, issuer.id)
        reason = None
        if latest is None:
            reason = "first"
        elif now >= latest.this_update + self._config.crl.interval:
            reason = "interval"
        else:
            pending = await store.oldest_unsigned_change(conn, issuer.id, latest.snapshot)
            if pending is not None and now >= pending + settle_time(self._config):
                reason = "status change"
        if reason is None:
            return
        signer = await self._signer(issuer)
        if signer is None:
            return
        try:
            signed = await sign_issuer(
                conn, issuer, signer, self._config.crl, self._clock, self._out
            )
        except SigningKeyError as e:
            # The token failed (or went away): open the keys afresh when next due, with a
            # reloaded module, which is what sees a token that came back.
            self._metrics.failures.labels(issuer.name, "sign").inc()
            self._log.error(
                "crlgen: CA key failed; opening it again",
                extra={"issuer": issuer.name, "error": str(e)},
            )
            await self._forget_keys()
            self._key_retry[issuer.id] = (time.monotonic() + RETRY_FIRST, RETRY_FIRST)
            return
        except OcspdError as e:
            self._metrics.failures.labels(issuer.name, "sign").inc()
            self._log.error(
                "crlgen: CRL refused: %s", e, extra={"issuer": issuer.name, "error": str(e)}
            )
            return
        except OSError as e:
            self._metrics.failures.labels(issuer.name, "publish").inc()
            self._log.error(
                "crlgen: CRL archived but not published",
                extra={"issuer": issuer.name, "error": str(e)},
            )
            return
        self._published[issuer.name] = signed.info.number
        self._metrics.duration.observe(signed.seconds)
        self._log.info(
            "crlgen: signed CRL",
            extra={
                "issuer": issuer.name,
                "why": reason,
                "number": signed.info.number,
                "entries": signed.info.entries,
                "seconds": round(signed.seconds, 3),
            },
        )

    async def _signer(self, issuer: Issuer) -> Signer | None:
        if issuer.id in self._signers:
            return self._signers[issuer.id]
        if issuer.crl_key is None:
            self._report_once(
                issuer, "key", "no CA key: register it with `ocspd issuer add --ca-key`"
            )
            return None
        retry_at, wait = self._key_retry.get(issuer.id, (0.0, RETRY_FIRST / 2))
        if time.monotonic() < retry_at:
            return None
        try:
            # CG2.3 / KM3.5: the CA key must match the CA certificate, valid now.
            signer = await self._keys.open(issuer.crl_key, issuer.ca_cert, self._clock())
        except OcspdError as e:
            wait = min(2 * wait, RETRY_MAX)
            self._key_retry[issuer.id] = (time.monotonic() + wait, wait)
            self._report_once(issuer, "key", str(e))
            if not self._signers:
                # Nothing open to lose: the next attempt loads the PKCS#11 module afresh and
                # sees the tokens there are then (SoftHSM2 lists them as at C_Initialize).
                await asyncio.to_thread(self._keys.close)
            return None
        self._key_retry.pop(issuer.id, None)
        if self._reported.pop((issuer.name, "key"), None) is not None:
            self._log.warning("crlgen: CA key open again", extra={"issuer": issuer.name})
        self._signers[issuer.id] = signer
        return signer

    async def _forget_keys(self) -> None:
        """Close every key and the PKCS#11 module (the keys of a process share it)."""
        for signer in self._signers.values():
            signer.close()
        self._signers.clear()
        await asyncio.to_thread(self._keys.close)

    def _report_once(self, issuer: Issuer, stage: str, message: str) -> None:
        """Count every failure; log one when it is new or its message changed."""
        self._metrics.failures.labels(issuer.name, stage).inc()
        if self._reported.get((issuer.name, stage)) != message:
            self._reported[(issuer.name, stage)] = message
            self._log.error(
                "crlgen: cannot sign CRLs", extra={"issuer": issuer.name, "error": message}
            )

    async def _mirror(self, conn: asyncpg.Connection, issuer: Issuer) -> None:
        """Keep DIR/NAME.crl equal to the latest archived CRL, and the gauges current."""
        latest = await store.latest_crl(conn, issuer.id)
        if latest is None:
            return
        now = self._clock()
        self._metrics.last_signed.labels(issuer.name).set(latest.this_update.timestamp())
        self._metrics.next_update.labels(issuer.name).set(
            (latest.next_update - now).total_seconds()
        )
        self._metrics.entries.labels(issuer.name).set(latest.entries)
        target = self._out / f"{issuer.name}.crl"
        if self._published.get(issuer.name) == latest.number and target.exists():
            return
        der = await store.latest_der(conn, issuer.id)
        if der is None:
            return
        try:
            publish(self._out, issuer.name, der)
        except OSError as e:
            self._metrics.failures.labels(issuer.name, "publish").inc()
            self._log.error(
                "crlgen: cannot publish", extra={"issuer": issuer.name, "error": str(e)}
            )
            return
        self._published[issuer.name] = latest.number

    def close(self) -> None:
        for signer in self._signers.values():
            signer.close()
        if self._leader_conn is not None:
            self._leader_conn.terminate()
