"""Encoding and verifying CRLs, checked by cryptography, openssl, GnuTLS certtool and pkilint."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID, NameOID

from crlgen.build import MAX_CRL_NUMBER, CrlEncoder, encode_time, sign_crl
from crlgen.verify import CrlInfo, CrlRejected, crl_info, verify_crl
from ocspd import devpki
from ocspd.protocol import der
from ocspd.signing.base import SHA256_ECDSA, SHA256_RSA, SHA384_ECDSA
from ocspd.signing.filekey import FileSigner
from ocspd.store.issuers import subject_public_key_bits

Row = tuple[bytes, dt.datetime, int | None, dt.datetime | None]

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
THIS_UPDATE = NOW - dt.timedelta(minutes=1)
NEXT_UPDATE = THIS_UPDATE + dt.timedelta(days=7)
REVOKED_AT = NOW - dt.timedelta(days=3, seconds=17)
INVALID_SINCE = NOW - dt.timedelta(days=20, seconds=3)
TEN_DAYS = dt.timedelta(days=10)

# Serials at the edges of the encoding: a sign octet is needed for 0x80 and for any serial whose
# first magnitude octet has the high bit set.
SERIAL_1 = b"\x01"
SERIAL_80 = b"\x80"
SERIAL_20_MAX = b"\x7f" + b"\xff" * 19  # 2^159 - 1: the largest 20-octet DER INTEGER
# 20 magnitude octets with the high bit set: 21 octets as a DER INTEGER. ocspd.model accepts
# such serials (some CAs issued them); the CRL must list them, though pkilint points out that
# the certificate's serial is out of RFC 5280's range (see test_pkilint_flags_...).
SERIAL_20_HIGH = bytes.fromhex("c0ffee") + b"\x5a" * 17


def _lint_crl_command() -> str:
    beside = Path(sys.executable).parent / "lint_crl"
    found = str(beside) if beside.exists() else shutil.which("lint_crl")
    if found is None:
        pytest.fail("pkilint's lint_crl is not installed (pip install '.[test]')")
    return found


@dataclass(frozen=True)
class CrlPki:
    dir: Path
    kind: str
    root: devpki.Issued
    ca: devpki.Issued
    signer: FileSigner
    ca_pem: Path
    chain_pem: Path  # issuing CA then root, for openssl verify

    def leaf(self, name: str, serial: int) -> Path:
        cert = devpki.make_leaf(name, self.ca, devpki.new_key(), serial=serial)
        return devpki.write_cert(self.dir / f"{name}.pem", cert)


def make_crl_pki(directory: Path, kind: str, name: str = "CRL Test CA") -> CrlPki:
    directory.mkdir(parents=True, exist_ok=True)
    root = devpki.make_ca(f"{name} Root")
    ca = devpki.make_ca(name, issuer=root, key=devpki.new_key(kind))
    return CrlPki(
        dir=directory,
        kind=kind,
        root=root,
        ca=ca,
        signer=FileSigner.load(devpki.write_key(directory / "ca.key", ca.key)),
        ca_pem=devpki.write_cert(directory / "ca.pem", ca.cert),
        chain_pem=devpki.write_cert(directory / "chain.pem", ca.cert, root.cert),
    )


@pytest.fixture(scope="module", params=["p256", "rsa2048", "p384"])
def crl_pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CrlPki:
    return make_crl_pki(tmp_path_factory.mktemp(f"crl-{request.param}"), request.param)


@pytest.fixture(scope="module")
def p256(tmp_path_factory: pytest.TempPathFactory) -> CrlPki:
    return make_crl_pki(tmp_path_factory.mktemp("crl-p256-only"), "p256")


async def make_crl(
    pki: CrlPki,
    rows: Iterable[Row],
    number: int = 7,
    this_update: dt.datetime = THIS_UPDATE,
    next_update: dt.datetime = NEXT_UPDATE,
) -> bytes:
    encoder = CrlEncoder(pki.ca.cert, pki.signer.algorithm)
    encoder.add(rows)
    return await sign_crl(
        encoder.tbs(number, this_update, next_update), pki.signer.algorithm, pki.signer
    )


def write_crl(path: Path, crl_der: bytes) -> Path:
    """PEM, which openssl -CRLfile and certtool --infile read without format options."""
    pem = x509.load_der_x509_crl(crl_der).public_bytes(serialization.Encoding.PEM)
    path.write_bytes(pem)
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


# One entry per case the encoder distinguishes; all conform to RFC 5280.
ENTRIES: list[Row] = [
    (SERIAL_1, REVOKED_AT, None, None),  # no reason: no crlEntryExtensions at all
    (SERIAL_80, REVOKED_AT, 0, None),  # unspecified: no reasonCode either (5.3.1)
    (SERIAL_20_MAX, REVOKED_AT, 1, INVALID_SINCE),  # keyCompromise + invalidityDate
    (b"\x12\x34", REVOKED_AT, 6, None),  # certificateHold
    (b"\x01\x02", REVOKED_AT, None, INVALID_SINCE),  # invalidityDate only
    *[(bytes((0x40, code)), REVOKED_AT, code, None) for code in (2, 3, 4, 5, 9, 10)],
]

REASON_FLAGS = {
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}


def assert_entries_match(crl: x509.CertificateRevocationList, rows: Sequence[Row]) -> None:
    """Every row came back, in order, exactly: serial, date, reason iff given, invalidity date."""
    entries = list(crl)
    assert len(entries) == len(rows)
    for entry, (serial, revoked, reason, invalidity) in zip(entries, rows, strict=True):
        assert entry.serial_number == int.from_bytes(serial, "big")
        assert entry.revocation_date_utc == revoked.replace(microsecond=0)
        oids = [e.oid for e in entry.extensions]
        expected = []
        if reason:
            expected.append(CRLEntryExtensionOID.CRL_REASON)
            assert (
                entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
                is (REASON_FLAGS[reason])
            )
        if invalidity is not None:
            expected.append(CRLEntryExtensionOID.INVALIDITY_DATE)
            value = entry.extensions.get_extension_for_class(x509.InvalidityDate).value
            assert value.invalidity_date_utc == invalidity.replace(microsecond=0)
        assert oids == expected
        assert not any(e.critical for e in entry.extensions)


def tbs_fields(crl_der: bytes) -> list[der.Element]:
    """The top-level fields of the TBSCertList, for checks cryptography does not expose."""
    outer = der.read_element(crl_der, 0, len(crl_der))
    tbs = der.read_element(crl_der, outer.body, outer.end)
    return der.children(crl_der, tbs)


# --- cryptography ----------------------------------------------------------------------------


async def test_crl_fields_as_cryptography_reads_them(crl_pki: CrlPki) -> None:
    crl_der = await make_crl(crl_pki, ENTRIES, number=0x0102030405)
    crl = x509.load_der_x509_crl(crl_der)
    ca = crl_pki.ca.cert

    version = tbs_fields(crl_der)[0]
    assert version.tag == der.INTEGER and crl_der[version.body : version.end] == b"\x01"  # v2
    assert crl.issuer == ca.subject
    assert crl.last_update_utc == THIS_UPDATE
    assert crl.next_update_utc == NEXT_UPDATE
    expected_hash = hashes.SHA384 if crl_pki.kind == "p384" else hashes.SHA256
    assert isinstance(crl.signature_hash_algorithm, expected_hash)
    assert crl.is_signature_valid(crl_pki.ca.key.public_key())

    number = crl.extensions.get_extension_for_class(x509.CRLNumber)
    assert number.value.crl_number == 0x0102030405 and not number.critical
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.value.key_identifier == ski.key_identifier and not aki.critical
    assert aki.value.authority_cert_issuer is None
    assert aki.value.authority_cert_serial_number is None
    assert [e.oid for e in crl.extensions] == [
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.CRL_NUMBER,
    ]
    assert_entries_match(crl, ENTRIES)


async def test_signature_algorithm_identifiers(crl_pki: CrlPki) -> None:
    """ECDSA without parameters, RSA with NULL (RFC 5758, RFC 4055), in both places."""
    crl_der = await make_crl(crl_pki, ENTRIES[:1])
    expected = {"p256": SHA256_ECDSA, "rsa2048": SHA256_RSA, "p384": SHA384_ECDSA}[crl_pki.kind]
    identifier = expected.identifier().dump()
    inner = tbs_fields(crl_der)[1]
    assert crl_der[inner.start : inner.end] == identifier
    outer = der.children(crl_der, der.read_element(crl_der, 0, len(crl_der)))
    assert crl_der[outer[1].start : outer[1].end] == identifier
    assert identifier.endswith(b"\x05\x00") == (crl_pki.kind == "rsa2048")


async def test_issuer_is_the_ca_subject_as_encoded(p256: CrlPki) -> None:
    crl_der = await make_crl(p256, ENTRIES[:1])
    issuer = tbs_fields(crl_der)[2]
    assert crl_der[issuer.start : issuer.end] == p256.ca.cert.subject.public_bytes()
    assert crl_info(crl_der).issuer_der == crl_der[issuer.start : issuer.end]


async def test_serial_encodings(p256: CrlPki) -> None:
    rows = [(s, REVOKED_AT, None, None) for s in (SERIAL_1, SERIAL_80, SERIAL_20_MAX)]
    rows.append((SERIAL_20_HIGH, REVOKED_AT, None, None))
    crl_der = await make_crl(p256, rows)
    assert_entries_match(x509.load_der_x509_crl(crl_der), rows)
    revoked = tbs_fields(crl_der)[5]
    assert revoked.tag == der.SEQUENCE
    integers = [der.children(crl_der, e)[0] for e in der.children(crl_der, revoked)]
    contents = [crl_der[i.body : i.end] for i in integers]
    assert contents == [b"\x01", b"\x00\x80", SERIAL_20_MAX, b"\x00" + SERIAL_20_HIGH]


async def test_empty_crl_has_no_revoked_certificates_field(crl_pki: CrlPki) -> None:
    """5.1.2.6: when there are no revoked certificates the list is absent, not empty."""
    crl_der = await make_crl(crl_pki, [])
    crl = x509.load_der_x509_crl(crl_der)
    assert len(crl) == 0 and list(crl) == []
    assert crl.is_signature_valid(crl_pki.ca.key.public_key())
    tags = [e.tag for e in tbs_fields(crl_der)]
    # version, signature, issuer, thisUpdate, nextUpdate, [0] crlExtensions
    assert tags == [der.INTEGER, der.SEQUENCE, der.SEQUENCE, 0x17, 0x17, der.context(0)]
    with_one = await make_crl(crl_pki, ENTRIES[:1])
    assert [e.tag for e in tbs_fields(with_one)][5] == der.SEQUENCE


async def test_aki_without_a_subject_key_identifier(tmp_path: Path) -> None:
    """RFC 5280 4.2.1.1/4.2.1.2: with no SKI in the CA certificate, the SHA-1 of its key bits."""
    key = devpki.new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "No SKI CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(devpki.random_serial())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    signer = FileSigner(key, tmp_path / "key.pem")
    encoder = CrlEncoder(cert, signer.algorithm)
    crl_der = await sign_crl(encoder.tbs(1, THIS_UPDATE, NEXT_UPDATE), signer.algorithm, signer)
    aki = x509.load_der_x509_crl(crl_der).extensions.get_extension_for_class(
        x509.AuthorityKeyIdentifier
    )
    assert aki.value.key_identifier == hashlib.sha1(subject_public_key_bits(cert)).digest()


def test_times_switch_to_generalized_time_outside_1950_to_2049() -> None:
    """5.1.2.4: UTCTime through 2049, GeneralizedTime from 2050 (and before 1950)."""
    utc = dt.UTC
    cases = {
        dt.datetime(1949, 12, 31, 23, 59, 59, tzinfo=utc): b"\x18\x0f19491231235959Z",
        dt.datetime(1950, 1, 1, tzinfo=utc): b"\x17\x0d500101000000Z",
        dt.datetime(2049, 12, 31, 23, 59, 59, 999999, tzinfo=utc): b"\x17\x0d491231235959Z",
        dt.datetime(2050, 1, 1, tzinfo=utc): b"\x18\x0f20500101000000Z",
        dt.datetime(2024, 2, 29, 12, 0, 1, 500000, tzinfo=utc): b"\x17\x0d240229120001Z",
        # Converted to UTC: 01:30 at +02:00 is 23:30 the day before.
        dt.datetime(2050, 1, 1, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))): (
            b"\x17\x0d491231233000Z"
        ),
    }
    for when, encoded in cases.items():
        assert encode_time(when) == encoded, when
    with pytest.raises(ValueError, match="timezone-aware"):
        encode_time(dt.datetime(2024, 1, 1))  # naive


async def test_entry_times_round_trip_across_the_boundaries(p256: CrlPki) -> None:
    utc = dt.UTC
    dates = [
        dt.datetime(1949, 12, 31, 23, 59, 59, tzinfo=utc),
        dt.datetime(1950, 1, 1, tzinfo=utc),
        dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=utc),
        dt.datetime(2050, 1, 1, tzinfo=utc),
        dt.datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=utc),  # fraction dropped
        dt.datetime(2024, 6, 1, 14, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    ]
    rows: list[Row] = [(bytes((i + 1,)), when, 1, dates[-1 - i]) for i, when in enumerate(dates)]
    crl_der = await make_crl(p256, rows)
    assert_entries_match(x509.load_der_x509_crl(crl_der), rows)


async def test_crl_number_range(p256: CrlPki) -> None:
    """5.2.3: a non-negative INTEGER of at most 20 octets."""
    for number in (0, 1, 0x80, MAX_CRL_NUMBER):
        crl_der = await make_crl(p256, [], number=number)
        ext = x509.load_der_x509_crl(crl_der).extensions.get_extension_for_class(x509.CRLNumber)
        assert ext.value.crl_number == number
    encoder = CrlEncoder(p256.ca.cert, p256.signer.algorithm)
    for number in (-1, MAX_CRL_NUMBER + 1):
        with pytest.raises(ValueError, match="20 octets"):
            encoder.tbs(number, THIS_UPDATE, NEXT_UPDATE)
    with pytest.raises(ValueError, match="after thisUpdate"):
        encoder.tbs(1, THIS_UPDATE, THIS_UPDATE)


def test_add_refuses_rows_it_cannot_encode(p256: CrlPki) -> None:
    encoder = CrlEncoder(p256.ca.cert, p256.signer.algorithm)
    good: Row = (SERIAL_1, REVOKED_AT, None, None)
    naive = dt.datetime(2024, 1, 1)
    bad: list[tuple[Row, str]] = [
        ((b"", REVOKED_AT, None, None), "empty serial"),
        ((b"\x01" * 21, REVOKED_AT, None, None), "21 octets"),
        ((b"\x00\x80", REVOKED_AT, None, None), "leading zero"),
        ((b"\x00", REVOKED_AT, None, None), "zero"),
        ((SERIAL_1, REVOKED_AT, 7, None), "reason code 7"),
        ((SERIAL_1, REVOKED_AT, 8, INVALID_SINCE), "reason code 8"),  # removeFromCRL: delta only
        ((SERIAL_1, REVOKED_AT, 11, None), "reason code 11"),
        ((SERIAL_1, REVOKED_AT, -1, None), "reason code -1"),
        ((SERIAL_1, naive, None, None), "timezone-aware"),
        ((SERIAL_1, REVOKED_AT, 1, naive), "timezone-aware"),
    ]
    for row, message in bad:
        size = encoder.encoded_size
        with pytest.raises(ValueError, match=message):
            encoder.add([good, row, good])
        # The good row before the bad one is in; nothing of the bad one is.
        assert encoder.encoded_size == size + 20  # 30 12 | 02 01 01 | 17 0d <13 octets>
    assert encoder.count == len(bad)


async def test_batches_and_repeated_tbs_give_the_same_bytes(p256: CrlPki) -> None:
    at_once = CrlEncoder(p256.ca.cert, p256.signer.algorithm)
    at_once.add(ENTRIES)
    in_batches = CrlEncoder(p256.ca.cert, p256.signer.algorithm)
    for i in range(0, len(ENTRIES), 3):
        in_batches.add(iter(ENTRIES[i : i + 3]))
    first = at_once.tbs(3, THIS_UPDATE, NEXT_UPDATE)
    assert first == at_once.tbs(3, THIS_UPDATE, NEXT_UPDATE)
    assert first == in_batches.tbs(3, THIS_UPDATE, NEXT_UPDATE)
    assert at_once.count == in_batches.count == len(ENTRIES)


async def test_sign_crl_refuses_a_signer_with_another_algorithm(p256: CrlPki) -> None:
    encoder = CrlEncoder(p256.ca.cert, SHA384_ECDSA)
    with pytest.raises(ValueError, match="sha256_ecdsa"):
        await sign_crl(encoder.tbs(1, THIS_UPDATE, NEXT_UPDATE), SHA384_ECDSA, p256.signer)


async def test_random_entries_round_trip(p256: CrlPki) -> None:
    """2 000 random entries: serials of 1 to 20 octets, dates from 1990 to 2060 (both time
    types), random reasons and invalidity dates, read back exactly by cryptography."""
    seed = int(os.environ.get("CRL_TEST_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    start = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
    span = int((dt.datetime(2061, 1, 1, tzinfo=dt.UTC) - start).total_seconds())
    reasons = [None, 0, 1, 2, 3, 4, 5, 6, 9, 10]

    def when() -> dt.datetime:
        return start + dt.timedelta(seconds=rng.randrange(span))

    rows: list[Row] = []
    for _ in range(2000):
        length = rng.randint(1, 20)
        serial = bytes((rng.randint(1, 255),)) + rng.randbytes(length - 1)
        rows.append((serial, when(), rng.choice(reasons), when() if rng.random() < 0.3 else None))
    crl_der = await make_crl(p256, rows)
    crl = x509.load_der_x509_crl(crl_der)
    assert crl.is_signature_valid(p256.ca.key.public_key()), f"seed {seed}"
    try:
        assert_entries_match(crl, rows)
    except AssertionError as e:
        raise AssertionError(f"seed {seed} (rerun with CRL_TEST_SEED={seed}): {e}") from e
    years = {r[1].year for r in rows}
    assert min(years) < 2050 <= max(years)  # both UTCTime and GeneralizedTime were written


async def test_large_crl_uses_long_lengths(p256: CrlPki, tmp_path: Path) -> None:
    """20 000 entries: revokedCertificates and the whole CRL need 3-octet DER lengths."""
    rows: list[Row] = [
        (i.to_bytes(16, "big"), REVOKED_AT, (1, None, 4, 0)[i % 4], None)
        for i in range(1 << 120, (1 << 120) + 20_000)
    ]
    crl_der = await make_crl(p256, rows)
    assert crl_der[1] == 0x83
    crl = x509.load_der_x509_crl(crl_der)
    assert len(crl) == 20_000
    assert_entries_match(crl, rows)
    path = tmp_path / "large.der"
    path.write_bytes(crl_der)
    result = run("openssl", "crl", "-in", path, "-inform", "DER", "-CAfile", p256.ca_pem, "-noout")
    assert result.returncode == 0 and result.stderr.strip() == "verify OK", result


# --- openssl ---------------------------------------------------------------------------------


async def test_openssl_verifies_the_signature(crl_pki: CrlPki, tmp_path: Path) -> None:
    path = tmp_path / "crl.der"
    path.write_bytes(await make_crl(crl_pki, ENTRIES))
    result = run(
        "openssl", "crl", "-in", path, "-inform", "DER", "-CAfile", crl_pki.ca_pem, "-noout"
    )
    # openssl 3 writes the verdict to stderr; "verify failure" comes with exit status 0.
    assert result.returncode == 0 and result.stderr.strip() == "verify OK", result

    # The same subject with another key: the check can fail.
    other = make_crl_pki(tmp_path / "other", crl_pki.kind)
    result = run("openssl", "crl", "-in", path, "-inform", "DER", "-CAfile", other.ca_pem, "-noout")
    assert result.stderr.strip() == "verify failure", result


async def test_openssl_crl_check_on_leaves(crl_pki: CrlPki, tmp_path: Path) -> None:
    revoked = crl_pki.leaf(f"revoked-{crl_pki.kind}", 0x1234)  # keyCompromise in ENTRIES
    held = crl_pki.leaf(f"held-{crl_pki.kind}", 0x4006)  # certificateHold below
    good = crl_pki.leaf(f"good-{crl_pki.kind}", 0x5678)
    rows = [*ENTRIES, (b"\x40\x06", REVOKED_AT, 6, None)]
    crl_der = tmp_path / "crl.der"
    crl_der.write_bytes(await make_crl(crl_pki, rows))
    crl_pem = write_crl(tmp_path / "crl.pem", crl_der.read_bytes())

    def verify(leaf: Path, crl: Path) -> subprocess.CompletedProcess[str]:
        return run(
            "openssl", "verify", "-crl_check", "-CAfile", crl_pki.chain_pem, "-CRLfile", crl, leaf
        )

    for crl in (crl_pem, crl_der):  # -CRLfile reads PEM and DER alike
        result = verify(good, crl)
        assert result.returncode == 0 and result.stdout.strip() == f"{good}: OK", result
        for leaf in (revoked, held):
            result = verify(leaf, crl)
            assert result.returncode != 0, result
            assert "error 23 at 0 depth lookup: certificate revoked" in result.stderr, result

    # Without any CRL the check cannot pass either: the CRL above was really used.
    result = run("openssl", "verify", "-crl_check", "-CAfile", crl_pki.chain_pem, good)
    assert "unable to get certificate CRL" in result.stderr, result


# --- GnuTLS ----------------------------------------------------------------------------------


async def test_certtool_verifies_the_crl(crl_pki: CrlPki, tmp_path: Path) -> None:
    for name, rows in (("entries", ENTRIES), ("empty", [])):
        crl = write_crl(tmp_path / f"{name}.pem", await make_crl(crl_pki, rows))
        result = run(
            "certtool", "--verify-crl", "--load-ca-certificate", crl_pki.ca_pem, "--infile", crl
        )
        assert result.returncode == 0, result
        assert "Verification output: Verified." in result.stdout, result
    # The same subject with another key: the check can fail.
    other = make_crl_pki(tmp_path / "other", crl_pki.kind)
    crl = write_crl(tmp_path / "crl.pem", await make_crl(crl_pki, ENTRIES))
    result = run("certtool", "--verify-crl", "--load-ca-certificate", other.ca_pem, "--infile", crl)
    assert result.returncode == 1 and "Not verified" in result.stdout, result


# --- pkilint ---------------------------------------------------------------------------------


def lint(path: Path, crl_der: bytes) -> list[str]:
    """pkilint's finding codes for a CRL, every severity down to DEBUG, RFC 5280 profile."""
    path.write_bytes(crl_der)
    result = run(
        _lint_crl_command(), "lint", "-t", "CRL", "-p", "PKIX", "-s", "DEBUG", "-f", "JSON", path
    )
    assert result.returncode in (0, 1), result  # 1: findings were reported
    report = json.loads(result.stdout)
    return [
        f"{finding['code']} @ {item['node_path']}"
        for item in report["results"]
        for finding in item["finding_descriptions"]
    ]


async def test_pkilint_finds_nothing(crl_pki: CrlPki, tmp_path: Path) -> None:
    assert lint(tmp_path / "entries.der", await make_crl(crl_pki, ENTRIES)) == []
    assert lint(tmp_path / "empty.der", await make_crl(crl_pki, [])) == []


async def test_pkilint_flags_a_serial_beyond_20_octets(p256: CrlPki, tmp_path: Path) -> None:
    """A certificate serial of 20 magnitude octets with the high bit set is 21 octets as a DER
    INTEGER, which RFC 5280 4.1.2.2 forbids CAs to issue. The CRL still has to list such a
    certificate if the CA issued one, so the encoder writes it and pkilint says what is wrong
    with the serial; that is the only finding, and it shows the harness reports findings."""
    crl_der = await make_crl(p256, [*ENTRIES, (SERIAL_20_HIGH, REVOKED_AT, 1, None)])
    assert lint(tmp_path / "long-serial.der", crl_der) == [
        "pkix.certificate_serial_number_out_of_range"
        f" @ certificateList.tbsCertList.revokedCertificates.{len(ENTRIES)}.userCertificate"
    ]


def _retbs(crl_der: bytes, fields: list[bytes]) -> bytes:
    """The CRL with its TBSCertList fields replaced (signature kept: pkilint does not check it)."""
    outer = der.children(crl_der, der.read_element(crl_der, 0, len(crl_der)))
    tail = crl_der[outer[1].start : outer[2].end]
    return der.tlv(der.SEQUENCE, der.tlv(der.SEQUENCE, b"".join(fields)) + tail)


async def test_pkilint_flags_what_the_encoder_avoids(p256: CrlPki, tmp_path: Path) -> None:
    """The rules the encoder follows are ones pkilint checks: an empty revokedCertificates
    SEQUENCE instead of none, and GeneralizedTime for a date UTCTime can carry."""
    crl_der = await make_crl(p256, [])
    fields = [crl_der[f.start : f.end] for f in tbs_fields(crl_der)]
    empty_list = _retbs(crl_der, [*fields[:5], der.tlv(der.SEQUENCE, b""), fields[5]])
    assert lint(tmp_path / "empty-list.der", empty_list) == [
        "pkix.crl_revoked_certificates_empty @ certificateList.tbsCertList"
    ]
    generalized = der.tlv(der.GENERALIZED_TIME, THIS_UPDATE.strftime("%Y%m%d%H%M%SZ").encode())
    wrong_time = _retbs(crl_der, [*fields[:3], generalized, *fields[4:]])
    findings = lint(tmp_path / "wrong-time.der", wrong_time)
    assert [f.split(" @ ")[0] for f in findings] == ["pkix.wrong_time_useful_type"], findings


# --- verify_crl ------------------------------------------------------------------------------


async def test_verify_accepts_a_good_crl(crl_pki: CrlPki) -> None:
    crl_der = await make_crl(crl_pki, ENTRIES, number=12)
    info = verify_crl(crl_der, crl_pki.ca.cert, 11, TEN_DAYS)
    assert info == CrlInfo(
        number=12,
        this_update=THIS_UPDATE,
        next_update=NEXT_UPDATE,
        entries=len(ENTRIES),
        sha256=hashlib.sha256(crl_der).digest(),
        issuer_der=crl_pki.ca.cert.subject.public_bytes(),
    )
    assert verify_crl(crl_der, crl_pki.ca.cert, None, TEN_DAYS) == info  # the first CRL
    assert crl_info(crl_der) == info


async def test_verify_rejects(p256: CrlPki, tmp_path: Path) -> None:
    good = await make_crl(p256, ENTRIES, number=12)
    ca = p256.ca.cert

    # Same subject, another key: the signature check fails.
    other_key = make_crl_pki(tmp_path / "other-key", "p256")
    assert other_key.ca.cert.subject == ca.subject
    with pytest.raises(CrlRejected, match=r"signature does not verify with the key of CA"):
        verify_crl(good, other_key.ca.cert, 11, TEN_DAYS)
    # An RSA CA with the same name: no ECDSA signature verifies with its key either.
    rsa_ca = make_crl_pki(tmp_path / "rsa", "rsa2048")
    with pytest.raises(CrlRejected, match=r"signature does not verify"):
        verify_crl(good, rsa_ca.ca.cert, 11, TEN_DAYS)

    for previous in (12, 13):
        with pytest.raises(
            CrlRejected, match=rf"number 12 is not greater than the previous CRL's {previous}"
        ):
            verify_crl(good, ca, previous, TEN_DAYS)

    long = await make_crl(
        p256, ENTRIES, number=12, next_update=THIS_UPDATE + TEN_DAYS + dt.timedelta(seconds=1)
    )
    with pytest.raises(CrlRejected, match=r"nextUpdate - thisUpdate is 10 days, 0:00:01, more"):
        verify_crl(long, ca, 11, TEN_DAYS)
    exactly = await make_crl(p256, ENTRIES, number=12, next_update=THIS_UPDATE + TEN_DAYS)
    assert verify_crl(exactly, ca, 11, TEN_DAYS).next_update == THIS_UPDATE + TEN_DAYS

    # The CA's key in a certificate with another subject (a renamed CA): out of scope.
    renamed = devpki.make_ca("Renamed CA", issuer=p256.root, key=p256.ca.key)
    with pytest.raises(
        CrlRejected, match=r"issuer 'CN=CRL Test CA,O=ocspd demo,C=NL' is not the CA subject "
    ):
        verify_crl(good, renamed.cert, 11, TEN_DAYS)

    future = NOW + dt.timedelta(seconds=61)
    ahead = await make_crl(
        p256, ENTRIES, number=12, this_update=future, next_update=future + TEN_DAYS
    )
    with pytest.raises(CrlRejected, match=r"thisUpdate .* is in the future"):
        verify_crl(ahead, ca, 11, TEN_DAYS, now=NOW)
    skewed = NOW + dt.timedelta(seconds=60)  # a signer clock up to a minute ahead is tolerated
    ok = await make_crl(p256, ENTRIES, number=12, this_update=skewed, next_update=skewed + TEN_DAYS)
    assert verify_crl(ok, ca, 11, TEN_DAYS, now=NOW).this_update == skewed

    with pytest.raises(CrlRejected, match=r"CRL rejected: not a DER CRL"):
        verify_crl(good[:-1], ca, 11, TEN_DAYS)


async def test_verify_rejects_tampered_crls(crl_pki: CrlPki) -> None:
    """verify_crl checks the signature over the CRL's own TBSCertList bytes; it agrees with
    cryptography's is_signature_valid (which re-encodes them) on every case here."""
    good = await make_crl(crl_pki, ENTRIES, number=12)
    key = crl_pki.ca.key.public_key()
    # A different serial in the first entry: still a well-formed CRL.
    first = der.children(good, tbs_fields(good)[5])[0]
    serial = der.children(good, first)[0]
    changed = bytearray(good)
    changed[serial.body] ^= 0x02
    # The outer signatureAlgorithm differing from the one inside the TBSCertList.
    outer = der.children(good, der.read_element(good, 0, len(good)))
    other_algorithm = (SHA256_RSA if crl_pki.kind != "rsa2048" else SHA256_ECDSA).identifier()
    swapped = der.tlv(
        der.SEQUENCE,
        good[outer[0].start : outer[0].end]
        + other_algorithm.dump()
        + good[outer[2].start : outer[2].end],
    )
    tampered = bytes(changed)
    assert not x509.load_der_x509_crl(tampered).is_signature_valid(key)
    with pytest.raises(CrlRejected, match="signature does not verify"):
        verify_crl(tampered, crl_pki.ca.cert, 11, TEN_DAYS)
    # cryptography refuses to load this one at all (verify_crl compares the two as well).
    with pytest.raises(CrlRejected, match="signature algorithms do not match"):
        verify_crl(swapped, crl_pki.ca.cert, 11, TEN_DAYS)
    assert x509.load_der_x509_crl(good).is_signature_valid(key)


async def test_verify_rejects_a_crl_without_number_or_next_update(p256: CrlPki) -> None:
    """Both are optional in the ASN.1, so a well-signed CRL can lack them."""
    crl_der = await make_crl(p256, ENTRIES)
    fields = [crl_der[f.start : f.end] for f in tbs_fields(crl_der)]
    no_next = await _resign(p256, [*fields[:4], *fields[5:]])
    assert x509.load_der_x509_crl(no_next).next_update_utc is None
    with pytest.raises(CrlRejected, match=r"CRL rejected: CRL has no nextUpdate"):
        verify_crl(no_next, p256.ca.cert, 1, TEN_DAYS)
    with pytest.raises(ValueError, match="no nextUpdate"):
        crl_info(no_next)

    extensions = der.children(crl_der, der.children(crl_der, tbs_fields(crl_der)[6])[0])
    aki = crl_der[extensions[0].start : extensions[0].end]  # drop the cRLNumber after it
    only_aki = der.tlv(der.context(0), der.tlv(der.SEQUENCE, aki))
    no_number = await _resign(p256, [*fields[:6], only_aki])
    with pytest.raises(CrlRejected, match=r"CRL rejected: CRL has no cRLNumber extension"):
        verify_crl(no_number, p256.ca.cert, 1, TEN_DAYS)


async def _resign(pki: CrlPki, fields: list[bytes]) -> bytes:
    """A correctly signed CRL from TBSCertList fields put together by hand."""
    tbs = der.tlv(der.SEQUENCE, b"".join(fields))
    return await sign_crl(tbs, pki.signer.algorithm, pki.signer)


def test_crl_info_refuses_junk() -> None:
    for junk in (b"", b"\x30\x00", b"not a crl", b"\x30\x03\x02\x01\x01"):
        with pytest.raises(ValueError, match="not a DER CRL"):
            crl_info(junk)
