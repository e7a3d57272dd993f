"""Bulk import: `ocspd cert import` of N certificates (a PEM bundle and an openssl index).

    .venv/bin/python bench/import_bench.py --count 100000

Makes N leaves of a throwaway CA, then times, in one run on one machine:
  - ceiling: parsing the bundle and verifying every signature with cryptography, nothing else
    (the work an import cannot skip);
  - `ocspd cert import --issuer bench FILE` into a fresh database;
  - the same import again (idempotent re-run);
  - `ocspd cert import --openssl-index` of an index.txt with N entries, 1 % revoked.
Uses OCSPD_TEST_DATABASE_URL or postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from benchkit import ensure_audit_key
from cryptography import x509

from ocspd import devpki

ADMIN = os.environ.get("OCSPD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _ocspd(url: str, *args: str) -> float:
    env = {**os.environ, "OCSPD_DATABASE_URL": url}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ocspd", *args], env=env, check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    n = args.count
    ensure_audit_key()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ca = devpki.make_ca("Bench CA")
        key = devpki.new_key()
        t = time.perf_counter()
        certs = [devpki.make_leaf(f"h{i}.example", ca, key) for i in range(n)]
        made = time.perf_counter() - t
        bundle = devpki.write_cert(d / "bundle.pem", *certs)
        ca_pem = devpki.write_cert(d / "ca.pem", ca.cert)
        ca_key = devpki.write_key(d / "ca.key", ca.key)
        expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(days=90)).strftime("%y%m%d%H%M%SZ")
        revoked = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%y%m%d%H%M%SZ")
        with (d / "index.txt").open("w") as f:
            for i in range(n):
                serial = f"{devpki.random_serial():X}"
                if i % 100 == 0:
                    f.write(f"R\t{expiry}\t{revoked},superseded\t{serial}\tunknown\t/CN=i{i}\n")
                else:
                    f.write(f"V\t{expiry}\t\t{serial}\tunknown\t/CN=i{i}\n")

        size = bundle.stat().st_size
        t = time.perf_counter()
        loaded = x509.load_pem_x509_certificates(bundle.read_bytes())
        for c in loaded:
            c.verify_directly_issued_by(ca.cert)
        ceiling = time.perf_counter() - t

        name = f"ocspd_bench_{secrets.token_hex(4)}"
        asyncio.run(_admin(f"CREATE DATABASE {name}"))
        url = ADMIN.rsplit("/", 1)[0] + "/" + name
        try:
            _ocspd(url, "db", "migrate")
            _ocspd(
                url,
                "issuer",
                "add",
                "bench",
                "--ca-cert",
                str(ca_pem),
                "--responder-key",
                f"file:{ca_key}",
            )
            first = _ocspd(url, "cert", "import", "--issuer", "bench", str(bundle))
            again = _ocspd(url, "cert", "import", "--issuer", "bench", str(bundle))
            index = _ocspd(
                url, "cert", "import", "--issuer", "bench", "--openssl-index", str(d / "index.txt")
            )
        finally:
            asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

    print(f"certificates: {n} (made in {made:.1f} s, bundle {size / 1e6:.0f} MB)")
    print("| step | seconds | certs/s | vs ceiling |")
    print("|---|---:|---:|---:|")
    print(f"| ceiling: parse + verify only | {ceiling:.2f} | {n / ceiling:,.0f} | 1.00x |")
    for label, secs in (
        ("`cert import` bundle, new", first),
        ("`cert import` bundle, re-run", again),
        ("`cert import --openssl-index`", index),
    ):
        print(f"| {label} | {secs:.2f} | {n / secs:,.0f} | {secs / ceiling:.2f}x |")


if __name__ == "__main__":
    main()
