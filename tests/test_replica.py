"""Beyond one database server (issue 7, SO2.1): responders that read from a streaming
replica show a revocation made on the primary within a second of its replay.

Two private PostgreSQL clusters (15 on Debian 12), a primary (wal_level=replica) and a standby made with
pg_basebackup -R, on free ports under a directory the postgres user owns; both are stopped
and removed at the end, whatever happened. Each responder reads status from the replica
(OCSPD_RESPONDER_DATABASE_URL, a login of its own in ocspd_responder) and writes its
request records to the primary (OCSPD_AUDIT_DATABASE_URL): a standby takes no writes.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from conftest import make_pki, run_sql
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from needs import missing
from responder import Responder, free_port, http_post, start_responder
from test_serve import ocspd_cmd


def _pg_bin() -> Path:
    """OCSPD_TEST_PG_BIN, else the newest of Debian's /usr/lib/postgresql/N/bin (15 on
    Debian 12, installed by .ci/run)."""
    if os.environ.get("OCSPD_TEST_PG_BIN"):
        return Path(os.environ["OCSPD_TEST_PG_BIN"])
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
    )
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
READER = "ocspd_replica_reader"
# The feed's budget (README: a revocation shows within a second), on top of replication.
FRESHNESS = 1.0


@dataclass
class Cluster:
    data: Path
    port: int
    log: Path

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"


@dataclass
class Pair:
    primary: Cluster
    replica: Cluster
    run: list[str]  # prefix that runs a server binary as the postgres user


def _pg_tools() -> list[str]:
    """The command prefix for PostgreSQL's server binaries, or skip (fail in CI)."""
    for tool in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
        if not (PG_BIN / tool).is_file():
            missing(
                f"PostgreSQL server binaries are needed in {PG_BIN} (apt-get install "
                "postgresql-15, or set OCSPD_TEST_PG_BIN)"
            )
    if os.geteuid() != 0:
        return []
    # initdb refuses to run as root: the clusters belong to the postgres system user.
    if shutil.which("runuser") is None:
        missing("runuser (util-linux) is needed to run PostgreSQL as the postgres user")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        missing("a postgres system user is needed to run private PostgreSQL clusters as root")
    return ["runuser", "-u", "postgres", "--"]


def _run(pair_run: list[str], cwd: Path, *args: str | Path) -> None:
    result = subprocess.run(
        [*pair_run, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {result.stdout}\n{result.stderr}")


def _tail(path: Path) -> str:
    try:
        return path.read_text()[-3000:]
    except OSError:
        return ""


@pytest.fixture
def pair() -> Iterator[Pair]:
    run = _pg_tools()
    # Not under pytest's tmp_path: the postgres user must reach it (root's is 0700).
    top = Path(tempfile.mkdtemp(prefix="ocspd-replica-", dir="/tmp"))
    if run:
        entry = pwd.getpwnam("postgres")
        os.chown(top, entry.pw_uid, entry.pw_gid)
    primary = Cluster(top / "primary", free_port(), top / "primary.log")
    replica = Cluster(top / "replica", free_port(), top / "replica.log")
    started: list[Cluster] = []
    try:
        _run(run, top, PG_BIN / "initdb", "-D", primary.data, "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        with (primary.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {primary.port}\n"
                f"unix_socket_directories = '{top}'\n"
                "wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n"
                "fsync = off\nmax_connections = 60\nshared_buffers = 32MB\n"
            )
        (primary.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        _run(run, top, PG_BIN / "pg_ctl", "-D", primary.data, "-l", primary.log, "-w", "-t", "60", "start")  # fmt: skip
        started.append(primary)
        # The standby: a base backup streaming its WAL, -R writes standby.signal and
        # primary_conninfo.
        _run(run, top, PG_BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port),
             "-U", "postgres", "-D", replica.data, "-R", "-X", "stream", "-c", "fast", "--no-sync")  # fmt: skip
        with (replica.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {replica.port}\n")
        _run(run, top, PG_BIN / "pg_ctl", "-D", replica.data, "-l", replica.log, "-w", "-t", "60", "start")  # fmt: skip
        started.append(replica)
        yield Pair(primary, replica, run)
    finally:
        for cluster in reversed(started):
            subprocess.run(
                [*run, str(PG_BIN / "pg_ctl"), "-D", str(cluster.data), "-m", "immediate",
                 "-w", "stop"],
                cwd=top, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        shutil.rmtree(top, ignore_errors=True)


def _fetchval(url: str, sql: str) -> object:
    async def go() -> object:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(go())


def _status(responder: Responder, request: bytes) -> ocsp.OCSPCertStatus:
    body = http_post(responder.url, request, timeout=5)[2]
    response = ocsp.load_der_ocsp_response(body)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    return response.certificate_status


def test_responders_on_a_replica_show_a_revocation_within_a_second_of_replay(
    pair: Pair, tmp_path: Path
) -> None:
    primary_url = pair.primary.url("ocspd")
    run_sql(pair.primary.url(), "CREATE DATABASE ocspd")
    ocspd_cmd(primary_url, "db", "migrate")
    # The responders' own login, made on the primary and replicated like everything else.
    run_sql(primary_url, f"CREATE ROLE {READER} LOGIN IN ROLE ocspd_responder")
    pki = make_pki(tmp_path / "pki", "Replica CA")
    ocspd_cmd(
        primary_url, "issuer", "add", "replica", "--ca-cert", pki.ca_cert,
        "--responder-cert", pki.responder_cert, "--responder-key", f"file:{pki.responder_key}",
    )  # fmt: skip
    leaf_path = pki.leaf("replicated")
    ocspd_cmd(primary_url, "cert", "import", "--issuer", "replica", leaf_path)
    leaf = x509.load_pem_x509_certificate(leaf_path.read_bytes())

    replica_admin = pair.replica.url("ocspd")

    def replay_lag() -> float:
        """Seconds until the replica has replayed everything the primary wrote so far."""
        target = _fetchval(primary_url, "SELECT pg_current_wal_lsn()::text")
        started = time.monotonic()
        # Asked in the replica's own `postgres` database: the first time, `ocspd` may not be
        # replayed there yet (a busy machine).
        while not _fetchval(
            pair.replica.url(), f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
        ):
            assert time.monotonic() - started < 30, "the replica did not catch up:\n" + _tail(
                pair.replica.log
            )
            time.sleep(0.01)
        return time.monotonic() - started

    replay_lag()
    assert _fetchval(replica_admin, "SELECT pg_is_in_recovery()") is True

    env = {
        "OCSPD_RESPONDER_DATABASE_URL": pair.replica.url("ocspd", READER),
        "OCSPD_AUDIT_DATABASE_URL": primary_url,
    }
    responders = []
    try:
        for _ in range(2):
            responders.append(start_responder(primary_url, tmp_path, workers=1, extra_env=env))
        plain = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(leaf, pki.ca.cert, hashes.SHA1())
            .build()
            .public_bytes(serialization.Encoding.DER)
        )

        def with_nonce() -> bytes:
            return (
                ocsp.OCSPRequestBuilder()
                .add_certificate(leaf, pki.ca.cert, hashes.SHA256())
                .add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
                .build()
                .public_bytes(serialization.Encoding.DER)
            )

        # Both answer from the replica, and have "good" cached.
        for responder in responders:
            for _ in range(3):
                assert _status(responder, plain) == ocsp.OCSPCertStatus.GOOD
                assert _status(responder, with_nonce()) == ocsp.OCSPCertStatus.GOOD

        ocspd_cmd(
            primary_url, "revoke", "--issuer", "replica", "--serial", f"{leaf.serial_number:x}",
            "--reason", "keyCompromise",
        )  # fmt: skip
        committed = time.monotonic()  # the CLI returns after its transaction committed
        lag = replay_lag()  # measured from the commit: the time the replica took
        replica_delay = _fetchval(
            replica_admin,
            "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
        )
        seen: dict[int, float] = {}
        while len(seen) < len(responders):
            elapsed = time.monotonic() - committed
            for i, responder in enumerate(responders):
                if i not in seen and _status(responder, plain) == ocsp.OCSPCertStatus.REVOKED:
                    seen[i] = time.monotonic() - committed
            assert elapsed < lag + FRESHNESS + 5, (
                f"a responder kept answering good; answered revoked: {seen}\n"
                + "\n".join(_tail(r.log) for r in responders)
                + "\nreplica:\n"
                + _tail(pair.replica.log)
            )
        print(f"replication lag {lag:.3f} s; revoked in the responders after {seen} s")
        for i, after in seen.items():
            assert after <= lag + FRESHNESS, (
                f"responder {i} showed the revocation {after:.3f} s after the commit; "
                f"replication took {lag:.3f} s (replay timestamp {replica_delay} s behind)"
            )
        # From then on nothing says good, cached or live.
        for responder in responders:
            assert _status(responder, plain) == ocsp.OCSPCertStatus.REVOKED
            assert _status(responder, with_nonce()) == ocsp.OCSPCertStatus.REVOKED

        # The responders' request records went to the primary.
        deadline = time.monotonic() + 10
        while not _fetchval(primary_url, "SELECT count(*) FROM ocsp_audit_segments"):
            assert time.monotonic() < deadline, "no request records reached the primary"
            time.sleep(0.1)
    finally:
        codes = [r.stop() for r in responders]
    logs = "\n".join(r.log.read_text() for r in responders)
    assert codes == [0] * len(responders), logs
    assert "Traceback" not in logs, logs
