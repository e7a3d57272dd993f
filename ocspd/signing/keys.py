"""Open a signing key by reference and check it against its certificate (CG2.3, KM3.5)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ocspd.config import Pkcs11Config
from ocspd.errors import SigningKeyError
from ocspd.signing.base import Signer, verify_signature
from ocspd.signing.filekey import FileSigner
from ocspd.signing.pkcs11 import Pkcs11Backend, redact_uri


def describe_keyref(keyref: str) -> str:
    """The key reference without secrets (a pin-value attribute), safe to print or log."""
    return redact_uri(keyref) if keyref.startswith("pkcs11:") else keyref


class KeyOpener:
    """Opens keys named by `file:` paths or RFC 7512 `pkcs11:` URIs.

    It owns the PKCS#11 backend, so all keys of one process share one token login and one
    signing thread (SoftHSM2 and several HSM libraries are not safe across threads).
    """

    def __init__(self, pkcs11: Pkcs11Config) -> None:
        self._pkcs11_config = pkcs11
        self._pkcs11: Pkcs11Backend | None = None

    async def open(
        self, keyref: str, certificate: x509.Certificate, now: dt.datetime | None = None
    ) -> Signer:
        """Open the key and refuse it unless it matches `certificate`, which must be valid now."""
        signer = await self._open(keyref)
        try:
            await check_signer(signer, certificate, now or dt.datetime.now(dt.UTC))
        except BaseException:
            signer.close()
            raise
        return signer

    async def _open(self, keyref: str) -> Signer:
        if keyref.startswith("file:"):
            path = unquote(keyref.removeprefix("file:"))
            if path.startswith("//"):  # file:///abs/path
                path = path[2:]
            return FileSigner.load(Path(path))
        if keyref.startswith("pkcs11:"):
            if self._pkcs11 is None:
                self._pkcs11 = Pkcs11Backend(self._pkcs11_config)
            return await self._pkcs11.open(keyref)
        if os.path.sep in keyref or keyref.endswith(".pem"):
            raise SigningKeyError(f"key reference {keyref!r} needs a scheme: write file:{keyref}")
        raise SigningKeyError(
            f"key reference {describe_keyref(keyref)!r} is neither file:/path/key.pem "
            "nor a pkcs11: URI (RFC 7512)"
        )

    def close(self) -> None:
        if self._pkcs11 is not None:
            self._pkcs11.close()
            self._pkcs11 = None

    def __enter__(self) -> KeyOpener:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def check_signer(signer: Signer, certificate: x509.Certificate, now: dt.datetime) -> None:
    """CG2.3 / KM3.5: never sign with a key whose certificate is not valid, or not its own."""
    subject = certificate.subject.rfc4514_string()
    if now < certificate.not_valid_before_utc:
        raise SigningKeyError(
            f"certificate {subject!r} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}"
        )
    if now > certificate.not_valid_after_utc:
        raise SigningKeyError(
            f"certificate {subject!r} expired at {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}"
        )
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if signer.public_key.public_bytes(der, spki) != certificate.public_key().public_bytes(
        der, spki
    ):
        raise SigningKeyError(f"key {signer.description} does not match certificate {subject!r}")
    # A test signature proves the token really holds the private half, not only the public key.
    challenge = b"ocspd key check " + os.urandom(16)
    try:
        verify_signature(
            certificate.public_key(), signer.algorithm, await signer.sign(challenge), challenge
        )
    except InvalidSignature as e:
        raise SigningKeyError(
            f"key {signer.description} produced a signature that certificate {subject!r} does not verify"
        ) from e


async def open_signer(
    keyref: str, certificate: x509.Certificate, pkcs11: Pkcs11Config, now: dt.datetime | None = None
) -> tuple[Signer, KeyOpener]:
    """Open one key; the caller closes the returned opener when done (one-shot commands)."""
    opener = KeyOpener(pkcs11)
    try:
        return await opener.open(keyref, certificate, now), opener
    except BaseException:
        opener.close()
        raise
