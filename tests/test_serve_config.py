"""`ocspd serve` under non-default configuration, start-up refusals, draining and logs."""

from __future__ import annotations

import datetime as dt
import json
import secrets
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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from responder import free_port, http_get, http_post, start_responder


def _request(pki: Pki, cert: x509.Certificate, nonce: bool = False) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, pki.ca.cert, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(secrets.token_bytes(16)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _leaf(ocspd: Cli, pki: Pki, name: str) -> x509.Certificate:
    path = pki.leaf(name)
    ocspd.ok("cert", "import", "--issuer", "ca", path)
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_never_issued_serials_as_extended_revoked(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path
) -> None:
    from ocspd import devpki

    never = devpki.make_leaf("never", pki.ca, pki.leaf_key)
    responder = start_responder(
        ocspd.url, tmp_path, workers=1, config='[responder]\nunknown_serials = "revoked"\n'
    )
    try:
        _, _, body = http_post(responder.url, _request(pki, never))
    finally:
        responder.stop()
    response = ocsp.load_der_ocsp_response(body)
    # RFC 6960 2.2: revoked, 1970-01-01, certificateHold, and the extended-revoke extension.
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert response.revocation_reason == x509.ReasonFlags.certificate_hold
    oids = [e.oid.dotted_string for e in response.extensions]
    assert "1.3.6.1.5.5.7.48.1.9" in oids


def test_nonce_ignored_serves_cached_responses(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path
) -> None:
    cert = _leaf(ocspd, pki, "nonce-ignored")
    responder = start_responder(
        ocspd.url, tmp_path, workers=1, config='[responder]\nnonce = "ignore"\n'
    )
    try:
        first = http_post(responder.url, _request(pki, cert, nonce=True))
        second = http_post(responder.url, _request(pki, cert, nonce=True))
    finally:
        responder.stop()
    assert first[2] == second[2]  # RFC 5019: the same cached response for everyone
    response = ocsp.load_der_ocsp_response(first[2])
    assert not any(isinstance(e.value, x509.OCSPNonce) for e in response.extensions)
    assert "public" in first[1]["Cache-Control"]


def test_nonce_echoed_by_default(ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path) -> None:
    cert = _leaf(ocspd, pki, "nonce-echoed")
    request = _request(pki, cert, nonce=True)
    nonce = (
        ocsp.load_der_ocsp_request(request)
        .extensions.get_extension_for_class(x509.OCSPNonce)
        .value.nonce
    )
    responder = start_responder(ocspd.url, tmp_path, workers=1)
    try:
        _, headers, body = http_post(responder.url, request)
        _, _, again = http_post(responder.url, request)
    finally:
        responder.stop()
    response = ocsp.load_der_ocsp_response(body)
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert "no-cache" in headers["Cache-Control"]
    assert body != again  # a fresh signature each time


def test_a_fleet_signs_each_response_once(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path
) -> None:
    cert = _leaf(ocspd, pki, "fleet")
    first = start_responder(ocspd.url, tmp_path, workers=1)
    second = start_responder(ocspd.url, tmp_path, workers=1)
    try:
        a = http_post(first.url, _request(pki, cert))[2]
        deadline = time.monotonic() + 5
        while not ocspd.sql("SELECT 1 FROM ocsp_responses") and time.monotonic() < deadline:
            time.sleep(0.05)
        b = http_post(second.url, _request(pki, cert))[2]
        metrics = second.metrics(wait_for=r'ocspd_stored_responses_total\{result="hit"\} 1\.0')
    finally:
        first.stop()
        second.stop()
    assert a == b  # the second responder served the stored signature
    assert 'ocspd_stored_responses_total{result="hit"} 1.0' in metrics


def test_stored_response_is_not_served_after_a_status_change(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path
) -> None:
    cert = _leaf(ocspd, pki, "stale-store")
    first = start_responder(ocspd.url, tmp_path, workers=1)
    try:
        http_post(first.url, _request(pki, cert))
    finally:
        first.stop()
    assert ocspd.sql("SELECT count(*) AS n FROM ocsp_responses")[0]["n"] == 1
    ocspd.ok(
        "revoke", "--issuer", "ca", "--serial", f"{cert.serial_number:x}", "--reason", "superseded"
    )
    second = start_responder(ocspd.url, tmp_path, workers=1)
    try:
        body = http_post(second.url, _request(pki, cert))[2]
    finally:
        second.stop()
    assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.REVOKED


def test_responder_key_in_softhsm(ocspd: Cli, pki: Pki, tmp_path: Path) -> None:
    """A responder whose key lives in a PKCS#11 token; live signing bounded, tryLater past it."""
    from softhsm import SoftHSM

    with SoftHSM.create(tmp_path / "hsm") as hsm:
        uri = hsm.import_key(pki.responder.key, "ocsp-responder")
        ocspd.ok(
            "issuer", "add", "ca", "--ca-cert", pki.ca_cert,
            "--responder-cert", pki.responder_cert, "--responder-key", uri,
        )  # fmt: skip
        cert = _leaf(ocspd, pki, "hsm-signed")
        responder = start_responder(
            ocspd.url,
            tmp_path,
            workers=1,
            config="[responder]\nmax_signing = 1\nmax_signing_waiters = 0\n",
        )
        statuses: list[int] = []
        lock = threading.Lock()

        def burst() -> None:
            for _ in range(15):
                body = http_post(responder.url, _request(pki, cert, nonce=True))[2]
                with lock:
                    statuses.append(ocsp.load_der_ocsp_response(body).response_status.value)

        try:
            body = http_post(responder.url, _request(pki, cert))[2]
            threads = [threading.Thread(target=burst) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            after = http_post(responder.url, _request(pki, cert, nonce=True))[2]
        finally:
            responder.stop()
    response = ocsp.load_der_ocsp_response(body)
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    pki.responder.cert.public_key().verify(  # type: ignore[call-arg]
        response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256())
    )
    # With one signature in flight and no waiting line, a burst gets tryLater, never a queue.
    assert set(statuses) <= {0, 3}
    assert 3 in statuses and 0 in statuses
    assert ocsp.load_der_ocsp_response(after).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('response_lifetime = "11d"', "at most 10 days"),
        ('refresh_after = "5d"', "at most 4 days"),
        ('response_lifetime = "1d"\nrefresh_after = "2d"', "shorter than"),
        ('unknown_serials = "good"', "must be one of"),
        ("bogus = 1", "unknown setting responder.bogus"),
    ],
)
def test_bad_configuration_is_refused_at_start(
    db_url: str, tmp_path: Path, setting: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f"[responder]\n{setting}\n")
    result = subprocess.run(
        [sys.executable, "-m", "ocspd", "--config", str(config), "serve", "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30, env={"OCSPD_DATABASE_URL": db_url, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_expired_responder_certificate_refused_at_start(
    ocspd: Cli, pki: Pki, tmp_path: Path
) -> None:
    from ocspd import devpki

    old = devpki.make_responder(
        "expired responder", pki.ca, key=pki.responder.key, days=10,
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=30),
    )  # fmt: skip
    ocspd.ok(
        "issuer", "add", "ca", "--ca-cert", pki.ca_cert,
        "--responder-cert", pki.responder_cert, "--responder-key", f"file:{pki.responder_key}",
    )  # fmt: skip
    # As if it had expired since: the responder checks again at every start (CG2.3, KM3.5).
    ocspd.sql(
        "UPDATE issuers SET responder_cert_der = $1",
        old.cert.public_bytes(serialization.Encoding.DER),
    )
    with pytest.raises(RuntimeError, match="expired"):
        start_responder(ocspd.url, tmp_path, workers=1)


def test_sigterm_drains(ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path) -> None:
    cert = _leaf(ocspd, pki, "drain")
    responder = start_responder(
        ocspd.url, tmp_path, workers=1, config="[responder]\ndrain_seconds = 2\n"
    )
    responder.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # Draining: load balancers see 503 on /readyz, requests are still answered.
    assert http_get(responder.url + "readyz")[0] == 503
    assert http_get(responder.url + "healthz")[0] == 200
    body = http_post(responder.url, _request(pki, cert))[2]
    assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD
    assert responder.process.wait(30) == 0


def test_one_log_line_per_request_at_debug_none_at_info(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path
) -> None:
    cert = _leaf(ocspd, pki, "logged")
    for level, expected in (("debug", 3), ("info", 0)):
        responder = start_responder(
            ocspd.url, tmp_path, workers=1, config=f'[responder]\nlog_level = "{level}"\n'
        )
        try:
            for _ in range(3):
                http_post(responder.url, _request(pki, cert))
        finally:
            responder.stop()
        lines = [
            json.loads(line)
            for line in responder.log.read_text().splitlines()
            if line.startswith("{")
        ]
        requests = [entry for entry in lines if entry["msg"] == "request"]
        assert len(requests) == expected, lines
        for entry in requests:
            assert entry["outcome"] == "successful" and entry["method"] == "POST" and "ms" in entry


def test_responder_with_a_login_of_its_own(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path, pg_admin_url: str
) -> None:
    """Production: the responder logs in as its own user, a member of ocspd_responder only."""
    from conftest import run_sql

    cert = _leaf(ocspd, pki, "own-login")
    login = "ocspd_test_responder_login"
    run_sql(pg_admin_url, f"DROP ROLE IF EXISTS {login}")
    run_sql(pg_admin_url, f"CREATE ROLE {login} LOGIN IN ROLE ocspd_responder")
    try:
        own_url = ocspd.url.replace("postgres@", f"{login}@", 1)
        responder = start_responder(
            "", tmp_path, workers=1, extra_env={"OCSPD_RESPONDER_DATABASE_URL": own_url}
        )
        try:
            body = http_post(responder.url, _request(pki, cert))[2]
        finally:
            responder.stop()
        assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD
        # The signature was stored for the fleet through that login.
        assert ocspd.sql("SELECT count(*) AS n FROM ocsp_responses")[0]["n"] == 1
    finally:
        run_sql(pg_admin_url, f"DROP OWNED BY {login}")
        run_sql(pg_admin_url, f"DROP ROLE IF EXISTS {login}")


@pytest.mark.parametrize(("max_age", "behind"), [("2500ms", False), ("400ms", True)])
def test_max_status_age_decides_when_a_cached_answer_waits_for_the_feed(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path, max_age: str, behind: bool
) -> None:
    """[responder] max_status_age: with the feed polling every 2 s, a budget of 2.5 s serves
    the cached answer as it is; one of 400 ms makes requests wait for the feed to catch up
    whenever its view is older (ocspd_cache_lookups_total{result="feed_behind"})."""
    import re

    request = _request(pki, _leaf(ocspd, pki, "status-age"))
    responder = start_responder(
        ocspd.url,
        tmp_path,
        workers=1,
        config=f'[responder]\nfeed_interval = "2s"\nmax_status_age = "{max_age}"\n',
    )
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            status, _, body = http_post(responder.url, request)
            assert status == 200
            assert ocsp.load_der_ocsp_response(body).certificate_status is ocsp.OCSPCertStatus.GOOD
            time.sleep(0.05)
        text = responder.metrics(wait_for=r'ocspd_cache_lookups_total\{result="hit"\} [1-9]')
        time.sleep(0.5)  # the last quarter second's counts
        text = responder.metrics()
    finally:
        responder.stop()
    found = re.search(r'ocspd_cache_lookups_total\{result="feed_behind"\} (\S+)', text)
    assert found is not None
    assert (float(found[1]) > 0) is behind
