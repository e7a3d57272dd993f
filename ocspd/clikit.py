"""What the command modules share: argument types, output helpers, and connections opened
for a person's role (ocspd/cli.py, ocspd/cli_controls.py)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import NoReturn

import asyncpg

from ocspd.audit.mac import open_audit_key
from ocspd.config import Config
from ocspd.model import CertRecord, CertStatus, format_serial
from ocspd.revocation import RevocationManager
from ocspd.store.db import Role, assume_role, connect


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, pointing at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso_time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-21T10:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def utc(value: dt.datetime | None) -> str:
    return "" if value is None else f"{value.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"


def print_record(record: CertRecord) -> None:
    parts = [
        f"issuer={record.issuer}",
        f"serial={format_serial(record.serial)}",
        f"status={record.status.value}",
    ]
    if record.status is not CertStatus.GOOD and record.revoked_at:
        parts.append(f"revoked_at={utc(record.revoked_at)}")
        if record.reason is not None:
            parts.append(f"reason={record.reason.name}")
    if record.invalidity_date:
        parts.append(f"invalidity_date={utc(record.invalidity_date)}")
    parts.append(f"not_after={utc(record.not_after)}")
    print(" ".join(parts))


@contextlib.asynccontextmanager
async def manager(config: Config) -> AsyncIterator[RevocationManager]:
    """For commands that change the database: the audit key and the operator's own login."""
    url = config.require_database_url()
    key = await open_audit_key(config.require_audit_key(), config.pkcs11)
    try:
        conn = await connect(url, Role.LOGIN)
        try:
            yield RevocationManager(conn, key)
        finally:
            await conn.close()
    finally:
        key.close()


@contextlib.asynccontextmanager
async def reader(config: Config, *roles: Role) -> AsyncIterator[asyncpg.Connection]:
    """For commands that only read: the first of `roles` the login holds."""
    conn = await connect(config.require_database_url(), Role.LOGIN)
    try:
        await assume_role(conn, *(roles or (Role.OFFICER, Role.ADMIN, Role.AUDITOR)))
        yield conn
    finally:
        await conn.close()
