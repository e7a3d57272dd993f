"""The responder and its database failing (SO2.1: withstand a single failure): while the
database is away cached answers that are still valid are served and others get tryLater,
/readyz tells the truth, no worker dies, and service returns when the database does, also when
it was not there at start; an acknowledged revocation survives a crash of every process.

Runs against a private PostgreSQL (pgserver) that the tests stop, crash and start."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from conftest import Pki, make_pki, run_sql, with_database
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from needs import missing
from responder import Responder, free_port, http_get, http_post, start_responder
from test_serve import ocspd_cmd

_SERVER = "from pgserver.postgres_server import get_server; import sys; s = get_server(sys.argv[1], cleanup_mode={mode!r})"
# An immediate shutdown: no checkpoint, so the next start runs crash recovery from the WAL.
_CRASH = (
    "import os, sys; from pgserver import _commands; "
    "_commands.pg_ctl(['-m', 'immediate', '-w', 'stop'], pgdata=sys.argv[1], "
    "user='pgserver' if os.geteuid() == 0 else None)"
)


def _pgserver(directory: Path, action: str) -> str:
    """Start (printing the DSN), stop or crash the private server, from a separate process so
    this one keeps no handle that would stop it on exit."""
    if action == "crash":
        code = _CRASH
    else:
        code = _SERVER.format(mode=None if action == "start" else "stop")
        code += "; print(s.get_uri())" if action == "start" else "; s.cleanup()"
    result = subprocess.run(
        [sys.executable, "-c", code, str(directory)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return result.stdout.strip().splitlines()[-1] if action == "start" else ""


def _reachable(url: str) -> bool:
    try:
        run_sql(url, "SELECT 1")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    return True


@dataclass(frozen=True)
class PrivatePg:
    directory: Path
    url: str  # the server's postgres database, as superuser

    def stop(self) -> None:
        _pgserver(self.directory, "stop")

    def crash(self) -> None:
        _pgserver(self.directory, "crash")

    def start(self) -> None:
        _pgserver(self.directory, "start")


@pytest.fixture(scope="module")
def private_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePg]:
    try:
        import pgserver  # noqa: F401
    except ImportError:
        missing("pgserver is needed for the database outage tests (pip install pgserver)")
    tmp = tmp_path_factory.mktemp("pg")
    directory = Path("/tmp") / f"ocspd-pg-{os.getpid()}-{tmp.name[-6:]}"  # short: socket path
    url = _pgserver(directory, "start")
    yield PrivatePg(directory, url)
    _pgserver(directory, "stop")
    subprocess.run(["rm", "-rf", str(directory)], check=False)


@pytest.fixture
def outage_db(private_pg: PrivatePg) -> Iterator[str]:
    """A fresh, migrated database on the private server (started again if a test left it
    stopped)."""
    if not _reachable(private_pg.url):
        private_pg.start()
    name = f"ocspd_outage_{secrets.token_hex(4)}"
    run_sql(private_pg.url, f"CREATE DATABASE {name}")
    url = with_database(private_pg.url, name)
    ocspd_cmd(url, "db", "migrate")
    yield url
    if not _reachable(private_pg.url):
        private_pg.start()
    run_sql(private_pg.url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _issuer(url: str, pki: Pki, name: str = "outage", ca_key: bool = False) -> None:
    ocspd_cmd(
        url, "issuer", "add", name, "--ca-cert", pki.ca_cert,
        "--responder-cert", pki.responder_cert, "--responder-key", f"file:{pki.responder_key}",
        *(["--ca-key", f"file:{pki.ca_key}"] if ca_key else []),
    )  # fmt: skip


def _request(ca: x509.Certificate, cert_path: Path, nonce: bool = False) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, ca, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(secrets.token_bytes(16)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _outcome(body: bytes) -> str:
    """'good', 'revoked', or the OCSP response status's name."""
    response = ocsp.load_der_ocsp_response(body)
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return response.response_status.name
    return response.certificate_status.name.lower()


def _ask(responder: Responder, pki: Pki, leaf: Path, nonce: bool = False) -> str:
    status, _, body = http_post(responder.url, _request(pki.ca.cert, leaf, nonce), timeout=15)
    return _outcome(body) if status == 200 else f"HTTP {status}"


def _wait_for(condition, timeout: float, message: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, message
        time.sleep(0.1)
    return time.monotonic() - started


def _log_clean(responder: Responder) -> None:
    log = responder.log.read_text()
    assert "Traceback" not in log, log
    assert "worker died" not in log, log


def test_database_outage(outage_db: str, private_pg: PrivatePg, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", "Outage CA")
    _issuer(outage_db, pki)
    cached, uncached = pki.leaf("cached"), pki.leaf("uncached")
    ocspd_cmd(outage_db, "cert", "import", "--issuer", "outage", cached, uncached)
    responder = start_responder(outage_db, tmp_path, workers=1)
    try:
        before = http_post(responder.url, _request(pki.ca.cert, cached))[2]
        assert ocsp.load_der_ocsp_response(before).certificate_status == ocsp.OCSPCertStatus.GOOD

        private_pg.stop()
        # Still valid in the cache: served as it was.
        assert http_post(responder.url, _request(pki.ca.cert, cached))[2] == before
        # Nothing cached: tryLater, not an error page and not a hang.
        started = time.monotonic()
        assert _ask(responder, pki, uncached) == "TRY_LATER"
        assert time.monotonic() - started < 10
        _wait_for(
            lambda: http_get(responder.url + "readyz")[0] == 503,
            10,
            "/readyz kept saying ready without a database",
        )
        assert http_get(responder.url + "healthz")[0] == 200

        private_pg.start()
        _wait_for(
            lambda: http_get(responder.url + "readyz")[0] == 200, 15, "/readyz did not recover"
        )
        assert _ask(responder, pki, uncached) == "good"
    finally:
        responder.stop()
    _log_clean(responder)


def test_database_restart_under_load(outage_db: str, private_pg: PrivatePg, tmp_path: Path) -> None:
    """Client threads keep asking (cached requests, and nonce requests that always need the
    database) while PostgreSQL restarts: every answer is a cached good or tryLater, never an
    error; /readyz is 503 while the feed cannot poll; full service within 5 s of the restart."""
    pki = make_pki(tmp_path / "pki", "Restart CA")
    _issuer(outage_db, pki)
    leaf = pki.leaf("busy")
    ocspd_cmd(outage_db, "cert", "import", "--issuer", "outage", leaf)
    responder = start_responder(outage_db, tmp_path, workers=2)
    workers = responder.worker_pids()
    assert len(workers) == 2
    # Each connection lands on either worker (SO_REUSEPORT): 30 tries cache it in both.
    for _ in range(30):
        assert _ask(responder, pki, leaf) == "good"

    results: list[tuple[float, bool, str]] = []  # (when, nonce, outcome)
    probes: list[tuple[float, int]] = []
    done = threading.Event()

    def client(nonce: bool) -> None:
        while not done.is_set():
            sent = time.monotonic()
            try:
                outcome = _ask(responder, pki, leaf, nonce)
            except OSError as e:
                outcome = f"{type(e).__name__}: {e}"
            results.append((sent, nonce, outcome))
            time.sleep(0.02)

    def probe() -> None:
        while not done.is_set():
            probes.append((time.monotonic(), http_get(responder.url + "readyz", timeout=5)[0]))
            time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(n,)) for n in (False, False, True, True)]
    threads.append(threading.Thread(target=probe))
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        stopping = time.monotonic()
        private_pg.stop()
        down = time.monotonic()
        time.sleep(3.0)
        starting = time.monotonic()
        private_pg.start()
        up = time.monotonic()
        time.sleep(6.0)
        # No worker died or was replaced: the same two processes served from start to end.
        assert responder.worker_pids() == workers
    finally:
        done.set()
        for t in threads:
            t.join(30)
        responder.stop()

    assert all(o in ("good", "TRY_LATER") for _, _, o in results), {o for _, _, o in results}
    # Cached and still valid: served throughout.
    assert all(o == "good" for _, nonce, o in results if not nonce)
    # Nonce requests need the status row: tryLater once the remembered rows are no longer
    # current (the feed's 1-second budget), until the database is back.
    down_window = [o for t, nonce, o in results if nonce and down + 1.5 < t < starting]
    assert down_window and set(down_window) == {"TRY_LATER"}
    # Full service within 5 s of the database answering again.
    after = [o for t, nonce, o in results if nonce and t > up + 5.0]
    assert after and set(after) == {"good"}
    assert any(o == "good" for t, nonce, o in results if nonce and t < stopping)
    # /readyz: ready before, 503 while the feed cannot poll (2 s without a poll), ready after.
    assert {s for t, s in probes if t < stopping} == {200}
    assert {s for t, s in probes if down + 2.5 < t < starting} == {503}
    assert {s for t, s in probes if t > up + 5.0} == {200}
    assert responder.process.returncode == 0
    _log_clean(responder)
    assert responder.log.read_text().count('"worker serving"') == 2


def test_start_without_database(outage_db: str, private_pg: PrivatePg, tmp_path: Path) -> None:
    """`ocspd serve` starts while PostgreSQL is down: healthy, not ready, tryLater; once the
    database answers it loads issuers, takes the feed's baseline, registers its audit stream
    and becomes ready, in the same processes."""
    pki = make_pki(tmp_path / "pki", "Late CA")
    _issuer(outage_db, pki)
    leaf = pki.leaf("late")
    ocspd_cmd(outage_db, "cert", "import", "--issuer", "outage", leaf)
    private_pg.stop()
    responder = start_responder(outage_db, tmp_path, workers=1, wait=False)
    try:
        _wait_for(
            lambda: _healthy(responder), 30, f"no /healthz without a database: {responder.log}"
        )
        workers = responder.worker_pids()
        status, _, body = http_get(responder.url + "readyz")
        assert status == 503 and b"database" in body
        waiting_answers = 3
        for _ in range(waiting_answers):
            assert _ask(responder, pki, leaf) == "TRY_LATER"
        time.sleep(1.0)  # a few retries: still the same processes
        assert responder.process.poll() is None and responder.worker_pids() == workers

        private_pg.start()
        took = _wait_for(
            lambda: http_get(responder.url + "readyz")[0] == 200,
            15,
            f"/readyz did not turn 200 once the database answered:\n{responder.log.read_text()}",
        )
        assert took < 5
        assert _ask(responder, pki, leaf) == "good"
        assert responder.worker_pids() == workers
        # The worker's audit stream is registered and holds its records (RS3.1).
        registered = run_sql(
            outage_db,
            "SELECT detail->>'stream' AS stream FROM audit_events WHERE type = 'stream-open'",
        )
        assert len(registered) == 1
        stream = registered[0]["stream"]
        _wait_for(
            lambda: bool(
                run_sql(
                    outage_db,
                    "SELECT 1 FROM ocsp_audit_segments WHERE stream = $1 AND last_seq > 1",
                    stream,
                )
            ),
            10,
            "the answered request never reached the audit stream",
        )
    finally:
        responder.stop()
    # RS3.1: the tryLater answers given while the database was away are on record too, in
    # the stream's first segment, right after its stream-open record; the chain verifies.
    env = {**os.environ, "OCSPD_DATABASE_URL": outage_db}
    found = subprocess.run(
        [sys.executable, "-m", "ocspd", "audit", "search", "--type", "ocsp-request", "--json"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    records = [json.loads(line) for line in found.splitlines()]
    outcomes = [r["outcome"] for r in sorted(records, key=lambda r: r["seq"])]
    assert outcomes[0] == "stream-open"
    assert outcomes[1 : 1 + waiting_answers] == ["tryLater"] * waiting_answers
    assert "successful" in outcomes
    verified = subprocess.run(
        [sys.executable, "-m", "ocspd", "audit", "verify"], env=env, capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr
    _log_clean(responder)
    assert responder.process.returncode == 0


def _healthy(responder: Responder) -> bool:
    assert responder.process.poll() is None, responder.log.read_text()
    try:
        return http_get(responder.url + "healthz", timeout=1)[0] == 200
    except OSError:
        return False


def _crlgen_run(url: str, tmp_path: Path, crl_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    config = tmp_path / f"crlgen-{free_port()}.toml"
    config.write_text(
        f'[crl]\ndirectory = "{crl_dir}"\npoll_interval = "0.3s"\nrevocation_delay = "3s"\n'
        f'metrics_listen = "127.0.0.1:{free_port()}"\n'
    )
    env = {**os.environ, "OCSPD_DATABASE_URL": url}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "crlgen", "--config", str(config), "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _crl_serials(path: Path) -> set[int]:
    try:
        return {e.serial_number for e in x509.load_der_x509_crl(path.read_bytes())}
    except (OSError, ValueError):
        return set()


def test_acknowledged_revocation_survives_crashes(
    outage_db: str, private_pg: PrivatePg, tmp_path: Path
) -> None:
    """`ocspd revoke` exiting 0 means committed: SIGKILL the responder and crlgen and crash
    PostgreSQL (immediate shutdown, crash recovery at start) right after it returns, and the
    certificate is revoked in the database, in OCSP and on the next CRL."""
    pki = make_pki(tmp_path / "pki", "Durable CA")
    _issuer(outage_db, pki, ca_key=True)
    leaf = pki.leaf("durable")
    serial = x509.load_pem_x509_certificate(leaf.read_bytes()).serial_number
    ocspd_cmd(outage_db, "cert", "import", "--issuer", "outage", leaf)
    crl_dir = tmp_path / "crl"
    env = {"OCSPD_CRL_DIR": str(crl_dir)}
    responder = start_responder(outage_db, tmp_path, workers=1, extra_env=env)
    crlgen = _crlgen_run(outage_db, tmp_path, crl_dir, tmp_path / "crlgen.log")
    try:
        _wait_for(lambda: (crl_dir / "outage.crl").exists(), 30, "no first CRL")
        assert _ask(responder, pki, leaf) == "good"  # and cached, in memory and in the table

        revoke = subprocess.run(
            [sys.executable, "-m", "ocspd", "revoke", "--issuer", "outage",
             "--serial", f"{serial:X}", "--reason", "keyCompromise"],
            env={**os.environ, "OCSPD_DATABASE_URL": outage_db}, capture_output=True, text=True,
        )  # fmt: skip
        assert revoke.returncode == 0, revoke.stderr
        workers = responder.worker_pids()
        responder.process.send_signal(signal.SIGKILL)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        crlgen.send_signal(signal.SIGKILL)
        private_pg.crash()
        responder.process.wait(10)
        crlgen.wait(10)
        private_pg.start()
    finally:
        for process in (responder.process, crlgen):
            if process.poll() is None:
                process.kill()
                process.wait(10)

    status = ocspd_cmd(outage_db, "status", "--issuer", "outage", "--serial", f"{serial:X}")
    assert "revoked" in status and "keyCompromise" in status, status
    again = start_responder(outage_db, tmp_path, workers=1, extra_env=env)
    crlgen = _crlgen_run(outage_db, tmp_path, crl_dir, tmp_path / "crlgen.log")
    try:
        assert _ask(again, pki, leaf) == "revoked"
        _wait_for(
            lambda: serial in _crl_serials(crl_dir / "outage.crl"), 30, "the CRL never listed it"
        )
    finally:
        again.stop()
        crlgen.send_signal(signal.SIGTERM)
        crlgen.wait(15)
