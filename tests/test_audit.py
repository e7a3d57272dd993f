"""The audit trail and the revocation controls, against a real PostgreSQL.

RM3.1 / AA3.1: every status change request, applied or refused, is recorded with who, when
received, when applied, why and the outcome. AA7.1 / AA7.2: records are hash-chained with a
keyed MAC and `ocspd audit verify` names the first modified, deleted or reordered one. RM1.4:
a CA or OCSP responder certificate changes status only with two officers. RM1.1: the oldest
pending request is observable. pkio70: no purge inside 6 months of expiry or revocation.

People are real PostgreSQL logins (trust authentication on 127.0.0.1), named per run since
roles are cluster-wide, and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import Cli, Pki, run_sql
from cryptography.hazmat.primitives import serialization
from softhsm import SoftHSM

from ocspd import devpki
from ocspd.audit.chain import (
    GENESIS,
    ChainRecord,
    StreamVerifier,
    canonical_json,
    chain_mac,
    encode,
)
from ocspd.audit.mac import FileAuditKey, KeyRing, open_audit_key, write_key_file
from ocspd.config import Pkcs11Config
from ocspd.errors import AuditKeyError
from ocspd.model import format_serial
from ocspd.store import audit
from ocspd.store.audit import Event, EventType, Outcome
from ocspd.store.migrate import available_migrations, migrate
from ocspd.store.requests import oldest_pending_seconds

UTC = dt.UTC


# --- helpers ------------------------------------------------------------------------------


def records(ocspd: Cli, *args: str) -> list[dict[str, Any]]:
    """`ocspd audit search --json ...` as a superuser (who holds the auditor role too)."""
    out = ocspd.ok("audit", "search", "--json", *args)
    return [json.loads(line) for line in out.splitlines()]


def sql_as(url: str, login: str, role: str | None, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement as `login`, after SET ROLE `role` (None: as the login itself)."""
    host = url.split("@", 1)[1]

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(f"postgresql://{login}@{host}")
        try:
            if role:
                await conn.execute(f"SET ROLE {role}")
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def verify(ocspd: Cli, *args: str) -> tuple[int, str]:
    result = ocspd("audit", "verify", *args)
    return result.code, (result.out + result.err).strip()


def import_leaf(ocspd: Cli, pki: Pki, issuer: str, name: str) -> str:
    path = pki.leaf(name)
    ocspd.ok("cert", "import", "--issuer", issuer, path)
    from cryptography import x509

    return format_serial(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)


@pytest.fixture
def people(pg_admin_url: str, ocspd: Cli, issuer: str) -> Iterator[dict[str, Cli]]:
    """Two officers, an auditor, an administrator and a login with no role, each a Cli."""
    suffix = secrets.token_hex(3)
    names = {
        k: f"ocspd_t_{k}_{suffix}" for k in ("officer_a", "officer_b", "auditor", "admin", "nobody")
    }
    for name in names.values():
        run_sql(pg_admin_url, f"CREATE ROLE {name} LOGIN")
    try:
        # The superuser counts as an administrator (it holds every role).
        ocspd.ok("role", "grant", "officer", names["officer_a"])
        ocspd.ok("role", "grant", "officer", names["officer_b"])
        ocspd.ok("role", "grant", "auditor", names["auditor"])
        ocspd.ok("role", "grant", "admin", names["admin"])
        yield {k: ocspd.as_user(v) for k, v in names.items()}
    finally:
        for name in names.values():
            run_sql(pg_admin_url, f"DROP ROLE IF EXISTS {name}")


def login_of(cli: Cli) -> str:
    return cli.url.split("://", 1)[1].split("@", 1)[0]


# --- the chain itself ---------------------------------------------------------------------


def _record(seq: int, **kw: Any) -> ChainRecord:
    base: dict[str, Any] = dict(
        stream="s", seq=seq, at=dt.datetime(2026, 1, 1, tzinfo=UTC), type="revoke",
        actor="alice", outcome="applied", detail={"serial": "01"}, key_id="k",
    )  # fmt: skip
    base.update(kw)
    return ChainRecord(**base)


class _Key:
    def __init__(self, secret: bytes = b"k" * 32, key_id: str = "k") -> None:
        self._inner = FileAuditKey(secret, "test")
        self.key_id = key_id

    def mac(self, data: bytes) -> bytes:
        return self._inner.mac(data)


class _Ring:
    def __init__(self, *keys: _Key) -> None:
        self._keys = {k.key_id: k for k in keys}

    def get(self, key_id: str) -> _Key | None:
        return self._keys.get(key_id)


def test_encoding_is_unambiguous_and_canonical() -> None:
    # Field boundaries are length-prefixed: moving a character between fields changes it.
    assert encode(_record(1, type="ab", actor="c")) != encode(_record(1, type="a", actor="bc"))
    # Key order and spacing of detail do not matter; values do.
    assert encode(_record(1, detail={"a": 1, "b": "x"})) == encode(
        _record(1, detail={"b": "x", "a": 1})
    )
    assert (
        canonical_json({"b": [1, None, True], "a": "é"}) == '{"a":"é","b":[1,null,true]}'.encode()
    )
    # Microseconds count; the time zone used to write the time does not.
    later = dt.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    assert encode(_record(1)) != encode(_record(1, at=later))
    cet = dt.datetime(2026, 1, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert encode(_record(1)) == encode(_record(1, at=cet))
    with pytest.raises(TypeError, match="float"):
        canonical_json({"x": 1.5})
    with pytest.raises(TypeError, match="NUL"):
        canonical_json({"x": "a\x00b"})


def test_stream_verifier_names_the_first_problem() -> None:
    key = _Key()
    chain: list[tuple[ChainRecord, bytes]] = []
    previous = GENESIS
    for seq in range(1, 6):
        record = _record(seq, detail={"n": seq})
        previous = chain_mac(key, previous, record)
        chain.append((record, previous))

    def run(items: list[tuple[ChainRecord, bytes]]) -> str | None:
        v = StreamVerifier("s", _Ring(key))
        for r, m in items:
            if v.feed(r, m) is not None:
                break
        return None if v.problem is None else str(v.problem)

    assert run(chain) is None
    assert run(chain[1:]) == "stream s: seq 1 missing (record deleted)"
    assert run(chain[:2] + chain[4:]) == "stream s: seq 3..4 missing (records deleted)"
    changed = _record(3, detail={"n": 33})
    assert run([*chain[:2], (changed, chain[2][1]), *chain[3:]]) == (
        "stream s seq 3: MAC mismatch (record modified or reordered)"
    )
    # Swapped contents, each keeping its position's seq.
    swapped = [
        (_record(3, detail={"n": 4}), chain[3][1]),
        (_record(4, detail={"n": 3}), chain[2][1]),
    ]
    assert run([*chain[:2], *swapped, *chain[4:]]) == (
        "stream s seq 3: MAC mismatch (record modified or reordered)"
    )
    other = StreamVerifier("s", _Ring(_Key(b"z" * 32, "other")))
    assert "made with audit key k, which is not among the keys given" in str(other.feed(*chain[0]))


# --- keys ---------------------------------------------------------------------------------


def test_key_files(ocspd: Cli, tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    out = ocspd.ok("audit", "keygen", "--out", path)
    assert "key id" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    key_id = FileAuditKey.load(path).key_id
    assert key_id in out and FileAuditKey.load(path).key_id == key_id
    # Never overwritten.
    result = ocspd("audit", "keygen", "--out", path)
    assert result.code == 1 and "never overwritten" in result.err
    path.chmod(0o640)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        FileAuditKey.load(path)
    short = tmp_path / "short.key"
    short.write_text("00" * 16)
    short.chmod(0o600)
    with pytest.raises(AuditKeyError, match="at least 32"):
        FileAuditKey.load(short)
    text = tmp_path / "text.key"
    text.write_text("not hex at all")
    text.chmod(0o600)
    with pytest.raises(AuditKeyError, match="hex"):
        FileAuditKey.load(text)


def test_changes_are_refused_without_an_audit_key(
    ocspd: Cli, pki: Pki, issuer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = import_leaf(ocspd, pki, issuer, "nokey")
    monkeypatch.delenv("OCSPD_AUDIT_MAC_KEY")
    before = ocspd.snapshot()
    result = ocspd("revoke", "--issuer", issuer, "--serial", serial, "--reason", "superseded")
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1
    assert "no audit MAC key configured" in result.err and "OCSPD_AUDIT_MAC_KEY" in result.err
    assert ocspd.snapshot() == before
    # Reading needs no key.
    assert "status=good" in ocspd.ok("status", "--issuer", issuer, "--serial", serial)


def test_pkcs11_mac_key(
    ocspd: Cli, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AA7.1 with the key in a token (KM1.1): SoftHSM2, CKM_SHA256_HMAC."""
    file_key = os.environ["OCSPD_AUDIT_MAC_KEY"]
    with SoftHSM.create(tmp_path / "hsm") as hsm:
        uri = hsm.add_secret_key("audit-mac")
        loose = hsm.add_secret_key("loose-mac", sensitive=False)
        monkeypatch.setenv("OCSPD_AUDIT_MAC_KEY", uri)
        ocspd.ok(
            "issuer", "add", "ca", "--ca-cert", pki.ca_cert,
            "--responder-cert", pki.responder_cert, "--responder-key", f"file:{pki.responder_key}",
        )  # fmt: skip
        serial = import_leaf(ocspd, pki, "ca", "hsm-audited")
        ocspd.ok("revoke", "--issuer", "ca", "--serial", serial, "--reason", "keyCompromise")
        code, text = verify(ocspd)
        assert code == 0 and "audit trail intact: 3 records" in text, text

        async def key_ids() -> tuple[str, str]:
            token_key = await open_audit_key(uri, Pkcs11Config())
            try:
                again = await open_audit_key(uri, Pkcs11Config())
                try:
                    return token_key.key_id, again.key_id
                finally:
                    again.close()
            finally:
                token_key.close()

        first, second = asyncio.run(key_ids())
        assert first == second and len(first) == 16
        assert {r["key_id"] for r in records(ocspd)} == {first}
        # Records made with the token's key do not verify with another key...
        monkeypatch.setenv("OCSPD_AUDIT_MAC_KEY", file_key)
        code, text = verify(ocspd)
        assert code == 1 and f"stream operator seq 1: made with audit key {first}" in text
        # ...unless the token's key is given as a retired one.
        code, text = verify(ocspd, "--key", uri)
        assert code == 0, text
        # KM6.4: a key the token would reveal is refused.
        monkeypatch.setenv("OCSPD_AUDIT_MAC_KEY", loose)
        result = ocspd("hold", "--issuer", "ca", "--serial", serial)
        assert result.code == 1 and "not sensitive" in result.err


# --- every change on record (RM3.1, AA3.1) --------------------------------------------------


def test_each_status_change_is_recorded_with_its_times(ocspd: Cli, pki: Pki, issuer: str) -> None:
    serial = import_leaf(ocspd, pki, issuer, "recorded")
    ocspd.ok("hold", "--issuer", issuer, "--serial", serial)
    ocspd.ok("release", "--issuer", issuer, "--serial", serial)
    ocspd.ok(
        "revoke", "--issuer", issuer, "--serial", serial, "--reason", "keyCompromise",
        "--invalidity-date", "2026-01-02T03:04:05Z",
    )  # fmt: skip
    found = records(ocspd)
    assert [(r["type"], r["outcome"]) for r in found] == [
        ("issuer-add", "applied"),
        ("import", "applied"),
        ("hold", "applied"),
        ("release", "applied"),
        ("revoke", "applied"),
    ]
    assert {r["actor"] for r in found} == {"postgres"}
    assert [r["seq"] for r in found] == [1, 2, 3, 4, 5]
    requests = ocspd.sql(
        "SELECT id, received_at, applied_at, reason FROM revocation_requests ORDER BY id"
    )
    for event, request in zip(found[2:], requests, strict=True):
        detail = event["detail"]
        assert detail["request"] == request["id"]
        assert detail["issuer"] == issuer and detail["serial"] == serial
        assert dt.datetime.fromisoformat(detail["received_at"]) == request["received_at"]
        assert dt.datetime.fromisoformat(detail["applied_at"]) == request["applied_at"]
        assert (
            request["received_at"]
            <= request["applied_at"]
            <= dt.datetime.fromisoformat(event["at"])
        )
    assert found[4]["detail"]["reason"] == "keyCompromise"
    assert found[4]["detail"]["invalidity_date"] == "2026-01-02T03:04:05.000000Z"
    code, text = verify(ocspd)
    assert code == 0 and "audit trail intact: 5 records in 1 streams" in text
    # Filters (AA4.1).
    assert [r["type"] for r in records(ocspd, "--type", "hold", "--type", "release")] == [
        "hold",
        "release",
    ]
    assert records(ocspd, "--actor", "someone-else") == []
    assert records(ocspd, "--until", "2000-01-01T00:00:00Z") == []
    assert len(records(ocspd, "--since", found[2]["at"])) == 3
    table = ocspd.ok("audit", "search", "--type", "revoke")
    assert "revoke applied by postgres" in table and "reason=keyCompromise" in table


def test_refused_requests_are_recorded(ocspd: Cli, pki: Pki, issuer: str) -> None:
    serial = import_leaf(ocspd, pki, issuer, "refused")
    ocspd.ok("revoke", "--issuer", issuer, "--serial", serial, "--reason", "superseded")
    before = ocspd.snapshot()
    again = ocspd("revoke", "--issuer", issuer, "--serial", serial, "--reason", "keyCompromise")
    assert again.code == 1 and "revocation is final" in again.err
    unknown = ocspd("hold", "--issuer", issuer, "--serial", "ABCDEF")
    assert unknown.code == 1
    nobody = ocspd("release", "--issuer", "nope", "--serial", serial)
    assert nobody.code == 1
    assert ocspd.snapshot() == before
    refused = records(ocspd, "--type", "revoke", "--type", "hold", "--type", "release")[1:]
    assert [(r["type"], r["outcome"]) for r in refused] == [
        ("revoke", "refused"),
        ("hold", "refused"),
        ("release", "refused"),
    ]
    assert "revocation is final (RM1.3)" in refused[0]["detail"]["error"]
    assert refused[0]["detail"]["reason"] == "keyCompromise"
    assert "no certificate with serial ABCDEF" in refused[1]["detail"]["error"]
    assert "no issuer named 'nope'" in refused[2]["detail"]["error"]
    assert verify(ocspd)[0] == 0


# --- dual control (RM1.4) and RM1.1 ---------------------------------------------------------


def _oldest(url: str) -> float:
    async def go() -> float:
        conn = await asyncpg.connect(url)
        try:
            return await oldest_pending_seconds(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_a_ca_certificate_needs_two_officers(
    ocspd: Cli, pki: Pki, issuer: str, people: dict[str, Cli], tmp_path: Path
) -> None:
    a, b = people["officer_a"], people["officer_b"]
    sub = devpki.make_ca("Subordinate CA", issuer=pki.ca)
    a.ok("cert", "import", "--issuer", issuer, devpki.write_cert(tmp_path / "sub.pem", sub.cert))
    serial = format_serial(sub.cert.serial_number)
    assert ocspd.sql("SELECT key_use FROM certificates")[0]["key_use"] == "ca"
    assert _oldest(ocspd.url) == 0

    out = a.ok("revoke", "--issuer", issuer, "--serial", serial, "--reason", "cACompromise")
    request_id = int(out.split()[1])
    assert "a CA certificate, a second officer must approve it (RM1.4)" in out
    assert f"ocspd approve {request_id}" in out
    assert "status=good" in a.ok("status", "--issuer", issuer, "--serial", serial)
    assert _oldest(ocspd.url) > 0
    listing = b.ok("pending")
    assert str(request_id) in listing and login_of(a) in listing and "cACompromise" in listing
    # A second request for the same certificate waits for the first.
    twice = b("hold", "--issuer", issuer, "--serial", serial)
    assert twice.code == 1 and f"already has request {request_id}" in twice.err

    same = a("approve", str(request_id))
    assert same.code == 1 and len(same.err.strip().splitlines()) == 1
    assert "the same officer cannot approve it" in same.err and "RM1.4" in same.err
    assert "status=good" in a.ok("status", "--issuer", issuer, "--serial", serial)

    out = b.ok("approve", str(request_id))
    assert "status=revoked" in out and "reason=cACompromise" in out
    assert f"approved by {login_of(b)} (requested by {login_of(a)})" in out
    assert _oldest(ocspd.url) == 0
    assert "no requests are waiting" in b.ok("pending")
    [row] = ocspd.sql(
        """SELECT r.requested_by, r.approved_by, r.applied_at IS NOT NULL AS applied,
                  r.change_xid = c.change_xid AS same_xid
           FROM revocation_requests r JOIN certificates c USING (issuer_id, serial)"""
    )
    # crlgen sees the change as made by the approving transaction.
    assert (row["requested_by"], row["approved_by"], row["applied"], row["same_xid"]) == (
        login_of(a),
        login_of(b),
        True,
        True,
    )
    trail = [(r["type"], r["outcome"], r["actor"]) for r in records(ocspd)][-4:]
    assert trail == [
        ("revoke", "pending", login_of(a)),
        ("hold", "refused", login_of(b)),
        ("approve", "refused", login_of(a)),
        ("approve", "applied", login_of(b)),
    ]
    assert verify(ocspd)[0] == 0
    # Applied once: approving again is refused.
    again = b("approve", str(request_id))
    assert again.code == 1 and "applied already" in again.err


def test_a_responder_certificate_needs_two_officers(
    ocspd: Cli, pki: Pki, issuer: str, people: dict[str, Cli], tmp_path: Path
) -> None:
    """Known only from an openssl index, the responder certificate is recognised from the
    issuers registry (it is issuer 'ca''s delegated responder)."""
    a, b = people["officer_a"], people["officer_b"]
    responder_serial = format_serial(pki.responder.cert.serial_number)
    index = tmp_path / "index.txt"
    index.write_text(f"V\t301231235959Z\t\t{responder_serial}\tunknown\t/CN=OCSP\n")
    a.ok("cert", "import", "--issuer", issuer, "--openssl-index", index)
    assert ocspd.sql("SELECT key_use FROM certificates")[0]["key_use"] == "ocsp"
    out = a.ok("hold", "--issuer", issuer, "--serial", responder_serial)
    request_id = int(out.split()[1])
    assert "an OCSP responder certificate" in out
    out = b.ok("refuse", str(request_id), "--comment", "not compromised after all")
    assert f"refused by {login_of(b)}" in out
    assert "status=good" in a.ok("status", "--issuer", issuer, "--serial", responder_serial)
    assert _oldest(ocspd.url) == 0
    refusal = records(ocspd, "--type", "refuse")[0]
    assert refusal["detail"]["comment"] == "not compromised after all"
    assert refusal["detail"]["requested_by"] == login_of(a)
    # An index can no more apply a status change to it than one officer can.
    index.write_text(
        f"R\t301231235959Z\t260101000000Z,keyCompromise\t{responder_serial}\tunknown\t/CN=OCSP\n"
    )
    result = a("cert", "import", "--issuer", issuer, "--openssl-index", index)
    assert result.code == 0 and "need two officers (RM1.4)" in result.err
    assert "status=good" in a.ok("status", "--issuer", issuer, "--serial", responder_serial)
    assert verify(ocspd)[0] == 0


def test_a_ca_certificate_is_recognised_from_the_registry(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path
) -> None:
    """Issuer 'ca' is issued by the root; once the root is registered too, the row of 'ca''s
    own certificate under the root is a CA certificate, however it was imported."""
    root_key = devpki.write_key(tmp_path / "root.key", pki.root.key)
    root_cert = devpki.write_cert(tmp_path / "root.pem", pki.root.cert)
    ca_serial = format_serial(pki.ca.cert.serial_number)
    index = tmp_path / "index.txt"
    index.write_text(f"V\t301231235959Z\t\t{ca_serial}\tunknown\t/CN=Issuing CA\n")
    ocspd.ok("issuer", "add", "root", "--ca-cert", root_cert, "--responder-key", f"file:{root_key}")
    ocspd.ok("cert", "import", "--issuer", "root", "--openssl-index", index)
    out = ocspd.ok("revoke", "--issuer", "root", "--serial", ca_serial, "--reason", "cACompromise")
    assert out.startswith("request ") and "a CA certificate" in out
    # The superuser holds every role but is still one person: no self-approval.
    result = ocspd("approve", out.split()[1])
    assert result.code == 1 and "the same officer cannot approve it" in result.err


def test_one_officer_cannot_bypass_dual_control_in_sql(
    ocspd: Cli, pki: Pki, issuer: str, people: dict[str, Cli], tmp_path: Path
) -> None:
    a = people["officer_a"]
    sub = devpki.make_ca("Another Sub CA", issuer=pki.ca)
    a.ok("cert", "import", "--issuer", issuer, devpki.write_cert(tmp_path / "sub.pem", sub.cert))
    raw = bytes.fromhex(format_serial(sub.cert.serial_number))
    login = login_of(a)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match=r"RM1\.4"):
        sql_as(
            ocspd.url, login, "ocspd_officer",
            "UPDATE certificates SET status = 'revoked', revoked_at = now(), reason = 2 WHERE serial = $1",
            raw,
        )  # fmt: skip
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="never changes"):
        sql_as(
            ocspd.url,
            login,
            "ocspd_officer",
            "UPDATE certificates SET key_use = NULL WHERE serial = $1",
            raw,
        )
    # A request naming another officer as its maker still names this login...
    [row] = sql_as(
        ocspd.url, login, "ocspd_officer",
        """INSERT INTO revocation_requests (issuer_id, serial, action, reason, revoked_at,
               received_at, needs_approval, requested_by)
           VALUES (1, $1, 'revoke', 2, now(), now(), true, 'someone_else') RETURNING id, requested_by""",
        raw,
    )  # fmt: skip
    assert row["requested_by"] == login
    # ...and its maker cannot approve it.
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="second officer"):
        sql_as(
            ocspd.url, login, "ocspd_officer",
            "UPDATE revocation_requests SET approved_by = session_user, applied_at = now() WHERE id = $1",
            row["id"],
        )  # fmt: skip
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="approved by the login"):
        sql_as(
            ocspd.url, login, "ocspd_officer",
            "UPDATE revocation_requests SET approved_by = 'someone_else', applied_at = now() WHERE id = $1",
            row["id"],
        )  # fmt: skip


# --- roles (M1.1, M1.4) ---------------------------------------------------------------------


def test_the_auditor_reads_and_cannot_write(
    ocspd: Cli, pki: Pki, issuer: str, people: dict[str, Cli]
) -> None:
    auditor, officer = people["auditor"], people["officer_a"]
    serial = import_leaf(ocspd, pki, issuer, "audited")
    result = auditor("revoke", "--issuer", issuer, "--serial", serial, "--reason", "superseded")
    assert result.code == 1 and "is not a revocation officer" in result.err
    assert f"ocspd role grant officer {login_of(auditor)}" in result.err
    assert "status=good" in auditor.ok("status", "--issuer", issuer, "--serial", serial)
    # The attempt is on record, in the auditor's name.
    [attempt] = [r for r in records(ocspd, "--type", "revoke")]
    assert (attempt["outcome"], attempt["actor"]) == ("refused", login_of(auditor))
    code, text = verify(auditor)
    assert code == 0 and "audit trail intact" in text
    assert "import applied by postgres" in auditor.ok("audit", "search")
    # Officers do not read the audit trail (AA5.1, L9).
    result = officer("audit", "search")
    assert result.code == 1 and "is not an auditor" in result.err
    for statement in (
        "INSERT INTO audit_events (stream, seq, at, type, actor, outcome, key_id, mac) "
        "VALUES ('operator', 99, now(), 'revoke', session_user, 'applied', 'k', '\\x00')",
        "UPDATE audit_events SET outcome = 'applied'",
        "DELETE FROM audit_events",
        "UPDATE certificates SET status = 'hold', revoked_at = now(), reason = 6",
        "INSERT INTO revocation_requests (issuer_id, serial, action, received_at) VALUES (1, '\\x01', 'hold', now())",
        "UPDATE revocation_requests SET applied_at = now()",
        "INSERT INTO issuers (name) VALUES ('x')",
        "SELECT purge_certificates(now() - interval '1 year', false)",
        "SELECT ocspd_role_membership('ocspd_officer', session_user, true)",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            sql_as(ocspd.url, login_of(auditor), "ocspd_auditor", statement)
    assert (
        sql_as(
            ocspd.url, login_of(auditor), "ocspd_auditor", "SELECT count(*) AS n FROM audit_events"
        )[0]["n"]
        >= 3
    )


def test_roles_are_granted_by_administrators_only(
    ocspd: Cli, people: dict[str, Cli], pg_admin_url: str
) -> None:
    officer, admin, nobody = people["officer_a"], people["admin"], people["nobody"]
    result = officer("role", "grant", "officer", login_of(nobody))
    assert result.code == 1 and "is not an administrator" in result.err
    result = nobody("role", "grant", "admin", login_of(nobody))
    assert result.code == 1 and "is not an administrator" in result.err
    assert "granted officer to" in admin.ok("role", "grant", "officer", login_of(nobody))
    assert "is officer already" in admin.ok("role", "grant", "officer", login_of(nobody))
    # M1.4: an auditor is neither officer nor administrator.
    result = admin("role", "grant", "auditor", login_of(officer))
    assert result.code == 1 and "M1.4" in result.err
    result = admin("role", "grant", "admin", login_of(people["auditor"]))
    assert result.code == 1 and "M1.4" in result.err
    assert "revoked officer from" in admin.ok("role", "revoke", "officer", login_of(nobody))
    listing = admin.ok("role", "list")
    assert login_of(officer) in listing and login_of(people["auditor"]) in listing
    assert login_of(nobody) not in listing
    assert "superuser: every role" in listing
    trail = [
        (r["type"], r["outcome"], r["actor"], r["detail"].get("login"))
        for r in records(ocspd, "--type", "role-grant", "--type", "role-revoke")
    ]
    assert ("role-grant", "refused", login_of(officer), login_of(nobody)) in trail
    assert ("role-grant", "refused", login_of(nobody), login_of(nobody)) in trail
    assert ("role-grant", "applied", login_of(admin), login_of(nobody)) in trail
    assert ("role-grant", "unchanged", login_of(admin), login_of(nobody)) in trail
    assert ("role-revoke", "applied", login_of(admin), login_of(nobody)) in trail
    assert verify(ocspd)[0] == 0


# --- append-only and tamper evidence (AA5.1, AA7.1, AA7.2) ------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET outcome = 'refused'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ],
)
def test_audit_records_cannot_be_changed_even_by_a_superuser(
    ocspd: Cli, issuer: str, statement: str
) -> None:
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
        ocspd.sql(statement)
    assert ocspd.sql("SELECT count(*) AS n FROM audit_events")[0]["n"] == 1


def test_records_in_another_name_or_out_of_order_are_refused(
    ocspd: Cli, issuer: str, people: dict[str, Cli]
) -> None:
    login = login_of(people["officer_a"])
    insert = (
        "INSERT INTO audit_events (stream, seq, at, type, actor, outcome, key_id, mac) "
        "VALUES ('operator', $1, now(), 'revoke', $2, 'applied', 'k', decode(repeat('00', 32), 'hex'))"
    )
    seq = ocspd.sql("SELECT max(seq) AS n FROM audit_events")[0]["n"] + 1
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="names the login"):
        sql_as(ocspd.url, login, "ocspd_officer", insert, seq, "postgres")
    with pytest.raises(
        asyncpg.IntegrityConstraintViolationError, match=f"next record is seq {seq}"
    ):
        sql_as(ocspd.url, login, "ocspd_officer", insert, seq + 1, login)


@pytest.fixture
def trail(ocspd: Cli, pki: Pki, issuer: str) -> str:
    """Six records: issuer-add, import, revoke, hold, release, revoke."""
    first = import_leaf(ocspd, pki, issuer, "first")
    second = pki.leaf("second")
    ocspd.ok("cert", "import", "--issuer", issuer, second)
    from cryptography import x509

    second_serial = format_serial(x509.load_pem_x509_certificate(second.read_bytes()).serial_number)
    ocspd.ok("revoke", "--issuer", issuer, "--serial", first, "--reason", "keyCompromise")
    ocspd.ok("hold", "--issuer", issuer, "--serial", second_serial)
    ocspd.ok("release", "--issuer", issuer, "--serial", second_serial)
    assert verify(ocspd)[0] == 0
    # The attacker: a superuser who switches the append-only trigger off first.
    ocspd.sql("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
    return issuer


SWAP = """
    UPDATE audit_events e SET at = o.at, type = o.type, actor = o.actor, outcome = o.outcome,
           detail = o.detail, key_id = o.key_id, mac = o.mac
    FROM audit_events o
    WHERE e.stream = 'operator' AND o.stream = 'operator'
      AND ((e.seq = 4 AND o.seq = 5) OR (e.seq = 5 AND o.seq = 4))
"""

TAMPERING = [
    (
        "UPDATE audit_events SET detail = jsonb_set(detail, '{reason}', '\"superseded\"') WHERE seq = 5",
        "stream operator seq 5: MAC mismatch (record modified or reordered)",
    ),
    (
        "UPDATE audit_events SET actor = 'someone_else' WHERE seq = 4",
        "stream operator seq 4: MAC mismatch (record modified or reordered)",
    ),
    ("DELETE FROM audit_events WHERE seq = 4", "stream operator: seq 4 missing (record deleted)"),
    (SWAP, "stream operator seq 4: MAC mismatch (record modified or reordered)"),
    (
        # Renumbering after a deletion does not help: seq is under the MAC.
        "DELETE FROM audit_events WHERE seq = 3; UPDATE audit_events SET seq = seq - 1 WHERE seq > 3",
        "stream operator seq 3: MAC mismatch (record modified or reordered)",
    ),
    (
        # The newest record: the chain ends early, but its request has lost its record.
        "DELETE FROM audit_events WHERE seq = 6",
        "revocation request 3 has no record of its request (record deleted)",
    ),
]


@pytest.mark.parametrize(
    ("tamper", "message"),
    TAMPERING,
    ids=["modified", "actor", "deleted", "swapped", "renumbered", "tail"],
)
def test_verify_names_the_first_bad_record(
    ocspd: Cli, trail: str, tamper: str, message: str
) -> None:
    for statement in tamper.split(";"):
        ocspd.sql(statement)
    code, text = verify(ocspd)
    assert code == 1, text
    assert message in text, text
    assert "intact" not in text


def test_verify_streams_large_trails_and_registered_streams(ocspd: Cli, issuer: str) -> None:
    """Records are read through a server-side cursor (batch smaller than the stream), every
    stream is checked, and a registered stream that vanished is reported."""
    path = Path(os.environ["OCSPD_AUDIT_MAC_KEY"].removeprefix("file:"))

    async def write() -> None:
        key = FileAuditKey.load(path)
        conn = await asyncpg.connect(ocspd.url)
        try:
            async with conn.transaction():
                await audit.register_stream(conn, key, "audit_events", "test/worker-1", {"pid": 1})
                events = [
                    Event(EventType.STREAM_OPEN, Outcome.APPLIED, {"n": n}) for n in range(40)
                ]
                await audit.append(conn, key, events, stream="test/worker-1")
        finally:
            await conn.close()

    asyncio.run(write())
    code, text = verify(ocspd, "--batch", "7", "--verbose")
    assert code == 0 and "42 records in 3 streams" in text and "stream test/worker-1" in text, text
    ocspd.sql("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
    ocspd.sql(
        "UPDATE audit_events SET detail = '{\"n\": 99}' WHERE stream = 'test/worker-1' AND seq = 30"
    )
    code, text = verify(ocspd, "--batch", "7")
    assert code == 1 and "stream test/worker-1 seq 30: MAC mismatch" in text
    ocspd.sql("DELETE FROM audit_events WHERE stream = 'test/worker-1'")
    code, text = verify(ocspd)
    assert code == 1
    assert (
        "stream streams seq 1: registers stream test/worker-1 of table audit_events, which has no records (stream deleted)"
        in text
    )


def test_records_made_with_another_key(
    ocspd: Cli, issuer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = os.environ["OCSPD_AUDIT_MAC_KEY"]
    new = tmp_path / "new.key"
    write_key_file(new)
    monkeypatch.setenv("OCSPD_AUDIT_MAC_KEY", f"file:{new}")
    old_id = FileAuditKey.load(Path(old.removeprefix("file:"))).key_id
    code, text = verify(ocspd)
    assert code == 1 and f"made with audit key {old_id}" in text and "--key" in text
    # The chain runs on across a key change, each record naming its key.
    ocspd.ok("issuer", "list")
    code, text = verify(ocspd, "--key", old)
    assert code == 0, text
    with KeyRing([FileAuditKey.load(new)]) as ring:
        assert ring.get(old_id) is None


# --- purge (pkio70) ---------------------------------------------------------------------------


def _old_rows(ocspd: Cli) -> None:
    """Rows as an import years ago would have left them, written straight in as the owner."""
    ocspd.sql(
        """INSERT INTO certificates (issuer_id, serial, not_after, status, revoked_at, reason) VALUES
           (1, '\\x0a01', now() - interval '2 years', 'good', NULL, NULL),
           (1, '\\x0a02', now() - interval '2 years', 'revoked', now() - interval '20 months', 1),
           (1, '\\x0a03', now() - interval '2 years', 'revoked', now() - interval '3 months', 4),
           (1, '\\x0a04', now() - interval '3 months', 'good', NULL, NULL),
           (1, '\\x0a05', now() - interval '2 years', 'good', NULL, NULL)"""
    )
    ocspd.sql(
        """INSERT INTO ocsp_responses (cert_id, issuer_id, serial, change_xid, this_update, next_update, der)
           VALUES ('\\x01', 1, '\\x0a02', pg_current_xact_id(), now() - interval '20 months',
                   now() - interval '19 months', '\\x30')"""
    )


def test_purge_respects_the_retention(ocspd: Cli, issuer: str) -> None:
    _old_rows(ocspd)
    now = dt.datetime.now(UTC)

    def serials() -> list[str]:
        return sorted(r["serial"].hex() for r in ocspd.sql("SELECT serial FROM certificates"))

    everything = serials()
    inside = (now - dt.timedelta(days=150)).isoformat()
    result = ocspd("purge", "--before", inside)
    assert result.code == 1 and "pkio70" in result.err and len(result.err.strip().splitlines()) == 1
    result = ocspd("purge", "--before", inside, "--dry-run")
    assert result.code == 1 and "pkio70" in result.err
    cutoff = (now - dt.timedelta(days=220)).isoformat()
    out = ocspd.ok("purge", "--before", cutoff, "--dry-run")
    assert "would remove 3 certificates" in out and "1 stored responses" in out
    assert serials() == everything
    # The database refuses a deletion outside the purge, past retention or not.
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="except by ocspd purge"):
        ocspd.sql("DELETE FROM certificates WHERE serial = '\\x0a01'")
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="until 6 months"):
        ocspd.sql("DELETE FROM certificates WHERE serial = '\\x0a04'")
    with pytest.raises(
        asyncpg.IntegrityConstraintViolationError, match="only with its audit record"
    ):
        ocspd.sql("SELECT purge_certificates(now() - interval '7 months', true)")
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="pkio70"):
        ocspd.sql("SELECT purge_certificates(now() - interval '5 months', false)")
    assert serials() == everything

    out = ocspd.ok("purge", "--before", cutoff)
    assert "removed 3 certificates" in out
    # Kept: revoked 3 months ago, expired 3 months ago, and the issuer's other rows.
    assert "0a01" not in serials() and "0a02" not in serials() and "0a05" not in serials()
    assert {"0a03", "0a04"} <= set(serials())
    assert ocspd.sql("SELECT count(*) AS n FROM ocsp_responses")[0]["n"] == 0
    # The refused attempt inside the retention is on record too (not the dry runs).
    refused, record = records(ocspd, "--type", "purge")
    assert refused["outcome"] == "refused" and "pkio70" in refused["detail"]["error"]
    assert record["outcome"] == "applied" and record["detail"]["certificates"] == 3
    assert len(record["detail"]["digest"]) == 64
    assert verify(ocspd)[0] == 0
    # Nothing left past the cutoff: recorded as unchanged.
    assert "removed 0 certificates" in ocspd.ok("purge", "--before", cutoff)
    assert records(ocspd, "--type", "purge")[-1]["outcome"] == "unchanged"


def test_purge_needs_an_administrator(ocspd: Cli, issuer: str, people: dict[str, Cli]) -> None:
    cutoff = (dt.datetime.now(UTC) - dt.timedelta(days=400)).isoformat()
    result = people["officer_a"]("purge", "--before", cutoff)
    assert result.code == 1 and "is not an administrator" in result.err
    assert "removed 0 certificates" in people["admin"].ok("purge", "--before", cutoff)


def test_upgrade_keeps_earlier_requests_without_records(
    empty_db_url: str,
    pki: Pki,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requests made before 0004 have no audit records; verify does not call them deleted."""

    async def before_0004() -> None:
        conn = await asyncpg.connect(empty_db_url)
        try:
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for m in available_migrations():
                if m.version < 4:
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        m.version,
                        m.name,
                    )
            await conn.execute(
                """INSERT INTO issuers (name, ca_cert_der, subject_der, spki_der, name_sha1, key_sha1,
                       name_sha256, key_sha256, not_before, not_after, responder_key)
                   VALUES ('old', $1, '\\x02', '\\x03', decode(repeat('00', 20), 'hex'),
                       decode(repeat('00', 20), 'hex'), decode(repeat('00', 32), 'hex'),
                       decode(repeat('00', 32), 'hex'), now(), now() + interval '1 year', 'file:/x')""",
                pki.ca.cert.public_bytes(serialization.Encoding.DER),
            )
            await conn.execute(
                """INSERT INTO certificates (issuer_id, serial, not_after, status, revoked_at, reason)
                   VALUES (1, '\\x05', now() + interval '1 year', 'revoked', now(), 1)"""
            )
            await conn.execute(
                """INSERT INTO revocation_requests (issuer_id, serial, action, reason, revoked_at,
                       received_at, applied_at) VALUES (1, '\\x05', 'revoke', 1, now(), now(), now())"""
            )
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(before_0004())
    ocspd = Cli(empty_db_url, capsys, monkeypatch)
    assert ocspd.sql("SELECT audited FROM revocation_requests")[0]["audited"] is False
    code, text = verify(ocspd)
    assert code == 0 and "0 records" in text, text
    result = ocspd("revoke", "--issuer", "old", "--serial", "05", "--reason", "superseded")
    assert result.code == 1 and "revocation is final" in result.err
    code, text = verify(ocspd)
    assert code == 0 and "1 records" in text, text
