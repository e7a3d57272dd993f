"""crlgen end to end: signing, archive, publication, scheduling, high availability, agreement
with OCSP (pkio70), against real PostgreSQL, openssl, GnuTLS and pkilint."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Cli, Pki
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from prometheus_client import CollectorRegistry
from responder import free_port, http_get, http_post, start_responder

from crlgen import cli as crlgen_cli
from crlgen.metrics import CrlMetrics
from crlgen.scheduler import Scheduler
from ocspd.config import load_config
from ocspd.signing.keys import KeyOpener


class Crlgen:
    def __init__(self, ocspd: Cli, capsys: pytest.CaptureFixture[str]) -> None:
        self.ocspd = ocspd
        self._capsys = capsys

    def __call__(self, *args: str | Path) -> tuple[int, str, str]:
        self._capsys.readouterr()
        try:
            code = crlgen_cli.main([str(a) for a in args])
        except SystemExit as e:
            code = int(e.code or 0)
        captured = self._capsys.readouterr()
        return code, captured.out, captured.err

    def ok(self, *args: str | Path) -> str:
        code, out, err = self(*args)
        assert code == 0, err
        return out


@pytest.fixture
def crlgen(ocspd: Cli, capsys: pytest.CaptureFixture[str]) -> Crlgen:
    return Crlgen(ocspd, capsys)


@pytest.fixture
def ca(ocspd: Cli, pki: Pki) -> str:
    """The issuing CA with a delegated responder and its CA key registered for CRLs."""
    ocspd.ok(
        "issuer", "add", "ca", "--ca-cert", pki.ca_cert, "--responder-cert", pki.responder_cert,
        "--responder-key", f"file:{pki.responder_key}", "--ca-key", f"file:{pki.ca_key}",
    )  # fmt: skip
    return "ca"


def _serial(path: Path) -> str:
    return f"{x509.load_pem_x509_certificate(path.read_bytes()).serial_number:X}"


@pytest.fixture
def leaves(ocspd: Cli, pki: Pki, ca: str) -> dict[str, Path]:
    paths = {
        name: pki.leaf(f"crl-{name}")
        for name in ("good", "compromised", "superseded", "held", "unspecified")
    }
    ocspd.ok("cert", "import", "--issuer", ca, *paths.values())
    ocspd.ok(
        "revoke", "--issuer", ca, "--serial", _serial(paths["compromised"]), "--reason", "keyCompromise",
        "--revoked-at", "2026-11-10T08:00:00Z", "--invalidity-date", "2026-11-09T20:00:00Z",
    )  # fmt: skip
    ocspd.ok(
        "revoke", "--issuer", ca, "--serial", _serial(paths["superseded"]), "--reason", "superseded"
    )
    ocspd.ok(
        "revoke",
        "--issuer",
        ca,
        "--serial",
        _serial(paths["unspecified"]),
        "--reason",
        "unspecified",
    )
    ocspd.ok("hold", "--issuer", ca, "--serial", _serial(paths["held"]))
    return paths


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(path.read_bytes())


def test_sign_show_and_the_archive(
    crlgen: Crlgen, pki: Pki, leaves: dict[str, Path], tmp_path: Path
) -> None:
    out = crlgen.ok("sign", "--issuer", "ca", "--out", tmp_path)
    path = tmp_path / "ca.crl"
    assert f"published {path}" in out
    crl = _load_crl(path)
    assert crl.issuer == pki.ca.cert.subject  # exactly as in the CA certificate
    assert crl.is_signature_valid(pki.ca.cert.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(days=10)  # pkio65
    by_serial = {e.serial_number: e for e in crl}
    assert len(by_serial) == 4
    compromised = by_serial[int(_serial(leaves["compromised"]), 16)]
    assert compromised.revocation_date_utc == dt.datetime(2026, 11, 10, 8, tzinfo=dt.UTC)
    assert (
        compromised.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.key_compromise
    )
    invalidity = compromised.extensions.get_extension_for_class(x509.InvalidityDate).value
    assert invalidity.invalidity_date_utc == dt.datetime(2026, 11, 9, 20, tzinfo=dt.UTC)
    held = by_serial[int(_serial(leaves["held"]), 16)]
    assert (
        held.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.certificate_hold
    )
    unspecified = by_serial[int(_serial(leaves["unspecified"]), 16)]
    assert not any(isinstance(e.value, x509.CRLReason) for e in unspecified.extensions)  # left out
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = pki.ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    # No reason partitions: one CRL for all reasons (pkio / App. A CRLDistributionPoints).
    assert not any(isinstance(e.value, x509.IssuingDistributionPoint) for e in crl.extensions)

    shown = crlgen.ok("show", "--issuer", "ca")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"number={number} " in shown and "entries=4" in shown and f"sha256={sha}" in shown
    # AR1.2: archived with its hash, and the archive cannot be rewritten.
    rows = crlgen.ocspd.sql("SELECT crl_number, sha256, der FROM crls")
    assert len(rows) == 1 and rows[0]["sha256"].hex() == sha and rows[0]["der"] == path.read_bytes()
    import asyncpg

    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match=r"AR1\.2"):
        crlgen.ocspd.sql("UPDATE crls SET entries = 0")
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match=r"AR1\.2"):
        crlgen.ocspd.sql("DELETE FROM crls")


def test_real_clients_accept_the_crl(
    crlgen: Crlgen, pki: Pki, leaves: dict[str, Path], tmp_path: Path
) -> None:
    crlgen.ok("sign", "--issuer", "ca", "--out", tmp_path)
    der = tmp_path / "ca.crl"
    pem = tmp_path / "ca.crl.pem"
    pem.write_bytes(_load_crl(der).public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(
        ["openssl", "crl", "-in", str(der), "-inform", "DER", "-CAfile", str(pki.ca_cert), "-noout"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert "verify OK" in result.stdout + result.stderr
    chain = tmp_path / "chain.pem"
    chain.write_bytes(
        pki.ca_cert.read_bytes() + pki.root.cert.public_bytes(serialization.Encoding.PEM)
    )

    def verify(leaf: Path) -> str:
        r = subprocess.run(
            ["openssl", "verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", str(pem), str(leaf)],
            capture_output=True, text=True,
        )  # fmt: skip
        return r.stdout + r.stderr

    assert "certificate revoked" in verify(leaves["compromised"])
    assert f"{leaves['good']}: OK" in verify(leaves["good"])
    certtool = subprocess.run(
        ["certtool", "--verify-crl", "--load-ca-certificate", str(pki.ca_cert), "--infile", str(pem)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert certtool.returncode == 0, certtool.stdout + certtool.stderr
    lint = shutil.which("lint_crl") or str(Path(sys.executable).parent / "lint_crl")
    linted = subprocess.run(
        [lint, "lint", "-t", "CRL", "-p", "PKIX", "--severity", "DEBUG", str(pem)],
        capture_output=True,
        text=True,
    )
    assert linted.returncode == 0 and linted.stdout.strip() == linted.stderr.strip() == "", (
        linted.stdout
    )


def test_numbers_strictly_increase_and_are_never_reused(
    crlgen: Crlgen, leaves: dict[str, Path], tmp_path: Path
) -> None:
    numbers = []
    for _ in range(4):
        crlgen.ok("sign", "--issuer", "ca", "--out", tmp_path)
        numbers.append(
            _load_crl(tmp_path / "ca.crl")
            .extensions.get_extension_for_class(x509.CRLNumber)
            .value.crl_number
        )
    assert numbers == sorted(set(numbers)) and len(numbers) == 4
    archived = [
        int(r["crl_number"])
        for r in crlgen.ocspd.sql("SELECT crl_number FROM crls ORDER BY crl_number")
    ]
    assert archived == numbers


def test_expired_entries_kept_by_default_and_dropped_past_retention(
    crlgen: Crlgen, ocspd: Cli, pki: Pki, ca: str, tmp_path: Path
) -> None:
    old = pki.leaf(
        "long-expired", days=30, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    )
    ocspd.ok("cert", "import", "--issuer", ca, old)
    ocspd.ok(
        "revoke",
        "--issuer",
        ca,
        "--serial",
        _serial(old),
        "--reason",
        "superseded",
        "--revoked-at",
        "2025-11-01T00:00:00Z",
    )
    crlgen.ok("sign", "--issuer", "ca", "--out", tmp_path)
    assert len(_load_crl(tmp_path / "ca.crl")) == 1
    config = tmp_path / "keep.toml"
    config.write_text('[crl]\nkeep_expired = "180d"\n')
    crlgen.ok("--config", config, "sign", "--issuer", "ca", "--out", tmp_path)
    assert len(_load_crl(tmp_path / "ca.crl")) == 0


def test_issuer_without_ca_key_is_refused(crlgen: Crlgen, issuer: str, tmp_path: Path) -> None:
    code, _, err = crlgen("sign", "--issuer", issuer, "--out", tmp_path)
    assert code == 1 and "--ca-key" in err and len(err.strip().splitlines()) == 1
    assert crlgen.ocspd.sql("SELECT count(*) AS n FROM crls")[0]["n"] == 0


def test_crl_signed_through_softhsm(crlgen: Crlgen, ocspd: Cli, pki: Pki, tmp_path: Path) -> None:
    from softhsm import SoftHSM

    with SoftHSM.create(tmp_path / "hsm") as hsm:
        uri = hsm.import_key(pki.ca.key, "ca-key")
        ocspd.ok(
            "issuer", "add", "hsm-ca", "--ca-cert", pki.ca_cert, "--responder-cert", pki.responder_cert,
            "--responder-key", f"file:{pki.responder_key}", "--ca-key", uri,
        )  # fmt: skip
        leaf = pki.leaf("hsm-revoked")
        ocspd.ok("cert", "import", "--issuer", "hsm-ca", leaf)
        ocspd.ok(
            "revoke", "--issuer", "hsm-ca", "--serial", _serial(leaf), "--reason", "keyCompromise"
        )
        crlgen.ok("sign", "--issuer", "hsm-ca", "--out", tmp_path)
    result = subprocess.run(
        ["openssl", "crl", "-in", str(tmp_path / "hsm-ca.crl"), "-inform", "DER", "-CAfile", str(pki.ca_cert), "-noout"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert "verify OK" in result.stdout + result.stderr
    assert len(_load_crl(tmp_path / "hsm-ca.crl")) == 1


def test_ocsp_and_crl_agree_and_ocspd_serves_the_crl(
    crlgen: Crlgen, ocspd: Cli, pki: Pki, leaves: dict[str, Path], tmp_path: Path
) -> None:
    """pkio70: every serial on the latest CRL is revoked in OCSP with the same time and reason."""
    crl_dir = tmp_path / "crl"
    crlgen.ok("sign", "--issuer", "ca", "--out", crl_dir)
    responder = start_responder(
        ocspd.url, tmp_path, workers=1, extra_env={"OCSPD_CRL_DIR": str(crl_dir)}
    )
    try:
        status, headers, body = http_get(responder.url + "crl/ca.crl")
        assert status == 200 and headers["Content-Type"] == "application/pkix-crl"
        assert body == (crl_dir / "ca.crl").read_bytes()
        crl = x509.load_der_x509_crl(body)
        max_age = int(headers["Cache-Control"].split("max-age=")[1].split(",")[0])
        assert 0 < max_age <= (crl.next_update_utc - dt.datetime.now(dt.UTC)).total_seconds()
        assert (
            http_get(responder.url + "crl/ca.crl", headers={"If-None-Match": headers["ETag"]})[0]
            == 304
        )
        assert http_get(responder.url + "crl/nope.crl")[0] == 404
        assert http_get(responder.url + "crl/..%2F..%2Fetc%2Fpasswd")[0] == 404
        assert http_get(responder.url + "crl/../ca.crl")[0] in (400, 404)
        for entry in crl:
            by_serial = {
                x509.load_pem_x509_certificate(p.read_bytes()).serial_number: p
                for p in leaves.values()
            }
            cert = x509.load_pem_x509_certificate(by_serial[entry.serial_number].read_bytes())
            request = (
                ocsp.OCSPRequestBuilder().add_certificate(cert, pki.ca.cert, hashes.SHA1()).build()
            )
            answer = ocsp.load_der_ocsp_response(
                http_post(responder.url, request.public_bytes(serialization.Encoding.DER))[2]
            )
            assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
            assert answer.revocation_time_utc == entry.revocation_date_utc
            reasons = [
                e.value.reason for e in entry.extensions if isinstance(e.value, x509.CRLReason)
            ]
            assert answer.revocation_reason == (reasons[0] if reasons else None)
    finally:
        responder.stop()


# --- the scheduler ------------------------------------------------------------------------------


def _run_config(tmp_path: Path, crl_dir: Path, **extra: str) -> Path:
    path = tmp_path / f"crlgen-{free_port()}.toml"
    lines = [
        "[crl]",
        f'directory = "{crl_dir}"',
        'poll_interval = "0.3s"',
        'revocation_delay = "3s"',
        f'metrics_listen = "127.0.0.1:{extra.pop("metrics_port", free_port())}"',
    ]
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_run(db_url: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OCSPD_DATABASE_URL": db_url}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "crlgen", "--config", str(config), "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_for(condition, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _crl_serials(path: Path) -> set[int]:
    try:
        return {e.serial_number for e in _load_crl(path)}
    except (OSError, ValueError):
        return set()


def test_run_signs_soon_after_a_revocation_and_fails_over(
    ocspd: Cli, pki: Pki, ca: str, tmp_path: Path
) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    ports = [free_port(), free_port()]
    configs = [
        _run_config(tmp_path, d, metrics_port=str(p)) for d, p in zip(dirs, ports, strict=True)
    ]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_start_run(ocspd.url, c, log) for c, log in zip(configs, logs, strict=True)]
    try:
        # The first CRL, published by the leader and mirrored by the follower.
        for d in dirs:
            _wait_for(lambda d=d: (d / "ca.crl").exists(), 30)
        first = pki.leaf("run-1")
        ocspd.ok("cert", "import", "--issuer", ca, first)
        ocspd.ok("revoke", "--issuer", ca, "--serial", _serial(first), "--reason", "keyCompromise")
        took = _wait_for(lambda: int(_serial(first), 16) in _crl_serials(dirs[0] / "ca.crl"), 30)
        assert took < 3 + 2  # within revocation_delay (3 s) plus a poll and signing
        _wait_for(lambda: int(_serial(first), 16) in _crl_serials(dirs[1] / "ca.crl"), 10)
        numbers = {int(r["crl_number"]) for r in ocspd.sql("SELECT crl_number FROM crls")}
        assert len(numbers) == 2
        # Exactly one leader: kill it, the other takes over.
        leader = [
            p for p, log in zip(procs, logs, strict=True) if "is the leader" in log.read_text()
        ]
        assert len(leader) == 1
        scraped = [http_get(f"http://127.0.0.1:{port}/metrics")[2].decode() for port in ports]
        assert sorted(text.count("ocspd_crl_leader 1.0") for text in scraped) == [0, 1]
        for text in scraped:  # every instance reports the latest CRL
            assert 'ocspd_crl_entries{issuer="ca"} 1.0' in text
            assert 'ocspd_crl_next_update_seconds{issuer="ca"}' in text
            assert 'ocspd_crl_last_signed_timestamp_seconds{issuer="ca"}' in text
        leader[0].send_signal(signal.SIGKILL)
        leader[0].wait(10)
        survivor_dir = dirs[procs.index(next(p for p in procs if p is not leader[0]))]
        second = pki.leaf("run-2")
        ocspd.ok("cert", "import", "--issuer", ca, second)
        ocspd.ok("revoke", "--issuer", ca, "--serial", _serial(second), "--reason", "superseded")
        took = _wait_for(
            lambda: int(_serial(second), 16) in _crl_serials(survivor_dir / "ca.crl"), 30
        )
        assert took < 30
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(15)
    numbers = [
        int(r["crl_number"])
        for r in ocspd.sql("SELECT crl_number FROM crls ORDER BY this_update, crl_number")
    ]
    assert numbers == sorted(set(numbers))


def test_two_schedulers_racing_for_an_hour_never_share_a_number(
    ocspd: Cli, pki: Pki, ca: str, tmp_path: Path
) -> None:
    """Simulated time: every 20 s step both schedulers tick, sometimes with a revocation; the
    cadence is 10 minutes. The leader lock, the per-issuer signing lock and the archive's
    primary key must keep every cRLNumber unique and increasing."""
    config_path = tmp_path / "race.toml"
    config_path.write_text(
        f'[crl]\ndirectory = "{tmp_path / "race"}"\ninterval = "10m"\nrevocation_delay = "1m"\npoll_interval = "1s"\n'
    )
    config = load_config(config_path, environ={"OCSPD_DATABASE_URL": ocspd.url})
    now = [dt.datetime.now(dt.UTC).replace(microsecond=0)]
    leaves = [pki.leaf(f"race-{i}") for i in range(12)]
    ocspd.ok("cert", "import", "--issuer", ca, *leaves)

    async def race() -> None:
        log = logging.getLogger("race")
        with KeyOpener(config.pkcs11) as keys_a, KeyOpener(config.pkcs11) as keys_b:
            a = Scheduler(config, keys_a, CrlMetrics(CollectorRegistry()), log, lambda: now[0])
            b = Scheduler(config, keys_b, CrlMetrics(CollectorRegistry()), log, lambda: now[0])
            try:
                for step in range(180):  # 180 x 20 s = one hour
                    if step % 15 == 7:
                        leaf = leaves[step // 15]
                        await asyncio.to_thread(
                            ocspd.ok,
                            "revoke",
                            "--issuer",
                            ca,
                            "--serial",
                            _serial(leaf),
                            "--reason",
                            "superseded",
                        )
                    await asyncio.gather(a.tick(), b.tick())
                    if step == 90:  # the leader lets go half-way; either may take over
                        await (a if a.leader else b).step_down()
                    now[0] += dt.timedelta(seconds=20)
            finally:
                a.close()
                b.close()

    asyncio.run(race())
    rows = ocspd.sql("SELECT crl_number, this_update FROM crls ORDER BY this_update")
    numbers = [int(r["crl_number"]) for r in rows]
    assert len(numbers) == len(set(numbers))
    assert numbers == sorted(numbers)
    # The 10-minute cadence alone gives 6 CRLs an hour; the revocations add more.
    assert len(numbers) >= 6 + 6


# --- crashes ------------------------------------------------------------------------------------

_FILL = """
    INSERT INTO certificates (issuer_id, serial, not_after, status, revoked_at, reason)
    SELECT $1, '\\x01'::bytea || int8send(g), now() + interval '90 days', 'revoked',
           now() - make_interval(secs => g % 86400), (ARRAY[0, 1, 3, 4, 5, 9])[1 + g % 6]
    FROM generate_series(1, $2::bigint) AS g
"""


class _Watch:
    """One connection for quick looks at the database from the test thread: is some process
    inside the signing transaction (holding the issuer's signing lock), how many CRLs are
    archived."""

    def __init__(self, url: str, issuer_id: int) -> None:
        import asyncpg

        self._issuer_id = issuer_id
        self._loop = asyncio.new_event_loop()
        self._conn = self._loop.run_until_complete(asyncpg.connect(url))

    def signing(self) -> bool:
        from crlgen.store import SIGN_LOCK_CLASS

        query = """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND classid::bigint = $1 AND objid::bigint = $2"""
        return bool(
            self._loop.run_until_complete(
                self._conn.fetchval(query, SIGN_LOCK_CLASS, self._issuer_id)
            )
        )

    def archived(self) -> int:
        count: int = self._loop.run_until_complete(self._conn.fetchval("SELECT count(*) FROM crls"))
        return count

    def close(self) -> None:
        self._loop.run_until_complete(self._conn.close())
        self._loop.close()


def test_killed_mid_signing_never_publishes_half_a_crl(
    ocspd: Cli, pki: Pki, ca: str, tmp_path: Path
) -> None:
    """SIGKILL `crlgen sign` of a 200 000-entry CRL inside its signing transaction (as it
    starts reading, part-way, late in encoding and signing) and just after archiving (while
    publishing): the published file is always a whole CRL that verifies and was archived, no
    cRLNumber is archived twice or goes backwards, and the next sign completes."""
    issuer_id = ocspd.sql("SELECT id FROM issuers WHERE name = $1", ca)[0]["id"]
    ocspd.sql(_FILL, issuer_id, 200_000)
    out = tmp_path / "crl"
    published = out / "ca.crl"
    env = {**os.environ, "OCSPD_DATABASE_URL": ocspd.url}
    command = [sys.executable, "-m", "crlgen", "sign", "--issuer", ca, "--out", str(out)]
    watch = _Watch(ocspd.url, issuer_id)

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for(lambda: watch.signing() or process.poll() is not None, 30)
        return process

    # How long the signing transaction lasts, to kill part-way through it.
    process = start()
    began = time.monotonic()
    _wait_for(lambda: not watch.signing(), 60)
    inside = time.monotonic() - began
    assert process.wait(30) == 0

    bad: list[str] = []
    seen: set[bytes] = set()
    done = threading.Event()

    def read_published() -> None:
        while not done.is_set():
            try:
                der = published.read_bytes()
                crl = x509.load_der_x509_crl(der)
                if not crl.is_signature_valid(pki.ca.cert.public_key()):  # type: ignore[arg-type]
                    bad.append("signature")
                seen.add(hashlib.sha256(der).digest())
            except (OSError, ValueError) as e:
                bad.append(f"{type(e).__name__}: {e}")
            time.sleep(0.05)

    reader = threading.Thread(target=read_published)
    reader.start()
    killed_inside = 0
    try:
        for fraction in (0.0, 0.4, 0.8):  # inside the transaction: nothing may come of it
            before = watch.archived()
            process = start()
            time.sleep(inside * fraction)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            _wait_for(lambda: not watch.signing(), 10)  # the server rolled it back
            # (On a slow machine a late kill may come after the commit: then it is not one.)
            killed_inside += watch.archived() == before
        for _ in range(2):  # archived, now publishing (if it has not finished already)
            before = watch.archived()
            process = start()
            _wait_for(lambda b=before, p=process: watch.archived() > b or p.poll() is not None, 60)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        subprocess.run(command, env=env, check=True, capture_output=True)
    finally:
        done.set()
        reader.join(30)
        watch.close()
    # At least the kill as it starts reading lands inside; a kill after the commit lands
    # while publishing or not at all (a fast machine publishes before it comes).
    assert killed_inside >= 1
    assert not bad, bad[:5]
    rows = ocspd.sql("SELECT crl_number, sha256 FROM crls ORDER BY this_update, crl_number")
    numbers = [int(r["crl_number"]) for r in rows]
    assert numbers == sorted(set(numbers)) and len(numbers) >= 2
    # Whatever a reader saw was archived first (AR1.2), and the file is the newest CRL now.
    assert seen and seen <= {bytes(r["sha256"]) for r in rows}
    final = _load_crl(published)
    assert len(final) == 200_000
    assert final.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == numbers[-1]
    assert hashlib.sha256(published.read_bytes()).digest() == bytes(rows[-1]["sha256"])
    # Temporary files of the killed runs are cleared away by the next publication.
    assert sorted(p.name for p in out.iterdir()) == ["ca.crl"]
