"""The performance story (issue 6): ocspd side by side with its peers, in one run on one machine.

    make bench            # .venv/bin/python bench/suite.py          (about 40 min)
    make bench QUICK=1    # .venv/bin/python bench/suite.py --quick  (about 2 min)

What one run does, in this order (every figure below comes from the same run):
  1. Setup: a throwaway PKI (ocsp_bench.make_pki: a root, an issuing CA "bench" with a P-256
     delegated responder, N leaves, 5 % revoked), a second issuing CA "bench-rsa" whose
     responder has an RSA-2048 key in a file, and a third, "bench-hsm", whose P-256 responder
     key sits in a fresh SoftHSM2 token (ocsp_bench.make_hsm_issuer). All three go into one
     fresh PostgreSQL database with `ocspd issuer add` and `ocspd cert import`.
  2. The servers, each with the same number of worker processes (2): `ocspd serve`, a second
     `ocspd serve` with OCSPD_AUDIT_REQUESTS=off, `openssl ocsp -multi 2` (fresh for every run,
     see ocsp_bench.start_openssl), django-ca's OCSPView (PyPI django-ca, a minimal Django
     project in a temporary directory, SQLite, served by gunicorn with 2 sync workers, the
     same CAs, responder keys and certificates), the aiohttp ceiling (bench/ceiling_app.py) and
     nginx (Debian's package, installed here when missing, serving one static response).
  3. Scenarios (wrk on the same host, bench/lua/*.lua), each at every concurrency (1, 16, 64,
     256 connections): cached GET, cached POST, live-signed POST with a nonce (P-256 file key,
     RSA-2048 file key, P-256 in SoftHSM2), and a mix (90 % good, 5 % revoked, 5 % never
     issued, no nonce). ocspd with request audit off runs the cached POST and the mix.
     Quick mode (the QUICK plan): 64 connections only, django-ca on the cached GET only,
     audit off only in 3a.
     The cached targets (GET and POST at 64 connections: ocspd, openssl, the ceiling) run
     twice more after the sweep, and are judged on the median of the 3 rounds.
  3a. Audit cost: ocspd with and without the request audit, loaded in turns (2 s slices,
     on-off-off-on ...; 10 s each a round), 3 rounds each of the cached POST and the mix;
     then one sustained round on the mix (30 s slices), where storing the records is paid
     in full.
  4. Memory: RSS of each ocspd worker (VmRSS) sampled every 10 s over 10 minutes of mixed load;
     growth is the median of the last minute's samples over the median of the first's (the
     audit's backlog of records, bounded by max_pending, comes and goes with the database's
     pace: one sample can land on a peak).
  5. Revocation propagation: 1 000 `ocspd revoke` under load; from each command's return to
     the first response that shows the certificate revoked.
  6. Database size: 10 000, 1 000 000 and 10 000 000 certificates (rows written with COPY,
     asyncpg copy_records_to_table), nonce requests spread over the whole set, so every
     request reads the database (a dedicated `ocspd serve` with cache_entries = 0).
  7. CRL signing time and peak memory at 10 000, 100 000 and 1 000 000 entries
     (bench/crl_db_bench.py, run as a child process).
  8. py-spy profiles of one ocspd worker where a throughput target is missed.
Results go to bench/RESULTS.md between this script's own generated markers, with PNG plots
(bench/suite-*.png, matplotlib from the `bench` extra). Quick mode writes a section of its own
and bench/suite-quick-*.png, leaving the full run's.

Needs: wrk, openssl, nginx and softhsm2 (apt-get install, done here when missing and
running as root; without softhsm2 its scenario is left out and the results say so), PostgreSQL (OCSPD_TEST_DATABASE_URL or
postgresql://postgres@127.0.0.1:5432/postgres, a superuser: the bulk load turns row triggers
off for its session), and the `bench` extra (matplotlib, django-ca, gunicorn, py-spy).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import asyncpg
import ocsp_bench as ob
from benchkit import ensure_audit_key
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp

from ocspd import devpki
from ocspd.metrics import PUBLISH_INTERVAL
from ocspd.model import serial_to_bytes

T = TypeVar("T")
BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SECTION = "## The performance story, side by side with peers (bench/suite.py)"
BEGIN = "<!-- suite.py: generated, begin -->"
END = "<!-- suite.py: generated, end -->"
# Quick mode writes a section and plots of its own: the full run's figures stay.
QUICK_SECTION = "## The performance story, quick subset (bench/suite.py --quick)"
QUICK_BEGIN = "<!-- suite.py --quick: generated, begin -->"
QUICK_END = "<!-- suite.py --quick: generated, end -->"
WORKERS = 2  # every server: one process per core of this machine

# Issue 6. Ratios are ocspd's req/s over the peer's at 64 connections, same run.
TARGETS = {
    "cached_vs_openssl": 2.5,
    "cached_vs_ceiling": 0.8,
    "cached_p99_ms": 10.0,
    "propagation_p99_s": 1.0,
    "crl_1m_seconds": 15.0,
    "crl_1m_mb": 300.0,
    "audit_ratio": 0.9,  # audit on costs at most 10 %
    "dbsize_p99_ratio": 1.2,
    "rss_growth": 0.05,
}
TARGET_CONNECTIONS = 64
# ocspd counts in plain integers and adds them to /metrics every PUBLISH_INTERVAL
# (ocspd/metrics.py): after a run the bench polls /metrics until they are there, for at most
# this long.
METRICS_LAG = PUBLISH_INTERVAL + 1.0

SYSTEMS = {
    "ocspd": "ocspd",
    "ocspd-noaudit": "ocspd, audit off",
    "openssl": "openssl ocsp",
    "django-ca": "django-ca",
    "ceiling": "aiohttp ceiling",
    "nginx": "nginx static",
}
PEERS = ("openssl", "django-ca", "ceiling", "nginx")
STATIC = ("ceiling", "nginx")  # fixed bytes: no OCSP logic, the ceiling of serving them

# Serials of rows written with COPY: 16 octets, a leading 0x7A (0x7B for the propagation
# targets), the row number and a multiplicative hash of it, so they rise with the row number
# (the primary key index grows at its right edge, as with a time-ordered CA) and still spread
# over the whole octet range.
_BULK_PREFIX = 0x7A
_TARGET_PREFIX = 0x7B
_MASK64 = (1 << 64) - 1


def bulk_serial(i: int, prefix: int = _BULK_PREFIX) -> int:
    return (prefix << 120) | (i << 64) | ((i * 0x9E3779B97F4A7C15) & _MASK64)


@dataclass(frozen=True)
class Plan:
    quick: bool
    seconds: float  # per measured run
    warmup: float  # cached scenarios, once per server
    concurrency: tuple[int, ...]
    leaves: int
    nonces: int
    db_sizes: tuple[int, ...]
    db_seconds: float
    db_rounds: int
    db_requests: int
    revocations: int
    revocation_rate: float  # per second
    soak_seconds: float
    soak_interval: float
    crl_sizes: tuple[int, ...]
    profile_seconds: float
    audit_rounds: int  # interleaved rounds of ocspd with and without the request audit
    # One more round on the mix with slices this long (0: none): 2 s slices end before a
    # backlog of records reaches its steady level, so they show what recording costs the
    # responder, not what storing costs at a sustained rate.
    audit_sustained_seconds: float
    # ocspd without the request audit in the scenario runs too, one run after the other: the
    # audit part judges the cost on interleaved rounds, these runs show it as the peers are.
    audit_off_runs: bool
    # Runs of the cached targets (ocspd, openssl, ceiling; GET and POST at 64 connections),
    # the sweep's included: the targets are judged on the median of the rounds.
    target_rounds: int


FULL = Plan(
    quick=False,
    seconds=10.0,
    warmup=3.0,
    concurrency=(1, 16, 64, 256),
    leaves=1000,
    nonces=20_000,
    db_sizes=(10_000, 1_000_000, 10_000_000),
    db_seconds=15.0,
    db_rounds=3,
    db_requests=50_000,
    revocations=1000,
    revocation_rate=20.0,
    soak_seconds=600.0,
    soak_interval=10.0,
    crl_sizes=(10_000, 100_000, 1_000_000),
    profile_seconds=10.0,
    audit_rounds=3,
    audit_sustained_seconds=30.0,
    audit_off_runs=True,
    target_rounds=3,
)
QUICK = Plan(
    quick=True,
    seconds=2.0,
    warmup=1.0,
    concurrency=(64,),
    leaves=200,
    nonces=4000,
    db_sizes=(10_000, 100_000),
    db_seconds=2.0,
    db_rounds=1,
    db_requests=8000,
    revocations=20,
    revocation_rate=20.0,
    soak_seconds=6.0,
    soak_interval=2.0,
    crl_sizes=(10_000, 100_000),
    profile_seconds=1.0,
    audit_rounds=3,
    audit_sustained_seconds=0.0,
    audit_off_runs=False,
    target_rounds=1,
)


# --- CAs and scenarios -------------------------------------------------------------------


@dataclass(frozen=True)
class Ca:
    """An issuing CA as the bench uses it: what requests name and what must sign answers."""

    name: str  # the ocspd issuer name
    cert: x509.Certificate
    responder: x509.Certificate
    good: tuple[x509.Certificate, ...]
    revoked: tuple[x509.Certificate, ...]
    pki: ob.Pki | None  # file key and index.txt for `openssl ocsp`; None: no openssl run
    django_prefix: str | None  # URL path in the django-ca project; None: not served there
    key_kind: str  # "P-256 file key", ...

    @property
    def name_hash(self) -> bytes:
        return hashlib.sha1(self.cert.subject.public_bytes()).digest()  # the CertID's hash

    @property
    def key_hash(self) -> bytes:
        return x509.SubjectKeyIdentifier.from_public_key(self.cert.public_key()).digest


def request_by_serial(ca: Ca, serial: int, nonce: bytes | None = None) -> bytes:
    """An OCSP request for any serial of `ca`, issued or not (no certificate needed)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        ca.name_hash, ca.key_hash, serial, hashes.SHA1()
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Case:
    """A scenario: one kind of load, run against `systems` at every concurrency."""

    key: str
    title: str
    script: Path  # wrk script (bench/lua)
    records: Path  # its records file (ocsp_bench.write_records)
    method: str
    nonce: bool
    cached: bool  # warm every server up once before its first measured run
    ca: Ca
    systems: tuple[str, ...]
    kinds: tuple[str, ...] = ("good",)  # what the checks before each run ask about
    note: str = ""


@dataclass(frozen=True)
class Probe:
    kind: str  # good, revoked, unknown
    method: str
    path: str
    body: bytes
    serial: int
    nonce: bytes | None


def probe(case: Case, kind: str) -> Probe:
    ca = case.ca
    nonce = secrets.token_bytes(ob.NONCE_BYTES) if case.nonce else None
    if kind == "unknown":
        serial = devpki.random_serial()
        der = request_by_serial(ca, serial, nonce)
    else:
        cert = secrets.choice(ca.good if kind == "good" else ca.revoked)
        serial = cert.serial_number
        der = ob.ocsp_request(cert, ca.cert, nonce)
    if case.method == "GET":
        return Probe(kind, "GET", ob.get_path(der), b"", serial, None)
    return Probe(kind, "POST", "/", der, serial, nonce)


def expected_answer(system: str, kind: str) -> str:
    # django-ca answers a serial it does not know with internalError (views.py: fail()).
    if kind == "unknown" and system == "django-ca":
        return "internalError"
    return kind


class CheckFailed(Exception):
    pass


_STATUS = {
    "good": ocsp.OCSPCertStatus.GOOD,
    "revoked": ocsp.OCSPCertStatus.REVOKED,
    "unknown": ocsp.OCSPCertStatus.UNKNOWN,
}


def check_reply(reply: ob.Reply, p: Probe, expect: str, responder: x509.Certificate) -> None:
    """Successful, about the serial asked, the expected status, signed by the responder (ECDSA
    or RSA), echoing the nonce when one was sent."""
    if reply.status != 200:
        raise CheckFailed(f"HTTP {reply.status}: {reply.body[:200]!r}")
    response = ocsp.load_der_ocsp_response(reply.body)
    if expect == "internalError":
        if response.response_status is not ocsp.OCSPResponseStatus.INTERNAL_ERROR:
            raise CheckFailed(f"OCSP status {response.response_status.name}, not internalError")
        return
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise CheckFailed(f"OCSP status {response.response_status.name} for a {p.kind} serial")
    if response.serial_number != p.serial:
        raise CheckFailed(f"answer for serial {response.serial_number:x}, asked {p.serial:x}")
    if response.certificate_status is not _STATUS[expect]:
        raise CheckFailed(f"status {response.certificate_status.name}, expected {expect}")
    key = responder.public_key()
    algorithm = response.signature_hash_algorithm
    assert algorithm is not None
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm)
    else:
        raise CheckFailed(f"unexpected responder key {type(key).__name__}")
    echoed = None
    with contextlib.suppress(x509.ExtensionNotFound):
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    if echoed != p.nonce:
        raise CheckFailed(f"nonce {echoed!r} in the response, sent {p.nonce!r}")


def send(port: int, p: Probe, prefix: str = "/") -> ob.Reply:
    path = prefix.rstrip("/") + p.path if p.method == "GET" else prefix
    content_type = "application/ocsp-request" if p.method == "POST" else None
    return ob.http_exchange(port, p.method, path, p.body, content_type)


def make_rsa_pki(directory: Path, root: devpki.Issued, count: int) -> ob.Pki:
    """An issuing CA whose delegated responder has an RSA-2048 key in a file; good leaves only.
    An ocsp_bench.Pki, so `openssl ocsp` can serve it too (start_openssl)."""
    directory.mkdir()
    ca = devpki.make_ca("Bench RSA Issuing CA", issuer=root)
    responder = devpki.make_responder(
        "Bench RSA Issuing CA OCSP", ca, key=devpki.new_key("rsa2048")
    )
    leaf_key = devpki.new_key()
    leaves = [devpki.make_leaf(f"h{i}.rsa.bench.example", ca, leaf_key) for i in range(count)]
    index = directory / "index.txt"
    with index.open("w") as f:
        for cert in leaves:
            expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
            dn = "/" + "/".join(reversed(cert.subject.rfc4514_string().split(",")))
            f.write(f"V\t{expiry}\t\t{cert.serial_number:X}\tunknown\t{dn}\n")
    return ob.Pki(
        dir=directory,
        root=root,
        ca=ca,
        responder=responder,
        good=leaves,
        revoked=[],
        ca_pem=devpki.write_cert(directory / "ca.pem", ca.cert),
        responder_pem=devpki.write_cert(directory / "responder.pem", responder.cert),
        responder_key=devpki.write_key(directory / "responder.key", responder.key),
        bundle=devpki.write_cert(directory / "bundle.pem", *leaves),
        index=index,
    )


def make_cases(cas: dict[str, Ca], work: Path, plan: Plan) -> list[Case]:
    bench = cas["bench"]
    lua = ob.LUA_DIR
    plain = [ob.ocsp_request(c, bench.cert, None) for c in bench.good]
    get_file = ob.write_records(work / "get.bin", [ob.get_path(d).encode() for d in plain])
    post_file = ob.write_records(work / "post.bin", plain)
    # The mix: 90 % good, 5 % revoked, 5 % never issued; no nonce, so every server may answer
    # from whatever cache it has; shuffled with a fixed seed.
    rng = random.Random(6)
    n = 2000
    mix = [
        ob.ocsp_request(bench.good[i % len(bench.good)], bench.cert, None)
        for i in range(n * 90 // 100)
    ]
    mix += [
        ob.ocsp_request(bench.revoked[i % len(bench.revoked)], bench.cert, None)
        for i in range(n * 5 // 100)
    ]
    mix += [request_by_serial(bench, devpki.random_serial()) for _ in range(n * 5 // 100)]
    rng.shuffle(mix)
    mix_file = ob.write_records(work / "mix.bin", mix)
    all_peers = ("ocspd", "openssl", "django-ca", "ceiling", "nginx")
    audit_off = ("ocspd-noaudit",) if plan.audit_off_runs else ()
    # django-ca signs every answer (some 300 a second here, whatever the scenario): in quick
    # mode one run, the cached GET, shows that it works and where it stands.
    django = () if plan.quick else ("django-ca",)
    cases = [
        Case("get", "cached GET", lua / "get.lua", get_file, "GET", False, True, bench, all_peers),
        Case(
            "post", "cached POST", lua / "post.lua", post_file, "POST", False, True, bench,
            ("ocspd", "openssl", *django, "ceiling", "nginx", *audit_off),
        ),
        Case(
            "mix", "mix 90/5/5 (POST)", lua / "post.lua", mix_file, "POST", False, True, bench,
            ("ocspd", *audit_off, "openssl", *django), ("good", "revoked", "unknown"),
            note="Static servers answer one fixed response: their ratio uses their cached POST run",
        ),
    ]  # fmt: skip
    for key, ca_key, systems in (
        ("nonce-p256", "bench", ("ocspd", "openssl", *django)),
        ("nonce-rsa", "bench-rsa", ("ocspd", "openssl", *django)),
        ("nonce-hsm", "bench-hsm", ("ocspd",)),
    ):
        ca = cas.get(ca_key)
        if ca is None:
            continue
        records = ob.write_records(
            work / f"{key}.bin", ob.nonce_requests(list(ca.good), ca.cert, plan.nonces)
        )
        note = ""
        if key == "nonce-hsm":
            note = (
                "Only ocspd runs it (the peers have no PKCS#11 key here): its ratios use the "
                "peers' P-256 file-key nonce runs"
            )
        cases.append(
            Case(
                key, f"live POST + nonce, {ca.key_kind}", lua / "post.lua", records, "POST",
                True, False, ca, systems, note=note,
            )
        )  # fmt: skip
    return cases


# --- peers: nginx and django-ca ----------------------------------------------------------


def ensure_debian_tools(tools: dict[str, str]) -> list[str]:
    """apt-get install what is missing (as root); returns what is still missing."""

    def present(tool: str) -> bool:
        return (nginx_binary() if tool == "nginx" else shutil.which(tool)) is not None

    missing = sorted({pkg for tool, pkg in tools.items() if not present(tool)})
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {', '.join(missing)} (apt-get)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env,
            check=False,
        )
    return [tool for tool in tools if not present(tool)]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )


def start_nginx(procs: ob.Processes, workers: int, body: bytes, cleanup: list[Path]) -> ob.Server:
    """nginx as a child process on a free port: every GET and POST gets one static file, with
    the cache headers ocspd sends. A POST to a static file is 405 in nginx; error_page turns
    that into the same file with status 200 (an internal redirect, as GET)."""
    binary = nginx_binary()
    assert binary is not None
    home = Path(tempfile.mkdtemp(prefix="ocspd-bench-nginx-"))
    cleanup.append(home)
    home.chmod(0o755)  # the workers run as nobody
    (home / "response.der").write_bytes(body)
    (home / "response.der").chmod(0o644)
    port = ob.free_port()
    conf = home / "nginx.conf"
    conf.write_text(
        textwrap.dedent(f"""\
        worker_processes {workers};
        daemon off;
        master_process on;
        pid {home}/nginx.pid;
        error_log {home}/error.log warn;
        events {{ worker_connections 8192; }}
        http {{
            access_log off;
            keepalive_requests 10000000;
            client_body_temp_path {home}/client_body;
            proxy_temp_path {home}/proxy;
            fastcgi_temp_path {home}/fastcgi;
            uwsgi_temp_path {home}/uwsgi;
            scgi_temp_path {home}/scgi;
            server {{
                listen 127.0.0.1:{port} reuseport backlog=2048;
                location / {{
                    root {home};
                    default_type application/ocsp-response;
                    add_header Cache-Control "max-age=3600, public, no-transform, must-revalidate";
                    rewrite ^ /response.der break;
                    error_page 405 =200 /response.der;
                }}
            }}
        }}
        """)
    )
    log = home / "error.log"
    log.touch()
    process = procs.start([binary, "-p", home, "-c", conf, "-e", log], log)
    ob.wait_for(
        "nginx",
        lambda: (
            ob.http_exchange(port, "POST", "/", b"0", "application/ocsp-request", 1).status == 200
        ),
        process,
        log,
    )
    return ob.Server("nginx static", port, process, log)


DJANGO_SETTINGS = """\
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_ca",
]
# CommonMiddleware (in every new Django project) sets Content-Length; without it gunicorn
# answers chunked.
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "benchurls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(HERE / "db.sqlite3")}}
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "django-ca": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(HERE / "files"), "file_permissions_mode": 0o600},
    },
}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "ERROR"},
}
"""

DJANGO_URLS = """\
import json
from datetime import timedelta
from pathlib import Path

from django.urls import path, re_path
from django_ca.views import OCSPView

VIEWS = json.loads((Path(__file__).resolve().parent / "views.json").read_text())
urlpatterns = []
# Longer prefixes first: the CA served at the root would otherwise take /rsa/... too.
for prefix, v in sorted(VIEWS.items(), key=lambda item: -len(item[0])):
    # The view django-ca documents for a responder of your own: the CA by serial, the responder
    # key as a path in the django-ca storage, the responder certificate as PEM.
    view = OCSPView.as_view(
        ca=v["ca"], responder_key=v["key"], responder_cert=v["cert"], expires=timedelta(days=2)
    )
    urlpatterns += [path(prefix, view), re_path("^" + prefix + "(?P<data>.+)$", view)]
"""

DJANGO_WSGI = """\
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
"""

# Loads the CAs and their certificates through django-ca's own model methods.
DJANGO_LOAD = """\
import datetime as dt
import json
import sys

import django

django.setup()
from cryptography import x509
from django_ca.models import Certificate, CertificateAuthority
from django_ca.utils import int_to_hex

spec = json.loads(open(sys.argv[1]).read())
for ca_spec in spec:
    ca_cert = x509.load_pem_x509_certificate(open(ca_spec["ca"], "rb").read())
    ca = CertificateAuthority(name=ca_spec["name"], key_backend_alias="default",
                              key_backend_options={})
    ca.update_certificate(ca_cert)
    ca.save()
    revoked = set(ca_spec["revoked"])
    rows = []
    for path in ca_spec["bundles"]:
        for cert in x509.load_pem_x509_certificates(open(path, "rb").read()):
            row = Certificate(ca=ca)
            row.update_certificate(cert)
            if int_to_hex(cert.serial_number) in revoked:
                row.revoked = True
                row.revoked_date = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
                row.revoked_reason = "superseded"
            rows.append(row)
    Certificate.objects.bulk_create(rows, batch_size=500)
    print(ca_spec["name"], ca.serial, len(rows), "certificates", len(revoked), "revoked")
"""


@dataclass
class DjangoCa:
    server: ob.Server
    version: str
    note: str


def setup_django_ca(
    procs: ob.Processes, work: Path, cas: Sequence[Ca], workers: int
) -> tuple[DjangoCa | None, str]:
    """A minimal Django project with django-ca's OCSPView for each CA served by gunicorn; or
    None and why not."""
    try:
        dj_version = version("django-ca")
        version("gunicorn")
    except PackageNotFoundError as e:
        return None, (
            f"not run: {e.name} is not installed (pip install -e '.[bench]', which `make bench` "
            "does)"
        )
    project = work / "django-ca"
    (project / "files").mkdir(parents=True)
    (project / "settings.py").write_text(DJANGO_SETTINGS)
    (project / "benchurls.py").write_text(DJANGO_URLS)
    (project / "wsgi.py").write_text(DJANGO_WSGI)
    (project / "load.py").write_text(DJANGO_LOAD)
    views, spec = {}, []
    for ca in cas:
        if ca.django_prefix is None or ca.pki is None:
            continue
        key_name = f"{ca.name}-responder.key"
        shutil.copy(ca.pki.responder_key, project / "files" / key_name)
        views[ca.django_prefix] = {
            "ca": f"{ca.cert.serial_number:X}",
            "key": key_name,
            "cert": ca.responder.public_bytes(serialization.Encoding.PEM).decode(),
        }
        spec.append(
            {
                "name": ca.name,
                "ca": str(ca.pki.ca_pem),
                "bundles": [str(ca.pki.bundle)],
                "revoked": [f"{c.serial_number:X}" for c in ca.revoked],
            }
        )
    (project / "views.json").write_text(json.dumps(views))
    (project / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings", "PYTHONPATH": str(project)}
    log = project / "setup.log"
    for command in (
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        [sys.executable, "load.py", "spec.json"],
    ):
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
        with log.open("a") as f:
            f.write(f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            return None, (
                f"not run: `{shlex.join(command[1:])}` failed in the Django project: "
                f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}"
            )
        if done.stdout.strip():
            print("  django-ca: " + done.stdout.strip().replace("\n", "; "))
    port = ob.free_port()
    glog = project / "gunicorn.log"
    command = [
        sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind",
        f"127.0.0.1:{port}", "--backlog", "2048", "--chdir", str(project), "--log-level",
        "warning", "wsgi:application",
    ]  # fmt: skip
    process = procs.start(command, glog, env)
    ob.wait_for(
        "gunicorn (django-ca)",
        lambda: (
            ob.http_exchange(port, "POST", "/", b"x", "application/ocsp-request", 1).status == 200
        ),
        process,
        glog,
    )
    time.sleep(0.5)  # the second worker
    note = (
        f"django-ca {dj_version} (Django {version('django')}), its OCSPView for each CA "
        "(responder key file and certificate as configured for a responder of your own), "
        f"SQLite, gunicorn {version('gunicorn')} with {workers} sync workers, CommonMiddleware only"
    )
    return DjangoCa(ob.Server("django-ca", port, process, glog), dj_version, note), ""


# --- measuring ---------------------------------------------------------------------------


@dataclass
class Measurement:
    case: str
    system: str
    connections: int
    result: ob.WrkResult
    server_cpu_s: float
    db_cpu_s: float
    problems: list[str] = field(default_factory=list)
    note: str = ""
    round: int = 1  # later rounds: the cached targets again (Plan.target_rounds)

    def cpu_us(self) -> float:
        r = self.result.requests
        return (self.server_cpu_s + self.db_cpu_s) / r * 1e6 if r else 0.0

    @property
    def errors(self) -> int:
        return self.result.status + self.result.socket_errors


@dataclass
class Suite:
    plan: Plan
    work: Path
    procs: ob.Processes
    db_name: str
    db_url: str
    cas: dict[str, Ca]
    servers: dict[str, ob.Server]
    notes: dict[str, str]  # system -> why it is missing or how it was set up
    measurements: list[Measurement] = field(default_factory=list)
    warmed: set[tuple[str, str]] = field(default_factory=set)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.work / "wrk.log"

    def url(self, case: Case, system: str, server: ob.Server) -> str:
        if system == "django-ca":
            return server.url.rstrip("/") + "/" + (case.ca.django_prefix or "")
        return server.url

    def run(
        self, case: Case, system: str, connections: int, round_number: int = 1
    ) -> Measurement | None:
        plan = self.plan
        if system == "openssl":
            if case.ca.pki is None:
                return None
            server = ob.start_openssl(self.procs, case.ca.pki, self.work, WORKERS)
        elif system in self.servers:
            server = self.servers[system]
        else:
            return None
        ours = system.startswith("ocspd")
        url = self.url(case, system, server)
        threads = min(2, connections)
        try:
            expected_size = self.probe(case, system, server)
            self.warm(case, system, server)
            assert server.process is not None
            pids = ob.group_pids(server.process.pid)
            before = ob.metrics(server) if ours else {}
            backends = ob.postgres_backends(self.db_name) if ours else []
            cpu_before = ob.cpu_seconds(pids)
            db_before = {pid: ob.cpu_seconds([pid]) for pid in backends}
            result = ob.run_wrk(url, case, plan.seconds, connections, threads, self.log)
            server_cpu = ob.cpu_seconds(pids) - cpu_before
            after_backends = ob.postgres_backends(self.db_name) if ours else []
            db_cpu = sum(ob.cpu_seconds([p]) - db_before.get(p, 0.0) for p in after_backends)
            m = Measurement(
                case.key, system, connections, result, server_cpu, db_cpu, round=round_number
            )
            if ours:
                counters(m, before, published(server, before, result.requests))
            self._check(m, case, expected_size)
        except (CheckFailed, RuntimeError, OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            print(f"  {SYSTEMS[system]:<17} {case.title:<34} c={connections:<4} FAILED: {e}")
            zero = ob.WrkResult(0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
            m = Measurement(
                case.key, system, connections, zero, 0.0, 0.0, [f"failed: {first}"],
                round=round_number,
            )  # fmt: skip
            self.measurements.append(m)
            return m
        finally:
            if system == "openssl":
                ob.stop_openssl(self.procs, server)
        r = m.result
        title = case.title if round_number == 1 else f"{case.title}, round {round_number}"
        print(
            f"  {SYSTEMS[system]:<17} {title:<34} c={connections:<4} {r.rps:8.0f} req/s  "
            f"p50 {r.p50_ms:7.2f}  p99 {r.p99_ms:7.2f}  p99.9 {r.p999_ms:7.2f} ms  "
            f"errors {m.errors}  {'; '.join(m.problems)}",
            flush=True,
        )
        self.measurements.append(m)
        return m

    def probe(self, case: Case, system: str, server: ob.Server) -> int:
        """Checks one answer of each kind the case sends; returns the good answer's size."""
        prefix = "/" + (case.ca.django_prefix or "") if system == "django-ca" else "/"
        expected_size = 0
        for kind in case.kinds:
            p = probe(case, kind)
            reply = send(server.port, p, prefix)
            if system in STATIC:
                if reply.status != 200 or not reply.body.startswith(b"\x30"):
                    raise CheckFailed(f"{system} answered HTTP {reply.status}")
            else:
                check_reply(reply, p, expected_answer(system, kind), case.ca.responder)
            if kind == "good":
                expected_size = reply.raw_size
        return expected_size

    def warm(self, case: Case, system: str, server: ob.Server) -> None:
        """Once per server and cached case: fills every ocspd worker's cache and wakes the
        other servers up (openssl has no cache, and a run more would cost it a child)."""
        if not case.cached or system == "openssl" or (case.key, system) in self.warmed:
            return
        url = self.url(case, system, server)
        ours = system.startswith("ocspd")
        before = ob.metrics(server) if ours else {}
        result = ob.run_wrk(url, case, max(1, round(self.plan.warmup)), 64, 2, self.log)
        self.warmed.add((case.key, system))
        if ours:
            published(server, before, result.requests)  # before the next run counts from them

    def _check(self, m: Measurement, case: Case, expected_size: int) -> None:
        r = m.result
        if r.requests == 0:
            m.problems.append("no responses")
            return
        if r.status:
            m.problems.append(f"{r.status} non-2xx")
        if r.socket_errors:
            m.problems.append(
                f"socket errors connect={r.connect} read={r.read} write={r.write} "
                f"timeout={r.timeout}"
            )
        # One kind of answer per run (not the mix): a share of error answers (5 octets)
        # would show in the mean size.
        off = abs(r.mean_size - expected_size) > ob.SIZE_TOLERANCE * expected_size
        if len(case.kinds) == 1 and expected_size and off:
            m.problems.append(f"mean response {r.mean_size:.0f} B, checked one {expected_size} B")

    def find(
        self, case: str, system: str, connections: int, round_number: int = 1
    ) -> Measurement | None:
        for m in self.measurements:
            if (m.case, m.system, m.connections, m.round) == (
                case, system, connections, round_number,
            ):  # fmt: skip
                return m
        return None


# --- audit cost, interleaved ---------------------------------------------------------------

# Slices of one audit round: each server is loaded AUDIT_SLICE_SECONDS at a time, in turns.
AUDIT_SLICE_SECONDS = 2


@dataclass(frozen=True)
class AuditPair:
    """One round of the audit cost: ocspd with the request audit and without it, loaded in
    turns (audit_interleaved), each measurement the sum of its slices."""

    case: str
    round: int
    on: Measurement
    off: Measurement
    slice_seconds: float
    sustained: bool = False  # the long-slice round (Plan.audit_sustained_seconds)

    @property
    def ratio(self) -> float | None:
        return ratio(self.on, self.off)


def merge_results(results: Sequence[ob.WrkResult]) -> ob.WrkResult:
    """One WrkResult for the slices of a round: counts and times add up; the percentiles
    cannot be merged from wrk's summaries, so they are the slices' medians (max: the
    largest)."""

    requests = sum(r.requests for r in results)
    return ob.WrkResult(
        requests=requests,
        duration_s=sum(r.duration_s for r in results),
        bytes=sum(r.bytes for r in results),
        mean_ms=sum(r.mean_ms * r.requests for r in results) / requests if requests else 0.0,
        p50_ms=statistics.median([r.p50_ms for r in results]),
        p90_ms=statistics.median([r.p90_ms for r in results]),
        p99_ms=statistics.median([r.p99_ms for r in results]),
        p999_ms=statistics.median([r.p999_ms for r in results]),
        max_ms=max(r.max_ms for r in results),
        connect=sum(r.connect for r in results),
        read=sum(r.read for r in results),
        write=sum(r.write for r in results),
        status=sum(r.status for r in results),
        timeout=sum(r.timeout for r in results),
        client_cpu_s=sum(r.client_cpu_s for r in results),
    )


def audit_slices(plan: Plan) -> tuple[float, int]:
    """Seconds per slice and slices per server in one audit round: plan.seconds in all, in
    at least two slices (quick mode: two of 1 s)."""
    seconds = min(AUDIT_SLICE_SECONDS, plan.seconds / 2)
    return seconds, round(plan.seconds / seconds)


def audit_interleaved(
    suite: Suite, case: Case, connections: int, sustained: bool = False
) -> list[AuditPair]:
    """What recording every request costs (issue 5: at most 10 %), as a throughput ratio.

    Each round loads ocspd with the audit and ocspd without it in turns: slices of
    AUDIT_SLICE_SECONDS each, ordered on, off, off, on, on, ... so a drift in the machine's
    speed falls on both alike, with the sweep's wrk (2 threads, `connections`). On this
    shared host, a neighbour's burst moves one 10 s run by 10 to 20 %; spread over slices it
    weighs on both servers. Loading both at the same moment (the method before) was worse
    here: two identical servers side by side differed by up to 24 %, as the scheduler split
    two cores between six busy processes unevenly. Each slice also counts the database
    backends' CPU, and charges it to the server loaded then: the audit's COPYs go there.

    `sustained`: one round of four slices of plan.audit_sustained_seconds each instead."""
    systems = ("ocspd", "ocspd-noaudit")
    servers = [suite.servers[system] for system in systems]
    sizes = []
    for system, server in zip(systems, servers, strict=True):
        sizes.append(suite.probe(case, system, server))
        suite.warm(case, system, server)
    plan = suite.plan
    seconds, slices = audit_slices(plan)
    rounds = plan.audit_rounds
    if sustained:
        seconds, slices, rounds = plan.audit_sustained_seconds, 2, 1
    threads = min(2, connections)
    pairs = []
    for round_number in range(1, rounds + 1):
        before = [ob.metrics(server) for server in servers]
        results: list[list[ob.WrkResult]] = [[], []]
        cpu = [0.0, 0.0]
        db_cpu = [0.0, 0.0]
        for n in range(slices):
            for i in (0, 1) if n % 2 == 0 else (1, 0):
                server = servers[i]
                assert server.process is not None
                pids = ob.group_pids(server.process.pid)
                backends = ob.postgres_backends(suite.db_name)
                cpu_before = ob.cpu_seconds(pids)
                db_before = {pid: ob.cpu_seconds([pid]) for pid in backends}
                results[i].append(
                    ob.run_wrk(server.url, case, seconds, connections, threads, suite.log)
                )
                cpu[i] += ob.cpu_seconds(pids) - cpu_before
                db_cpu[i] += sum(
                    ob.cpu_seconds([p]) - db_before.get(p, 0.0)
                    for p in ob.postgres_backends(suite.db_name)
                )
        on, off = (
            Measurement(
                f"{case.key}, interleaved", system, connections, merge_results(results[i]),
                cpu[i], db_cpu[i], round=round_number,
            )
            for i, system in enumerate(systems)
        )  # fmt: skip
        for m, server, counts, size in zip((on, off), servers, before, sizes, strict=True):
            counters(m, counts, published(server, counts, m.result.requests))
            suite._check(m, case, size)
        pair = AuditPair(case.key, round_number, on, off, seconds, sustained)
        print(
            f"  audit interleaved {case.title:<22} {seconds:g} s slices, round {round_number}: on "
            f"{on.result.rps:8.0f} req/s, off {off.result.rps:8.0f} req/s, "
            f"{fmt_ratio(pair.ratio)}  {'; '.join(on.problems + off.problems)}",
            flush=True,
        )
        pairs.append(pair)
    return pairs


def case_title(cases: Sequence[Case], key: str) -> str:
    return next((c.title for c in cases if c.key == key), key)


def median_ratio(pairs: Sequence[AuditPair]) -> float | None:
    values = [
        p.ratio for p in pairs if p.ratio is not None and not (p.on.problems or p.off.problems)
    ]
    return statistics.median(values) if values else None


def published(server: ob.Server, before: dict[str, float], answered: int) -> dict[str, float]:
    """ocspd's /metrics once it counts at least `answered` requests more than `before` (what
    wrk counted; the workers publish their counts every PUBLISH_INTERVAL), or after
    METRICS_LAG."""
    deadline = time.monotonic() + METRICS_LAG
    while True:
        after = ob.metrics(server)
        counted = ob.counter_delta(before, after, "ocspd_requests_total", "outcome")
        if sum(counted.values()) >= answered or time.monotonic() >= deadline:
            return after
        time.sleep(0.05)


def counters(m: Measurement, before: dict[str, float], after: dict[str, float]) -> None:
    outcomes = ob.counter_delta(before, after, "ocspd_requests_total", "outcome")
    bad = {k: v for k, v in outcomes.items() if k not in ("successful", "not_modified") and v}
    if bad:
        m.problems.append("server outcomes " + ", ".join(f"{k}={v}" for k, v in bad.items()))
    cache = ob.counter_delta(before, after, "ocspd_cache_lookups_total", "result")
    lookups = sum(cache.values())
    notes = [f"{sum(outcomes.values())} answered"]
    if lookups:
        notes.append(f"cache hits {100 * cache['hit'] / lookups:.0f} %")
    refused = after.get(ob.REFUSED, 0.0) - before.get(ob.REFUSED, 0.0)
    if refused:
        m.problems.append(f"{refused:.0f} signatures refused (tryLater)")
    m.note = ", ".join(notes)


def ocspd_workers(server: ob.Server) -> list[int]:
    assert server.process is not None
    return sorted(
        pid
        for pid in ob.group_pids(server.process.pid)
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_wrk(
    url: str, script: Path, records: Path, connections: int, log: Path
) -> subprocess.Popen[str]:
    """wrk in the background until stop_wrk (SIGINT: wrk stops and reports)."""
    threads = min(2, connections)
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", "-d3600s", "--latency", "--timeout", "2s",
        "-s", str(script), url, "--", str(records), str(threads),
    ]  # fmt: skip
    with log.open("a") as f:
        f.write(f"$ {shlex.join(command)} (background)\n")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_wrk(process: subprocess.Popen[str], log: Path) -> str:
    process.send_signal(signal.SIGINT)
    try:
        out = process.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        out = process.communicate()[0]
    with log.open("a") as f:
        f.write(out + "\n")
    return out


def wrk_requests(output: str) -> int:
    match = re.search(r"BENCH_RESULT .*\brequests=(\d+)", output)
    return int(match[1]) if match else 0


def wrk_summary(output: str) -> str:
    match = re.search(r"BENCH_RESULT (.*)", output)
    if not match:
        return "no summary"
    v = dict(kv.split("=") for kv in match[1].split())
    seconds = float(v["duration_us"]) / 1e6
    return (
        f"{int(v['requests']) / seconds:,.0f} req/s, p99 {float(v['p99_us']) / 1000:.1f} ms, "
        f"{int(v['status']) + int(v['connect']) + int(v['read']) + int(v['write']) + int(v['timeout'])} errors"
    )


# --- memory ------------------------------------------------------------------------------


@dataclass
class Soak:
    seconds: float
    interval: float
    samples: dict[int, list[tuple[float, int]]]  # worker pid -> (t, VmRSS kB)
    load: str
    audit_pending: list[tuple[float, float]] = field(default_factory=list)  # (t, records)
    outcomes: dict[str, int] = field(default_factory=dict)  # ocspd's answers over the soak

    def window(self) -> int:
        """Samples in a minute (at least one, at most half the series)."""
        longest = max((len(s) for s in self.samples.values()), default=0)
        return max(1, min(round(60 / self.interval), longest // 2))

    def growth(self, pid: int) -> float:
        """Median of the last minute's samples over the median of the first minute's: a
        leak moves both, a peak of the audit backlog at one sample does not."""
        series = [kb for _, kb in self.samples[pid]]
        n = self.window()
        base = statistics.median(series[:n])
        return (statistics.median(series[-n:]) - base) / base if base else 0.0

    def raw_growth(self, pid: int) -> float:
        """Last sample over the first."""
        series = self.samples[pid]
        base = series[0][1]
        return (series[-1][1] - base) / base if base else 0.0


def soak(suite: Suite, cases: dict[str, Case]) -> Soak:
    """Mixed load on ocspd (the mix at 48 connections plus live nonce requests at 16) while
    sampling each worker's VmRSS. The first sample is taken after one interval of load."""
    plan = suite.plan
    server = suite.servers["ocspd"]
    workers = ocspd_workers(server)
    mix, nonce = cases["mix"], cases["nonce-p256"]
    loads = [
        start_wrk(server.url, mix.script, mix.records, 48, suite.log),
        start_wrk(server.url, nonce.script, nonce.records, 16, suite.log),
    ]
    samples: dict[int, list[tuple[float, int]]] = {pid: [] for pid in workers}
    pending: list[tuple[float, float]] = []
    before = ob.metrics(server)
    started = time.monotonic()
    try:
        tick = 1
        while True:
            due = started + tick * plan.soak_interval
            if due > started + plan.soak_seconds + 0.01:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            for pid in workers:
                samples[pid].append((time.monotonic() - started, vm_rss_kb(pid)))
            # Records answered but not yet stored, all workers (a gauge, livesum).
            values = ob.metrics(server)
            pending.append(
                (
                    time.monotonic() - started,
                    sum(
                        v for k, v in values.items() if k.startswith("ocspd_audit_pending_records")
                    ),
                )
            )
            tick += 1
    finally:
        outputs = [stop_wrk(p, suite.log) for p in loads]
    after = published(server, before, sum(wrk_requests(out) for out in outputs))
    outcomes = ob.counter_delta(before, after, "ocspd_requests_total", "outcome")
    load = f"mix c=48: {wrk_summary(outputs[0])}; live nonce c=16: {wrk_summary(outputs[1])}"
    print(
        f"  soak: {load}; answers { ({k: v for k, v in outcomes.items() if v}) }; audit "
        "records pending at most "
        f"{max((v for _, v in pending), default=0):,.0f}"
    )
    answered = {k: v for k, v in outcomes.items() if v}
    return Soak(plan.soak_seconds, plan.soak_interval, samples, load, pending, answered)


# --- revocation propagation --------------------------------------------------------------


def revoker_main(serials_file: Path, rate: float) -> int:
    """Child process: `ocspd revoke` for each serial (ocspd.cli.main in this process, so
    interpreter start-up is not paced with the revocations), printing the monotonic time
    each returned."""
    from ocspd import cli

    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    for i, serial in enumerate(serials_file.read_text().split()):
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink):
            code = cli.main(
                ["revoke", "--issuer", "bench", "--serial", serial, "--reason", "keyCompromise"]
            )
        returned = time.monotonic()
        print(f"{'DONE' if code == 0 else 'FAIL'} {i} {returned:.6f}", flush=True)
    return 0


@dataclass
class Propagation:
    count: int
    delays: list[float]  # seconds, one per revocation that showed
    missing: int  # never showed revoked within the timeout
    failed: int  # `ocspd revoke` failed
    load: str
    polls: int
    # Per revocation shown: delay, answers still good after the return, slowest single poll.
    detail: list[tuple[float, int, float]] = field(default_factory=list)
    # From the first command's return to the last one's: the rate the revoker achieved (one
    # command at a time, so a slow command under load holds up the next).
    returns_span: float = 0.0

    @property
    def achieved_rate(self) -> float | None:
        returned = self.count - self.failed
        return (returned - 1) / self.returns_span if returned > 1 and self.returns_span else None


async def _watch(
    port: int,
    requests: list[bytes],
    revoker: asyncio.subprocess.Process,
    timeout: float,
) -> tuple[list[float], list[tuple[float, int, float]], int, int, int, float]:
    import aiohttp

    delays: list[float] = []
    detail: list[tuple[float, int, float]] = []  # delay, answers still good, slowest poll
    not_successful: dict[str, int] = {}  # answers that were not `successful`, by status
    missing = failed = polls = 0
    url = f"http://127.0.0.1:{port}/"
    headers = {"Content-Type": "application/ocsp-request"}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as http:

        async def poll(i: int, returned: float) -> None:
            nonlocal missing, polls
            good = 0  # answers still saying good after the command returned
            slow = 0.0  # the slowest single poll
            while True:
                sent = time.monotonic()
                async with http.post(url, data=requests[i], headers=headers) as reply:
                    body = await reply.read()
                now = time.monotonic()
                polls += 1
                slow = max(slow, now - sent)
                response = ocsp.load_der_ocsp_response(body)
                ok = response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
                if ok and response.certificate_status is ocsp.OCSPCertStatus.REVOKED:
                    delays.append(now - returned)
                    detail.append((now - returned, good, slow))
                    return
                good += 1
                if not ok:
                    not_successful[response.response_status.name] = (
                        not_successful.get(response.response_status.name, 0) + 1
                    )
                if now - returned > timeout:
                    missing += 1
                    return
                await asyncio.sleep(0.01)

        tasks = []
        returns: list[float] = []
        assert revoker.stdout is not None
        async for raw in revoker.stdout:
            word, index, returned = raw.decode().split()
            if word != "DONE":
                failed += 1
                continue
            returns.append(float(returned))
            tasks.append(asyncio.create_task(poll(int(index), float(returned))))
        await revoker.wait()
        await asyncio.gather(*tasks)
    if not_successful:
        print(f"  propagation: answers that were not successful: {not_successful}")
    span = returns[-1] - returns[0] if returns else 0.0
    return delays, detail, missing, failed, polls, span


def propagation(suite: Suite, cases: dict[str, Case], targets: list[int]) -> Propagation:
    """`ocspd revoke` of each target (good certificates of "bench" written with COPY before
    ocspd started) at a steady rate while the mix loads ocspd at 16 connections; one poller
    per revoked serial (POST, no nonce, every 10 ms) from the moment the command returned
    until an answer says revoked."""
    server = suite.servers["ocspd"]
    bench = suite.cas["bench"]
    requests = [request_by_serial(bench, s) for s in targets]
    # Cached as good first, in both workers most likely: the feed must drop these entries.
    for der in requests:
        for _ in range(3):
            p = Probe("good", "POST", "/", der, 0, None)
            response = ocsp.load_der_ocsp_response(send(server.port, p).body)
            if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
                raise CheckFailed(
                    f"a propagation target got {response.response_status.name} before revocation"
                )
            status = response.certificate_status
            if status is not ocsp.OCSPCertStatus.GOOD:
                raise CheckFailed(f"a propagation target answered {status.name} before revocation")
    serials_file = suite.work / "revoke-serials.txt"
    serials_file.write_text("\n".join(f"{s:X}" for s in targets) + "\n")
    mix = cases["mix"]
    load = start_wrk(server.url, mix.script, mix.records, 16, suite.log)
    env = {**os.environ, **suite.extra_env, "OCSPD_DATABASE_URL": suite.db_url}
    env.pop("OCSPD_CONFIG", None)

    async def go() -> tuple[list[float], list[tuple[float, int, float]], int, int, int, float]:
        revoker = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--revoker", str(serials_file),
            "--rate", str(suite.plan.revocation_rate),
            env=env, stdout=asyncio.subprocess.PIPE,
            stderr=(suite.work / "revoker.log").open("w"),
        )  # fmt: skip
        return await _watch(server.port, requests, revoker, timeout=10.0)

    try:
        delays, detail, missing, failed, polls, span = asyncio.run(go())
    finally:
        out = stop_wrk(load, suite.log)
    result = Propagation(
        len(targets), delays, missing, failed, f"mix c=16: {wrk_summary(out)}", polls, detail,
        span,
    )  # fmt: skip
    for delay, good, slow in sorted(detail, reverse=True)[:3]:
        print(
            f"    slowest: {1000 * delay:.0f} ms, {good} answers still good after the return, "
            f"slowest single poll {1000 * slow:.0f} ms"
        )
    if delays:
        print(
            f"  propagation: {len(delays)} shown, p50 {1000 * pct(delays, 50):.0f} ms, "
            f"p99 {1000 * pct(delays, 99):.0f} ms, max {1000 * max(delays):.0f} ms; "
            f"missing {missing}, failed {failed}; revocations returned at "
            f"{result.achieved_rate or 0:.1f}/s; load {result.load}"
        )
    return result


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))  # nearest rank
    return ordered[k]


# --- database size -----------------------------------------------------------------------


async def copy_rows(
    db_url: str, issuer_id: int, first: int, count: int, prefix: int = _BULK_PREFIX
) -> float:
    """Rows first..first+count-1 straight into `certificates` with COPY (binary, asyncpg
    copy_records_to_table), 1 % revoked. The session runs with session_replication_role =
    replica (a superuser's setting), so the per-row triggers stay off: certificates_change_xid
    (the column default writes the same pg_current_xact_id()) and the issuer foreign key
    check (every row names the one registered issuer). CHECK constraints and indexes apply.
    Returns seconds."""
    started = time.perf_counter()
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("SET session_replication_role = replica")
        not_before = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        not_after = not_before + dt.timedelta(days=397)
        revoked_at = not_before + dt.timedelta(days=1)
        columns = (
            "issuer_id",
            "serial",
            "not_before",
            "not_after",
            "status",
            "revoked_at",
            "reason",
        )
        chunk = 500_000
        for start in range(first, first + count, chunk):
            end = min(first + count, start + chunk)

            def rows(a: int = start, b: int = end) -> Iterator[tuple[object, ...]]:
                for i in range(a, b):
                    serial = serial_to_bytes(bulk_serial(i, prefix))
                    if i % 100 == 99:
                        yield (issuer_id, serial, not_before, not_after, "revoked", revoked_at, 1)
                    else:
                        yield (issuer_id, serial, not_before, not_after, "good", None, None)

            await conn.copy_records_to_table("certificates", records=rows(), columns=columns)
    finally:
        await conn.close()
    return time.perf_counter() - started


async def _sql(url: str, *statements: str) -> list[object]:
    conn = await asyncpg.connect(url)
    try:
        return [await conn.fetchval(s) for s in statements]
    finally:
        await conn.close()


@dataclass
class DbSize:
    rows: int  # certificates in the table
    load_seconds: float  # COPY of the rows added for this size
    vacuum_seconds: float
    table_mb: float
    runs: list[ob.WrkResult]
    problems: list[str]

    @property
    def median(self) -> ob.WrkResult:
        ordered = sorted(self.runs, key=lambda r: r.p99_ms)
        return ordered[(len(ordered) - 1) // 2]


def database_sizes(suite: Suite) -> list[DbSize]:
    """Each size: COPY the rows up to it (ocspd stopped, so the load has the machine to
    itself), VACUUM ANALYZE and CHECKPOINT, then a dedicated `ocspd serve`
    with cache_entries = 0 (no response cache, no remembered status rows: every request reads
    the database) under nonce requests for serials drawn uniformly from the bulk rows."""
    plan = suite.plan
    bench = suite.cas["bench"]
    issuer_id = int(
        asyncio.run(_sql(suite.db_url, "SELECT id FROM issuers WHERE name = 'bench'"))[0]
    )
    results = []
    loaded = 0
    for size in plan.db_sizes:
        existing = int(asyncio.run(_sql(suite.db_url, "SELECT count(*) FROM certificates"))[0])
        add = max(0, size - existing)
        seconds = asyncio.run(copy_rows(suite.db_url, issuer_id, loaded, add))
        loaded += add
        t = time.perf_counter()
        asyncio.run(_sql(suite.db_url, "VACUUM (ANALYZE) certificates", "CHECKPOINT"))
        vacuum = time.perf_counter() - t
        table_bytes = asyncio.run(
            _sql(suite.db_url, "SELECT pg_total_relation_size('certificates')")
        )[0]
        print(
            f"  database: {existing + add:,} certificates ({add:,} added with COPY in "
            f"{seconds:.1f} s, VACUUM ANALYZE + CHECKPOINT {vacuum:.1f} s, "
            f"{int(table_bytes) / 1e6:,.0f} MB with indexes)",
            flush=True,
        )
        rng = random.Random(size)
        requests = [
            request_by_serial(
                bench, bulk_serial(rng.randrange(loaded)), secrets.token_bytes(ob.NONCE_BYTES)
            )
            for _ in range(plan.db_requests)
        ]
        records = ob.write_records(suite.work / f"db-{size}.bin", requests)
        case = Case(
            "db", "nonce, bulk serials", ob.LUA_DIR / "post.lua", records, "POST", True, False,
            bench, ("ocspd",),
        )  # fmt: skip
        server = ob.start_ocspd(
            suite.procs, suite.db_url, suite.work, WORKERS, suite.extra_env,
            name=f"ocspd-db-{size}", responder_extra="cache_entries = 0\n",
        )  # fmt: skip
        problems: list[str] = []
        runs = []
        try:
            # One probe for a bulk serial: good (or revoked, one row in 100), signed.
            serial = bulk_serial(rng.randrange(loaded))
            nonce = secrets.token_bytes(ob.NONCE_BYTES)
            p = Probe("good", "POST", "/", request_by_serial(bench, serial, nonce), serial, nonce)
            kind = "revoked" if ((serial >> 64) & ((1 << 56) - 1)) % 100 == 99 else "good"
            check_reply(send(server.port, p), p, kind, bench.responder)
            for _ in range(plan.db_rounds):
                before = ob.metrics(server)
                r = ob.run_wrk(server.url, case, plan.db_seconds, TARGET_CONNECTIONS, 2, suite.log)
                m = Measurement("db", "ocspd", TARGET_CONNECTIONS, r, 0.0, 0.0)
                counters(m, before, published(server, before, r.requests))
                suite._check(m, case, 0)
                problems += m.problems
                runs.append(r)
                print(
                    f"    {size:>11,} rows: {r.rps:7.0f} req/s  p50 {r.p50_ms:6.2f}  "
                    f"p99 {r.p99_ms:6.2f}  p99.9 {r.p999_ms:6.2f} ms  {m.note}",
                    flush=True,
                )
        finally:
            if server.process is not None:
                suite.procs.stop(server.process)
        results.append(
            DbSize(existing + add, seconds, vacuum, int(table_bytes) / 1e6, runs, problems)
        )
    return results


# --- CRL ---------------------------------------------------------------------------------


@dataclass
class CrlRow:
    entries: int
    seconds: float
    rss_mb: float
    size_mb: float


def crl_sizes(plan: Plan, log: Path) -> tuple[list[CrlRow], str]:
    """bench/crl_db_bench.py as a child (peak RSS of its own children is then crlgen's)."""
    command = [
        sys.executable, str(BENCH_DIR / "crl_db_bench.py"), "--sizes",
        ",".join(str(s) for s in plan.crl_sizes),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    with log.open("a") as f:
        f.write(f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}\n")
    rows = []
    for line in done.stdout.splitlines():
        match = re.match(r"^\| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", line)
        if match:
            rows.append(
                CrlRow(
                    int(match[1].replace(",", "")),
                    float(match[2]),
                    float(match[3]),
                    float(match[4]),
                )
            )
    problem = "" if done.returncode == 0 else f"crl_db_bench.py exited {done.returncode}"
    for row in rows:
        print(f"  CRL {row.entries:,} entries: {row.seconds:.2f} s, peak RSS {row.rss_mb:.0f} MB")
    return rows, problem


# --- report ------------------------------------------------------------------------------


def target_connections(plan: Plan) -> int:
    """The concurrency the targets are judged at: 64, or the plan's highest without it."""
    return TARGET_CONNECTIONS if TARGET_CONNECTIONS in plan.concurrency else max(plan.concurrency)


def _rps(m: Measurement | None) -> str:
    return f"{m.result.rps:,.0f}" if m is not None else "-"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def ratio(a: Measurement | None, b: Measurement | None) -> float | None:
    if a is None or b is None or not a.result.requests or not b.result.rps:
        return None
    return a.result.rps / b.result.rps


def peer_for(suite: Suite, case: Case, peer: str, c: int) -> tuple[Measurement | None, str]:
    """The peer's run to compare ocspd's with, and a mark when it is another scenario's."""
    m = suite.find(case.key, peer, c)
    if m is not None:
        return m, ""
    if peer in STATIC:
        return suite.find("post", peer, c), " (its POST)"
    if case.key == "nonce-hsm":
        return suite.find("nonce-p256", peer, c), " (file key)"
    return None, ""


def short_count(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1000)):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return f"{n:,}"


def tool_versions(django: DjangoCa | None) -> str:
    parts = [f"Python {platform.python_version()}", ob.openssl_version(), ob.wrk_version()]
    binary = nginx_binary()
    if binary:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True)
        parts.append((out.stderr or out.stdout).strip().replace("nginx version: ", ""))
    if django is not None:
        parts.append(f"django-ca {django.version}")
    with contextlib.suppress(Exception):
        server = asyncio.run(_sql(ob.ADMIN_URL, "SHOW server_version"))[0]
        parts.append(f"PostgreSQL {str(server).split()[0]} on 127.0.0.1")
    return ", ".join(parts)


def report(
    suite: Suite,
    cases: list[Case],
    header: list[str],
    audit: list[AuditPair],
    soak_result: Soak | None,
    prop: Propagation | None,
    db: list[DbSize],
    crl: list[CrlRow],
    profiles: list[ob.Profile],
    plots: list[tuple[str, str]],
    plot_note: str,
) -> tuple[str, list[tuple[str, str, str, str]]]:
    plan = suite.plan
    lines = list(header)
    verdicts: list[tuple[str, str, str, str]] = []  # target, measured, goal, verdict

    def verdict(name: str, measured: str, goal: str, ok: bool | None) -> None:
        verdicts.append(
            (name, measured, goal, "-" if ok is None else ("met" if ok else "**missed**"))
        )

    c = target_connections(plan)
    target_rounds = range(1, plan.target_rounds + 1)
    of_rounds = f", median of {plan.target_rounds} rounds" if plan.target_rounds > 1 else ""

    def judged(
        values: list[float | None], show: Callable[[float], str]
    ) -> tuple[float | None, str]:
        """The median of the rounds that measured, shown with every round."""
        measured = [v for v in values if v is not None]
        if not measured:
            return None, "n/a"
        value = statistics.median(measured)
        if len(values) == 1:
            return value, show(value)
        each = ", ".join("n/a" if v is None else show(v) for v in values)
        return value, f"{show(value)} (rounds {each})"

    for key in ("get", "post"):
        title = "cached GET" if key == "get" else "cached POST"
        ours = [suite.find(key, "ocspd", c, r) for r in target_rounds]
        for peer, target in (("openssl", "cached_vs_openssl"), ("ceiling", "cached_vs_ceiling")):
            value, shown = judged(
                [
                    ratio(o, suite.find(key, peer, c, r))
                    for r, o in zip(target_rounds, ours, strict=True)
                ],
                fmt_ratio,
            )
            verdict(
                f"{title} / {SYSTEMS[peer]}, c={c}{of_rounds}", shown,
                f">= {TARGETS[target]:g}x", None if value is None else value >= TARGETS[target],
            )  # fmt: skip
        value, shown = judged(
            [o.result.p99_ms if o is not None and o.result.requests else None for o in ours],
            lambda v: f"{v:.2f} ms",
        )
        if value is not None:
            verdict(
                f"{title} p99, c={c}{of_rounds}", shown, f"<= {TARGETS['cached_p99_ms']:g} ms",
                value <= TARGETS["cached_p99_ms"],
            )  # fmt: skip
    for key in ("post", "mix"):
        title = case_title(cases, key)
        sequential = ratio(suite.find(key, "ocspd", c), suite.find(key, "ocspd-noaudit", c))
        pairs = [p for p in audit if p.case == key and not p.sustained]
        if pairs:
            # Judged on interleaved rounds (audit_interleaved says why); the sweep's ratio,
            # one run after the other, is shown beside it.
            value = median_ratio(pairs)
            rounds = ", ".join(fmt_ratio(p.ratio) for p in pairs)
            measured = f"{fmt_ratio(value)} (rounds {rounds}"
            if sequential is not None:
                measured += f"; one run after the other: {fmt_ratio(sequential)}"
            measured += ")"
            name = f"audit on / audit off, {title}, c={c} interleaved, median of {len(pairs)}"
        else:
            value, measured = sequential, fmt_ratio(sequential)
            name = f"audit on / audit off, {title}, c={c}, one run after the other"
        verdict(
            name, measured, f">= {TARGETS['audit_ratio']:g}x (costs <= 10 %)",
            None if value is None else value >= TARGETS["audit_ratio"],
        )  # fmt: skip
    for pair in (p for p in audit if p.sustained):
        title = case_title(cases, pair.case)
        verdict(
            f"audit on / audit off, {title}, c={c} sustained ({pair.slice_seconds:g} s slices, "
            "the backlog of records at its steady level)",
            fmt_ratio(pair.ratio), f">= {TARGETS['audit_ratio']:g}x (costs <= 10 %)",
            None if pair.ratio is None else pair.ratio >= TARGETS["audit_ratio"],
        )  # fmt: skip
    if prop is not None and prop.delays:
        p99 = pct(prop.delays, 99) if not prop.missing else float("inf")
        verdict(
            f"revocation propagation p99 ({prop.count} revocations)",
            f"{p99 * 1000:.0f} ms" if p99 != float("inf") else f"{prop.missing} never shown",
            f"<= {TARGETS['propagation_p99_s'] * 1000:g} ms",
            p99 <= TARGETS["propagation_p99_s"],
        )  # fmt: skip
    crl_1m = next((r for r in crl if r.entries == 1_000_000), None)
    if crl_1m is not None:
        verdict(
            "CRL of 1 000 000 entries: time", f"{crl_1m.seconds:.2f} s",
            f"<= {TARGETS['crl_1m_seconds']:g} s", crl_1m.seconds <= TARGETS["crl_1m_seconds"],
        )  # fmt: skip
        verdict(
            "CRL of 1 000 000 entries: peak RSS", f"{crl_1m.rss_mb:.0f} MB",
            f"<= {TARGETS['crl_1m_mb']:g} MB", crl_1m.rss_mb <= TARGETS["crl_1m_mb"],
        )  # fmt: skip
    elif crl:
        verdict(
            "CRL of 1 000 000 entries", f"not run (largest: {crl[-1].entries:,})",
            "<= 15 s, <= 300 MB", None,
        )  # fmt: skip
    if len(db) >= 2 and db[0].runs and db[-1].runs:
        value = db[-1].median.p99_ms / db[0].median.p99_ms if db[0].median.p99_ms else None
        goal = f"<= {TARGETS['dbsize_p99_ratio']:g}x"
        name = f"p99 at {db[-1].rows:,} rows / p99 at {db[0].rows:,} rows"
        short = db[-1].rows < 10_000_000
        if short:
            name += " (the target is at 10 000 000: not judged)"
        verdict(
            name,
            fmt_ratio(value),
            goal,
            None if value is None or short else value <= TARGETS["dbsize_p99_ratio"],
        )
    if soak_result is not None and soak_result.samples:
        worst = max(soak_result.growth(pid) for pid in soak_result.samples)
        short = soak_result.seconds < 600
        verdict(
            f"RSS growth per worker over {soak_result.seconds:g} s of mixed load"
            + (" (the target is over 10 min: not judged)" if short else ""),
            f"{100 * worst:+.1f} % (worst worker; median of the last minute over the first; "
            f"last sample over the first: "
            f"{100 * max(soak_result.raw_growth(pid) for pid in soak_result.samples):+.1f} %)",
            f"<= {100 * TARGETS['rss_growth']:g} %",
            None if short else worst <= TARGETS["rss_growth"],
        )  # fmt: skip

    lines += [
        "### Targets",
        "",
        "| target | measured | goal | |",
        "|---|---:|---:|---|",
        *(f"| {a} | {b} | {g} | {v} |" for a, b, g, v in verdicts),
        "",
    ]
    if plan.target_rounds > 1:
        lines += [
            f"The cached targets ran {plan.target_rounds} times at {c} connections: round 1 in "
            "the sweep below, the others after it, ocspd, openssl and the ceiling one after the "
            "other in each round. Each round's ratio compares runs a minute apart at most.",
            "",
            "| scenario | round | ocspd req/s | ocspd p99 ms | openssl req/s | ceiling req/s "
            "| / openssl | / ceiling |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, title in (("get", "cached GET"), ("post", "cached POST")):
            for r in target_rounds:
                ours_r, theirs = suite.find(key, "ocspd", c, r), suite.find(key, "openssl", c, r)
                ceiling = suite.find(key, "ceiling", c, r)
                p99 = f"{ours_r.result.p99_ms:.2f}" if ours_r is not None else "-"
                lines.append(
                    f"| {title} | {r} | {_rps(ours_r)} | {p99} | {_rps(theirs)} | "
                    f"{_rps(ceiling)} | {fmt_ratio(ratio(ours_r, theirs))} | "
                    f"{fmt_ratio(ratio(ours_r, ceiling))} |"
                )
        lines.append("")
    if plots:
        lines += ["### Plots", "", plot_note, ""]
        lines += [f"![{title}]({name})" for name, title in plots]
        lines.append("")
    elif plot_note:
        lines += ["### Plots", "", plot_note, ""]

    lines += [
        "### Scenarios",
        "",
        "Every row is one wrk run (-t2, or -t1 at one connection; "
        f"{plan.seconds:g} s; cached scenarios after a {plan.warmup:g} s warm-up of each "
        "server). Latencies are wrk's (coordinated omission included, as in any closed-loop "
        "client). Errors: non-2xx answers plus socket errors. CPU: user + system time of the "
        "server's processes per response (for ocspd, plus its PostgreSQL backends). A run that "
        "failed its checks says so in the last column. Below each table: ocspd's req/s over "
        "each peer's at the same concurrency; `(its POST)` marks a static server's cached POST "
        "run used for a scenario it cannot serve, `(file key)` a peer's P-256 file-key run "
        "used for the SoftHSM scenario.",
        "",
    ]
    if not suite.measurements:
        del lines[-4:]  # no scenario ran
    for case in cases if suite.measurements else []:
        lines += [f"#### {case.title}", ""]
        if case.note:
            lines += [case.note + ".", ""]
        lines += [
            "| connections | system | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU µs/resp | checks |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for conn in plan.concurrency:
            for system in case.systems:
                m = suite.find(case.key, system, conn)
                if m is None:
                    continue
                r = m.result
                checks = "; ".join(m.problems) or "ok"
                if m.note:
                    checks += f" ({m.note})"
                lines.append(
                    f"| {conn} | {SYSTEMS[system]} | {r.rps:,.0f} | {r.p50_ms:.2f} | "
                    f"{r.p99_ms:.2f} | {r.p999_ms:.2f} | {m.errors} | {m.cpu_us():.0f} | {checks} |"
                )
        peers = [*PEERS, *(("ocspd-noaudit",) if plan.audit_off_runs else ())]
        lines += [
            "",
            "| connections | ocspd req/s | " + " | ".join(f"/ {SYSTEMS[p]}" for p in peers) + " |",
            "|---:|---:|" + "---:|" * len(peers),
        ]
        for conn in plan.concurrency:
            ours = suite.find(case.key, "ocspd", conn)
            if ours is None:
                continue
            cells = []
            for peer in peers:
                if peer == "ocspd-noaudit" and peer not in case.systems:
                    cells.append("-")
                    continue
                theirs, mark = peer_for(suite, case, peer, conn)
                value = ratio(ours, theirs)
                cells.append(fmt_ratio(value) + (mark if value is not None else ""))
            lines.append(f"| {conn} | {ours.result.rps:,.0f} | " + " | ".join(cells) + " |")
        lines.append("")

    if audit:
        seconds, slices = audit_slices(plan)
        lines += [
            "### Audit cost, interleaved",
            "",
            f"ocspd with the request audit (`[audit] requests = on`, the default) and a second "
            f"ocspd with it off, loaded in turns by the sweep's wrk (-t2, {c} connections): "
            f"{slices} slices of {seconds:g} s each per server and round, in the order on, off, "
            f"off, on, on, ..., so the machine's drift falls on both alike; "
            f"{plan.audit_rounds} rounds per scenario"
            + (
                f", then one round on the mix in 4 slices of {plan.audit_sustained_seconds:g} s "
                "(sustained: the records' backlog reaches its steady level, so storing them "
                "is paid in full)"
                if plan.audit_sustained_seconds
                else ""
            )
            + ". Each round's req/s is its slices' total; p99 is the median of its slices' "
            "p99. CPU: the server's own processes and the database backends during its slices "
            "(the audit's COPYs run there).",
            "",
            "| scenario | slice s | round | audit on req/s | audit off req/s | on / off "
            "| p99 on ms | p99 off ms | CPU µs/resp on | CPU µs/resp off | checks |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for pair in audit:
            on, off = pair.on, pair.off
            title = case_title(cases, pair.case)
            checks = "; ".join(on.problems + off.problems) or "ok"
            lines.append(
                f"| {title} | {pair.slice_seconds:g} | {pair.round} | {on.result.rps:,.0f} | "
                f"{off.result.rps:,.0f} | "
                f"{fmt_ratio(pair.ratio)} | {on.result.p99_ms:.2f} | {off.result.p99_ms:.2f} | "
                f"{on.cpu_us():.0f} | {off.cpu_us():.0f} | {checks} |"
            )
        lines.append("")

    if db:
        lines += [
            "### Database size",
            "",
            "Rows written with COPY straight into `certificates` (asyncpg "
            "copy_records_to_table, binary; session_replication_role = replica, so the "
            "per-row trigger that sets change_xid and the issuer foreign-key trigger stay off: "
            "the column default writes the same change_xid and every row names the one "
            "issuer). 16-octet serials rising with the row number, 1 % revoked. After each "
            "load VACUUM ANALYZE and CHECKPOINT, then a dedicated `ocspd serve --workers 2` "
            "with `cache_entries = 0` (no response cache and no remembered status rows, so "
            f"every request reads the database) under {plan.db_requests:,} pre-generated "
            "nonce requests for serials drawn uniformly from all the rows loaded, wrk -t2 "
            f"-c{TARGET_CONNECTIONS}, {plan.db_seconds:g} s per run, {plan.db_rounds} "
            f"run{'s' if plan.db_rounds > 1 else ''} per size (the median p99 shown).",
            "",
            "| certificates | COPY s (rows added) | VACUUM+CHECKPOINT s | table+indexes MB | req/s | p50 ms | p99 ms | p99.9 ms | p99 / smallest | checks |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        base = db[0].median.p99_ms if db[0].runs else 0.0
        for row in db:
            if not row.runs:
                continue
            r = row.median
            lines.append(
                f"| {row.rows:,} | {row.load_seconds:.1f} | {row.vacuum_seconds:.1f} | "
                f"{row.table_mb:,.0f} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                f"{r.p999_ms:.2f} | {fmt_ratio(r.p99_ms / base if base else None)} | "
                f"{'; '.join(sorted(set(row.problems))) or 'ok'} |"
            )
        lines.append("")

    if prop is not None:
        lines += [
            "### Revocation propagation",
            "",
            f"{prop.count} good certificates of `bench` (written with COPY before ocspd "
            "started), each answered good three times first so the workers cache it; then "
            f"`ocspd revoke --reason keyCompromise` for each, at most "
            f"{suite.plan.revocation_rate:g} per second, one after the other in one child "
            "process that calls `ocspd.cli.main` (the command's own code, without an "
            "interpreter start per revocation)"
            + (
                f"; they returned at {prop.achieved_rate:.1f} per second, "
                f"{1000 / prop.achieved_rate:.0f} ms a command under this load"
                if prop.achieved_rate
                else ""
            )
            + ". From the moment each "
            "command returned, a poller sends that serial's request (POST, no nonce: the "
            "cacheable path) every 10 ms until an answer says revoked; the delay is that "
            "answer's arrival minus the return. Load meanwhile: the mix at 16 connections "
            f"({prop.load}). The change feed polls every 200 ms (`feed_interval`).",
            "",
            "| revocations | shown | p50 ms | p99 ms | max ms | never shown (10 s) | revoke failed | polls | slowest: answers still good after the return | slowest single poll ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        d = prop.delays
        if d:
            lines.append(
                f"| {prop.count} | {len(d)} | {1000 * pct(d, 50):.0f} | {1000 * pct(d, 99):.0f} | "
                f"{1000 * max(d):.0f} | {prop.missing} | {prop.failed} | {prop.polls:,} | "
                f"{max(prop.detail)[1] if prop.detail else '-'} | "
                f"{1000 * max((x[2] for x in prop.detail), default=0.0):.0f} |"
            )
        lines.append("")

    if crl:
        lines += [
            "### CRL signing",
            "",
            "`crlgen sign` from PostgreSQL (bench/crl_db_bench.py, run as a child of this "
            "script): wall seconds of the process, interpreter start-up included, and its peak "
            "RSS.",
            "",
            "| entries | seconds | peak RSS MB | CRL MB |",
            "|---:|---:|---:|---:|",
            *(
                f"| {r.entries:,} | {r.seconds:.2f} | {r.rss_mb:.0f} | {r.size_mb:.1f} |"
                for r in crl
            ),
            "",
        ]

    if soak_result is not None and soak_result.samples:
        lines += [
            "### Memory under mixed load",
            "",
            f"VmRSS of each `ocspd serve` worker every {soak_result.interval:g} s over "
            f"{soak_result.seconds:g} s of the mix at 48 connections plus live nonce requests "
            f"at 16 ({soak_result.load}). The first sample is taken after one interval of "
            f"load. Growth: the median of the last {soak_result.window()} samples over the "
            f"median of the first {soak_result.window()} (judged); last over first beside it.",
            "",
            "| worker | first MB | last MB | max MB | growth (medians) | last / first |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        tail = [
            "",
            "ocspd's answers over the soak by outcome: "
            + (", ".join(f"{k} {v:,}" for k, v in sorted(soak_result.outcomes.items()) if v) or "-")
            + ". Audit records answered but not yet stored (ocspd_audit_pending_records, all "
            "workers) at each sample: "
            + ", ".join(f"{v:,.0f}" for _, v in soak_result.audit_pending)
            + ".",
        ]
        for n, (pid, series) in enumerate(sorted(soak_result.samples.items())):
            values = [kb / 1024 for _, kb in series]
            lines.append(
                f"| {n + 1} (pid {pid}) | {values[0]:.1f} | {values[-1]:.1f} | {max(values):.1f} | "
                f"{100 * soak_result.growth(pid):+.1f} % | "
                f"{100 * soak_result.raw_growth(pid):+.1f} % |"
            )
        lines += [*tail, ""]

    for profile in profiles:
        lines += [
            f"py-spy, one ocspd worker, {profile.scenario} at {TARGET_CONNECTIONS} connections "
            f"({profile.samples} samples at 200 Hz of the time the worker was not waiting in "
            "epoll): where the time goes (innermost matching frame wins), and the functions "
            "with the most self time.",
            "",
            "| share | category |",
            "|---:|---|",
            *(f"| {share:.1f} % | {name} |" for name, share in profile.categories),
            "",
            "| self | function |",
            "|---:|---|",
            *(f"| {share:.1f} % | `{name}` |" for name, share in profile.top_self),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n", verdicts


# --- plots -------------------------------------------------------------------------------

_STYLE = {
    "ocspd": ("tab:blue", "o"),
    "ocspd-noaudit": ("tab:cyan", "o"),
    "openssl": ("tab:red", "s"),
    "django-ca": ("tab:green", "^"),
    "ceiling": ("tab:gray", "D"),
    "nginx": ("tab:olive", "v"),
}


def make_plots(
    suite: Suite,
    cases: list[Case],
    soak_result: Soak | None,
    prop: Propagation | None,
    db: list[DbSize],
    crl: list[CrlRow],
    command: str,
    out_dir: Path,
) -> tuple[list[tuple[str, str]], str]:
    """PNG files in `out_dir` (next to RESULTS.md); returns (file, title) pairs and a note."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "No plots: matplotlib is not installed (pip install -e '.[bench]')."
    made: list[tuple[str, str]] = []
    conns = suite.plan.concurrency
    stamp = f"{command}  ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)"

    def save(fig: object, name: str, title: str) -> None:
        if suite.plan.quick:
            name = name.replace("suite-", "suite-quick-", 1)
        fig.text(0.01, 0.005, stamp, fontsize=7, color="dimgray")
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        made.append((name, title))

    # Latency percentiles against concurrency: a row per scenario, p50 / p99 / p99.9.
    fig, axes = plt.subplots(len(cases), 3, figsize=(15, 3.2 * len(cases)), squeeze=False)
    for row, case in enumerate(cases):
        for col, (attr, label) in enumerate(
            (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))
        ):
            ax = axes[row][col]
            for system in case.systems:
                points = [
                    (conn, getattr(m.result, attr))
                    for conn in conns
                    if (m := suite.find(case.key, system, conn)) is not None and m.result.requests
                ]
                if points:
                    color, marker = _STYLE[system]
                    ax.plot(
                        *zip(*points, strict=True),
                        marker=marker,
                        color=color,
                        label=SYSTEMS[system],
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(list(conns), [str(x) for x in conns])
            ax.set_title(f"{case.title}: {label}", fontsize=9)
            ax.set_xlabel("connections", fontsize=8)
            ax.set_ylabel("ms", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            if col == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    save(fig, "suite-latency.png", "latency percentiles against concurrency, per scenario")

    # Throughput per scenario against concurrency.
    cols = 3
    rows = (len(cases) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.6 * rows), squeeze=False)
    for i, case in enumerate(cases):
        ax = axes[i // cols][i % cols]
        for system in case.systems:
            points = [
                (conn, m.result.rps)
                for conn in conns
                if (m := suite.find(case.key, system, conn)) is not None and m.result.requests
            ]
            if points:
                color, marker = _STYLE[system]
                ax.plot(
                    *zip(*points, strict=True), marker=marker, color=color, label=SYSTEMS[system]
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(conns), [str(x) for x in conns])
        ax.set_title(case.title, fontsize=9)
        ax.set_xlabel("connections", fontsize=8)
        ax.set_ylabel("responses/s", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for j in range(len(cases), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    save(fig, "suite-throughput.png", "throughput per scenario against concurrency")

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8), squeeze=False)
    ax = axes[0][0]
    points = [(row.rows, row.median) for row in db if row.runs]
    if points:
        for attr, label, style in (
            ("p50_ms", "p50", ":"),
            ("p99_ms", "p99", "-"),
            ("p999_ms", "p99.9", "--"),
        ):
            ax.plot(
                [p[0] for p in points],
                [getattr(p[1], attr) for p in points],
                style,
                marker="o",
                label=label,
            )
        ax.set_xscale("log")
        ax.set_xticks([p[0] for p in points], [short_count(p[0]) for p in points])
        ax.minorticks_off()
        ax.set_title(f"nonce requests, c={TARGET_CONNECTIONS}, against database size", fontsize=9)
        ax.set_xlabel("certificates", fontsize=8)
        ax.set_ylabel("ms", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[0][1]
    if prop is not None and prop.delays:
        values = sorted(1000 * d for d in prop.delays)
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))])
        ax.axvline(
            1000 * TARGETS["propagation_p99_s"], color="red", linestyle="--", label="target p99"
        )
        ax.set_title(f"revocation propagation, {prop.count} revocations (CDF)", fontsize=9)
        ax.set_xlabel("ms from `ocspd revoke` returning", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[0][2]
    if soak_result is not None:
        for n, (_, series) in enumerate(sorted(soak_result.samples.items())):
            ax.plot(
                [t for t, _ in series],
                [kb / 1024 for _, kb in series],
                marker=".",
                label=f"worker {n + 1}",
            )
        ax.set_title("VmRSS per ocspd worker under mixed load", fontsize=9)
        ax.set_xlabel("seconds", fontsize=8)
        ax.set_ylabel("MB", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        twin = ax.twinx()
        twin.plot(
            [t for t, _ in soak_result.audit_pending],
            [v for _, v in soak_result.audit_pending],
            color="tab:red",
            linestyle=":",
            label="audit records pending (all workers)",
        )
        twin.set_ylabel("records", fontsize=8)
        twin.set_ylim(bottom=0)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="lower right")
    ax = axes[0][3]
    if crl:
        ax.plot([r.entries for r in crl], [r.seconds for r in crl], marker="o", label="seconds")
        ax.set_xscale("log")
        ax.set_xticks([r.entries for r in crl], [short_count(r.entries) for r in crl])
        ax.minorticks_off()
        ax.set_xlabel("CRL entries", fontsize=8)
        ax.set_ylabel("seconds", fontsize=8)
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.plot(
            [r.entries for r in crl],
            [r.rss_mb for r in crl],
            marker="s",
            color="tab:orange",
            label="peak RSS MB",
        )
        twin.set_ylabel("MB", fontsize=8)
        twin.set_ylim(bottom=0)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper left")
        ax.set_title("crlgen sign: time and peak RSS", fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[0]:
        if not ax.has_data():
            ax.axis("off")
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save(fig, "suite-scale.png", "database size, propagation, memory over time, CRL signing")
    return made, f"Made by the same command: `{command}`."


# --- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the short subset (about 2 minutes): each scenario once at 64 connections for "
        "2 s, smaller database, CRL, revocation and memory parts",
    )
    p.add_argument("--results", type=Path, default=ob.RESULTS, help="markdown file to update")
    p.add_argument("--no-results", action="store_true", help="print only; leave RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated parts to run: scenarios,audit,soak,propagation,db,crl,profile "
        "(default all; for development)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the plan, e.g. seconds=1 or concurrency=16,64 (development)",
    )
    p.add_argument("--revoker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=20.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.revoker is not None:
        return revoker_main(args.revoker, args.rate)
    plan = QUICK if args.quick else FULL
    for item in args.set:
        name, _, text = item.partition("=")
        current = getattr(plan, name)
        value: object = (
            tuple(int(x) for x in text.split(","))
            if isinstance(current, tuple)
            else type(current)(text)
        )
        plan = replace(plan, **{name: value})
    parts = set(filter(None, args.only.split(","))) or {
        "scenarios", "audit", "soak", "propagation", "db", "crl", "profile",
    }  # fmt: skip
    # softhsm2 for the P-256-in-SoftHSM2 scenario; the run goes on without it, and says so.
    missing = ensure_debian_tools(
        {"wrk": "wrk", "openssl": "openssl", "nginx": "nginx", "softhsm2-util": "softhsm2"}
    )
    for tool in ("wrk", "openssl"):
        if tool in missing:
            print(f"{tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 2
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    state = ob.source_state()
    shown = ["bench/suite.py", *(sys.argv[1:] if argv is None else argv)]
    command = f".venv/bin/python {shlex.join(shown)}"
    work = Path(tempfile.mkdtemp(prefix="ocspd-suite-"))
    ensure_audit_key()
    procs = ob.Processes()
    cleanup: list[Path] = [work]
    notes: dict[str, str] = {}
    try:
        with ob.database() as (db_name, db_url):
            print(f"work directory {work}, database {db_name}", flush=True)
            pki = ob.make_pki(work, plan.leaves)
            rsa_pki = make_rsa_pki(work / "rsa", pki.root, plan.leaves)
            hsm, module = None, ob.softhsm_module()
            if module is None:
                notes["hsm"] = "not run: softhsm2-util or libsofthsm2.so is not installed"
            else:
                hsm = ob.make_hsm_issuer(work, pki.root, plan.leaves, module)
            ob.load_database(db_url, pki, hsm)
            ob.ocspd_cli(
                db_url, "issuer", "add", "bench-rsa", "--ca-cert", rsa_pki.ca_pem,
                "--responder-cert", rsa_pki.responder_pem,
                "--responder-key", f"file:{rsa_pki.responder_key}",
            )  # fmt: skip
            ob.ocspd_cli(db_url, "cert", "import", "--issuer", "bench-rsa", rsa_pki.bundle)
            cas = {
                "bench": Ca(
                    "bench", pki.ca.cert, pki.responder.cert, tuple(pki.good),
                    tuple(pki.revoked), pki, "", "P-256 file key",
                ),
                "bench-rsa": Ca(
                    "bench-rsa", rsa_pki.ca.cert, rsa_pki.responder.cert, tuple(rsa_pki.good),
                    (), rsa_pki, "rsa/", "RSA-2048 file key",
                ),
            }  # fmt: skip
            if hsm is not None:
                cas["bench-hsm"] = Ca(
                    "bench-hsm", hsm.ca.cert, hsm.responder.cert, tuple(hsm.good), (), None,
                    None, "P-256 in SoftHSM2",
                )  # fmt: skip
            # The Django project is set up (migrate, load: some seconds) while ocspd starts.
            setup_pool = concurrent.futures.ThreadPoolExecutor(1)
            django_setup = setup_pool.submit(
                setup_django_ca, procs, work, list(cas.values()), WORKERS
            )
            setup_pool.shutdown(wait=False)
            # Propagation targets: good rows of "bench" written before any responder starts.
            bench_id = int(
                asyncio.run(_sql(db_url, "SELECT id FROM issuers WHERE name = 'bench'"))[0]
            )
            # copy_rows revokes row 99 of each hundred and propagation needs good ones: enough
            # rows for plan.revocations of them.
            rows = plan.revocations + plan.revocations // 99 + 1
            asyncio.run(copy_rows(db_url, bench_id, 0, rows, _TARGET_PREFIX))
            targets = [bulk_serial(i, _TARGET_PREFIX) for i in range(rows) if i % 100 != 99][
                : plan.revocations
            ]
            extra_env = hsm.env if hsm else {}
            cases = make_cases(cas, work, plan)
            by_key = {c.key: c for c in cases}
            servers: dict[str, ob.Server] = {}
            with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both start at once
                starting = {
                    "ocspd": pool.submit(ob.start_ocspd, procs, db_url, work, WORKERS, extra_env),
                    "ocspd-noaudit": pool.submit(
                        ob.start_ocspd, procs, db_url, work, WORKERS,
                        {**extra_env, "OCSPD_AUDIT_REQUESTS": "off"}, name="ocspd, audit off",
                    ),
                }  # fmt: skip
                for system, future in starting.items():
                    servers[system] = future.result()
            body = send(servers["ocspd"].port, probe(by_key["get"], "good")).body
            servers["ceiling"] = ob.start_ceiling(procs, work, WORKERS, body)
            if nginx_binary() is None:
                notes["nginx"] = "not run: nginx is not installed and apt-get could not install it"
            else:
                try:
                    servers["nginx"] = start_nginx(procs, WORKERS, body, cleanup)
                except RuntimeError as e:
                    notes["nginx"] = f"not run: nginx did not start: {str(e).splitlines()[0]}"
            django, why = None, ""
            try:
                django, why = django_setup.result()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                why = f"not run: {e}"
            if django is not None:
                servers["django-ca"] = django.server
                notes["django-ca"] = django.note
            else:
                notes["django-ca"] = why
                print(f"  django-ca {why}")
            spent: dict[str, float] = {"setup": time.monotonic() - t0}  # seconds per part
            print(f"setup done in {spent['setup']:.0f} s", flush=True)
            suite = Suite(
                plan, work, procs, db_name, db_url, cas, servers, notes, extra_env=extra_env
            )

            if "scenarios" in parts:
                t = time.monotonic()
                for case in cases:
                    for conn in plan.concurrency:
                        for system in case.systems:
                            suite.run(case, system, conn)
                # The cached targets again, interleaved, so one unlucky run does not decide.
                for round_number in range(2, plan.target_rounds + 1):
                    for key in ("get", "post"):
                        for system in ("ocspd", "openssl", "ceiling"):
                            if system in by_key[key].systems:
                                suite.run(
                                    by_key[key], system, target_connections(plan), round_number
                                )
                spent["scenarios"] = time.monotonic() - t
            failures: list[str] = []

            def attempt(part: str, run: Callable[[], T], default: T) -> T:
                """A part that fails is reported as such; the others still run."""
                if part not in parts:
                    return default
                t = time.monotonic()
                try:
                    return run()
                except Exception as e:  # any failure: report it, go on
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                    failures.append(f"{part}: {type(e).__name__}: {first}")
                    print(f"  {part} FAILED: {e!r}", flush=True)
                    return default
                finally:
                    spent[part] = spent.get(part, 0.0) + time.monotonic() - t

            audit = attempt(
                "audit",
                lambda: [
                    pair
                    for key, sustained in (("post", False), ("mix", False), ("mix", True))
                    if not sustained or plan.audit_sustained_seconds
                    for pair in audit_interleaved(
                        suite, by_key[key], target_connections(plan), sustained
                    )
                ],
                [],
            )
            soak_result = attempt("soak", lambda: soak(suite, by_key), None)
            prop = attempt("propagation", lambda: propagation(suite, by_key, targets), None)
            fake = SimpleNamespace(
                ocspd=servers["ocspd"], work=work,
                args=SimpleNamespace(connections=TARGET_CONNECTIONS, threads=2),
            )  # fmt: skip
            profiles: list[ob.Profile] = [
                profile
                for key in ("post", "nonce-p256")
                if (
                    profile := attempt(
                        "profile",
                        lambda key=key: ob.profile_ocspd(fake, by_key[key], plan.profile_seconds),
                        None,
                    )
                )
                is not None
            ]
            for name in ("ocspd", "ocspd-noaudit"):
                process = servers[name].process
                if process is not None:
                    procs.stop(process)  # before the bulk load (see database_sizes)
            db = attempt("db", lambda: database_sizes(suite), [])
            crl, crl_problem = attempt("crl", lambda: crl_sizes(plan, work / "crl.log"), ([], ""))
            if crl_problem:
                failures.append(f"crl: {crl_problem}")
            elapsed = time.monotonic() - t0
            header = [
                f"Command: `{command}` ({'quick subset' if plan.quick else 'full run'}; "
                f"{started:%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} min, {state} when it "
                f"started; {os.cpu_count()} cores shared with the load generator and other "
                f"jobs, load average before start {load}; {tool_versions(django)}).",
                "",
                "Time per part: "
                + ", ".join(f"{part} {seconds:.0f} s" for part, seconds in spent.items())
                + ".",
                "",
                f"Same certificates for every system: issuing CA `bench` ({plan.leaves} leaves, "
                f"5 % revoked, P-256 delegated responder key in a file), `bench-rsa` "
                f"({plan.leaves} good leaves, RSA-2048 responder key in a file)"
                + (
                    f", `bench-hsm` ({plan.leaves} good leaves, P-256 responder key in a "
                    "SoftHSM2 token)"
                    if hsm
                    else ""
                )
                + f". Every server has {WORKERS} worker processes. Requests use SHA-1 CertIDs; "
                f"nonce runs rotate through {plan.nonces:,} pre-generated requests with distinct "
                "32-octet nonces.",
                "",
                "Peers: `openssl ocsp -index index.txt -multi 2` (restarted for every run); "
                + (notes.get("django-ca", "") or "django-ca: not run")
                + "; the aiohttp ceiling (bench/ceiling_app.py, fixed bytes); nginx "
                + (notes.get("nginx", "") or "serving the same fixed bytes as a static file")
                + ". SoftHSM2: "
                + notes.get("hsm", "used by ocspd only")
                + ".",
                "",
            ]
            out_dir = work if args.no_results else args.results.parent
            plots, plot_note = make_plots(
                suite, cases, soak_result, prop, db, crl, command, out_dir
            )
            generated, _verdicts = report(
                suite, cases, header, audit, soak_result, prop, db, crl, profiles, plots,
                plot_note,
            )  # fmt: skip
            if failures:
                generated += "\nParts that failed: " + "; ".join(failures) + ".\n"
            for log in sorted(work.glob("ocspd*.log")):
                log_problems = ob.ocspd_log_problems(log)
                generated += "\n" + (
                    f"{log.stem} log: no warnings or errors.\n"
                    if not log_problems
                    else f"{log.stem} log, warnings and errors (count, message):\n\n"
                    + "\n".join(f"- {n} x `{m}`" for m, n in log_problems.most_common(10))
                    + "\n"
                )
            print("\n" + generated)
            if not args.no_results:
                where = (
                    (QUICK_SECTION, QUICK_BEGIN, QUICK_END) if plan.quick else (SECTION, BEGIN, END)
                )
                ob.write_results(args.results, generated.rstrip("\n"), *where)
                print(f"updated {args.results}")
            failed = [m for m in suite.measurements if m.problems]
            print(
                f"done in {(time.monotonic() - t0) / 60:.1f} min; {len(failed)} runs with "
                f"problems, {len(failures)} parts failed"
            )
            return 0 if not failed and not failures else 1
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {', '.join(map(str, cleanup))}")
        else:
            for directory in cleanup:
                shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
