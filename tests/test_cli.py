"""The operator CLI (the revocation manager) against a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Cli, Pki, make_pki
from cryptography.hazmat.primitives import serialization

from ocspd import devpki
from ocspd.model import format_serial


def test_workflow_with_a_delegated_responder(ocspd: Cli, pki: Pki, tmp_path: Path) -> None:
    out = ocspd.ok(
        "issuer", "add", "issuing-2026", "--ca-cert", pki.ca_cert,
        "--responder-cert", pki.responder_cert, "--responder-key", f"file:{pki.responder_key}",
    )  # fmt: skip
    assert "added issuer issuing-2026" in out and "delegated responder" in out

    leaves = [devpki.make_leaf(f"host{i}.example", pki.ca, pki.leaf_key) for i in range(5)]
    bundle = devpki.write_cert(tmp_path / "bundle.pem", *leaves[:3])
    der = tmp_path / "one.der"
    der.write_bytes(leaves[3].public_bytes(serialization.Encoding.DER))
    single = devpki.write_cert(tmp_path / "single.pem", leaves[4])
    out = ocspd.ok("cert", "import", "--issuer", "issuing-2026", bundle, der, single)
    assert "5 added" in out
    # Idempotent: the same import again adds nothing.
    assert "0 added, 0 status changes applied, 5 already present" in ocspd.ok(
        "cert", "import", "--issuer", "issuing-2026", bundle, der, single
    )
    listing = ocspd.ok("issuer", "list")
    assert "issuing-2026" in listing and "responder" in listing and " 5" in listing

    serials = [format_serial(c.serial_number) for c in leaves]
    revoked_at = "2026-11-01T12:00:00Z"
    out = ocspd.ok(
        "revoke", "--issuer", "issuing-2026", "--serial", serials[0], "--reason", "keyCompromise",
        "--revoked-at", revoked_at, "--invalidity-date", "2026-10-30T00:00:00+02:00",
    )  # fmt: skip
    assert "status=revoked" in out and "reason=keyCompromise" in out
    assert (
        "revoked_at=2026-11-01T12:00:00Z" in out and "invalidity_date=2026-10-29T22:00:00Z" in out
    )

    assert "status=hold" in ocspd.ok("hold", "--issuer", "issuing-2026", "--serial", serials[1])
    assert "reason=certificateHold" in ocspd.ok(
        "status", "--issuer", "issuing-2026", "--serial", serials[1]
    )
    assert "status=good" in ocspd.ok("release", "--issuer", "issuing-2026", "--serial", serials[1])
    # A held certificate can still be revoked for good.
    ocspd.ok("hold", "--issuer", "issuing-2026", "--serial", serials[2])
    assert "reason=superseded" in ocspd.ok(
        "revoke", "--issuer", "issuing-2026", "--serial", serials[2], "--reason", "superseded"
    )
    assert "status=good" in ocspd.ok("status", "--issuer", "issuing-2026", "--serial", serials[3])

    # RM1.1: each change recorded with the time received and the time applied.
    requests = ocspd.sql(
        "SELECT action::text, received_at, applied_at, requested_by FROM revocation_requests ORDER BY id"
    )
    assert [r["action"] for r in requests] == ["revoke", "hold", "release", "hold", "revoke"]
    for r in requests:
        assert r["received_at"] <= r["applied_at"] <= dt.datetime.now(dt.UTC)
        assert r["applied_at"] - r["received_at"] < dt.timedelta(seconds=60)
        assert r["requested_by"] == "postgres"


def test_ca_signing_its_own_responses(ocspd: Cli, tmp_path: Path) -> None:
    own = make_pki(tmp_path / "own", "Self-signing CA")
    out = ocspd.ok(
        "issuer", "add", "self", "--ca-cert", own.ca_cert, "--responder-key", f"file:{own.ca_key}"
    )
    assert "the CA key itself" in out
    assert ocspd.sql("SELECT responder_cert_der FROM issuers")[0]["responder_cert_der"] is None


def test_two_generations_of_one_ca(ocspd: Cli, pki: Pki, tmp_path: Path) -> None:
    """A renewed CA with the same name and a new key sits beside the old one."""
    renewed = devpki.make_ca("Issuing CA", issuer=pki.root)
    cert = devpki.write_cert(tmp_path / "ca2.pem", renewed.cert)
    key = devpki.write_key(tmp_path / "ca2.key", renewed.key)
    ocspd.ok(
        "issuer", "add", "gen1", "--ca-cert", pki.ca_cert, "--responder-key", f"file:{pki.ca_key}"
    )
    ocspd.ok("issuer", "add", "gen2", "--ca-cert", cert, "--responder-key", f"file:{key}")
    rows = ocspd.sql(
        "SELECT name_sha1, key_sha1, name_sha256, key_sha256 FROM issuers ORDER BY name"
    )
    assert (
        rows[0]["name_sha1"] == rows[1]["name_sha1"]
        and rows[0]["name_sha256"] == rows[1]["name_sha256"]
    )
    assert (
        rows[0]["key_sha1"] != rows[1]["key_sha1"]
        and rows[0]["key_sha256"] != rows[1]["key_sha256"]
    )
    # A gen1 certificate is not gen2's, though the names match.
    leaf = pki.leaf("gen1-leaf")
    result = ocspd("cert", "import", "--issuer", "gen2", leaf)
    assert result.code == 1 and str(leaf) in result.err and "not issued by gen2" in result.err


def test_certid_hashes_match_openssl(ocspd: Cli, pki: Pki, issuer: str) -> None:
    """The stored hashes are the ones `openssl ocsp` puts in a request's CertID."""
    leaf = pki.leaf("hash-check")
    stored = ocspd.sql("SELECT name_sha1, key_sha1, name_sha256, key_sha256 FROM issuers")[0]
    for digest, name_col, key_col in (
        ("-sha1", "name_sha1", "key_sha1"),
        ("-sha256", "name_sha256", "key_sha256"),
    ):
        text = subprocess.run(
            ["openssl", "ocsp", "-issuer", str(pki.ca_cert), digest, "-cert", str(leaf), "-req_text", "-no_nonce"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        name_hash = text.split("Issuer Name Hash:")[1].split()[0].lower()
        key_hash = text.split("Issuer Key Hash:")[1].split()[0].lower()
        assert stored[name_col].hex() == name_hash
        assert stored[key_col].hex() == key_hash


# --- openssl ca ----------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def openssl_ca(pki: Pki, tmp_path: Path) -> Path:
    """A real `openssl ca` setup with the PKI's issuing CA: five issued, one revoked, one held."""
    ca = tmp_path / "openssl-ca"
    (ca / "newcerts").mkdir(parents=True)
    (ca / "index.txt").write_text("")
    (ca / "serial").write_text(os.urandom(16).hex().upper().replace("0", "1", 1) + "\n")
    (ca / "openssl.cnf").write_text(
        f"""[ ca ]
default_ca = CA_default
[ CA_default ]
dir = {ca}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = {pki.ca_cert}
private_key = {pki.ca_key}
serial = $dir/serial
default_md = sha256
default_days = 365
policy = policy_any
unique_subject = no
[ policy_any ]
commonName = supplied
"""
    )
    for i in range(5):
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"leaf{i}.key", "-subj", f"/CN=leaf{i}.example", "-out", f"leaf{i}.csr", cwd=ca,
        )  # fmt: skip
        _openssl(
            "ca",
            "-batch",
            "-config",
            "openssl.cnf",
            "-in",
            f"leaf{i}.csr",
            "-out",
            f"leaf{i}.pem",
            "-notext",
            cwd=ca,
        )
    _openssl(
        "ca", "-config", "openssl.cnf", "-revoke", "leaf0.pem", "-crl_reason", "keyCompromise",
        "-crl_compromise", "20261101000000Z", cwd=ca,
    )  # fmt: skip
    _openssl(
        "ca",
        "-config",
        "openssl.cnf",
        "-revoke",
        "leaf1.pem",
        "-crl_reason",
        "cessationOfOperation",
        cwd=ca,
    )
    _openssl(
        "ca",
        "-config",
        "openssl.cnf",
        "-revoke",
        "leaf2.pem",
        "-crl_hold",
        "holdInstructionCallIssuer",
        cwd=ca,
    )
    return ca


def _serial_of(path: Path) -> str:
    from cryptography import x509

    return format_serial(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)


def test_import_from_an_openssl_index(ocspd: Cli, issuer: str, openssl_ca: Path) -> None:
    out = ocspd.ok(
        "cert", "import", "--issuer", issuer, "--openssl-index", openssl_ca / "index.txt"
    )
    assert "5 added" in out

    def status(i: int) -> str:
        return ocspd.ok(
            "status", "--issuer", issuer, "--serial", _serial_of(openssl_ca / f"leaf{i}.pem")
        )

    assert "status=revoked" in status(0) and "reason=keyCompromise" in status(0)
    assert "invalidity_date=2026-11-01T00:00:00Z" in status(0)
    assert "reason=cessationOfOperation" in status(1)
    assert "status=hold" in status(2)
    assert "status=good" in status(3) and "status=good" in status(4)
    # The certificate files of the same CA import too, onto the same rows.
    files = [openssl_ca / f"leaf{i}.pem" for i in range(5)]
    assert "0 added, 0 status changes applied, 5 already present" in ocspd.ok(
        "cert", "import", "--issuer", issuer, *files
    )


def test_reimporting_an_index_applies_new_revocations(
    ocspd: Cli, issuer: str, openssl_ca: Path
) -> None:
    index = openssl_ca / "index.txt"
    ocspd.ok("cert", "import", "--issuer", issuer, "--openssl-index", index)
    _openssl(
        "ca",
        "-config",
        "openssl.cnf",
        "-revoke",
        "leaf3.pem",
        "-crl_reason",
        "superseded",
        cwd=openssl_ca,
    )
    out = ocspd.ok("cert", "import", "--issuer", issuer, "--openssl-index", index)
    assert "0 added, 1 status changes applied, 4 already present" in out
    assert "reason=superseded" in ocspd.ok(
        "status", "--issuer", issuer, "--serial", _serial_of(openssl_ca / "leaf3.pem")
    )
    requests = ocspd.sql("SELECT action::text, requested_by FROM revocation_requests ORDER BY id")
    assert [r["action"] for r in requests] == ["revoke"]


def test_index_cannot_undo_a_revocation(
    ocspd: Cli, issuer: str, openssl_ca: Path, tmp_path: Path
) -> None:
    ocspd.ok("cert", "import", "--issuer", issuer, "--openssl-index", openssl_ca / "index.txt")
    valid_again = tmp_path / "index.txt"
    lines = (openssl_ca / "index.txt").read_text().splitlines()
    valid_again.write_text(
        "".join(
            "V\t"
            + line.split("\t", 1)[1].split("\t", 1)[0]
            + "\t\t"
            + line.split("\t", 3)[3]
            + "\n"
            for line in lines
        )
    )
    result = ocspd("cert", "import", "--issuer", issuer, "--openssl-index", valid_again)
    assert result.code == 0 and "kept as they are" in result.err
    assert "status=revoked" in ocspd.ok(
        "status", "--issuer", issuer, "--serial", _serial_of(openssl_ca / "leaf0.pem")
    )


# --- bad input: one line, non-zero exit, database unchanged ----------------------------------


@pytest.fixture
def loaded(ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path) -> dict[str, str]:
    good = devpki.make_leaf("good.example", pki.ca, pki.leaf_key, serial=0x1001)
    gone = devpki.make_leaf("gone.example", pki.ca, pki.leaf_key, serial=0x1002)
    ocspd.ok(
        "cert", "import", "--issuer", issuer, devpki.write_cert(tmp_path / "two.pem", good, gone)
    )
    ocspd.ok("revoke", "--issuer", issuer, "--serial", "1002", "--reason", "superseded")
    return {"good": "1001", "revoked": "1002"}


def _other_ca_leaf(tmp_path: Path) -> Path:
    other = make_pki(tmp_path / "other", "Other CA")
    return other.leaf("stranger")


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.pem"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    return path


def _bad_index(tmp_path: Path) -> Path:
    path = tmp_path / "bad-index.txt"
    path.write_text("V\t301231235959Z\t\t1A2B\tunknown\t/CN=ok\nX\tnonsense\n")
    return path


def _world_readable_key(pki: Pki, tmp_path: Path) -> str:
    path = devpki.write_key(tmp_path / "open.key", pki.responder.key)
    path.chmod(0o644)
    return f"file:{path}"


BAD_INPUT = [
    # (argv builder, exit code, text expected in the single stderr line)
    (
        lambda p, t: ["revoke", "--issuer", "nope", "--serial", "1001", "--reason", "superseded"],
        1,
        "no issuer named 'nope'",
    ),
    (
        lambda p, t: ["revoke", "--issuer", "ca", "--serial", "zz", "--reason", "superseded"],
        2,
        "not a hexadecimal number",
    ),
    (
        lambda p, t: ["revoke", "--issuer", "ca", "--serial", "01" * 21, "--reason", "superseded"],
        2,
        "at most 20",
    ),
    (
        lambda p, t: ["revoke", "--issuer", "ca", "--serial", "1001", "--reason", "lostit"],
        2,
        "unknown revocation reason",
    ),
    (
        lambda p, t: [
            "revoke",
            "--issuer",
            "ca",
            "--serial",
            "1001",
            "--reason",
            "certificateHold",
        ],
        2,
        "use `ocspd hold`",
    ),
    (lambda p, t: ["revoke", "--issuer", "ca", "--serial", "1001"], 2, "--reason"),
    (
        lambda p, t: ["revoke", "--issuer", "ca", "--serial", "2002", "--reason", "superseded"],
        1,
        "no certificate with serial 2002",
    ),
    (
        lambda p, t: ["revoke", "--issuer", "ca", "--serial", "1002", "--reason", "keyCompromise"],
        1,
        "revocation is final",
    ),
    (lambda p, t: ["hold", "--issuer", "ca", "--serial", "1002"], 1, "revocation is final"),
    (lambda p, t: ["release", "--issuer", "ca", "--serial", "1002"], 1, "revocation is final"),
    (
        lambda p, t: ["release", "--issuer", "ca", "--serial", "1001"],
        1,
        "only a hold can be released",
    ),
    (
        lambda p, t: [
            "revoke",
            "--issuer",
            "ca",
            "--serial",
            "1001",
            "--reason",
            "superseded",
            "--revoked-at",
            "2999-01-01T00:00:00Z",
        ],
        1,
        "in the future",
    ),
    (
        lambda p, t: [
            "revoke",
            "--issuer",
            "ca",
            "--serial",
            "1001",
            "--reason",
            "superseded",
            "--revoked-at",
            "yesterday",
        ],
        2,
        "not an ISO 8601 time",
    ),
    (
        lambda p, t: ["status", "--issuer", "ca", "--serial", "2002"],
        1,
        "no certificate with serial 2002",
    ),
    (lambda p, t: ["cert", "import", "--issuer", "ca", _other_ca_leaf(t)], 1, "stranger"),
    (
        lambda p, t: ["cert", "import", "--issuer", "ca", _garbage(t)],
        1,
        "garbage.pem: not a PEM or DER",
    ),
    (
        lambda p, t: ["cert", "import", "--issuer", "ca", t / "missing.pem"],
        1,
        "missing.pem: No such file",
    ),
    (
        lambda p, t: ["cert", "import", "--issuer", "ca", "--openssl-index", _bad_index(t)],
        1,
        "bad-index.txt:2",
    ),
    (lambda p, t: ["cert", "import", "--issuer", "ca"], 2, "required"),
    (lambda p, t: ["cert", "import", "--issuer", "nope", p.ca_cert], 1, "no issuer named 'nope'"),
    (
        lambda p, t: [
            "issuer",
            "add",
            "ca",
            "--ca-cert",
            p.ca_cert,
            "--responder-key",
            f"file:{p.ca_key}",
        ],
        1,
        "already exists",
    ),
    (
        lambda p, t: [
            "issuer",
            "add",
            "x",
            "--ca-cert",
            p.ca_cert,
            "--responder-key",
            f"file:{p.ca_key}",
        ],
        1,
        "already registered as issuer 'ca'",
    ),
    (
        lambda p, t: [
            "issuer",
            "add",
            "x",
            "--ca-cert",
            p.root.cert and p.ca_cert,
            "--responder-cert",
            p.responder_cert,
            "--responder-key",
            f"file:{p.ca_key}",
        ],
        1,
        "does not match",
    ),
    (
        lambda p, t: [
            "issuer",
            "add",
            "x",
            "--ca-cert",
            p.ca_cert,
            "--responder-cert",
            p.ca_cert,
            "--responder-key",
            f"file:{p.ca_key}",
        ],
        1,
        "not issued by the CA",
    ),
    (
        lambda p, t: [
            "issuer",
            "add",
            "x",
            "--ca-cert",
            p.responder_cert,
            "--responder-key",
            f"file:{p.ca_key}",
        ],
        1,
        "not a CA certificate",
    ),
    (
        lambda p, t: [
            "issuer",
            "add",
            "x",
            "--ca-cert",
            p.ca_cert,
            "--responder-cert",
            p.responder_cert,
            "--responder-key",
            _world_readable_key(p, t),
        ],
        1,
        "chmod 600",
    ),
    (
        lambda p, t: [
            "issuer",
            "add",
            "x",
            "--ca-cert",
            p.ca_cert,
            "--responder-key",
            str(p.ca_key),
        ],
        1,
        "needs a scheme",
    ),
    (
        lambda p, t: [
            "issuer",
            "add",
            "bad name!",
            "--ca-cert",
            p.ca_cert,
            "--responder-key",
            f"file:{p.ca_key}",
        ],
        2,
        "issuer name",
    ),
    (lambda p, t: ["issuer", "frobnicate"], 2, "invalid choice"),
]


@pytest.mark.parametrize(("argv", "code", "message"), BAD_INPUT, ids=[m for _, _, m in BAD_INPUT])
def test_bad_input_gets_one_line_and_changes_nothing(
    ocspd: Cli,
    pki: Pki,
    loaded: dict[str, str],
    tmp_path: Path,
    argv,
    code: int,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    args = argv(pki, tmp_path)
    before = ocspd.snapshot()
    result = ocspd(*args)
    assert result.code == code, result
    assert message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert result.out == ""
    assert "Traceback" not in result.err
    assert ocspd.snapshot() == before


def test_responder_certificate_without_ocsp_signing_is_refused(
    ocspd: Cli, pki: Pki, tmp_path: Path
) -> None:
    tls = devpki.make_leaf("not-a-responder", pki.ca, pki.responder.key)
    cert = devpki.write_cert(tmp_path / "tls.pem", tls)
    result = ocspd(
        "issuer", "add", "x", "--ca-cert", pki.ca_cert, "--responder-cert", cert,
        "--responder-key", f"file:{pki.responder_key}",
    )  # fmt: skip
    assert result.code == 1 and "id-kp-OCSPSigning" in result.err
    assert ocspd.sql("SELECT count(*) AS n FROM issuers")[0]["n"] == 0


def test_expired_responder_certificate_is_refused(ocspd: Cli, pki: Pki, tmp_path: Path) -> None:
    old = devpki.make_responder(
        "old responder", pki.ca, key=pki.responder.key, days=30,
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=60),
    )  # fmt: skip
    cert = devpki.write_cert(tmp_path / "old.pem", old.cert)
    result = ocspd(
        "issuer", "add", "x", "--ca-cert", pki.ca_cert, "--responder-cert", cert,
        "--responder-key", f"file:{pki.responder_key}",
    )  # fmt: skip
    assert result.code == 1 and "expired" in result.err


def test_no_database_configured(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocspd import cli

    monkeypatch.delenv("OCSPD_DATABASE_URL", raising=False)
    monkeypatch.delenv("OCSPD_CONFIG", raising=False)
    assert cli.main(["issuer", "list"]) == 1
    assert "OCSPD_DATABASE_URL" in capsys.readouterr().err


def test_unreachable_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocspd import cli

    monkeypatch.setenv(
        "OCSPD_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"
    )
    assert cli.main(["issuer", "list"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to the status database" in err and len(err.strip().splitlines()) == 1


def test_unmigrated_database(
    empty_db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocspd import cli

    monkeypatch.setenv("OCSPD_DATABASE_URL", empty_db_url)
    assert cli.main(["issuer", "list"]) == 1
    assert "ocspd db migrate" in capsys.readouterr().err


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from ocspd import cli

    commands = [[], ["db"], ["db", "migrate"], ["issuer"], ["issuer", "add"], ["issuer", "list"],
                ["cert"], ["cert", "import"], ["revoke"], ["hold"], ["release"], ["status"],
                ["approve"], ["refuse"], ["pending"], ["role"], ["role", "grant"],
                ["role", "revoke"], ["role", "list"], ["audit"], ["audit", "keygen"],
                ["audit", "verify"], ["audit", "search"], ["purge"]]  # fmt: skip
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: ocspd"), command
