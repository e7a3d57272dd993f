"""Responder throughput: `ocspd serve` against `openssl ocsp` and an aiohttp ceiling, with wrk.

    /tmp/venvtest/bin/python bench/ocsp_bench.py          # full: 3 rounds of 15 s runs, ~10 min
    /tmp/venvtest/bin/python bench/ocsp_bench.py --quick  # 1 round of 5 s runs, ~2 min
    (--duration S, --connections N, --rounds N, --no-profile, --no-hsm, --no-results, --keep:
    see --help)

In one session, on one machine:
  1. a throwaway PKI: an issuing CA with a delegated responder (P-256 key in a file) and N
     leaves (5 % revoked), imported into a fresh database with `ocspd cert import` (the PEM
     bundle, then an `openssl ca` index.txt that carries the revocations); the same index.txt
     serves `openssl ocsp`;
  2. `ocspd serve --workers 2` ([responder] nonce = "echo"), loaded by wrk (-t2, 64
     connections) with (a) cached GET: rotating base64 GET URLs of good certificates,
     (b) cached POST: rotating DER bodies, (c) live POST: every request carries a nonce, so
     every response is signed (bodies from a file of pre-generated requests), and (d) the same
     live load for a second issuing CA whose delegated responder's P-256 key was imported into
     a fresh SoftHSM2 token (a pkcs11: URI; SOFTHSM2_CONF set for `ocspd serve`): ocspd only,
     compared with openssl's run of (c);
  3. the peer: `openssl ocsp -index index.txt -multi 2` on the same PKI with the same loads
     (it signs every response whatever the request), restarted for every run;
  4. the ceiling: bench/ceiling_app.py, aiohttp on uvloop with the same number of worker
     processes (SO_REUSEPORT), returning the bytes of a real ocspd response.
Before every run a Python client sends one request of the run's kind and checks the answer
(successful, good, signature, nonce echoed); after it, wrk's errors, the mean response size
against the checked one, and for ocspd its own outcome counters. Results go into
bench/RESULTS.md under "## Responder throughput (ocspd serve)", between generated markers.

Uses OCSPD_TEST_DATABASE_URL or postgresql://postgres@127.0.0.1:5432/postgres, in a database
of its own that it drops at the end. Needs wrk and openssl on PATH; py-spy (optional) for the
profile of one ocspd worker; softhsm2-util and libsofthsm2.so (apt-get install softhsm2) for
the SoftHSM run, which is left out, and the report says so, without them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import datetime as dt
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
from benchkit import ensure_audit_key
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from ocspd import devpki
from ocspd.audit.requests import CHAIN_IN_C
from ocspd.metrics import PUBLISH_INTERVAL

ADMIN_URL = os.environ.get(
    "OCSPD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BENCH_DIR = Path(__file__).resolve().parent
LUA_DIR = BENCH_DIR / "lua"
RESULTS = BENCH_DIR / "RESULTS.md"
SECTION = "## Responder throughput (ocspd serve)"
BEGIN = "<!-- ocsp_bench.py: generated, begin -->"
END = "<!-- ocsp_bench.py: generated, end -->"
REVOKED_EVERY = 20  # 5 %
NONCE_BYTES = 32  # RFC 8954 recommends 32
SIZE_TOLERANCE = 0.03  # mean response size may differ this much from the checked one
TARGETS = {
    "ratio_openssl": 2.5,
    "ratio_ceiling": 0.8,
    "p99_ms": 10.0,
    "ratio_live": 1.0,
    "ratio_live_hsm": 0.5,
    # Issue: serving with every request on record (RS3.1) costs at most 10 % of throughput.
    "ratio_audit": 0.9,
}
SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
HSM_TOKEN = "ocspd-bench"
HSM_LABEL = "bench-responder"
HSM_PIN = "1234"
HSM_SO_PIN = "12345678"


# --- processes ---------------------------------------------------------------------------


class Processes:
    """Every process the bench starts, each in a process group of its own, so it and its
    workers are stopped together and nothing else is touched."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: Sequence[str | Path], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(c) for c in command],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                # A process group of its own (not a session: `openssl ocsp -multi` calls
                # setpgid(0, 0), which a session leader may not).
                process_group=0,
            )
        self._running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """SIGTERM to the process, then SIGKILL to its whole group if anything is left."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # workers left behind (own group only)
        if process.poll() is None:
            process.wait(5)
        if process in self._running:
            self._running.remove(process)

    def stop_all(self) -> None:
        for process in list(reversed(self._running)):
            self.stop(process)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ...
            pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (live ones only)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


# --- HTTP (a raw client, so the exact response size is known) ----------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_size: int  # status line, headers and body, as wrk counts bytes


def http_exchange(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str | None = None,
    timeout: float = 10.0,
) -> Reply:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    if method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    request = head.encode() + b"\r\n" + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed before the response headers: {data!r}")
            data += chunk
        header_blob, rest = data.split(b"\r\n\r\n", 1)
        lines = header_blob.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "-1"))
        while length < 0 or len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                if length < 0:
                    break
                raise ConnectionError("connection closed in the response body")
            rest += chunk
    return Reply(status, headers, rest, len(header_blob) + 4 + len(rest))


# --- PKI and requests --------------------------------------------------------------------


@dataclass
class Pki:
    dir: Path
    root: devpki.Issued
    ca: devpki.Issued
    responder: devpki.Issued
    good: list[x509.Certificate]
    revoked: list[x509.Certificate]
    ca_pem: Path
    responder_pem: Path
    responder_key: Path
    bundle: Path
    index: Path


def make_pki(directory: Path, count: int) -> Pki:
    root = devpki.make_ca("Bench Root CA")
    ca = devpki.make_ca("Bench Issuing CA", issuer=root)
    responder = devpki.make_responder("Bench Issuing CA OCSP", ca, key=devpki.new_key("p256"))
    leaf_key = devpki.new_key()
    leaves = [devpki.make_leaf(f"h{i}.bench.example", ca, leaf_key) for i in range(count)]
    revoked = [c for i, c in enumerate(leaves) if i % REVOKED_EVERY == 0]
    good = [c for i, c in enumerate(leaves) if i % REVOKED_EVERY != 0]
    revoked_at = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%y%m%d%H%M%SZ")
    index = directory / "index.txt"
    with index.open("w") as f:
        for i, cert in enumerate(leaves):
            expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
            dn = "/" + "/".join(reversed(cert.subject.rfc4514_string().split(",")))
            if i % REVOKED_EVERY == 0:
                f.write(
                    f"R\t{expiry}\t{revoked_at},superseded\t{cert.serial_number:X}\tunknown\t{dn}\n"
                )
            else:
                f.write(f"V\t{expiry}\t\t{cert.serial_number:X}\tunknown\t{dn}\n")
    return Pki(
        dir=directory,
        root=root,
        ca=ca,
        responder=responder,
        good=good,
        revoked=revoked,
        ca_pem=devpki.write_cert(directory / "ca.pem", ca.cert),
        responder_pem=devpki.write_cert(directory / "responder.pem", responder.cert),
        responder_key=devpki.write_key(directory / "responder.key", responder.key),
        bundle=devpki.write_cert(directory / "bundle.pem", *leaves),
        index=index,
    )


@dataclass
class HsmIssuer:
    """A second issuing CA (same root) whose delegated responder has its P-256 key in a fresh
    SoftHSM2 token. Its own CA, because ocspd takes each CA once."""

    ca: devpki.Issued
    responder: devpki.Issued
    good: list[x509.Certificate]
    ca_pem: Path
    responder_pem: Path
    bundle: Path
    conf: Path  # SOFTHSM2_CONF, for every process that opens the key
    key_uri: str  # RFC 7512, with module-path and pin-source

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}


def softhsm_module() -> str | None:
    if shutil.which("softhsm2-util") is None:
        return None
    return next((m for m in SOFTHSM_MODULES if os.path.isfile(m)), None)


def _pkcs11_text(value: str) -> str:
    """Percent-encode a pkcs11: URI path attribute value (RFC 7512 section 2.3)."""
    return quote(value, safe="-._~!$'()*+,=:@")


def make_hsm_issuer(directory: Path, root: devpki.Issued, count: int, module: str) -> HsmIssuer:
    """The CA, its responder and `count` good leaves; the responder's key is imported into a
    token of a SoftHSM2 directory of its own and removed from disk."""
    hsm_dir = directory / "softhsm"
    (hsm_dir / "tokens").mkdir(parents=True)
    conf = hsm_dir / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {hsm_dir / 'tokens'}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
    )
    pin_file = hsm_dir / "pin"
    pin_file.touch(mode=0o600)
    pin_file.write_text(HSM_PIN + "\n")
    ca = devpki.make_ca("Bench HSM Issuing CA", issuer=root)
    responder = devpki.make_responder("Bench HSM Issuing CA OCSP", ca, key=devpki.new_key("p256"))
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}

    def softhsm2_util(*args: str | Path) -> None:
        done = subprocess.run(
            ["softhsm2-util", *map(str, args)], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"softhsm2-util {args[0]} failed ({done.returncode}): {done.stdout} {done.stderr}"
            )

    softhsm2_util(
        "--init-token", "--free", "--label", HSM_TOKEN, "--pin", HSM_PIN, "--so-pin", HSM_SO_PIN
    )
    key_pem = devpki.write_key(hsm_dir / "import.pem", responder.key)  # PKCS#8, 0600
    try:
        # Stores the private and the public key object (ocspd needs both).
        softhsm2_util(
            "--import", key_pem, "--token", HSM_TOKEN, "--label", HSM_LABEL, "--id", "0001",
            "--pin", HSM_PIN,
        )  # fmt: skip
    finally:
        key_pem.unlink()
    key_uri = (
        f"pkcs11:token={_pkcs11_text(HSM_TOKEN)};object={_pkcs11_text(HSM_LABEL)}"
        f"?module-path={module}&pin-source=file:{pin_file}"
    )
    leaf_key = devpki.new_key()
    good = [devpki.make_leaf(f"h{i}.hsm.bench.example", ca, leaf_key) for i in range(count)]
    return HsmIssuer(
        ca=ca,
        responder=responder,
        good=good,
        ca_pem=devpki.write_cert(directory / "hsm-ca.pem", ca.cert),
        responder_pem=devpki.write_cert(directory / "hsm-responder.pem", responder.cert),
        bundle=devpki.write_cert(directory / "hsm-bundle.pem", *good),
        conf=conf,
        key_uri=key_uri,
    )


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def get_path(der: bytes) -> str:
    # RFC 6960 A.1: the URL-encoding of the base64 of the DER request, after the prefix.
    return "/" + quote(base64.b64encode(der).decode(), safe="")


def write_records(path: Path, records: Sequence[bytes]) -> Path:
    """What bench/lua/common.lua reads: 2-octet big-endian length, then the record."""
    with path.open("wb") as f:
        for record in records:
            f.write(len(record).to_bytes(2, "big") + record)
    return path


@dataclass(frozen=True)
class Sample:
    """One request of a scenario's kind, sent and checked before each run."""

    method: str
    path: str
    body: bytes
    cert: x509.Certificate
    nonce: bytes | None


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    script: Path
    records: Path
    record_count: int
    method: str
    nonce: bool
    ca: x509.Certificate  # the issuer its requests name
    responder: x509.Certificate  # what must have signed the answers
    good: tuple[x509.Certificate, ...]  # certificates a sample may ask about
    targets: tuple[str, ...]  # the servers it runs against, in this order

    def sample(self) -> Sample:
        cert = secrets.choice(self.good)
        nonce = secrets.token_bytes(NONCE_BYTES) if self.nonce else None
        der = ocsp_request(cert, self.ca, nonce)
        if self.method == "GET":
            return Sample("GET", get_path(der), b"", cert, None)
        return Sample("POST", "/", der, cert, nonce)


def nonce_requests(
    good: Sequence[x509.Certificate], ca: x509.Certificate, count: int
) -> list[bytes]:
    return [
        ocsp_request(good[i % len(good)], ca, secrets.token_bytes(NONCE_BYTES))
        for i in range(count)
    ]


def make_scenarios(pki: Pki, hsm: HsmIssuer | None, directory: Path, nonces: int) -> list[Scenario]:
    plain = [ocsp_request(c, pki.ca.cert, None) for c in pki.good]
    get_file = write_records(directory / "get-paths.bin", [get_path(d).encode() for d in plain])
    post_file = write_records(directory / "post-bodies.bin", plain)
    nonce_file = write_records(
        directory / "nonce-bodies.bin", nonce_requests(pki.good, pki.ca.cert, nonces)
    )
    file_key = (pki.ca.cert, pki.responder.cert, tuple(pki.good))
    post = LUA_DIR / "post.lua"
    cached = ("ceiling", "ocspd", "openssl")
    scenarios = [
        Scenario(
            "get", "cached GET", LUA_DIR / "get.lua", get_file, len(plain), "GET", False,
            *file_key, cached,
        ),
        Scenario(
            "post", "cached POST", post, post_file, len(plain), "POST", False, *file_key,
            (*cached, "ocspd-no-audit"),
        ),
        Scenario(
            "nonce", "live POST + nonce", post, nonce_file, nonces, "POST", True, *file_key,
            ("ocspd", "openssl"),
        ),
    ]  # fmt: skip
    if hsm is not None:
        # ocspd only: the target compares it with openssl's run of "nonce" (the same load,
        # openssl signing with the file key), so the peer runs once per round for both.
        hsm_file = write_records(
            directory / "nonce-hsm-bodies.bin", nonce_requests(hsm.good, hsm.ca.cert, nonces)
        )
        scenarios.append(
            Scenario(
                "nonce-hsm", "live POST + nonce, SoftHSM", post, hsm_file, nonces, "POST", True,
                hsm.ca.cert, hsm.responder.cert, tuple(hsm.good), ("ocspd",),
            )
        )  # fmt: skip
    return scenarios


class CheckFailed(Exception):
    pass


def check_answer(
    reply: Reply, sample: Sample, expect: ocsp.OCSPCertStatus, responder: x509.Certificate
) -> None:
    """Successful, about the asked certificate, the expected status, signed by the responder,
    and echoing the nonce when one was sent."""
    if reply.status != 200:
        raise CheckFailed(f"HTTP {reply.status}: {reply.body[:200]!r}")
    response = ocsp.load_der_ocsp_response(reply.body)
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise CheckFailed(f"OCSP status {response.response_status.name}")
    if response.serial_number != sample.cert.serial_number:
        raise CheckFailed(f"answer for serial {response.serial_number:x}, asked another")
    if response.certificate_status is not expect:
        raise CheckFailed(
            f"certificate status {response.certificate_status.name}, not {expect.name}"
        )
    public_key = responder.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    hash_algorithm = response.signature_hash_algorithm
    assert hash_algorithm is not None
    public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hash_algorithm))
    echoed = None
    with contextlib.suppress(x509.ExtensionNotFound):
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    if echoed != sample.nonce:
        raise CheckFailed(f"nonce {echoed!r} in the response, sent {sample.nonce!r}")


def send(port: int, sample: Sample) -> Reply:
    content_type = "application/ocsp-request" if sample.method == "POST" else None
    return http_exchange(port, sample.method, sample.path, sample.body, content_type)


# --- wrk ---------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    connect: int
    read: int
    write: int
    status: int  # responses with HTTP status > 399
    timeout: int
    client_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout

    @property
    def mean_size(self) -> float:
        return self.bytes / self.requests if self.requests else 0.0


_RESULT = re.compile(r"^BENCH_RESULT (.*)$", re.MULTILINE)


def run_wrk(
    url: str,
    scenario: Scenario,
    seconds: float,
    connections: int,
    threads: int,
    log: Path,
) -> WrkResult:
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
        "--timeout", "2s", "-s", str(scenario.script), url, "--", str(scenario.records),
        str(threads),
    ]  # fmt: skip
    before = os.times()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    after = os.times()
    with log.open("a") as f:
        f.write(f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}\n")
    match = _RESULT.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    values = {k: float(v) for k, v in (kv.split("=") for kv in match[1].split())}
    return WrkResult(
        requests=int(values["requests"]),
        duration_s=values["duration_us"] / 1e6,
        bytes=int(values["bytes"]),
        mean_ms=values["mean_us"] / 1000,
        p50_ms=values["p50_us"] / 1000,
        p90_ms=values["p90_us"] / 1000,
        p99_ms=values["p99_us"] / 1000,
        p999_ms=values["p999_us"] / 1000,
        max_ms=values["max_us"] / 1000,
        connect=int(values["connect"]),
        read=int(values["read"]),
        write=int(values["write"]),
        status=int(values["status"]),
        timeout=int(values["timeout"]),
        client_cpu_s=(after.children_user + after.children_system)
        - (before.children_user + before.children_system),
    )


# --- servers -----------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None
    log: Path
    admin_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def wait_for(
    what: str, probe: Callable[[], bool], process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError):
            if probe():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within 60 s:\n{log.read_text()[-3000:]}")


def start_ocspd(
    procs: Processes,
    db_url: str,
    work: Path,
    workers: int,
    extra_env: dict[str, str],
    name: str = "ocspd",
    responder_extra: str = "",
) -> Server:
    """`responder_extra`: more `[responder]` lines (bench/suite.py sets cache_entries)."""
    port, admin_port = free_port(), free_port()
    config = work / f"{name.replace(' ', '-').replace(',', '')}.toml"
    # drain_seconds only shortens the stop at the end; nothing here changes how it answers.
    config.write_text(
        '[responder]\nnonce = "echo"\nlog_level = "info"\ndrain_seconds = 0.5\n' + responder_extra
    )
    env = {**os.environ, **extra_env, "OCSPD_DATABASE_URL": db_url}
    env.pop("OCSPD_CONFIG", None)
    log = config.with_suffix(".log")
    command: list[str | Path] = [
        sys.executable, "-m", "ocspd", "--config", config, "serve",
        "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}",
        "--workers", str(workers),
    ]  # fmt: skip
    process = procs.start(command, log, env)

    def ready() -> bool:
        return (
            http_exchange(port, "GET", "/readyz", timeout=1).status == 200
            and http_exchange(admin_port, "GET", "/healthz", timeout=1).status == 200
        )

    wait_for("ocspd serve", ready, process, log)
    return Server(name, port, process, log, admin_port)


def start_ceiling(procs: Processes, work: Path, workers: int, body: bytes) -> Server:
    port = free_port()
    body_file = work / "ceiling-response.der"
    body_file.write_bytes(body)
    log = work / "ceiling.log"
    command: list[str | Path] = [
        sys.executable, BENCH_DIR / "ceiling_app.py", "--listen", f"127.0.0.1:{port}",
        "--workers", str(workers), "--body", body_file,
    ]  # fmt: skip
    process = procs.start(command, log)
    # Both workers should be listening before the first run; a short pause after the first
    # answer covers the second one's start.
    wait_for(
        "ceiling app",
        lambda: http_exchange(port, "GET", "/", timeout=1).status == 200,
        process,
        log,
    )
    time.sleep(1.0)
    return Server("aiohttp ceiling", port, process, log)


def start_openssl(procs: Processes, pki: Pki, work: Path, workers: int) -> Server:
    """A fresh `openssl ocsp` for each run: a connection closed without a request (wrk closes
    some at the end of every run) leaves a child spinning on it for good (OpenSSL 3.0)."""
    port = free_port()
    log = work / f"openssl-{port}.log"
    command: list[str | Path] = [
        "openssl", "ocsp", "-index", pki.index, "-CA", pki.ca_pem,
        "-rsigner", pki.responder_pem, "-rkey", pki.responder_key, "-resp_key_id",
        "-port", str(port), "-multi", str(workers), "-nmin", "5",
    ]  # fmt: skip
    process = procs.start(command, log)
    # It prints "ACCEPT ..." once listening. No probe connection: one that sends nothing
    # would cost a child (see above).
    wait_for("openssl ocsp", lambda: "ACCEPT" in log.read_text(), process, log)
    time.sleep(0.3)  # the children fork after the ACCEPT line
    return Server("openssl ocsp", port, process, log)


def stop_openssl(procs: Processes, server: Server) -> None:
    """Once its children have served, `openssl ocsp -multi` does not exit on SIGTERM (it
    waits for them); each run's server is thrown away, so its group is killed at once."""
    if server.process is not None:
        procs.stop(server.process, grace=0.0)


# --- ocspd's own counters ----------------------------------------------------------------

SIGNING = "ocspd_signing_duration_seconds"  # a histogram: _sum and _count
REFUSED = "ocspd_signing_refused_total"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def metrics(server: Server) -> dict[str, float]:
    assert server.admin_port is not None
    text = http_exchange(server.admin_port, "GET", "/metrics").body.decode()
    values = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            values[match[1] + (match[2] or "")] = float(match[3])
    return values


def _label(key: str, name: str) -> str:
    match = re.search(name + r'="([^"]*)"', key)
    return match[1] if match else ""


def counter_delta(
    before: dict[str, float], after: dict[str, float], metric: str, label: str
) -> Counter[str]:
    delta: Counter[str] = Counter()
    for key, value in after.items():
        if key.startswith(metric + "{"):
            delta[_label(key, label)] += round(value - before.get(key, 0.0))
    return delta


# --- a run -------------------------------------------------------------------------------


@dataclass
class Run:
    scenario: Scenario
    server: str
    result: WrkResult
    round: int
    expected_size: int
    server_cpu_s: float
    db_cpu_s: float = 0.0  # ocspd's PostgreSQL backends
    server_note: str = ""
    problems: list[str] = field(default_factory=list)

    def cpu_us_per_request(self, seconds: float) -> float:
        return seconds / self.result.requests * 1e6 if self.result.requests else 0.0


@dataclass
class Bench:
    args: argparse.Namespace
    pki: Pki
    work: Path
    procs: Processes
    db_name: str
    ocspd: Server
    ceiling: Server
    seconds: float
    warmup: float
    runs: list[Run] = field(default_factory=list)
    hsm_note: str = ""  # why the SoftHSM run is missing, if it is
    # The same responder with `[audit] requests = off`: what recording every request costs.
    ocspd_no_audit: Server | None = None

    def run(self, scenario: Scenario, target: str, round_number: int) -> Run:
        a = self.args
        if target == "openssl":
            server = start_openssl(self.procs, self.pki, self.work, a.workers)
        elif target == "ocspd-no-audit":
            assert self.ocspd_no_audit is not None
            server = self.ocspd_no_audit
        else:
            server = self.ocspd if target == "ocspd" else self.ceiling
        ours = target.startswith("ocspd")
        try:
            sample = scenario.sample()
            reply = send(server.port, sample)
            if target == "ceiling":
                if reply.status != 200 or not reply.body.startswith(b"\x30"):
                    raise CheckFailed(f"ceiling answered HTTP {reply.status}")
            else:
                check_answer(reply, sample, ocsp.OCSPCertStatus.GOOD, scenario.responder)
            log = self.work / "wrk.log"
            if self.warmup and target != "openssl" and not scenario.nonce:
                # Fills every ocspd worker's cache and wakes the ceiling up (openssl has no
                # cache, and a run more would cost it a child, see start_openssl).
                warmup = self.warmup if ours else 1.0
                run_wrk(server.url, scenario, warmup, a.connections, a.threads, log)
                if ours:
                    time.sleep(1.1)  # the warm-up's counts reach /metrics first
            before = metrics(server) if ours else {}
            assert server.process is not None
            pids = group_pids(server.process.pid)
            backends = postgres_backends(self.db_name) if ours else []
            cpu_before = cpu_seconds(pids)
            db_before = {pid: cpu_seconds([pid]) for pid in backends}
            result = run_wrk(server.url, scenario, self.seconds, a.connections, a.threads, log)
            server_cpu = cpu_seconds(pids) - cpu_before
            # The pools grow under load: a backend that appeared during the run counts whole.
            after = postgres_backends(self.db_name) if ours else []
            db_cpu = sum(cpu_seconds([pid]) - db_before.get(pid, 0.0) for pid in after)
            run = Run(
                scenario, server.name, result, round_number, reply.raw_size, server_cpu, db_cpu
            )
            if ours:
                # ocspd adds its counts to /metrics every PUBLISH_INTERVAL (ocspd/metrics.py).
                time.sleep(PUBLISH_INTERVAL + 0.1)
                self._ocspd_counters(run, before, metrics(server))
            self._check(run)
            print(
                f"  {run.server:<16} {scenario.title:<18} {result.rps:9.0f} req/s  "
                f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                f"errors {result.status}/{result.socket_errors}  "
                f"CPU {run.cpu_us_per_request(run.server_cpu_s):.1f}"
                f"{f' + {run.cpu_us_per_request(run.db_cpu_s):.1f} PG' if ours else ''} µs/req  "
                f"{'; '.join(run.problems)}",
                flush=True,
            )
            self.runs.append(run)
            return run
        finally:
            if target == "openssl":
                stop_openssl(self.procs, server)

    def run_side_by_side(self, scenario: Scenario, round_number: int) -> list[Run]:
        """The audit cost measured at one moment: ocspd with and without the request audit,
        each loaded by its own wrk with half the connections, at the same time. Both get the
        same share of the cores and suffer the same noise, so their throughput ratio is
        their CPU-per-response ratio, steadier than two runs taken one after the other."""
        a = self.args
        assert self.ocspd_no_audit is not None
        servers = [
            (self.ocspd, "ocspd, side by side"),
            (self.ocspd_no_audit, "ocspd, audit off, side by side"),
        ]
        sample = scenario.sample()
        sizes = []
        for server, _ in servers:
            reply = send(server.port, sample)
            check_answer(reply, sample, ocsp.OCSPCertStatus.GOOD, scenario.responder)
            sizes.append(reply.raw_size)
        connections = max(1, a.connections // 2)
        threads = max(1, a.threads // 2)

        def load(seconds: float) -> list[WrkResult]:
            with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
                futures = [
                    pool.submit(
                        run_wrk, server.url, scenario, seconds, connections, threads,
                        self.work / f"wrk-{i}.log",
                    )
                    for i, (server, _) in enumerate(servers)
                ]  # fmt: skip
                return [f.result() for f in futures]

        load(self.warmup)
        time.sleep(1.1)
        before = [metrics(server) for server, _ in servers]
        pids = []
        for server, _ in servers:
            assert server.process is not None
            pids.append(group_pids(server.process.pid))
        cpu_before = [cpu_seconds(p) for p in pids]
        results = load(self.seconds)
        cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu_before, strict=True)]
        time.sleep(1.1)
        runs = []
        for (server, name), result, used, counts, size in zip(
            servers, results, cpu, before, sizes, strict=True
        ):
            run = Run(scenario, name, result, round_number, size, used)
            self._ocspd_counters(run, counts, metrics(server))
            self._check(run)
            print(
                f"  {name:<30} {scenario.title:<12} {result.rps:9.0f} req/s  "
                f"p99 {result.p99_ms:6.2f} ms  CPU {run.cpu_us_per_request(used):.1f} µs/req  "
                f"{'; '.join(run.problems)}",
                flush=True,
            )
            runs.append(run)
        self.runs += runs
        return runs

    def _ocspd_counters(self, run: Run, before: dict[str, float], after: dict[str, float]) -> None:
        outcomes = counter_delta(before, after, "ocspd_requests_total", "outcome")
        cache = counter_delta(before, after, "ocspd_cache_lookups_total", "result")
        total = sum(outcomes.values())
        bad = {k: v for k, v in outcomes.items() if k not in ("successful", "not_modified") and v}
        notes = [f"server saw {total} requests, {outcomes['successful']} successful"]
        if bad:
            run.problems.append("server outcomes " + ", ".join(f"{k}={v}" for k, v in bad.items()))
        lookups = sum(cache.values())
        if lookups:
            notes.append(f"cache hits {100 * cache['hit'] / lookups:.1f} %")
        signed = after.get(SIGNING + "_count", 0.0) - before.get(SIGNING + "_count", 0.0)
        if signed and run.scenario.nonce:
            spent = after.get(SIGNING + "_sum", 0.0) - before.get(SIGNING + "_sum", 0.0)
            notes.append(f"signing {1000 * spent / signed:.2f} ms mean, slot wait included")
        refused = after.get(REFUSED, 0.0) - before.get(REFUSED, 0.0)
        if refused:
            run.problems.append(f"{refused:.0f} signatures refused (tryLater)")
        run.server_note = "; ".join(notes)

    def _check(self, run: Run) -> None:
        r = run.result
        if r.requests == 0:
            run.problems.append("no responses")
            return
        if r.status:
            run.problems.append(f"{r.status} non-2xx")
        if r.socket_errors:
            run.problems.append(
                f"socket errors connect={r.connect} read={r.read} write={r.write} "
                f"timeout={r.timeout}"
            )
        # An OCSP error (tryLater, malformedRequest, ...) comes with HTTP 200 and 5 octets of
        # body: the mean size shows any share of them that matters.
        if abs(r.mean_size - run.expected_size) > SIZE_TOLERANCE * run.expected_size:
            run.problems.append(
                f"mean response {r.mean_size:.0f} B, checked one {run.expected_size} B"
            )


def postgres_backends(db_name: str) -> list[int]:
    async def go() -> list[int]:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", db_name)
            return [int(r["pid"]) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(go())


# --- profile -----------------------------------------------------------------------------

# Where a sample's time goes: the first match walking from the innermost frame outwards.
_CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    ("PKCS#11 signing (python-pkcs11, SoftHSM2)", re.compile(r"pkcs11")),
    ("ECDSA signing (cryptography, in-process)", re.compile(r"sign_sync|filekey\.py")),
    ("Prometheus multiprocess metrics", re.compile(r"prometheus_client")),
    ("status database (asyncpg)", re.compile(r"asyncpg")),
    ("OCSP request parsing (der.py, request.py)", re.compile(r"ocspd/protocol/(der|request)\.py")),
    ("OCSP response encoding (response.py)", re.compile(r"ocspd/protocol/response\.py")),
    ("response cache (cache.py)", re.compile(r"ocspd/sources/cache\.py")),
    ("live source (live.py)", re.compile(r"ocspd/sources/live\.py")),
    ("ocspd HTTP handler (http.py)", re.compile(r"ocspd/http\.py")),
    ("request audit records (ocspd/audit)", re.compile(r"ocspd/audit/")),
    ("ocspd HTTP/1.1 server (httpserver.py, httptools)", re.compile(r"httpserver\.py|httptools")),
    ("aiohttp (parsing, routing, response)", re.compile(r"aiohttp/")),
    ("logging", re.compile(r"/logging/")),
]


@dataclass
class Profile:
    scenario: str
    samples: int
    categories: list[tuple[str, float]]
    top_self: list[tuple[str, float]]


def _frame_name(frame: str) -> str:
    match = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    function, path = match[1], match[2]
    for marker in ("site-packages/", "/main/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3.":
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    return f"{function} ({path})"


def summarize_profile(raw: Path, scenario: str) -> Profile:
    categories: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_time[_frame_name(frames[-1])] += count
        for frame in reversed(frames):
            name = next((n for n, pattern in _CATEGORIES if pattern.search(frame)), None)
            if name:
                categories[name] += count
                break
        else:
            categories["other (event loop, asyncio, stdlib)"] += count
    share = [(name, 100 * n / total) for name, n in categories.most_common()] if total else []
    top = [(name, 100 * n / total) for name, n in self_time.most_common(12)] if total else []
    return Profile(scenario, total, share, top)


def profile_ocspd(bench: Bench, scenario: Scenario, seconds: float) -> Profile | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found: no profile (pip install py-spy)")
        return None
    assert bench.ocspd.process is not None
    workers = [
        pid for pid in group_pids(bench.ocspd.process.pid)
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]  # fmt: skip
    if not workers:
        return None
    raw = bench.work / f"profile-{scenario.key}.txt"
    command = [
        py_spy, "record", "--pid", str(workers[0]), "--duration", f"{seconds:.0f}", "--rate",
        "200", "--format", "raw", "--output", str(raw), "--nonblocking",
    ]  # fmt: skip
    spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    a = bench.args
    load = threading.Thread(
        target=run_wrk,
        args=(
            bench.ocspd.url,
            scenario,
            seconds + 2,
            a.connections,
            a.threads,
            bench.work / "wrk.log",
        ),
    )
    load.start()
    output = spy.communicate(timeout=seconds + 60)[0].decode(errors="replace")
    load.join()
    if spy.returncode != 0 or not raw.exists():
        print(f"py-spy failed ({spy.returncode}): {output.strip()[-500:]}")
        return None
    return summarize_profile(raw, scenario.title)


# --- report ------------------------------------------------------------------------------


def _pick(runs: Sequence[Run], scenario: str, server: str) -> Run | None:
    """The run with the median throughput among the rounds."""
    found = sorted(
        (r for r in runs if r.scenario.key == scenario and r.server == server),
        key=lambda r: r.result.rps,
    )
    return found[(len(found) - 1) // 2] if found else None


def _cpu_per_response(run: Run) -> float:
    return run.cpu_us_per_request(run.server_cpu_s + run.db_cpu_s)


def _cpu_ratio(runs: Sequence[Run], ours_run: tuple[str, str], theirs_run: tuple[str, str]) -> str:
    """Median CPU per response of (scenario, server) theirs_run over that of ours_run."""
    ours = [_cpu_per_response(r) for r in runs if (r.scenario.key, r.server) == ours_run]
    theirs = [_cpu_per_response(r) for r in runs if (r.scenario.key, r.server) == theirs_run]
    if not ours or not theirs or not statistics.median(ours):
        return ""
    return f"{statistics.median(theirs) / statistics.median(ours):.2f}x"


def _ratio(a: Run | None, b: Run | None) -> float | None:
    if a is None or b is None or not b.result.rps:
        return None
    return a.result.rps / b.result.rps


def report(
    bench: Bench,
    command: str,
    started: dt.datetime,
    state: str,
    load: str,
    profiles: list[Profile],
) -> tuple[str, bool]:
    """The generated markdown, and whether every check passed."""
    a = bench.args
    lines = [
        f"Command: `{command}` ({started:%Y-%m-%d %H:%M} UTC, {state} when it started; "
        f"{os.cpu_count()} cores, load "
        f"average before start {load}; Python {platform.python_version()}, aiohttp "
        f"{version('aiohttp')}, uvloop {version('uvloop')}, {openssl_version()}, "
        f"{wrk_version()}, PostgreSQL on 127.0.0.1; request audit records chained "
        f"{'in C, ocspd.audit._chain' if CHAIN_IN_C else 'in Python: ocspd.audit._chain not built'}"
        ").",
        "",
        f"{a.count} leaves of one issuing CA ({100 // REVOKED_EVERY} % revoked); a delegated "
        f"responder with a P-256 key in a file. `ocspd serve --workers {a.workers}` "
        '(`[responder] nonce = "echo"`), `openssl ocsp -multi '
        f"{a.workers}` and the aiohttp ceiling ({a.workers} uvloop processes, SO_REUSEPORT) take "
        f"turns; wrk -t{a.threads} -c{a.connections}, {bench.seconds:g} s per run "
        f"({a.rounds} round{'s' if a.rounds > 1 else ''}"
        f"{', median run shown' if a.rounds > 1 else ''}), on the same cores as the servers. "
        f"Cached runs follow a {bench.warmup:g} s warm-up that fills every worker's cache. "
        "Requests name good certificates only, SHA-1 CertIDs; the nonce run rotates through "
        f"{a.nonces} pre-generated requests with distinct "
        "32-octet nonces (neither server remembers nonces, so a repeat after that many "
        "requests costs them the same as a new one).",
        "",
        hsm_paragraph(bench),
        "",
        "| scenario | server | req/s | p50 ms | p90 ms | p99 ms | max ms | non-2xx | socket errors "
        "| CPU µs/req | checks |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = [("get", "aiohttp ceiling"), ("get", "ocspd"), ("get", "openssl ocsp"),
             ("post", "aiohttp ceiling"), ("post", "ocspd"), ("post", "ocspd, audit off"),
             ("post", "openssl ocsp"), ("post", "ocspd, side by side"),
             ("post", "ocspd, audit off, side by side"),
             ("nonce", "ocspd"), ("nonce", "openssl ocsp"), ("nonce-hsm", "ocspd")]  # fmt: skip
    for key, server in order:
        run = _pick(bench.runs, key, server)
        if run is None:
            continue
        r = run.result
        checks = "; ".join(run.problems) or "ok"
        if run.server_note:
            checks += f" ({run.server_note})"
        cpu = f"{run.cpu_us_per_request(run.server_cpu_s):.0f}"
        if server.startswith("ocspd") and not server.endswith("side by side"):
            cpu += f" + {run.cpu_us_per_request(run.db_cpu_s):.0f} PG"
        lines.append(
            f"| {run.scenario.title} | {server} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p90_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.max_ms:.1f} | {r.status} | {r.socket_errors} "
            f"| {cpu} | {checks} |"
        )
    ok = all(not run.problems for run in bench.runs)
    shown = {id(_pick(bench.runs, k, n)) for k, n in order}
    for run in bench.runs:
        if run.problems and id(run) not in shown:
            lines.append(
                f"\nRound {run.round + 1}, {run.server}, {run.scenario.title} (not shown): "
                + "; ".join(run.problems)
            )
    lines += [
        "",
        "CPU is user + system time of the server's processes over the run per response (for "
        "ocspd, plus that of its PostgreSQL backends); wrk had the rest of the two cores. "
        "The side-by-side rows are ocspd with and without the request audit loaded at the same "
        "time, each by a wrk with half the connections and threads (their PostgreSQL time "
        "cannot be told apart, so it is left out).",
        "",
        "| ratio (req/s, same round) | median of rounds | per round | CPU/response ratio "
        "| target | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    runs = bench.runs

    def ratio_line(
        title: str, key: str, a: str, b: str, target: float | None, key_b: str | None = None
    ) -> None:
        """Server a on scenario key over server b on scenario key_b (default: the same)."""
        key_b = key_b or key
        # The median of the per-round ratios: each round's pair ran minutes apart at most,
        # so the pairing cancels slow drifts of the machine that medians taken separately
        # would not.
        per_round: list[float] = []
        failed = False
        for n in range(bench.args.rounds):
            this_round = [r for r in runs if r.round == n]
            ours, theirs = _pick(this_round, key, a), _pick(this_round, key_b, b)
            paired = _ratio(ours, theirs)
            if paired is not None:
                per_round.append(paired)
                failed = failed or bool(ours and ours.problems) or bool(theirs and theirs.problems)
        if not per_round:
            return
        value = statistics.median(per_round)
        cpu = _cpu_ratio(runs, (key, a), (key_b, b))
        if target is None:
            goal = verdict = "-"
        else:
            goal = f">= {target:g}x"
            verdict = "met" if value >= target else "**missed**"
            if failed:
                # tryLater answers are HTTP 200 too: a run that gave errors is not judged.
                verdict = "not judged: a run failed its checks"
        rounds = ", ".join(f"{x:.2f}" for x in per_round)
        lines.append(f"| {title} | {value:.2f}x | {rounds} | {cpu} | {goal} | {verdict} |")

    for key, name in (("get", "GET"), ("post", "POST")):
        ratio_line(
            f"ocspd cached {name} / openssl {name}",
            key,
            "ocspd",
            "openssl ocsp",
            TARGETS["ratio_openssl"],
        )
    for key, name in (("get", "GET"), ("post", "POST")):
        ratio_line(
            f"ocspd cached {name} / aiohttp ceiling {name}",
            key,
            "ocspd",
            "aiohttp ceiling",
            TARGETS["ratio_ceiling"],
        )
    ratio_line(
        "ocspd live P-256 + nonce / openssl + nonce",
        "nonce",
        "ocspd",
        "openssl ocsp",
        TARGETS["ratio_live"],
    )
    ratio_line(
        "ocspd live SoftHSM P-256 + nonce / openssl + nonce",
        "nonce-hsm",
        "ocspd",
        "openssl ocsp",
        TARGETS["ratio_live_hsm"],
        key_b="nonce",
    )
    ratio_line(
        "ocspd cached POST, audit on / audit off",
        "post",
        "ocspd",
        "ocspd, audit off",
        TARGETS["ratio_audit"],
    )
    ratio_line(
        "ocspd cached POST, audit on / audit off, side by side",
        "post",
        "ocspd, side by side",
        "ocspd, audit off, side by side",
        TARGETS["ratio_audit"],
    )
    ratio_line(
        "ocspd live SoftHSM / ocspd live file key (no target)",
        "nonce-hsm",
        "ocspd",
        "ocspd",
        None,
        key_b="nonce",
    )
    for key, name in (("get", "GET"), ("post", "POST")):
        run = _pick(runs, key, "ocspd")
        if run is not None:
            met = "met" if run.result.p99_ms <= TARGETS["p99_ms"] else "**missed**"
            if run.problems:
                met = "not judged: the run failed its checks"
            rounds = ", ".join(
                f"{r.result.p99_ms:.1f}"
                for r in runs
                if r.scenario.key == key and r.server == "ocspd"
            )
            lines.append(
                f"| ocspd cached {name} p99 | {run.result.p99_ms:.2f} ms | {rounds} | | <= "
                f"{TARGETS['p99_ms']:g} ms | {met} |"
            )
    lines += [
        "",
        "The CPU/response ratio is the peer's CPU per response over ocspd's (median over the "
        "rounds, PostgreSQL included for ocspd): the throughput ratio the two would reach if "
        "each had the same CPU to itself, which the noise of a shared machine disturbs less.",
    ]
    for profile in profiles:
        threads = (
            "of the time one of its threads, the event loop or the PKCS#11 thread, was not "
            "waiting, which includes time it was runnable but preempted"
            if profile.scenario.endswith("SoftHSM")
            else "of the time the worker was not waiting in epoll, which includes time it was "
            "runnable but preempted"
        )
        lines += [
            "",
            f"py-spy, one ocspd worker, {profile.scenario} ({profile.samples} samples, 200 Hz, "
            f"{threads}): where the time goes (innermost matching frame wins), and "
            "the functions with the most self time.",
            "",
            "| share | category |",
            "|---:|---|",
            *(f"| {share:.1f} % | {name} |" for name, share in profile.categories),
            "",
            "| self | function |",
            "|---:|---|",
            *(f"| {share:.1f} % | `{name}` |" for name, share in profile.top_self),
        ]
    return "\n".join(lines), ok


def hsm_paragraph(bench: Bench) -> str:
    if bench.hsm_note:
        return f"SoftHSM run (live POST + nonce, key in a PKCS#11 token) {bench.hsm_note}."
    return (
        "The SoftHSM run uses a second issuing CA (same root) with "
        f"{bench.args.count} good leaves, registered as a second issuer in the same database and "
        "served by the same `ocspd serve`: its delegated responder's P-256 key was imported "
        "into a fresh SoftHSM2 token (file object store; `softhsm2-util --import`) and is named "
        "by a `pkcs11:` URI with module-path and pin-source, SOFTHSM2_CONF set for ocspd. Its "
        "load is that of the nonce run, for this CA; ocspd signs on one PKCS#11 thread per "
        "worker. It runs against ocspd only; its ratio is taken against openssl's nonce run "
        "in the same round (openssl signing with the file key)."
    )


def source_state() -> str:
    """The commit measured, and any uncommitted changes to the responder's code."""
    root = BENCH_DIR.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "ocspd"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "source state unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"commit {commit}" + (f" + uncommitted {', '.join(changed)}" if changed else "")


def openssl_version() -> str:
    return (
        subprocess.run(["openssl", "version"], capture_output=True, text=True)
        .stdout.split("(")[0]
        .strip()
    )


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return " ".join(out.split()[:2])


def write_results(
    path: Path,
    generated: str,
    section_title: str = SECTION,
    begin: str = BEGIN,
    end: str = END,
) -> None:
    """Replace the generated block of `section_title` (bench/suite.py passes its own)."""
    block = f"{begin}\n{generated}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(section_title)
    if start < 0:
        text = text.rstrip("\n") + f"\n\n{section_title}\n\n{block}\n"
    else:
        nxt = text.find("\n## ", start + len(section_title))
        end_of_section = len(text) if nxt < 0 else nxt + 1
        section = text[start:end_of_section]
        if begin in section and end in section:
            head, rest = section.split(begin, 1)
            tail = rest.split(end, 1)[1]
            section = head + block + tail
        else:
            section = f"{section_title}\n\n{block}\n" + ("\n" if nxt >= 0 else "")
        text = text[:start] + section + text[end_of_section:]
    path.write_text(text)


# --- database and CLI --------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def admin_sql(sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def ocspd_cli(db_url: str, *args: str | Path, extra_env: dict[str, str] | None = None) -> str:
    env = {**os.environ, **(extra_env or {}), "OCSPD_DATABASE_URL": db_url}
    env.pop("OCSPD_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "ocspd", *map(str, args)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"ocspd {' '.join(map(str, args))} failed:\n{done.stderr}")
    return done.stdout


def load_database(db_url: str, pki: Pki, hsm: HsmIssuer | None) -> None:
    ocspd_cli(db_url, "db", "migrate")
    ocspd_cli(
        db_url, "issuer", "add", "bench", "--ca-cert", pki.ca_pem,
        "--responder-cert", pki.responder_pem, "--responder-key", f"file:{pki.responder_key}",
    )  # fmt: skip
    out = ocspd_cli(db_url, "cert", "import", "--issuer", "bench", pki.bundle).strip()
    print(f"  bundle import: {out}")
    # The index carries the revocations: importing it moves those certificates forward.
    out = ocspd_cli(db_url, "cert", "import", "--issuer", "bench", "--openssl-index", pki.index)
    print(f"  index import:  {out.strip()}")
    expected = f"bench: 0 added, {len(pki.revoked)} status changes applied"
    if not out.startswith(expected):
        raise RuntimeError(f"index import did not revoke {len(pki.revoked)} certificates: {out}")
    if hsm is not None:
        # `issuer add` opens the key (and checks it against the certificate): SOFTHSM2_CONF.
        ocspd_cli(
            db_url, "issuer", "add", "bench-hsm", "--ca-cert", hsm.ca_pem,
            "--responder-cert", hsm.responder_pem, "--responder-key", hsm.key_uri,
            extra_env=hsm.env,
        )  # fmt: skip
        out = ocspd_cli(db_url, "cert", "import", "--issuer", "bench-hsm", hsm.bundle).strip()
        print(f"  SoftHSM issuer, bundle import: {out}")


@contextlib.contextmanager
def database() -> Iterator[tuple[str, str]]:
    name = f"ocspd_bench_{secrets.token_hex(4)}"
    admin_sql(f"CREATE DATABASE {name}")
    try:
        yield name, with_database(ADMIN_URL, name)
    finally:
        admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="5 s runs, 2 s warm-up, shorter profile")
    p.add_argument("--duration", type=float, help="seconds per measured run (default 15, quick 5)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--workers", type=int, default=2, help="server processes of each server")
    p.add_argument("--count", type=int, default=1000, help="leaf certificates")
    p.add_argument("--nonces", type=int, default=20_000, help="pre-generated nonce requests")
    p.add_argument(
        "--rounds", type=int, help="repeat every run, the median is shown (default 3, quick 1)"
    )
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    p.add_argument("--no-hsm", action="store_true", help="leave out the SoftHSM run")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    p.add_argument("--no-results", action="store_true", help="print only; leave RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, PKI)")
    p.add_argument(
        "--scenarios",
        help="comma-separated subset of get,post,nonce,nonce-hsm (default all); the report's "
        "ratios then show only what ran",
    )
    p.add_argument(
        "--targets",
        help="comma-separated subset of ocspd,ocspd-no-audit,openssl,ceiling,side-by-side "
        "(default all; side-by-side: audit on and off loaded at the same time)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "openssl"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    seconds = args.duration or (5.0 if args.quick else 15.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    warmup = 2.0 if args.quick else 3.0
    started = dt.datetime.now(dt.UTC)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    state = source_state()  # the code the servers load, before others change it
    shown = ["bench/ocsp_bench.py", *(sys.argv[1:] if argv is None else argv)]
    command = f"{Path(sys.executable)} {shlex.join(shown)}"
    work = Path(tempfile.mkdtemp(prefix="ocsp-bench-"))
    ensure_audit_key()
    procs = Processes()
    ok = False
    try:
        with database() as (db_name, db_url):
            print(f"work directory {work}, database {db_name}")
            t = time.perf_counter()
            pki = make_pki(work, args.count)
            print(
                f"  PKI: {args.count} leaves, {len(pki.revoked)} revoked "
                f"({time.perf_counter() - t:.1f} s)"
            )
            hsm, hsm_note = None, ""
            module = softhsm_module()
            if args.no_hsm:
                hsm_note = "left out (--no-hsm)"
            elif module is None:
                hsm_note = "not run: softhsm2-util or libsofthsm2.so is not installed"
            else:
                t = time.perf_counter()
                hsm = make_hsm_issuer(work, pki.root, args.count, module)
                print(
                    f"  SoftHSM issuer: {args.count} leaves, key in token {HSM_TOKEN!r} "
                    f"({time.perf_counter() - t:.1f} s)"
                )
            if hsm_note:
                print(f"  SoftHSM run {hsm_note}")
            load_database(db_url, pki, hsm)
            scenarios = make_scenarios(pki, hsm, work, args.nonces)
            by_key = {s.key: s for s in scenarios}
            server = start_ocspd(procs, db_url, work, args.workers, hsm.env if hsm else {})
            check_ocspd(server, pki, by_key)
            no_audit = start_ocspd(
                procs,
                db_url,
                work,
                args.workers,
                {**(hsm.env if hsm else {}), "OCSPD_AUDIT_REQUESTS": "off"},
                name="ocspd, audit off",
            )
            sample = by_key["get"].sample()
            ceiling = start_ceiling(procs, work, args.workers, send(server.port, sample).body)
            bench = Bench(
                args,
                pki,
                work,
                procs,
                db_name,
                server,
                ceiling,
                seconds,
                warmup,
                hsm_note=hsm_note,
                ocspd_no_audit=no_audit,
            )
            chosen = set(args.scenarios.split(",")) if args.scenarios else set(by_key)
            targets = set(args.targets.split(",")) if args.targets else None
            for round_number in range(args.rounds):
                print(f"round {round_number + 1}/{args.rounds}")
                for scenario in scenarios:
                    if scenario.key not in chosen:
                        continue
                    for target in scenario.targets:
                        if targets is None or target in targets:
                            bench.run(scenario, target, round_number)
                    if scenario.key == "post" and (targets is None or "side-by-side" in targets):
                        bench.run_side_by_side(scenario, round_number)
            profiles = []
            if not args.no_profile:
                for key in ("post", "nonce", "nonce-hsm"):
                    if key not in by_key or key not in chosen:
                        continue
                    profile = profile_ocspd(bench, by_key[key], 6.0 if args.quick else 10.0)
                    if profile:
                        profiles.append(profile)
            if server.process is not None:
                procs.stop(server.process)  # its log is complete once it has stopped
            generated, ok = report(bench, command, started, state, load, profiles)
            log_problems = ocspd_log_problems(server.log)
            generated += "\n\n" + (
                "ocspd log: no warnings or errors."
                if not log_problems
                else "ocspd log, warnings and errors (count, message):\n\n"
                + "\n".join(f"- {n} x `{m}`" for m, n in log_problems.most_common(10))
            )
            print("\n" + generated + "\n")
            if not args.no_results:
                write_results(args.results, generated)
                print(f"updated {args.results}")
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def check_ocspd(server: Server, pki: Pki, scenarios: dict[str, Scenario]) -> None:
    """Before any load: good, revoked and nonce answers are right."""
    for scenario in scenarios.values():
        sample = scenario.sample()
        check_answer(
            send(server.port, sample), sample, ocsp.OCSPCertStatus.GOOD, scenario.responder
        )
    revoked = Sample(
        "POST", "/", ocsp_request(pki.revoked[0], pki.ca.cert, None), pki.revoked[0], None
    )
    check_answer(
        send(server.port, revoked), revoked, ocsp.OCSPCertStatus.REVOKED, pki.responder.cert
    )


def ocspd_log_problems(log: Path) -> Counter[str]:
    import json

    found: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                found[line.strip()[:160]] += 1
            continue
        if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
            message = str(entry.get("msg", ""))
            detail = str(entry.get("error") or entry.get("exception") or "")
            last = detail.splitlines()[-1] if detail else ""
            found[f"{entry['level']}: {message} {last}".strip()] += 1
    return found


if __name__ == "__main__":
    sys.exit(main())
