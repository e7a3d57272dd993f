"""PEM key files (`file:` key references) through FileSigner and KeyOpener."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from ocspd.config import Pkcs11Config
from ocspd.errors import SigningKeyError
from ocspd.signing.base import SHA256_ECDSA, SHA256_RSA, SHA384_ECDSA, verify_signature
from ocspd.signing.filekey import FileSigner
from ocspd.signing.keys import KeyKeeper, KeyOpener

SignableKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def write_key(directory: Path, key: PrivateKeyTypes, mode: int = 0o600) -> Path:
    path = directory / "key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(mode)
    return path


def certificate_for(
    key: SignableKey,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocspd test signer")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("key_fixture", "algorithm"),
    [("rsa_key", SHA256_RSA), ("p256_key", SHA256_ECDSA), ("p384_key", SHA384_ECDSA)],
)
async def test_sign_and_verify(
    request: pytest.FixtureRequest, tmp_path: Path, key_fixture: str, algorithm: object
) -> None:
    key: SignableKey = request.getfixturevalue(key_fixture)
    path = write_key(tmp_path, key)
    with KeyOpener(Pkcs11Config()) as opener:
        signer = await opener.open(f"file:{path}", certificate_for(key))
        assert signer.algorithm == algorithm
        assert signer.description == f"file:{path}"
        data = b"tbsCertList"
        verify_signature(key.public_key(), signer.algorithm, await signer.sign(data), data)
        signer.close()


async def test_rsa_signatures_leave_the_event_loop_free(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """An RSA signature (about 1 ms at 2048 bits) is computed off the event loop, so other
    connections are served meanwhile: 200 signatures in a row would hold a signing loop for
    about 200 ms; here a ticker on the loop must never wait more than a fraction of that."""
    signer = FileSigner.load(write_key(tmp_path, rsa_key))
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    for i in range(200):
        data = b"response %d" % i
        verify_signature(rsa_key.public_key(), SHA256_RSA, await signer.sign(data), data)
    spent = time.perf_counter() - started
    done.set()
    await task
    assert len(gaps) > 10
    assert max(gaps) < spent / 2, f"loop stalled {max(gaps):.3f} s of {spent:.3f} s signing"
    signer.close()
    with pytest.raises(SigningKeyError, match="closed"):
        await signer.sign(b"after close")


async def test_file_url_with_three_slashes(
    tmp_path: Path, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    path = write_key(tmp_path, p256_key)
    with KeyOpener(Pkcs11Config()) as opener:
        signer = await opener.open(f"file://{path}", certificate_for(p256_key))
        assert signer.public_key == p256_key.public_key()


def test_rsa_1024_refused(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(SigningKeyError, match="1024 bits; at least 2048"):
        FileSigner.load(write_key(tmp_path, weak))


def test_ed25519_refused(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="Ed25519PrivateKey keys are not supported"):
        FileSigner.load(write_key(tmp_path, ed25519.Ed25519PrivateKey.generate()))


def test_p521_refused(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="secp521r1 is not allowed"):
        FileSigner.load(write_key(tmp_path, ec.generate_private_key(ec.SECP521R1())))


def test_readable_by_others_refused(tmp_path: Path, p256_key: ec.EllipticCurvePrivateKey) -> None:
    path = write_key(tmp_path, p256_key, mode=0o644)
    with pytest.raises(SigningKeyError, match="0644") as caught:
        FileSigner.load(path)
    assert f"chmod 600 {path}" in str(caught.value)


def test_missing_file_refused(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="cannot read key file"):
        FileSigner.load(tmp_path / "absent.pem")


def test_not_a_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("-----BEGIN NOTHING-----\n")
    path.chmod(0o600)
    with pytest.raises(SigningKeyError, match="does not hold an unencrypted PEM private key"):
        FileSigner.load(path)


async def test_certificate_of_another_key_refused(
    tmp_path: Path, p256_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_key(tmp_path, p256_key)
    with (
        KeyOpener(Pkcs11Config()) as opener,
        pytest.raises(SigningKeyError, match="does not match certificate"),
    ):
        await opener.open(f"file:{path}", certificate_for(rsa_key))


async def test_not_yet_valid_certificate_refused(
    tmp_path: Path, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    path = write_key(tmp_path, p256_key)
    now = dt.datetime.now(dt.UTC)
    future = certificate_for(
        p256_key, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30)
    )
    with (
        KeyOpener(Pkcs11Config()) as opener,
        pytest.raises(SigningKeyError, match="is not valid before"),
    ):
        await opener.open(f"file:{path}", future)


async def test_expired_certificate_refused(
    tmp_path: Path, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    path = write_key(tmp_path, p256_key)
    cert = certificate_for(p256_key)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    with KeyOpener(Pkcs11Config()) as opener, pytest.raises(SigningKeyError, match="expired at"):
        await opener.open(f"file:{path}", cert, now=later)


@pytest.mark.parametrize("outside", ["expired at", "is not valid before"])
async def test_kept_key_signs_only_while_its_certificate_is_valid(
    tmp_path: Path, p256_key: ec.EllipticCurvePrivateKey, outside: str
) -> None:
    """KM3.5 while serving: a key opened while its certificate was valid refuses to sign
    once the clock is outside the certificate's validity, however long it has been open."""
    path = write_key(tmp_path, p256_key)
    cert = certificate_for(p256_key)
    now = [dt.datetime.now(dt.UTC)]
    keeper = KeyKeeper(Pkcs11Config(), logging.getLogger("test"), clock=lambda: now[0])
    key = keeper.key("ca", f"file:{path}", cert)
    keeper.keep([key])
    try:
        assert await keeper.open_all()
        signature = await key.sign(b"while valid")
        verify_signature(p256_key.public_key(), key.algorithm, signature, b"while valid")
        second = dt.timedelta(seconds=1)
        now[0] = (
            cert.not_valid_after_utc + second
            if outside == "expired at"
            else cert.not_valid_before_utc - second
        )
        with pytest.raises(SigningKeyError, match=outside):
            await key.sign(b"outside")
        assert not key.ready  # closed, and opened again only once the rules allow
    finally:
        keeper.close()


@pytest.mark.parametrize("keyref", ["/tmp/x.pem", "keys/signer.pem", "signer.pem"])
async def test_keyref_without_scheme_gets_a_hint(
    keyref: str, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    with (
        KeyOpener(Pkcs11Config()) as opener,
        pytest.raises(SigningKeyError, match=f"write file:{keyref}"),
    ):
        await opener.open(keyref, certificate_for(p256_key))


async def test_unknown_scheme_refused(p256_key: ec.EllipticCurvePrivateKey) -> None:
    with KeyOpener(Pkcs11Config()) as opener, pytest.raises(SigningKeyError, match="neither file:"):
        await opener.open("vault:signer", certificate_for(p256_key))
