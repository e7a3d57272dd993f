"""Shared fixtures: a real PostgreSQL (fresh databases per run), a throwaway PKI, the CLI.

PostgreSQL comes from OCSPD_TEST_DATABASE_URL, else 127.0.0.1:5432 as user postgres, else a
private server started with pgserver. In CI (CI=true) a missing server fails the run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from needs import missing

from ocspd import cli, devpki
from ocspd.audit.mac import write_key_file
from ocspd.store.migrate import migrate

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _reachable(url: str) -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def run_sql(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on a fresh connection (for tests that check the database directly)."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture(scope="session", autouse=True)
def audit_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An audit MAC key (and spool directory) for every test (AA7.1: changes are refused
    without one).

    In os.environ for the whole session, so in-process commands and subprocesses alike find
    it; tests of a missing key remove it with monkeypatch.
    """
    path = tmp_path_factory.mktemp("audit") / "audit.key"
    write_key_file(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OCSPD_AUDIT_MAC_KEY", f"file:{path}")
        # Responders that cannot store their request records spool them here, not in /var.
        patch.setenv("OCSPD_AUDIT_SPOOL_DIR", str(tmp_path_factory.mktemp("audit-spool")))
        yield path


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A superuser DSN on a running server."""
    url = os.environ.get("OCSPD_TEST_DATABASE_URL", DEFAULT_ADMIN_URL)
    if _reachable(url):
        yield url
        return
    try:
        import pgserver
    except ImportError:
        missing(f"no PostgreSQL at {url} and pgserver is not installed")
    with tempfile.TemporaryDirectory(prefix="ocspd-pg-") as tmp:
        server = pgserver.get_server(tmp, cleanup_mode="stop")
        yield server.get_uri()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """A migrated database that each test clones (CREATE DATABASE ... TEMPLATE is fast)."""
    name = f"ocspd_test_{secrets.token_hex(4)}_tpl"
    run_sql(pg_admin_url, f"CREATE DATABASE {name}")

    async def setup() -> None:
        conn = await asyncpg.connect(with_database(pg_admin_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(setup())
    yield name
    run_sql(pg_admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test; its DSN."""
    name = template_db.removesuffix("_tpl") + "_" + secrets.token_hex(3)
    run_sql(pg_admin_url, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield with_database(pg_admin_url, name)
    run_sql(pg_admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = f"ocspd_test_{secrets.token_hex(4)}_empty"
    run_sql(pg_admin_url, f"CREATE DATABASE {name}")
    yield with_database(pg_admin_url, name)
    run_sql(pg_admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass(frozen=True)
class Pki:
    """A demo PKI on disk: issuing CA under a root, a delegated responder, some leaves."""

    dir: Path
    root: devpki.Issued
    ca: devpki.Issued
    responder: devpki.Issued
    leaf_key: devpki.PrivateKey
    ca_cert: Path
    ca_key: Path
    responder_cert: Path
    responder_key: Path

    def leaf(self, name: str, serial: int | None = None, **kw: Any) -> Path:
        cert = devpki.make_leaf(name, self.ca, self.leaf_key, serial=serial, **kw)
        return devpki.write_cert(self.dir / f"{name}-{cert.serial_number:x}.pem", cert)


def make_pki(directory: Path, name: str = "Issuing CA") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    root = devpki.make_ca(f"{name} Root")
    ca = devpki.make_ca(name, issuer=root)
    responder = devpki.make_responder(f"{name} OCSP", ca)
    return Pki(
        dir=directory,
        root=root,
        ca=ca,
        responder=responder,
        leaf_key=devpki.new_key(),
        ca_cert=devpki.write_cert(directory / "ca.pem", ca.cert),
        ca_key=devpki.write_key(directory / "ca.key", ca.key),
        responder_cert=devpki.write_cert(directory / "responder.pem", responder.cert),
        responder_key=devpki.write_key(directory / "responder.key", responder.key),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


class Cli:
    """Runs `ocspd ...` in-process against one database, capturing output."""

    def __init__(
        self, url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ):
        self.url = url
        self._capsys = capsys
        self._monkeypatch = monkeypatch
        monkeypatch.setenv("OCSPD_DATABASE_URL", url)
        monkeypatch.delenv("OCSPD_CONFIG", raising=False)

    def as_user(self, login: str) -> Cli:
        """The same database, connecting as another login (trust authentication in tests)."""
        parts = urlsplit(self.url)
        host = parts.netloc.rsplit("@", 1)[-1]
        other = Cli(self.url, self._capsys, self._monkeypatch)
        other.url = urlunsplit(parts._replace(netloc=f"{login}@{host}"))
        return other

    def __call__(self, *args: str | Path) -> Result:
        # Several Cli objects (one per login) may share a test: each sets its own database.
        self._monkeypatch.setenv("OCSPD_DATABASE_URL", self.url)
        self._capsys.readouterr()
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors and --help
            code = int(e.code or 0)
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def ok(self, *args: str | Path) -> str:
        result = self(*args)
        assert result.code == 0, f"ocspd {' '.join(map(str, args))} failed: {result.err}"
        return result.out

    def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return run_sql(self.url, query, *args)

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the status tables, to show a refused command changed nothing."""
        return {
            table: [tuple(r) for r in self.sql(f"SELECT * FROM {table} ORDER BY 1, 2")]
            for table in ("issuers", "certificates", "revocation_requests")
        }


@pytest.fixture
def ocspd(db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(db_url, capsys, monkeypatch)


@pytest.fixture
def issuer(ocspd: Cli, pki: Pki) -> str:
    """The PKI's issuing CA registered as 'ca' with its delegated responder."""
    ocspd.ok(
        "issuer", "add", "ca", "--ca-cert", pki.ca_cert,
        "--responder-cert", pki.responder_cert, "--responder-key", f"file:{pki.responder_key}",
    )  # fmt: skip
    return "ca"
