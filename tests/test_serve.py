"""`ocspd serve` end to end: real processes, real PostgreSQL, real clients (openssl, GnuTLS)."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import os
import secrets
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Pki, make_pki, run_sql, with_database
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from responder import Responder, http_get, http_post, start_responder

from ocspd import cli, devpki
from ocspd.model import format_serial, serial_to_bytes
from ocspd.store.feed import MAX_ROWS


def ocspd_cmd(url: str, *args: str | Path) -> str:
    """Run an ocspd command in-process against `url`; raise if it fails."""
    old = os.environ.get("OCSPD_DATABASE_URL")
    os.environ["OCSPD_DATABASE_URL"] = url
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([str(a) for a in args])
    finally:
        if old is None:
            del os.environ["OCSPD_DATABASE_URL"]
        else:
            os.environ["OCSPD_DATABASE_URL"] = old
    assert code == 0, err.getvalue()
    return out.getvalue()


@dataclass
class Served:
    url: str  # database
    pki: Pki
    chain: Path  # CA + root, for -CAfile
    good: Path
    revoked: Path
    held: Path
    never: x509.Certificate  # signed by the CA but never imported
    responder: Responder
    dir: Path


@pytest.fixture(scope="module")
def served(
    pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("served")
    name = f"{template_db.removesuffix('_tpl')}_{secrets.token_hex(3)}"
    run_sql(pg_admin_url, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    url = with_database(pg_admin_url, name)
    pki = make_pki(tmp / "pki", "Served CA")
    ocspd_cmd(
        url, "issuer", "add", "served", "--ca-cert", pki.ca_cert,
        "--responder-cert", pki.responder_cert, "--responder-key", f"file:{pki.responder_key}",
    )  # fmt: skip
    good, revoked, held = pki.leaf("good"), pki.leaf("revoked"), pki.leaf("held")
    ocspd_cmd(url, "cert", "import", "--issuer", "served", good, revoked, held)
    ocspd_cmd(
        url, "revoke", "--issuer", "served", "--serial", _serial(revoked), "--reason", "keyCompromise",
        "--revoked-at", "2026-11-01T10:00:00Z",
    )  # fmt: skip
    ocspd_cmd(url, "hold", "--issuer", "served", "--serial", _serial(held))
    never = devpki.make_leaf("never", pki.ca, pki.leaf_key)
    chain = devpki.write_cert(tmp / "chain.pem", pki.ca.cert, pki.root.cert)
    responder = start_responder(url, tmp, workers=2)
    yield Served(url, pki, chain, good, revoked, held, never, responder, tmp)
    assert responder.stop() == 0, responder.log.read_text()
    run_sql(pg_admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _serial(path: Path) -> str:
    return format_serial(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)


def _openssl_ocsp(s: Served, *args: str | Path) -> str:
    result = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(s.pki.ca_cert), "-url", s.responder.url, "-CAfile", str(s.chain),
         *map(str, args)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return result.stdout + result.stderr


def _request(
    s: Served,
    *certs: x509.Certificate,
    algorithm: hashes.HashAlgorithm | None = None,
    nonce: bool = False,
) -> bytes:
    builder = ocsp.OCSPRequestBuilder()
    for cert in certs:
        builder = builder.add_certificate(cert, s.pki.ca.cert, algorithm or hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(secrets.token_bytes(16)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- openssl ocsp -------------------------------------------------------------------------


@pytest.mark.parametrize("digest", ["-sha1", "-sha256"])
@pytest.mark.parametrize("nonce", ["-nonce", "-no_nonce"])
def test_openssl_ocsp_post(served: Served, digest: str, nonce: str) -> None:
    out = _openssl_ocsp(
        served, digest, "-cert", served.good, "-cert", served.revoked, "-cert", served.held, nonce
    )
    assert "Response verify OK" in out, out
    assert f"{served.good}: good" in out
    assert f"{served.revoked}: revoked" in out and "Reason: keyCompromise" in out
    assert "Revocation Time: Nov  1 10:00:00 2026 GMT" in out
    assert f"{served.held}: revoked" in out and "Reason: certificateHold" in out
    assert out.count("Next Update:") == 3  # pkio71
    if nonce == "-nonce":
        assert "WARNING: no nonce in response" not in out


def test_openssl_ocsp_with_vafile(served: Served) -> None:
    out = _openssl_ocsp(
        served, "-VAfile", served.pki.responder_cert, "-cert", served.good, "-no_nonce"
    )
    assert "Response verify OK" in out and f"{served.good}: good" in out


def test_openssl_ocsp_serials(served: Served) -> None:
    never = format_serial(served.never.serial_number)
    out = _openssl_ocsp(
        served, "-sha256", "-serial", f"0x{_serial(served.good)}", "-serial", f"0x{never}"
    )
    assert "Response verify OK" in out, out
    assert f"0x{_serial(served.good)}: good" in out
    assert f"0x{never}: unknown" in out


def test_unknown_issuer_is_unauthorized(served: Served, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", "Stranger CA")
    result = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(other.ca_cert), "-cert", str(other.leaf("x")), "-url", served.responder.url, "-no_nonce"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "unauthorized (6)" in result.stdout + result.stderr


# --- GET and the HTTP contract ----------------------------------------------------------------


def _get_url(s: Served, der: bytes, style: str) -> str:
    b64 = base64.b64encode(der).decode()
    if style == "quoted":
        return s.responder.url + urllib.parse.quote(b64, safe="")
    if style == "raw":
        return s.responder.url + b64
    if style == "plus-as-space":
        return s.responder.url + b64.replace("+", "%20")
    if style == "double-slash":
        return s.responder.url + "/" + b64
    raise AssertionError(style)


def _der_with_plus_and_slash(s: Served) -> bytes:
    # Find a request whose base64 holds both '+' and '/', to exercise the decoder honestly.
    for _ in range(500):
        der = _request(s, _load(s.good), nonce=True)
        b64 = base64.b64encode(der).decode()
        if "+" in b64 and "/" in b64:
            return der
    raise AssertionError("no request with + and / found")


@pytest.mark.parametrize("style", ["quoted", "raw", "plus-as-space", "double-slash"])
def test_get_in_every_encoding(served: Served, style: str, tmp_path: Path) -> None:
    der = _der_with_plus_and_slash(served)
    status, headers, body = http_get(_get_url(served, der, style))
    assert status == 200
    response = ocsp.load_der_ocsp_response(body)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    # A nonce response is for one client: not cacheable.
    assert "no-cache" in headers["Cache-Control"]
    # openssl ocsp only POSTs; it verifies what GET returned from a file.
    path = tmp_path / "get.der"
    path.write_bytes(body)
    out = subprocess.run(
        ["openssl", "ocsp", "-respin", str(path), "-issuer", str(served.pki.ca_cert),
         "-CAfile", str(served.chain), "-cert", str(served.good), "-no_nonce"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Response verify OK" in out.stdout + out.stderr and f"{served.good}: good" in out.stdout


def test_get_caching_headers_and_304(served: Served) -> None:
    der = _request(served, _load(served.good), algorithm=hashes.SHA256())
    url = _get_url(served, der, "quoted")
    status, headers, body = http_get(url)
    assert status == 200 and headers["Content-Type"] == "application/ocsp-response"
    response = ocsp.load_der_ocsp_response(body)
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.hash_algorithm.name == "sha256"
    cache_control = headers["Cache-Control"]
    assert (
        "public" in cache_control
        and "no-transform" in cache_control
        and "must-revalidate" in cache_control
    )
    max_age = int(cache_control.split("max-age=")[1].split(",")[0])
    until_next = (response.next_update_utc - dt.datetime.now(dt.UTC)).total_seconds()
    assert 0 < max_age <= until_next + 1
    assert "Last-Modified" in headers and "Expires" in headers and headers["ETag"].startswith('"')
    # Once the signature is in the shared store every worker serves the same bytes, so the
    # ETag holds whichever worker a client reaches.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not run_sql(
        served.url, "SELECT 1 FROM ocsp_responses WHERE der = $1", body
    ):
        time.sleep(0.05)
    for _ in range(10):
        assert http_get(url)[2] == body
    status, _headers304, body304 = http_get(url, headers={"If-None-Match": headers["ETag"]})
    assert status == 304 and body304 == b""


def test_lifetime_and_produced_at(served: Served) -> None:
    _status, _, body = http_post(
        served.responder.url, _request(served, _load(served.good), nonce=True)
    )
    response = ocsp.load_der_ocsp_response(body)
    now = dt.datetime.now(dt.UTC)
    assert abs((response.produced_at_utc - now).total_seconds()) < 5  # RS2.3: signing time
    assert response.next_update_utc is not None  # pkio71
    lifetime = response.next_update_utc - response.this_update_utc
    assert dt.timedelta(0) < lifetime <= dt.timedelta(days=10)
    assert now - response.this_update_utc < dt.timedelta(days=4)


def test_multiple_cert_ids_echo_exactly(served: Served, tmp_path: Path) -> None:
    never = devpki.write_cert(tmp_path / "never.pem", served.never)
    paths = [served.good, served.revoked, never]
    request = tmp_path / "req.der"
    args = ["openssl", "ocsp", "-issuer", str(served.pki.ca_cert), "-sha256"]
    for path in paths:
        args += ["-cert", str(path)]
    subprocess.run([*args, "-no_nonce", "-reqout", str(request)], check=True, capture_output=True)
    _, _, body = http_post(served.responder.url, request.read_bytes())
    response = ocsp.load_der_ocsp_response(body)
    singles = list(response.responses)
    assert [s.serial_number for s in singles] == [_load(p).serial_number for p in paths]
    assert [s.certificate_status for s in singles] == [
        ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED, ocsp.OCSPCertStatus.UNKNOWN,
    ]  # fmt: skip
    for single in singles:
        assert single.hash_algorithm.name == "sha256"
        assert single.next_update_utc is not None  # pkio71
    # RS1.4: each SingleResponse carries exactly the CertID it answers, in order, byte for byte.
    assert _response_cert_ids(body) == _request_cert_ids(request.read_bytes())


def _request_cert_ids(der: bytes) -> list[bytes]:
    from asn1crypto import ocsp as asn1_ocsp

    request = asn1_ocsp.OCSPRequest.load(der)
    return [r["req_cert"].dump() for r in request["tbs_request"]["request_list"]]


def _response_cert_ids(der: bytes) -> list[bytes]:
    from asn1crypto import ocsp as asn1_ocsp

    basic = asn1_ocsp.OCSPResponse.load(der)["response_bytes"]["response"].parsed
    return [r["cert_id"].dump() for r in basic["tbs_response_data"]["responses"]]


HOSTILE = [
    ("garbage", lambda s: http_post(s.responder.url, b"\x00garbage\xff" * 3), 200, 1),
    ("truncated", lambda s: http_post(s.responder.url, _request(s, _load(s.good))[:-3]), 200, 1),
    ("empty body", lambda s: http_post(s.responder.url, b""), 200, 1),
    (
        "wrong content type",
        lambda s: http_post(s.responder.url, _request(s, _load(s.good)), "text/plain"),
        415,
        1,
    ),
    ("oversized", lambda s: http_post(s.responder.url, b"\x30" * 20_000), 413, 1),
    ("bad base64 GET", lambda s: http_get(s.responder.url + "not*base64!"), 200, 1),
    ("base64 of garbage GET", lambda s: http_get(s.responder.url + "AAAA"), 200, 1),
]


@pytest.mark.parametrize(
    ("case", "send", "http_status", "ocsp_status"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_hostile_input_gets_an_ocsp_error(
    served: Served, case: str, send, http_status: int, ocsp_status: int
) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = send(served)
    assert status == http_status
    assert headers["Content-Type"] == "application/ocsp-response"
    assert ocsp.load_der_ocsp_response(body).response_status.value == ocsp_status
    assert "no-cache" in headers["Cache-Control"]
    # And the server keeps serving.
    assert http_get(served.responder.url + "healthz")[0] == 200
    _, _, good = http_post(served.responder.url, _request(served, _load(served.good)))
    assert ocsp.load_der_ocsp_response(good).certificate_status == ocsp.OCSPCertStatus.GOOD


def test_unknown_method_and_paths(served: Served) -> None:
    import urllib.request

    request = urllib.request.Request(served.responder.url, method="PUT", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=5)
    assert e.value.code == 405


# --- GnuTLS ------------------------------------------------------------------------------


def test_gnutls_ocsptool_verifies(served: Served, tmp_path: Path) -> None:
    response = tmp_path / "resp.der"
    _, _, body = http_post(served.responder.url, _request(served, _load(served.revoked)))
    response.write_bytes(body)
    result = subprocess.run(
        ["ocsptool", "--verify-response", "--load-signer", str(served.pki.responder_cert), "--infile", str(response)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Verifying OCSP Response: Success" in out
    info = subprocess.run(
        ["ocsptool", "--response-info", "--infile", str(response)], capture_output=True, text=True
    )
    assert "Certificate Status: revoked" in info.stdout and "Next Update" in info.stdout


def test_gnutls_ocsptool_asks(served: Served) -> None:
    result = subprocess.run(
        ["ocsptool", f"--ask={served.responder.url}", "--load-cert", str(served.good), "--load-issuer", str(served.pki.ca_cert),
         "--load-signer", str(served.pki.responder_cert)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Certificate Status: good" in out, out
    assert "Verifying OCSP Response: Success" in out


# --- health and metrics --------------------------------------------------------------------


def test_health_and_metrics(served: Served) -> None:
    assert http_get(served.responder.url + "healthz")[0] == 200
    assert http_get(served.responder.url + "readyz")[0] == 200
    http_post(served.responder.url, _request(served, _load(served.good)))
    text = served.responder.metrics(
        wait_for=r'ocspd_requests_total\{method="POST",outcome="successful"\} [1-9]'
    )
    for name in (
        "ocspd_requests_total",
        "ocspd_request_duration_seconds_bucket",
        "ocspd_answers_total",
        "ocspd_cache_lookups_total",
        "ocspd_signing_duration_seconds",
        "ocspd_signing_in_flight",
        'ocspd_responder_certificate_expiry_seconds{issuer="served"}',
        'ocspd_ca_certificate_expiry_seconds{issuer="served"}',
        "ocspd_audit_pending_records",
        "ocspd_revocation_request_oldest_pending_seconds",
    ):
        assert name in text, name
    assert 'ocspd_requests_total{method="POST",outcome="successful"}' in text
    # Every worker ready: published within a second of turning ready (livemin of workers).
    assert "ocspd_ready 1.0" in served.responder.metrics(wait_for=r"ocspd_ready 1\.0")


# --- revocation while serving ----------------------------------------------------------------


def test_revocation_visible_within_a_second_in_every_worker(served: Served, tmp_path: Path) -> None:
    cert_path = served.pki.leaf("soon-revoked")
    ocspd_cmd(served.url, "cert", "import", "--issuer", "served", cert_path)
    request = _request(served, _load(cert_path))
    # Warm every worker's cache with "good" (new connections land on random workers).
    for _ in range(20):
        _, _, body = http_post(served.responder.url, request)
        assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD
        _, _, body = http_post(served.responder.url, _request(served, _load(cert_path), nonce=True))
        assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD
    ocspd_cmd(
        served.url,
        "revoke",
        "--issuer",
        "served",
        "--serial",
        _serial(cert_path),
        "--reason",
        "superseded",
    )
    returned = time.monotonic()
    statuses = []
    while time.monotonic() - returned < 1.0:
        statuses.append(
            ocsp.load_der_ocsp_response(
                http_post(served.responder.url, request)[2]
            ).certificate_status
        )
    # Within one second every answer shows it; after that, none may say good, with or
    # without a nonce (nonce answers are signed from remembered status rows).
    for _ in range(20):
        _, _, body = http_post(served.responder.url, request)
        assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.REVOKED
        _, _, body = http_post(served.responder.url, _request(served, _load(cert_path), nonce=True))
        assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert statuses[-1] == ocsp.OCSPCertStatus.REVOKED


def test_a_bulk_import_while_serving_reaches_every_cached_answer(served: Served) -> None:
    """More rows change at once than the change feed hands over one by one (an import of a
    CA's backlog): the workers forget their caches, so a serial cached as unknown is good
    right after, in every worker."""
    serial = devpki.random_serial()
    cert_id = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        hashlib.sha1(served.pki.ca.cert.subject.public_bytes()).digest(),
        x509.SubjectKeyIdentifier.from_public_key(served.pki.ca.cert.public_key()).digest,
        serial,
        hashes.SHA1(),
    )
    request = cert_id.build().public_bytes(serialization.Encoding.DER)
    for _ in range(20):  # cached as unknown in both workers
        _, _, body = http_post(served.responder.url, request)
        assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    # One transaction, more rows than ChangeFeed's MAX_ROWS (bulk serials start 0x7c, so
    # they are canonical and clash with no test certificate).
    run_sql(
        served.url,
        "INSERT INTO certificates (issuer_id, serial, not_after) "
        "SELECT i.id, s.serial, now() + interval '1 year' FROM issuers i, "
        "(SELECT '\\x7c'::bytea || int8send(n) AS serial FROM generate_series(1, $1) n "
        " UNION ALL SELECT $2::bytea) s WHERE i.name = 'served'",
        MAX_ROWS,
        serial_to_bytes(serial),
    )
    # Within a second every worker has it (one worker answering good says nothing about
    # the other): keep asking for that second, then no answer may say unknown.
    returned = time.monotonic()
    while time.monotonic() - returned < 1.0:
        http_post(served.responder.url, request)
    for _ in range(20):
        _, _, body = http_post(served.responder.url, request)
        assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD
    assert "a bulk change" in served.responder.log.read_text()


# --- pkilint on what is served ------------------------------------------------------------------


def test_pkilint_finds_nothing_in_served_responses(served: Served, tmp_path: Path) -> None:
    """pkilint checks structure; the policy (nextUpdate, lifetime, CertID echo) is checked above."""
    import shutil
    import sys

    lint = shutil.which("lint_ocsp_response") or str(
        Path(sys.executable).parent / "lint_ocsp_response"
    )
    for name, cert in (
        ("good", _load(served.good)),
        ("revoked", _load(served.revoked)),
        ("unknown", served.never),
    ):
        path = tmp_path / f"{name}.der"
        path.write_bytes(http_post(served.responder.url, _request(served, cert, nonce=True))[2])
        status = ocsp.load_der_ocsp_response(path.read_bytes()).certificate_status.name.lower()
        assert status == name
        result = subprocess.run(
            [lint, "lint", "--severity", "DEBUG", "--document-format", "DER", str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0 and result.stdout.strip() == "", (
            name,
            result.stdout,
            result.stderr,
        )


def test_body_in_pieces_and_rejections_counted(served: Served) -> None:
    """A body that arrives in several TCP segments is read whole; a wrong method is counted as
    rejected, not as an internal error."""
    import socket

    body = _request(served, _load(served.good))
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", served.responder.port), timeout=10) as s:
        s.sendall(head + body[:20])
        time.sleep(0.3)
        s.sendall(body[20:])
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert b" 200 " in status_line
    der = rest.split(b"\r\n\r\n", 1)[1]
    assert ocsp.load_der_ocsp_response(der).certificate_status == ocsp.OCSPCertStatus.GOOD

    import urllib.request

    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(
            urllib.request.Request(served.responder.url, method="DELETE"), timeout=5
        )
    text = served.responder.metrics(wait_for=r'\{method="other",outcome="rejected"\} [1-9]')
    assert 'ocspd_requests_total{method="other",outcome="rejected"}' in text
    assert 'outcome="internalError"} 1' not in text
