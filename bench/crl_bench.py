"""CRL signing: encode + sign a full CRL of N entries with crlgen.build, against a ceiling.

    .venv/bin/python bench/crl_bench.py                      # 10k, 100k, 1M; ceiling 10k, 100k
    .venv/bin/python bench/crl_bench.py --sizes 100000 --ceiling-sizes ''

Each measurement runs in a fresh interpreter, so its peak RSS (ru_maxrss) is its own. Rows are
made in memory in batches of 10 000, the way crlgen.store.stream_entries hands them over from a
database cursor: (16-octet serial, revocation date, reason or None, invalidity date or None),
with a realistic mix of reasons. Making the rows is timed apart from encoding them; the
database fetch itself is measured elsewhere. The signer is a P-256 FileSigner.

  - crlgen: CrlEncoder.add over every batch, CrlEncoder.tbs, sign_crl; then, apart,
    crlgen.verify.verify_crl (the check the pipeline runs before publishing).
  - ceiling: cryptography's CertificateRevocationListBuilder with one RevokedCertificate per
    row (what one would write without a streaming encoder), built and signed. The builder is
    immutable: add_revoked_certificate copies the list of entries every time, so its cost is
    quadratic and 1 000 000 entries are out of reach (not run by default).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from crlgen.build import CrlEncoder, sign_crl
from crlgen.verify import verify_crl
from ocspd import devpki
from ocspd.signing.filekey import FileSigner

BATCH = 10_000
Row = tuple[bytes, dt.datetime, int | None, dt.datetime | None]
# The share of entries per reason (None: no reason given), roughly a public CA's mix.
REASONS: list[tuple[int | None, float]] = [(None, 0.45), (1, 0.15), (4, 0.25), (5, 0.1), (6, 0.05)]
REASON_FLAGS = {
    1: x509.ReasonFlags.key_compromise,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
}


def batches(count: int, seed: int = 1) -> Iterator[list[Row]]:
    """`count` rows in lists of BATCH, made as they are asked for (never all at once)."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = now - dt.timedelta(days=730)
    span = 730 * 86400
    reasons = [r for r, _ in REASONS]
    weights = [w for _, w in REASONS]
    made = 0
    while made < count:
        n = min(BATCH, count - made)
        chosen = rng.choices(reasons, weights, k=n)
        batch: list[Row] = []
        for reason in chosen:
            serial = rng.randbytes(16)
            if serial[0] == 0:
                serial = b"\x01" + serial[1:]
            revoked = start + dt.timedelta(seconds=rng.randrange(span))
            invalidity = revoked - dt.timedelta(days=1) if rng.random() < 0.05 else None
            batch.append((serial, revoked, reason, invalidity))
        made += n
        yield batch


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _setup() -> tuple[devpki.Issued, FileSigner]:
    """A P-256 CA; its key stays in memory (the path only names it in messages)."""
    ca = devpki.make_ca("CRL Bench CA")
    return ca, FileSigner(ca.key, Path("bench-ca.key"))


class Clock:
    """Wall and CPU time of the timed sections only (not of making the rows)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._wall = self._cpu = 0.0

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> float:
        wall = time.perf_counter() - self._wall
        self.wall += wall
        self.cpu += time.process_time() - self._cpu
        return wall


async def child_crlgen(count: int) -> dict[str, Any]:
    """Runs inside asyncio.run and returns only numbers: on Python 3.11, asyncio.run formats
    the repr of its main task's result (signal handler bookkeeping), which for a 45 MB CRL
    returned from the top-level coroutine costs a second and 100 MB."""
    ca, signer = _setup()
    base_rss = _rss_mb()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    encoder = CrlEncoder(ca.cert, signer.algorithm)
    clock, make = Clock(), Clock()
    for batch in _timed_batches(count, make):
        clock.start()
        encoder.add(batch)
        clock.stop()
    add = clock.wall
    clock.start()
    tbs = encoder.tbs(1, now, now + dt.timedelta(days=7))
    crl = await sign_crl(tbs, signer.algorithm, signer)
    tbs_sign = clock.stop()
    del tbs
    peak_signed = _peak_mb()
    verify = Clock()
    verify.start()
    info = verify_crl(crl, ca.cert, None, dt.timedelta(days=10))
    verify.stop()
    assert info.entries == count
    return {
        "make_rows": make.wall,
        "add": add,
        "tbs_sign": tbs_sign,
        "encode_sign": clock.wall,
        "encode_sign_cpu": clock.cpu,
        "verify": verify.wall,
        "bytes": len(crl),
        "base_rss_mb": base_rss,
        "peak_rss_mb": peak_signed,
        "peak_rss_verify_mb": _peak_mb(),
    }


def _timed_batches(count: int, clock: Clock) -> Iterator[list[Row]]:
    rows = batches(count)
    while True:
        clock.start()
        batch = next(rows, None)
        clock.stop()
        if batch is None:
            return
        yield batch


def child_ceiling(count: int) -> dict[str, Any]:
    ca, _ = _setup()
    base_rss = _rss_mb()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=7))
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    clock, make = Clock(), Clock()
    for batch in _timed_batches(count, make):
        clock.start()
        for serial, revoked, reason, invalidity in batch:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(int.from_bytes(serial, "big"))
                .revocation_date(revoked)
            )
            if reason:
                entry = entry.add_extension(x509.CRLReason(REASON_FLAGS[reason]), critical=False)
            if invalidity is not None:
                entry = entry.add_extension(x509.InvalidityDate(invalidity), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        clock.stop()
    add = clock.wall
    clock.start()
    crl = builder.sign(ca.key, hashes.SHA256()).public_bytes(Encoding.DER)
    sign = clock.stop()
    return {
        "make_rows": make.wall,
        "add": add,
        "tbs_sign": sign,
        "encode_sign": clock.wall,
        "encode_sign_cpu": clock.cpu,
        "verify": None,
        "bytes": len(crl),
        "base_rss_mb": base_rss,
        "peak_rss_mb": _peak_mb(),
        "peak_rss_verify_mb": None,
    }


def run_child(kind: str, count: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(count)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--ceiling-sizes", default="10000,100000")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per crlgen size, the fastest kept (noisy host)"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, count = args.child[0], int(args.child[1])
        result = asyncio.run(child_crlgen(count)) if kind == "crlgen" else child_ceiling(count)
        print(json.dumps(result))
        return

    def sizes(text: str) -> list[int]:
        return [int(s) for s in text.split(",") if s.strip()]

    print(f"{dt.date.today()}  python {sys.version.split()[0]}  batches of {BATCH:,}")
    print()
    print(
        "| encoder | entries | CRL MB | add s | tbs+sign s | encode+sign s (CPU s) | entries/s "
        "| peak RSS MB (at start) | verify_crl s (peak RSS MB) | making rows s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs = [("crlgen", n) for n in sizes(args.sizes)]
    runs += [("ceiling", n) for n in sizes(args.ceiling_sizes)]
    for kind, count in runs:
        result = min(
            (run_child(kind, count) for _ in range(args.repeat if kind == "crlgen" else 1)),
            key=lambda r: r["encode_sign"],
        )
        name = "crlgen.build" if kind == "crlgen" else "ceiling: cryptography builder"
        verify = (
            "-"
            if result["verify"] is None
            else f"{result['verify']:.2f} ({result['peak_rss_verify_mb']:.0f})"
        )
        print(
            f"| {name} | {count:,} | {result['bytes'] / 1e6:.1f} | {result['add']:.2f} "
            f"| {result['tbs_sign']:.2f} "
            f"| {result['encode_sign']:.2f} ({result['encode_sign_cpu']:.2f}) "
            f"| {count / result['encode_sign']:,.0f} "
            f"| {result['peak_rss_mb']:.0f} ({result['base_rss_mb']:.0f}) | {verify} "
            f"| {result['make_rows']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
