"""The status database itself: migrations, serials, RM1.3 and the responder's role (R11)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from conftest import Cli, Pki, run_sql

from ocspd.model import format_serial, serial_from_bytes, serial_to_bytes
from ocspd.store.db import Role, connect
from ocspd.store.migrate import available_migrations, migrate

SERIALS = [
    1,
    0x7F,
    0x80,  # high bit set: DER needs a leading zero octet, the database must not
    0xFF,
    2**63 - 1,
    2**63,  # beyond a signed 64-bit integer
    2**64,
    int("80" + "00" * 19, 16),  # 20 octets with the high bit set (pkio177's maximum)
    int("7F" + "FF" * 19, 16),
    int("01" * 20, 16),
]


@pytest.mark.parametrize("serial", SERIALS, ids=hex)
def test_serial_round_trips_through_the_database(
    ocspd: Cli, pki: Pki, issuer: str, serial: int, tmp_path: Path
) -> None:
    if serial.bit_length() < 160:  # cryptography's builder stops at 159 bits
        ocspd.ok("cert", "import", "--issuer", issuer, pki.leaf("rt", serial=serial))
    else:  # an openssl index entry carries any serial openssl ca can issue
        index = tmp_path / "index.txt"
        index.write_text(f"V\t301231235959Z\t\t{serial:X}\tunknown\t/CN=rt\n")
        ocspd.ok("cert", "import", "--issuer", issuer, "--openssl-index", index)
    stored = ocspd.sql("SELECT serial FROM certificates")
    assert [serial_from_bytes(r["serial"]) for r in stored] == [serial]
    out = ocspd.ok("status", "--issuer", issuer, "--serial", f"{serial:x}")
    assert f"serial={format_serial(serial)} " in out
    assert "status=good" in out


def test_serial_of_21_octets_is_refused() -> None:
    with pytest.raises(Exception, match="at most 20"):
        serial_to_bytes(2**160)


def test_migrate_is_idempotent(empty_db_url: str) -> None:
    async def twice() -> tuple[int, int, int]:
        conn = await asyncpg.connect(empty_db_url)
        try:
            first = await migrate(conn)
            second = await migrate(conn)
            recorded = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        finally:
            await conn.close()
        return len(first), len(second), recorded

    first, second, recorded = asyncio.run(twice())
    assert first == len(available_migrations()) >= 1
    assert second == 0
    assert recorded == first


def _with_cert(ocspd: Cli, pki: Pki, issuer: str) -> int:
    path = pki.leaf("db-guard", serial=0xABCDEF)
    ocspd.ok("cert", "import", "--issuer", issuer, path)
    return 0xABCDEF


def test_database_refuses_revoked_to_good(ocspd: Cli, pki: Pki, issuer: str) -> None:
    serial = _with_cert(ocspd, pki, issuer)
    ocspd.ok("revoke", "--issuer", issuer, "--serial", f"{serial:x}", "--reason", "keyCompromise")
    # Straight at the database, as the owner: the trigger is the guarantee, not the CLI.
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="revocation is final"):
        ocspd.sql(
            "UPDATE certificates SET status = 'good', revoked_at = NULL, reason = NULL, invalidity_date = NULL"
        )
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="revocation is final"):
        ocspd.sql("UPDATE certificates SET reason = 4")
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="cannot be deleted"):
        ocspd.sql("DELETE FROM certificates")
    assert ocspd.sql("SELECT status FROM certificates")[0]["status"] == "revoked"


def test_database_refuses_inconsistent_rows(ocspd: Cli, pki: Pki, issuer: str) -> None:
    _with_cert(ocspd, pki, issuer)
    with pytest.raises(asyncpg.CheckViolationError):
        ocspd.sql("UPDATE certificates SET status = 'revoked'")  # no time, no reason
    with pytest.raises(asyncpg.CheckViolationError):
        ocspd.sql("UPDATE certificates SET status = 'hold', revoked_at = now(), reason = 1")
    with pytest.raises(asyncpg.CheckViolationError):
        ocspd.sql("UPDATE certificates SET status = 'revoked', revoked_at = now(), reason = 7")


def test_hold_can_be_released_in_the_database(ocspd: Cli, pki: Pki, issuer: str) -> None:
    _with_cert(ocspd, pki, issuer)
    ocspd.sql("UPDATE certificates SET status = 'hold', revoked_at = now(), reason = 6")
    ocspd.sql("UPDATE certificates SET status = 'good', revoked_at = NULL, reason = NULL")
    assert ocspd.sql("SELECT status FROM certificates")[0]["status"] == "good"


async def _as_responder(url: str, sql: str) -> None:
    conn = await connect(url, Role.RESPONDER)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE certificates SET status = 'good'",
        "DELETE FROM certificates",
        "INSERT INTO issuers (name) VALUES ('x')",
        "UPDATE revocation_requests SET applied_at = now()",
        "TRUNCATE certificates",
    ],
)
def test_responder_role_cannot_change_status(ocspd: Cli, pki: Pki, issuer: str, sql: str) -> None:
    _with_cert(ocspd, pki, issuer)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        asyncio.run(_as_responder(ocspd.url, sql))
    assert ocspd.sql("SELECT status FROM certificates")[0]["status"] == "good"


def test_responder_role_reads_status(ocspd: Cli, pki: Pki, issuer: str) -> None:
    _with_cert(ocspd, pki, issuer)

    async def read() -> tuple[str, int, int]:
        conn = await connect(ocspd.url, Role.RESPONDER)
        try:
            return (
                await conn.fetchval("SELECT current_user"),
                await conn.fetchval("SELECT count(*) FROM certificates"),
                await conn.fetchval("SELECT count(*) FROM issuers"),
            )
        finally:
            await conn.close()

    assert asyncio.run(read()) == ("ocspd_responder", 1, 1)


def test_a_plain_login_can_use_both_roles(pg_admin_url: str, empty_db_url: str) -> None:
    """With only OCSPD_DATABASE_URL set to a non-superuser owner, migrate grants it both roles."""
    login = "ocspd_test_owner"
    run_sql(pg_admin_url, f"DROP ROLE IF EXISTS {login}")
    try:
        run_sql(pg_admin_url, f"CREATE ROLE {login} LOGIN")
        db = empty_db_url.rsplit("/", 1)[1]
        run_sql(pg_admin_url, f"ALTER DATABASE {db} OWNER TO {login}")
        run_sql(empty_db_url, f"ALTER SCHEMA public OWNER TO {login}")
        # Roles are cluster-wide: a DBA creates them and grants them to the owner once, as the
        # migrations' hints say (0004: ocspd_operator holds officer and admin).
        for role in (
            "ocspd_responder", "ocspd_operator", "ocspd_publisher",
            "ocspd_officer", "ocspd_auditor", "ocspd_admin",
        ):  # fmt: skip
            run_sql(
                pg_admin_url,
                f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $$",
            )
        run_sql(pg_admin_url, "GRANT ocspd_officer, ocspd_admin TO ocspd_operator")
        run_sql(pg_admin_url, f"GRANT ocspd_responder, ocspd_operator, ocspd_publisher TO {login}")
        owner_url = empty_db_url.replace("postgres@", f"{login}@", 1)

        async def go() -> str:
            conn = await connect(owner_url, Role.OWNER)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            responder = await connect(owner_url, Role.RESPONDER)
            try:
                who: str = await responder.fetchval("SELECT current_user || '/' || session_user")
            finally:
                await responder.close()
            return who

        import asyncio

        assert asyncio.run(go()) == f"ocspd_responder/{login}"
    finally:
        run_sql(
            pg_admin_url, f"DROP DATABASE IF EXISTS {empty_db_url.rsplit('/', 1)[1]} WITH (FORCE)"
        )
        run_sql(pg_admin_url, f"DROP ROLE IF EXISTS {login}")
