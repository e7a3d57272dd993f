"""A real `ocspd serve` against hostile and odd clients (issue 7): slow clients, ten thousand
idle connections, megabyte bodies, unknown methods, path traversal on /crl/, HTTP/1.0,
pipelining and requests split across TCP segments.

Every check is on behaviour (status, order, connection closed, memory and descriptors
bounded), with generous time bounds; nothing here is a benchmark.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import resource
import secrets
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
from conftest import Pki, make_pki, run_sql, with_database
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from needs import missing
from responder import Responder, http_post, start_responder
from test_serve import ocspd_cmd

# The module's responder: short request deadline (slow clients are cut off quickly), a
# keep-alive timeout longer than any test here keeps connections idle.
REQUEST_TIMEOUT = 2
KEEPALIVE_TIMEOUT = 60
IDLE_CONNECTIONS = 10_000
# "Answers arrive": a bound far above what a request takes, to catch a blocked worker only.
ANSWER_WITHIN = 2.0


@dataclass
class Hostile:
    responder: Responder
    pki: Pki
    good: x509.Certificate
    crl_dir: Path
    crl_der: bytes
    outside_crl: Path
    workers: list[int]


def _worker_pids(responder: Responder, count: int) -> list[int]:
    """The worker processes' ids, as each logs them when it starts serving."""
    deadline = time.monotonic() + 10
    while True:
        pids = []
        for line in responder.log.read_text().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("msg") == "worker serving":
                    pids.append(int(entry["pid"]))
        if len(pids) >= count or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def _sign_crl(pki: Pki, number: int) -> bytes:
    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca.cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=1))
        .add_extension(x509.CRLNumber(number), critical=False)
        .sign(pki.ca.key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def hostile(
    pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hostile]:
    tmp = tmp_path_factory.mktemp("hostile")
    name = f"{template_db.removesuffix('_tpl')}_{secrets.token_hex(3)}"
    run_sql(pg_admin_url, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    url = with_database(pg_admin_url, name)
    pki = make_pki(tmp / "pki", "Hostile CA")
    ocspd_cmd(
        url, "issuer", "add", "hostile", "--ca-cert", pki.ca_cert,
        "--responder-cert", pki.responder_cert, "--responder-key", f"file:{pki.responder_key}",
    )  # fmt: skip
    good_path = pki.leaf("good")
    ocspd_cmd(url, "cert", "import", "--issuer", "hostile", good_path)

    # The CRL directory: one published CRL, and what an attacker might have planted.
    crl_dir = tmp / "crl"
    crl_dir.mkdir()
    crl_der = _sign_crl(pki, 1)
    (crl_dir / "hostile.crl").write_bytes(crl_der)
    outside = tmp / "outside"
    outside.mkdir()
    outside_crl = outside / "secret.crl"
    outside_crl.write_bytes(_sign_crl(pki, 2))
    (crl_dir / "passwd.crl").symlink_to("/etc/passwd")
    (crl_dir / "outside.crl").symlink_to(outside_crl)
    (crl_dir / "sub").mkdir()
    (crl_dir / "sub" / "inner.crl").write_bytes(crl_der)
    (crl_dir / "dir.crl").symlink_to(outside)

    config = (
        f"[responder]\nrequest_timeout = {REQUEST_TIMEOUT}\n"
        f'keepalive_timeout = "{KEEPALIVE_TIMEOUT}s"\n'
        f'[crl]\ndirectory = "{crl_dir}"\n'
    )
    # Started with a low soft limit on descriptors: `ocspd serve` must raise its own to the
    # hard limit, or the ten thousand idle connections below could not all be accepted.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        responder = start_responder(url, tmp, workers=2, config=config)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        workers = _worker_pids(responder, 2)
        assert len(workers) == 2, responder.log.read_text()
        good = x509.load_pem_x509_certificate(good_path.read_bytes())
        yield Hostile(responder, pki, good, crl_dir, crl_der, outside_crl, workers)
    finally:
        code = responder.stop()
        log = responder.log.read_text()
        run_sql(pg_admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    assert code == 0, log
    assert "Traceback" not in log, log


# --- helpers ------------------------------------------------------------------------------


def _ocsp_request(h: Hostile) -> bytes:
    return (
        ocsp.OCSPRequestBuilder()
        .add_certificate(h.good, h.pki.ca.cert, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )


def _post(h: Hostile, body: bytes, version: str = "1.1", extra: str = "") -> bytes:
    return (
        f"POST / HTTP/{version}\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _connect(h: Hostile, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", h.responder.port), timeout=timeout)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def _read_reply(reader: BinaryIO, head_only: bool = False) -> Reply:
    """One HTTP/1.1 answer from a socket's binary file."""
    status_line = reader.readline()
    if not status_line:
        raise EOFError("connection closed before an answer")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = reader.readline().decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    body = reader.read(length) if length else b""
    return Reply(status, headers, body)


def _exchange(h: Hostile, raw: bytes, answers: int = 1, head_only: bool = False) -> list[Reply]:
    with _connect(h) as s:
        s.sendall(raw)
        reader = s.makefile("rb")
        return [_read_reply(reader, head_only) for _ in range(answers)]


def _closed(s: socket.socket, within: float = 5.0) -> bool:
    """True once the server has closed the connection (EOF or reset), reading what is left."""
    s.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def _assert_good(body: bytes) -> None:
    response = ocsp.load_der_ocsp_response(body)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD


def _timed_good_answer(h: Hostile) -> float:
    """A normal client's request on a new connection: it is answered, and how long it took."""
    started = time.monotonic()
    status, _, body = http_post(h.responder.url, _ocsp_request(h), timeout=10)
    elapsed = time.monotonic() - started
    assert status == 200
    _assert_good(body)
    return elapsed


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _nofile_limits(pid: int) -> tuple[int, int]:
    def number(text: str) -> int:
        return resource.RLIM_INFINITY if text == "unlimited" else int(text)

    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return number(soft), number(hard)
    raise AssertionError(f"no open-files limit for {pid}")


# --- slow clients -----------------------------------------------------------------------------


@pytest.mark.parametrize("dribbled", ["headers", "body"])
def test_slow_clients_get_408_and_do_not_block_others(hostile: Hostile, dribbled: str) -> None:
    """Twenty clients send their request one byte a second: each gets 408 and is closed once
    the request deadline passes, and a normal client is answered all the while."""
    body = _ocsp_request(hostile)
    request = _post(hostile, body)
    head_end = request.index(b"\r\n\r\n") + 4
    slow = [_connect(hostile) for _ in range(20)]
    sent = 0
    if dribbled == "body":
        for s in slow:
            s.sendall(request[:head_end])
        sent = head_end
    started = time.monotonic()
    replies: dict[int, bytes] = {}
    try:
        while len(replies) < len(slow):
            assert time.monotonic() - started < REQUEST_TIMEOUT + 10, "no 408 in time"
            for i, s in enumerate(slow):
                if i not in replies:
                    with contextlib.suppress(OSError):  # the server may have closed already
                        s.send(request[sent : sent + 1])
            sent += 1
            assert sent < head_end or dribbled == "body"
            assert _timed_good_answer(hostile) < ANSWER_WITHIN
            readable, _, _ = select.select(
                [s for i, s in enumerate(slow) if i not in replies], [], [], 1.0
            )
            for s in readable:
                replies[slow.index(s)] = s.recv(65536)
        elapsed = time.monotonic() - started
    finally:
        for s in slow:
            s.close()
    for reply in replies.values():
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        assert b"\r\nConnection: close\r\n" in reply
    # The configured deadline (not the default 10 s) from the request's first byte, checked
    # once a second.
    assert REQUEST_TIMEOUT - 0.5 <= elapsed < REQUEST_TIMEOUT + 3


def test_client_that_never_reads_is_dropped(
    pg_admin_url: str, template_db: str, tmp_path: Path
) -> None:
    """A client pipelining requests without reading the answers: reading pauses once its
    answers back up, and the worker lets go of the connection after the deadlines (closed,
    then dropped when even the close cannot flush), never holding it."""
    name = f"{template_db.removesuffix('_tpl')}_{secrets.token_hex(3)}"
    run_sql(pg_admin_url, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    try:
        responder = start_responder(
            with_database(pg_admin_url, name),
            tmp_path,
            workers=1,
            config='[responder]\nrequest_timeout = "1s"\nkeepalive_timeout = "1s"\n',
        )
        try:
            (worker,) = _worker_pids(responder, 1)
            baseline = _open_files(worker)
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", responder.port))
            s.setblocking(False)
            requests = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
            started = time.monotonic()
            # Push requests until nothing more goes in: the worker stopped reading.
            while time.monotonic() - started < 20:
                try:
                    s.send(requests)
                except BlockingIOError:
                    _, writable, _ = select.select([], [s], [], 0.5)
                    if not writable:
                        break
                except OSError:
                    break  # dropped already
            # Without reading a byte: the worker's descriptor for it goes.
            deadline = time.monotonic() + 15
            while _open_files(worker) > baseline:
                assert time.monotonic() < deadline, "the worker held the connection"
                time.sleep(0.2)
            s.close()
            status, _, _ = http_post(responder.url, b"", timeout=5)  # still serving
            assert status == 200
        finally:
            responder.stop()
    finally:
        run_sql(pg_admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --- many idle connections --------------------------------------------------------------------


def test_ten_thousand_idle_connections(hostile: Hostile) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = IDLE_CONNECTIONS + 500
    if hard < needed:
        missing(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} this test needs")
    # `ocspd serve` raised the soft limit it was started with (1024) to the hard limit.
    for pid in hostile.workers:
        worker_soft, worker_hard = _nofile_limits(pid)
        assert worker_hard == hard and worker_soft >= needed
        assert hard == resource.RLIM_INFINITY or worker_soft == hard
    baseline = sum(_open_files(pid) for pid in hostile.workers)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    idle: list[socket.socket] = []
    try:
        for i in range(IDLE_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", hostile.responder.port), timeout=10)
            # Closed with a reset at the end: no TIME_WAIT for ten thousand local ports.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            idle.append(s)
            if i % 1000 == 999:
                # A normal client is answered while the idle ones pile up.
                assert _timed_good_answer(hostile) < ANSWER_WITHIN
        # Every one was accepted: the workers hold a descriptor for each.
        deadline = time.monotonic() + 20
        while sum(_open_files(pid) for pid in hostile.workers) < baseline + IDLE_CONNECTIONS:
            assert time.monotonic() < deadline, "the workers did not accept every connection"
            time.sleep(0.2)
        for _ in range(10):
            assert _timed_good_answer(hostile) < ANSWER_WITHIN
        # The idle connections still work: some of them ask now, and are answered.
        request = _post(hostile, _ocsp_request(hostile))
        for s in idle[:: IDLE_CONNECTIONS // 20]:
            started = time.monotonic()
            s.sendall(request)
            reply = _read_reply(s.makefile("rb"))
            assert reply.status == 200 and time.monotonic() - started < ANSWER_WITHIN
            _assert_good(reply.body)
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Closed by the clients: the workers let go of them.
    deadline = time.monotonic() + 20
    while sum(_open_files(pid) for pid in hostile.workers) > baseline + 50:
        assert time.monotonic() < deadline, "the workers kept closed connections"
        time.sleep(0.2)


# --- large bodies -------------------------------------------------------------------------


MEGABYTE = 1_000_000


def _big_request(framing: str) -> bytes:
    body = b"\x30\x84" + secrets.token_bytes(MEGABYTE - 2)  # a DER-ish start, then noise
    head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
    if framing == "content-length":
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    chunks = b"".join(
        b"%x\r\n" % len(body[i : i + 65536]) + body[i : i + 65536] + b"\r\n"
        for i in range(0, len(body), 65536)
    )
    return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_megabyte_bodies_get_413_and_close_with_bounded_memory(
    hostile: Hostile, framing: str
) -> None:
    def send_one() -> None:
        with _connect(hostile) as s:
            s.sendall(_big_request(framing))
            reader = s.makefile("rb")
            reply = _read_reply(reader)
            assert reply.status == 413
            assert reply.headers["connection"] == "close"
            # Still an OCSP answer: malformedRequest, never cached.
            assert (
                ocsp.load_der_ocsp_response(reply.body).response_status
                == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
            )
            assert reader.read() == b""  # closed

    send_one()  # the first one may allocate what any later one reuses
    before = {pid: _rss_kib(pid) for pid in hostile.workers}
    for _ in range(10):
        send_one()
    after = {pid: _rss_kib(pid) for pid in hostile.workers}
    # Ten megabytes went through; none of it stayed (the body is dropped as it arrives).
    for pid in hostile.workers:
        assert after[pid] - before[pid] < 4096, (before, after)
    assert _timed_good_answer(hostile) < ANSWER_WITHIN


def test_megabyte_without_framing_is_not_a_body(hostile: Hostile) -> None:
    """A POST without Content-Length has no body (RFC 9112 6.3): what follows is read as the
    next request, refused, and the connection closed; nothing is buffered."""
    before = {pid: _rss_kib(pid) for pid in hostile.workers}
    with _connect(hostile) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n\r\n")
        with contextlib.suppress(OSError):  # the server stops reading and closes
            s.sendall(b"\x30\x84" + secrets.token_bytes(MEGABYTE))
        data = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                data += chunk
    # If the answers arrived before the reset: an OCSP error for the empty body, then a
    # refusal of the garbage.
    if data:
        assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    after = {pid: _rss_kib(pid) for pid in hostile.workers}
    for pid in hostile.workers:
        assert after[pid] - before[pid] < 4096, (before, after)
    assert _timed_good_answer(hostile) < ANSWER_WITHIN


# --- methods ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"])
def test_methods_not_allowed_get_405_with_allow(hostile: Hostile, method: str) -> None:
    raw = f"{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    (reply,) = _exchange(hostile, raw)
    assert reply.status == 405 and reply.headers["allow"] == "GET, POST"
    raw = f"{method} /crl/hostile.crl HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    (reply,) = _exchange(hostile, raw)
    assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("method", "status"),
    [("BREW", 501), ("FOO", 501), ("get", 501), ("G\x00T", 400), ("\x16\x03\x01", 400)],
)
def test_unrecognised_methods_are_refused_and_closed(
    hostile: Hostile, method: str, status: int
) -> None:
    """RFC 9110 9.1: a method the server does not recognise gets 501 (not 405: that is for
    known methods a resource does not take); bytes that are no method at all get 400."""
    with _connect(hostile) as s:
        s.sendall(f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"))
        reply = _read_reply(s.makefile("rb"))
        assert reply.status == status and reply.headers["connection"] == "close"
        assert _closed(s)


# --- /crl/ path traversal -----------------------------------------------------------------------


def test_crl_is_served(hostile: Hostile) -> None:
    (reply,) = _exchange(hostile, b"GET /crl/hostile.crl HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.status == 200 and reply.body == hostile.crl_der
    assert reply.headers["content-type"] == "application/pkix-crl"


TRAVERSALS = [
    "/crl/../../etc/passwd",
    "/crl/../../../../../../etc/passwd",
    "/crl/%2e%2e/%2e%2e/etc/passwd",
    "/crl/%2e%2e/",
    "/crl/..%2f..%2fetc%2fpasswd",
    "/crl/..%2F..%2Fetc%2Fpasswd.crl",
    "/crl/%2e%2e%2f%2e%2e%2fetc%2fpasswd%00.crl",
    "/crl/x.crl%00",
    "/crl/hostile.crl%00",
    "/crl/hostile.crl%00.pem",
    "/crl/hostile.crl/",
    "/crl//etc/passwd",
    "/crl//etc/passwd.crl",
    "/crl/%2fetc%2fpasswd.crl",
    "/crl/....//....//etc/passwd",
    "/crl/passwd.crl",  # a symbolic link to /etc/passwd
    "/crl/outside.crl",  # a symbolic link to a valid CRL outside the directory
    "/crl/dir.crl",  # a symbolic link to a directory outside
    "/crl/sub/inner.crl",  # below the directory: not a name crlgen publishes
    "/crl/sub%2finner.crl",
    "/crl/.crl",
    "/crl/",
    "/crl/" + "a" * 70 + ".crl",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_crl_path_traversal_is_404(hostile: Hostile, target: str) -> None:
    for method in ("GET", "HEAD"):
        reply = _ask(hostile, method, target)
        assert reply.status == 404, (method, target, reply)
        _assert_not_a_file(hostile, reply)


# Not under /crl/: OCSP GETs (base64 that does not decode to a request), never files.
ELSEWHERE = [
    "/crl",
    "/../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "//etc/passwd",
    "/etc/passwd",
    "/crl/..\\..\\etc\\passwd.crl",
    "http://127.0.0.1/crl/../../etc/passwd",
    "http://127.0.0.1/crl/passwd.crl",
]


@pytest.mark.parametrize("target", ELSEWHERE)
def test_other_paths_never_reach_files(hostile: Hostile, target: str) -> None:
    for method in ("GET", "HEAD"):
        reply = _ask(hostile, method, target)
        assert reply.status in (200, 400, 404, 405), (method, target, reply)
        _assert_not_a_file(hostile, reply)
        if reply.status == 200:  # an OCSP GET that is not a request
            assert (
                ocsp.load_der_ocsp_response(reply.body).response_status
                == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
            )


def _ask(h: Hostile, method: str, target: str) -> Reply:
    with _connect(h) as s:
        s.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return _read_reply(s.makefile("rb"), head_only=method == "HEAD")


def _assert_not_a_file(h: Hostile, reply: Reply) -> None:
    assert b"root:" not in reply.body
    assert h.outside_crl.read_bytes() not in reply.body
    assert reply.headers.get("content-type") != "application/pkix-crl"


# --- HTTP/1.0, pipelining, split segments ---------------------------------------------------


def test_http10_is_answered_and_closed(hostile: Hostile) -> None:
    with _connect(hostile) as s:
        s.sendall(_post(hostile, _ocsp_request(hostile), version="1.0"))
        reader = s.makefile("rb")
        reply = _read_reply(reader)
        assert reply.status == 200 and reply.headers["connection"] == "close"
        _assert_good(reply.body)
        assert reader.read() == b""
    import base64
    import urllib.parse

    tail = urllib.parse.quote(base64.b64encode(_ocsp_request(hostile)).decode(), safe="")
    with _connect(hostile) as s:
        s.sendall(f"GET /{tail} HTTP/1.0\r\n\r\n".encode())
        reader = s.makefile("rb")
        reply = _read_reply(reader)
        assert reply.status == 200 and reply.headers["connection"] == "close"
        _assert_good(reply.body)
        assert reader.read() == b""


def test_pipelined_requests_are_answered_in_order(hostile: Hostile) -> None:
    good = _ocsp_request(hostile)
    nonce = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(hostile.good, hostile.pki.ca.cert, hashes.SHA256())
        .add_extension(x509.OCSPNonce(secrets.token_bytes(16)), critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    raw = (
        _post(hostile, nonce)  # signed live: slower than what follows, which must wait
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        + _post(hostile, b"\x30\x03\x02\x01\x01")  # malformed
        + _post(hostile, good)
        + b"GET /crl/hostile.crl HTTP/1.1\r\nHost: x\r\n\r\n"
        + _post(hostile, good, extra="Connection: close\r\n")
    )
    with _connect(hostile) as s:
        s.sendall(raw)
        reader = s.makefile("rb")
        replies = [_read_reply(reader) for _ in range(6)]
        assert reader.read() == b""  # closed after the one that asked
    _assert_good(replies[0].body)
    assert ocsp.load_der_ocsp_response(replies[0].body).extensions  # the nonce echoed
    assert (replies[1].status, replies[1].body) == (200, b"ok\n")
    assert (
        ocsp.load_der_ocsp_response(replies[2].body).response_status
        == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
    _assert_good(replies[3].body)
    assert replies[4].body == hostile.crl_der
    _assert_good(replies[5].body)
    assert replies[5].headers["connection"] == "close"


@pytest.mark.parametrize("piece", [1, 3, 7, 50])
def test_request_split_across_segments(hostile: Hostile, piece: int) -> None:
    raw = _post(hostile, _ocsp_request(hostile))
    with _connect(hostile) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(raw), piece):
            s.sendall(raw[i : i + piece])
            time.sleep(0.002)
        reply = _read_reply(s.makefile("rb"))
    assert reply.status == 200
    _assert_good(reply.body)
