"""PKCS#11 keys against a real SoftHSM2 token (KM1.1): no mocks."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

# tests/ is not a package: pytest (rootdir-relative "prepend" imports) puts it on sys.path.
from softhsm import SoftHSM

from ocspd.config import Pkcs11Config
from ocspd.errors import SigningKeyError
from ocspd.signing.base import SHA256_ECDSA, SHA256_RSA, SHA384_ECDSA, verify_signature
from ocspd.signing.keys import KeyKeeper, KeyOpener
from ocspd.signing.pkcs11 import Pkcs11Backend, Pkcs11Uri, resolve_module, resolve_pin

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def softhsm(tmp_path: Path) -> Iterator[SoftHSM]:
    with SoftHSM.create(tmp_path) as hsm:
        yield hsm


@pytest.fixture
async def backend(softhsm: SoftHSM) -> AsyncIterator[Pkcs11Backend]:
    # Depends on softhsm so it closes (and finalizes the module) before SOFTHSM2_CONF goes.
    b = Pkcs11Backend(Pkcs11Config())
    yield b
    b.close()


def certificate_for(
    key: PrivateKey,
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


# Signing through the token


@pytest.mark.parametrize(
    ("key_fixture", "algorithm"),
    [("rsa_key", SHA256_RSA), ("p256_key", SHA256_ECDSA), ("p384_key", SHA384_ECDSA)],
)
async def test_sign_and_verify(
    request: pytest.FixtureRequest,
    softhsm: SoftHSM,
    backend: Pkcs11Backend,
    key_fixture: str,
    algorithm: object,
) -> None:
    key: PrivateKey = request.getfixturevalue(key_fixture)
    uri = softhsm.import_key(key, "signer")
    signer = await backend.open(uri)
    assert signer.algorithm == algorithm
    assert signer.public_key == key.public_key()
    data = b"tbsResponseData"
    signature = await signer.sign(data)
    verify_signature(key.public_key(), signer.algorithm, signature, data)
    signer.close()


async def test_key_by_id_only(
    softhsm: SoftHSM, backend: Pkcs11Backend, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    softhsm.import_key(p256_key, "by-id", key_id=b"\xa0\x01")
    uri = (
        f"pkcs11:token={softhsm.token};id=%A0%01;type=private"
        f"?module-path={softhsm.module}&pin-source=file:{softhsm.pin_file}"
    )
    signer = await backend.open(uri)
    signature = await signer.sign(b"x")
    verify_signature(p256_key.public_key(), signer.algorithm, signature, b"x")


async def test_key_opener_checks_certificate(
    softhsm: SoftHSM, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    uri = softhsm.import_key(p256_key, "responder")
    with KeyOpener(Pkcs11Config()) as opener:
        signer = await opener.open(uri, certificate_for(p256_key))
        assert signer.public_key == p256_key.public_key()


async def test_key_opener_uses_config_defaults(
    softhsm: SoftHSM, rsa_key: rsa.RSAPrivateKey
) -> None:
    softhsm.import_key(rsa_key, "responder")
    uri = "pkcs11:token=ocspd-test;object=responder"
    config = Pkcs11Config(module=softhsm.module, pin_source=f"file:{softhsm.pin_file}")
    with KeyOpener(config) as opener:
        signer = await opener.open(uri, certificate_for(rsa_key))
        assert signer.description == uri


async def test_certificate_of_another_key_is_refused(
    softhsm: SoftHSM, p256_key: ec.EllipticCurvePrivateKey, p384_key: ec.EllipticCurvePrivateKey
) -> None:
    uri = softhsm.import_key(p256_key, "responder")
    other = certificate_for(p384_key)
    with (
        KeyOpener(Pkcs11Config()) as opener,
        pytest.raises(SigningKeyError, match="does not match"),
    ):
        await opener.open(uri, other)


async def test_expired_certificate_is_refused(
    softhsm: SoftHSM, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    uri = softhsm.import_key(p256_key, "responder")
    now = dt.datetime.now(dt.UTC)
    expired = certificate_for(
        p256_key, not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1)
    )
    with KeyOpener(Pkcs11Config()) as opener, pytest.raises(SigningKeyError, match="expired"):
        await opener.open(uri, expired)


async def test_keys_on_one_token_share_one_session(
    softhsm: SoftHSM,
    backend: Pkcs11Backend,
    p256_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    first = await backend.open(softhsm.import_key(p256_key, "first"))
    second = await backend.open(softhsm.import_key(rsa_key, "second"))
    assert backend.session_count == 1
    assert backend.module_count == 1
    for signer, key in ((first, p256_key), (second, rsa_key)):
        verify_signature(key.public_key(), signer.algorithm, await signer.sign(b"d"), b"d")


async def test_keys_on_two_tokens_use_two_sessions(
    softhsm: SoftHSM,
    backend: Pkcs11Backend,
    p256_key: ec.EllipticCurvePrivateKey,
    p384_key: ec.EllipticCurvePrivateKey,
) -> None:
    softhsm.add_token("second-token")
    a = await backend.open(softhsm.import_key(p256_key, "k"))
    b = await backend.open(softhsm.import_key(p384_key, "k", token="second-token"))
    assert backend.session_count == 2
    assert a.public_key == p256_key.public_key()
    assert b.public_key == p384_key.public_key()


async def test_concurrent_signatures_run_on_one_thread(
    softhsm: SoftHSM, backend: Pkcs11Backend, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    signer = await backend.open(softhsm.import_key(p256_key, "busy"))
    messages = [f"message {i}".encode() for i in range(50)]
    signatures = await asyncio.gather(*(signer.sign(m) for m in messages))
    for message, signature in zip(messages, signatures, strict=True):
        verify_signature(p256_key.public_key(), signer.algorithm, signature, message)
    workers = [t for t in threading.enumerate() if t.name.startswith("pkcs11")]
    assert len(workers) == 1


async def test_a_failing_call_in_a_batch_fails_alone(backend: Pkcs11Backend) -> None:
    """Calls queued together run together: each caller gets its own result or error, and
    all of them ran on the one PKCS#11 thread."""
    threads: set[str] = set()

    def call(i: int) -> bytes:
        threads.add(threading.current_thread().name)
        if i == 3:
            raise SigningKeyError("token said no")
        return bytes([i])

    results = await asyncio.gather(
        *(backend.sign_batched(lambda i=i: call(i)) for i in range(8)), return_exceptions=True
    )
    assert [r for i, r in enumerate(results) if i != 3] == [bytes([i]) for i in range(8) if i != 3]
    assert isinstance(results[3], SigningKeyError)
    assert len(threads) == 1 and threads.pop().startswith("pkcs11")


@pytest.mark.parametrize("close_first", ["first", "second"])
async def test_two_backends_on_one_token(
    softhsm: SoftHSM, p256_key: ec.EllipticCurvePrivateKey, close_first: str
) -> None:
    # Login is per process and closing a logged-in session logs every session out: the
    # backend that closes first must not take the other's login with it.
    uri = softhsm.import_key(p256_key, "shared")
    backends = {"first": Pkcs11Backend(Pkcs11Config()), "second": Pkcs11Backend(Pkcs11Config())}
    try:
        signers = {name: await b.open(uri) for name, b in backends.items()}
        backends.pop(close_first).close()
        (remaining,) = signers.keys() - {close_first}
        signature = await signers[remaining].sign(b"still here")
        verify_signature(p256_key.public_key(), SHA256_ECDSA, signature, b"still here")
    finally:
        for b in backends.values():
            b.close()


async def test_close_is_idempotent_and_final(
    softhsm: SoftHSM, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    backend = Pkcs11Backend(Pkcs11Config())
    signer = await backend.open(softhsm.import_key(p256_key, "k"))
    backend.close()
    backend.close()
    assert backend.session_count == 0
    with pytest.raises(SigningKeyError, match="closed"):
        await signer.sign(b"late")


# Operator errors: one clear line, never the PIN


async def test_wrong_pin(
    softhsm: SoftHSM, backend: Pkcs11Backend, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    softhsm.import_key(p256_key, "k")
    wrong = softhsm.write_pin_file("987654", "wrong-pin")
    uri = softhsm.uri("k", pin_source=f"file:{wrong}")
    with pytest.raises(SigningKeyError) as caught:
        await backend.open(uri)
    message = str(caught.value)
    assert message == "PIN for token 'ocspd-test' is incorrect"
    assert "987654" not in message


async def test_a_refused_pin_is_not_offered_again_until_it_changes(
    softhsm: SoftHSM, backend: Pkcs11Backend, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    """Every refused C_Login counts towards locking the token: a PIN it refused is not sent
    again, and a corrected PIN source is used at the next attempt."""
    softhsm.import_key(p256_key, "k")
    pin_file = softhsm.write_pin_file("987654", "changing-pin")
    uri = softhsm.uri("k", pin_source=f"file:{pin_file}")
    with pytest.raises(SigningKeyError, match="is incorrect"):
        await backend.open(uri)
    with pytest.raises(SigningKeyError, match="refused before") as caught:
        await backend.open(uri)
    assert "987654" not in str(caught.value)
    softhsm.write_pin_file(softhsm.pin, "changing-pin")
    signer = await backend.open(uri)
    assert signer.public_key == p256_key.public_key()


async def test_keeper_opens_a_key_again_after_its_token_went_away(
    softhsm: SoftHSM, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    uri = softhsm.import_key(p256_key, "k")
    keeper = KeyKeeper(Pkcs11Config(), logging.getLogger("test"), first=0.05, most=0.1)
    key = keeper.key("ca", uri, certificate_for(p256_key))
    keeper.keep([key])
    tokens, away = softhsm.directory / "tokens", softhsm.directory / "tokens.away"
    runner = asyncio.create_task(keeper.run())
    try:
        assert await keeper.open_all()
        await key.sign(b"before")
        tokens.rename(away)
        with pytest.raises(SigningKeyError, match="failed to sign"):
            await key.sign(b"lost")
        assert not key.ready
        with pytest.raises(SigningKeyError, match="not open"):
            await key.sign(b"meanwhile")
        await asyncio.sleep(0.3)  # attempts while it is away fail
        assert not key.ready and key.problem
        away.rename(tokens)
        for _ in range(100):
            if key.ready:
                break
            await asyncio.sleep(0.05)
        assert key.ready
        signature = await key.sign(b"after")
        verify_signature(p256_key.public_key(), key.algorithm, signature, b"after")
    finally:
        runner.cancel()
        if away.exists():
            away.rename(tokens)
        keeper.close()


async def test_wrong_pin_value_is_not_echoed(
    softhsm: SoftHSM, backend: Pkcs11Backend, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    softhsm.import_key(p256_key, "k")
    uri = f"pkcs11:token={softhsm.token};object=k?module-path={softhsm.module}&pin-value=55555"
    with pytest.raises(SigningKeyError, match="incorrect") as caught:
        await backend.open(uri)
    assert "55555" not in str(caught.value)


async def test_unknown_token_lists_available_tokens(
    softhsm: SoftHSM, backend: Pkcs11Backend
) -> None:
    with pytest.raises(SigningKeyError) as caught:
        await backend.open(softhsm.uri("k", token="no-such-token"))
    message = str(caught.value)
    assert "'no-such-token' not found" in message
    assert "available tokens: 'ocspd-test'" in message


async def test_unknown_key_is_named(
    softhsm: SoftHSM, backend: Pkcs11Backend, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    softhsm.import_key(p256_key, "present")
    with pytest.raises(SigningKeyError) as caught:
        await backend.open(softhsm.uri("absent"))
    message = str(caught.value)
    assert "no private key with label 'absent' on token 'ocspd-test'" in message
    assert "'present'" in message


async def test_private_key_without_public_key_is_refused(
    softhsm: SoftHSM, backend: Pkcs11Backend, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    uri = softhsm.import_key(p256_key, "lonely")
    softhsm.delete_public_key("lonely")
    with pytest.raises(SigningKeyError, match="no public key object"):
        await backend.open(uri)


async def test_missing_module_file(tmp_path: Path) -> None:
    backend = Pkcs11Backend(Pkcs11Config())
    try:
        with pytest.raises(SigningKeyError, match="does not exist"):
            await backend.open(f"pkcs11:token=t;object=k?module-path={tmp_path}/nope.so")
    finally:
        backend.close()


async def test_module_that_is_not_pkcs11(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"not a shared object")
    backend = Pkcs11Backend(Pkcs11Config())
    try:
        with pytest.raises(SigningKeyError, match=f"cannot load PKCS#11 module {bogus}"):
            await backend.open(f"pkcs11:token=t;object=k?module-path={bogus}&pin-value=1")
    finally:
        backend.close()


# URI parsing and PIN/module resolution (no token needed)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pkcs11:token=t;object=k", {"token": "t", "object": "k", "id": None}),
        (
            "pkcs11:token=My%20Token;object=key%2F1%3Bx",
            {"token": "My Token", "object": "key/1;x"},
        ),
        ("pkcs11:token=t;id=%01%a0%FF", {"object": None, "id": b"\x01\xa0\xff"}),
        ("pkcs11:token=t;object=k;id=%00;type=private", {"id": b"\x00", "type": "private"}),
        ("pkcs11:slot-id=3;object=k", {"token": None, "slot_id": 3}),
        (
            "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=abc;"
            "library-description=x;slot-description=y;token=t;object=k",
            {"model": "SoftHSM v2", "manufacturer": "SoftHSM project", "serial": "abc"},
        ),
        ("pkcs11:token=%C3%A9t%C3%A9;object=k", {"token": "été"}),
        ("pkcs11:token=a+b;object=k", {"token": "a+b"}),  # '+' is not a space in RFC 7512
        (
            "pkcs11:token=t;object=k?module-path=/usr/lib/m.so&pin-source=env:PIN",
            {"module_path": "/usr/lib/m.so", "pin_source": "env:PIN", "pin_value": None},
        ),
        ("pkcs11:token=t;object=k?pin-value=12%2034", {"pin_value": "12 34"}),
    ],
)
def test_uri_parse(text: str, expected: dict[str, object]) -> None:
    uri = Pkcs11Uri.parse(text)
    for name, value in expected.items():
        assert getattr(uri, name) == value, name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file:/k.pem", "is not a pkcs11: URI"),
        ("pkcs11:object=k", "name the token"),
        ("pkcs11:token=t", "name the key"),
        ("pkcs11:token=t;type=private", "name the key"),
        ("pkcs11:token=t;object=k;type=cert", "type=cert cannot sign"),
        ("pkcs11:token=t;object=k;colour=blue", "unknown path attribute 'colour'"),
        ("pkcs11:token=t;object=k?colour=blue", "unknown query attribute 'colour'"),
        ("pkcs11:token=t;object=k?module-name=softhsm2", "use module-path"),
        ("pkcs11:token=t;object=k;token=u", "token appears twice"),
        ("pkcs11:token=t;object", "malformed path attribute 'object'"),
        ("pkcs11:token=t;object=k;;", "malformed path attribute ''"),
        ("pkcs11:token=t;object=k%2", "'%' not followed by two hex digits"),
        ("pkcs11:token=t;object=k%zz", "'%' not followed by two hex digits"),
        ("pkcs11:token=%FF;object=k", "token is not valid UTF-8"),
        ("pkcs11:slot-id=one;object=k", "slot-id must be a decimal number"),
    ],
)
def test_uri_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(SigningKeyError, match=message):
        Pkcs11Uri.parse(text)


def test_pin_value_is_redacted() -> None:
    uri = Pkcs11Uri.parse("pkcs11:token=t;object=k?pin-value=s3cret&module-path=/m.so")
    assert uri.description == "pkcs11:token=t;object=k?module-path=/m.so"
    assert "s3cret" not in repr(uri)
    only = Pkcs11Uri.parse("pkcs11:token=t;object=k?pin-value=s3cret")
    assert only.description == "pkcs11:token=t;object=k"


def test_refusal_does_not_echo_pin_value() -> None:
    with pytest.raises(SigningKeyError) as caught:
        Pkcs11Uri.parse("pkcs11:token=t;bogus=1?pin-value=s3cret")
    assert "s3cret" not in str(caught.value)


def test_missing_module_names_both_settings() -> None:
    uri = Pkcs11Uri.parse("pkcs11:token=t;object=k?pin-value=1")
    with pytest.raises(SigningKeyError) as caught:
        resolve_module(uri, Pkcs11Config())
    message = str(caught.value)
    assert "module-path" in message
    assert "OCSPD_PKCS11_MODULE" in message
    assert "[pkcs11] module" in message


async def test_open_without_module_names_env_variable() -> None:
    backend = Pkcs11Backend(Pkcs11Config())
    try:
        with pytest.raises(SigningKeyError, match="OCSPD_PKCS11_MODULE"):
            await backend.open("pkcs11:token=t;object=k?pin-value=1")
    finally:
        backend.close()


def test_module_from_config(tmp_path: Path) -> None:
    module = tmp_path / "m.so"
    module.touch()
    uri = Pkcs11Uri.parse("pkcs11:token=t;object=k")
    assert resolve_module(uri, Pkcs11Config(module=str(module))) == str(module.resolve())


def test_pin_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("0000 \r\n")
    monkeypatch.setenv("OCSPD_TEST_PIN", "4242")

    def pin(text: str, config: Pkcs11Config | None = None) -> str:
        return resolve_pin(Pkcs11Uri.parse(text), config or Pkcs11Config())

    base = "pkcs11:token=t;object=k"
    assert pin(f"{base}?pin-value=1111&pin-source=env:OCSPD_TEST_PIN") == "1111"
    assert pin(f"{base}?pin-source=env:OCSPD_TEST_PIN") == "4242"
    assert pin(f"{base}?pin-source=file:{pin_file}") == "0000 "
    assert pin(f"{base}?pin-source=file://{pin_file}") == "0000 "
    assert pin(f"{base}?pin-source={pin_file}") == "0000 "
    assert pin(base, Pkcs11Config(pin_source="env:OCSPD_TEST_PIN")) == "4242"
    # The URI's pin-source wins over the configured default.
    config = Pkcs11Config(pin_source="env:NOT_SET_ANYWHERE")
    assert pin(f"{base}?pin-source=file:{pin_file}", config) == "0000 "


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "OCSPD_PKCS11_PIN_SOURCE"),
        ("?pin-source=env:OCSPD_NO_SUCH_PIN", "environment variable OCSPD_NO_SUCH_PIN is not set"),
        ("?pin-source=file:/nonexistent/pin", "cannot read PIN file /nonexistent/pin"),
        ("?pin-source=relative/pin", "neither file:/path nor env:NAME"),
        ("?pin-source=env:OCSPD_EMPTY_PIN", "is empty"),
    ],
)
def test_pin_source_errors(query: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCSPD_NO_SUCH_PIN", raising=False)
    monkeypatch.setenv("OCSPD_EMPTY_PIN", "")
    with pytest.raises(SigningKeyError, match=message):
        resolve_pin(Pkcs11Uri.parse(f"pkcs11:token=t;object=k{query}"), Pkcs11Config())
