"""`crlgen sign` end to end at scale: PostgreSQL cursor -> encode -> sign -> verify -> archive ->
publish, for CRLs of 10 000, 100 000 and 1 000 000 entries.

    .venv/bin/python bench/crl_db_bench.py [--sizes 10000,100000,1000000]

Each size gets a fresh database whose revoked rows are generated inside PostgreSQL (not row by
row from Python); `crlgen sign` then runs as its own process under /usr/bin/time-like
accounting (wall seconds and peak RSS from getrusage of the child). Uses
OCSPD_TEST_DATABASE_URL or postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from benchkit import ensure_audit_key

from ocspd import devpki

ADMIN = os.environ.get("OCSPD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

_FILL = """
    INSERT INTO certificates (issuer_id, serial, not_after, status, revoked_at, reason)
    SELECT $1, '\\x01'::bytea || int8send(g), now() + interval '90 days', 'revoked',
           now() - make_interval(secs => g % 86400), (ARRAY[0, 1, 3, 4, 5, 9])[1 + g % 6]
    FROM generate_series(1, $2::bigint) AS g
"""


async def _sql(url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def _ocspd(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "ocspd", *args], env=env, check=True, stdout=subprocess.DEVNULL
    )


def _measure(env: dict[str, str], *args: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "crlgen", *args], env=env, check=True, stdout=subprocess.DEVNULL
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far; sizes run in increasing order.
    return seconds, max(peak, before) / 1024


def run(size: int, tmp: Path) -> tuple[float, float, int]:
    ca = devpki.make_ca("Bench CRL CA")
    ca_pem = devpki.write_cert(tmp / "ca.pem", ca.cert)
    ca_key = devpki.write_key(tmp / "ca.key", ca.key)
    name = f"ocspd_crlbench_{secrets.token_hex(4)}"
    asyncio.run(_sql(ADMIN, f"CREATE DATABASE {name}"))
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    env = {**os.environ, "OCSPD_DATABASE_URL": url}
    try:
        _ocspd(env, "db", "migrate")
        _ocspd(
            env,
            "issuer",
            "add",
            "bench",
            "--ca-cert",
            str(ca_pem),
            "--responder-key",
            f"file:{ca_key}",
        )
        asyncio.run(_sql(url, _FILL, 1, size))
        asyncio.run(_sql(url, "VACUUM ANALYZE certificates"))
        seconds, rss = _measure(env, "sign", "--issuer", "bench", "--out", str(tmp))
        crl_size = (tmp / "bench.crl").stat().st_size
    finally:
        asyncio.run(_sql(ADMIN, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    return seconds, rss, crl_size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    ensure_audit_key()
    print("| entries | seconds | peak RSS (MB) | CRL size (MB) |")
    print("|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, rss, crl_size = run(size, Path(tmp))
        print(f"| {size:,} | {seconds:.2f} | {rss:.0f} | {crl_size / 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
