"""The responder while its database is away: cached answers that are still valid are served,
others get tryLater, /readyz says so, and service returns when the database does.

Runs against a private PostgreSQL (pgserver) that the test stops and starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_pki
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from needs import missing
from responder import http_get, http_post, start_responder
from test_serve import ocspd_cmd

_SERVER = "from pgserver.postgres_server import get_server; import sys; s = get_server(sys.argv[1], cleanup_mode={mode!r})"


def _pgserver(directory: Path, action: str) -> str:
    """Start (printing the DSN) or stop the private server, from a separate process so this
    one keeps no handle that would stop it on exit."""
    code = _SERVER.format(mode=None if action == "start" else "stop")
    code += "; print(s.get_uri())" if action == "start" else "; s.cleanup()"
    result = subprocess.run(
        [sys.executable, "-c", code, str(directory)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return result.stdout.strip().splitlines()[-1] if action == "start" else ""


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    try:
        import pgserver  # noqa: F401
    except ImportError:
        missing("pgserver is needed for the database outage test (pip install pgserver)")
    directory = Path("/tmp") / f"ocspd-pg-{os.getpid()}-{tmp_path.name[-6:]}"  # short: socket path
    url = _pgserver(directory, "start")
    yield directory, url
    _pgserver(directory, "stop")
    subprocess.run(["rm", "-rf", str(directory)], check=False)


def _request(ca: x509.Certificate, cert_path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return (
        ocsp.OCSPRequestBuilder()
        .add_certificate(cert, ca, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )


def test_database_outage(private_pg: tuple[Path, str], tmp_path: Path) -> None:
    directory, url = private_pg
    pki = make_pki(tmp_path / "pki", "Outage CA")
    ocspd_cmd(url, "db", "migrate")
    ocspd_cmd(
        url, "issuer", "add", "outage", "--ca-cert", pki.ca_cert,
        "--responder-cert", pki.responder_cert, "--responder-key", f"file:{pki.responder_key}",
    )  # fmt: skip
    cached, uncached = pki.leaf("cached"), pki.leaf("uncached")
    ocspd_cmd(url, "cert", "import", "--issuer", "outage", cached, uncached)
    responder = start_responder(url, tmp_path, workers=1)
    try:
        before = http_post(responder.url, _request(pki.ca.cert, cached))[2]
        assert ocsp.load_der_ocsp_response(before).certificate_status == ocsp.OCSPCertStatus.GOOD

        _pgserver(directory, "stop")
        # Still valid in the cache: served as it was.
        assert http_post(responder.url, _request(pki.ca.cert, cached))[2] == before
        # Nothing cached: tryLater, not an error page and not a hang.
        started = time.monotonic()
        body = http_post(responder.url, _request(pki.ca.cert, uncached), timeout=15)[2]
        assert (
            ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.TRY_LATER
        )
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 10
        while http_get(responder.url + "readyz")[0] != 503:
            assert time.monotonic() < deadline, "/readyz kept saying ready without a database"
            time.sleep(0.2)
        assert http_get(responder.url + "healthz")[0] == 200

        _pgserver(directory, "start")
        back = time.monotonic()
        while http_get(responder.url + "readyz")[0] != 200:
            assert time.monotonic() - back < 15, "/readyz did not recover"
            time.sleep(0.2)
        body = http_post(responder.url, _request(pki.ca.cert, uncached))[2]
        assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD
    finally:
        responder.stop()
    assert "Traceback" not in responder.log.read_text()
