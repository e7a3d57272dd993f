"""One CRL for one issuer: query -> build and sign -> verify -> archive -> publish.

Each stage is its own module (store, build, verify, publish); this one runs them in order
inside one transaction that holds the issuer's signing lock, so two processes never sign
the same issuer at once and a cRLNumber is archived before its CRL is published.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from crlgen import store
from crlgen.build import CrlEncoder, sign_crl
from crlgen.publish import publish
from crlgen.verify import CrlInfo, verify_crl
from ocspd.config import MAX_CRL_LIFETIME, CrlConfig
from ocspd.signing.base import Signer
from ocspd.store.issuers import Issuer


@dataclass(frozen=True)
class SignedCrl:
    issuer: str
    info: CrlInfo
    der: bytes
    path: Path | None
    seconds: float


def crl_number(this_update: dt.datetime, previous: int | None) -> int:
    """Derived from thisUpdate (microseconds, as Boulder derives it from nanoseconds), so it
    grows without coordination; never below the previous number plus one."""
    from_time = int(this_update.timestamp()) * 1_000_000
    return max(from_time, (previous or 0) + 1)


async def sign_issuer(
    conn: asyncpg.Connection,
    issuer: Issuer,
    signer: Signer,
    config: CrlConfig,
    clock: Callable[[], dt.datetime],
    out_dir: Path | None,
    progress: Callable[[int], None] = lambda n: None,
) -> SignedCrl:
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", store.SIGN_LOCK_CLASS, issuer.id)
        previous = await store.latest_crl(conn, issuer.id)
        this_update = clock().replace(microsecond=0)
        if previous is not None and this_update <= previous.this_update:
            # Two CRLs within one second: thisUpdate still moves forward.
            this_update = previous.this_update + dt.timedelta(seconds=1)
        next_update = this_update + config.next_update
        number = crl_number(this_update, previous.number if previous else None)
        # The snapshot first: changes committed after it are not on this CRL, and the
        # scheduler will see them as pending.
        snapshot: str = await conn.fetchval("SELECT pg_current_snapshot()::text")
        expired_before = this_update - config.keep_expired if config.keep_expired else None
        encoder = CrlEncoder(issuer.ca_cert, signer.algorithm)
        async for batch in store.stream_entries(conn, issuer.id, expired_before):
            encoder.add(batch)
            progress(len(batch))
        tbs = encoder.tbs(number, this_update, next_update)
        entries = encoder.count
        del encoder  # a million entries are ~40 MB per copy: keep only what is still needed
        der = await sign_crl(tbs, signer.algorithm, signer)
        del tbs
        info = verify_crl(
            der,
            issuer.ca_cert,
            previous.number if previous else None,
            MAX_CRL_LIFETIME,
            now=clock(),
        )
        await store.archive(
            conn,
            issuer.id,
            number,
            this_update,
            next_update,
            entries,
            info.sha256,
            der,
            snapshot,
        )
    path = publish(out_dir, issuer.name, der) if out_dir is not None else None
    return SignedCrl(issuer.name, info, der, path, time.perf_counter() - started)
