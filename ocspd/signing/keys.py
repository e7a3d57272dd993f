"""Open a signing key by reference and check it against its certificate (CG2.3, KM3.5); keep
the keys of a long-running process open (KeyKeeper)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from ocspd.config import Pkcs11Config
from ocspd.errors import SigningKeyError
from ocspd.signing.base import SignatureAlgorithm, Signer, algorithm_for_key, verify_signature
from ocspd.signing.filekey import FileSigner
from ocspd.signing.pkcs11 import Pkcs11Backend, redact_uri

# A key that failed to open is tried again no sooner than RETRY_FIRST seconds later, then
# after twice as long each time, up to one attempt every RETRY_MAX seconds (4 a minute).
# A wrong PIN is why it is slow: every refused C_Login counts towards the token's lockout
# (many HSMs lock the user PIN after a handful of consecutive failures, as IA2.1 asks of any
# authentication), and a locked PIN stops every responder and crlgen on that token until a
# security officer unlocks it. A PIN the token has refused is not offered again at all until
# its PIN source changes (Pkcs11Backend remembers it); the backoff covers the rest (a token
# that is absent, a module that fails), so nothing retries in a tight loop.
RETRY_FIRST = 2.0
RETRY_MAX = 15.0


class KeyRefused(SigningKeyError):
    """The key must not sign with this certificate (CG2.3, KM3.5): expired, not yet valid, or
    not the key's. A configuration or data error, unlike a token that is away."""


def describe_keyref(keyref: str) -> str:
    """The key reference without secrets (a pin-value attribute), safe to print or log.

    Anything but a file: path is redacted as a URI, so a mistyped one (PKCS11:, pkcs#11:, no
    scheme) that carries a PIN does not show it in the message about the mistake.
    """
    return keyref if keyref.startswith("file:") else redact_uri(keyref)


class KeyOpener:
    """Opens keys named by `file:` paths or RFC 7512 `pkcs11:` URIs.

    It owns the PKCS#11 backend, so all keys of one process share one token login and one
    signing thread (SoftHSM2 and several HSM libraries are not safe across threads). After
    close() it can open keys again, with a new backend that loads the module afresh.
    """

    def __init__(self, pkcs11: Pkcs11Config) -> None:
        self._pkcs11_config = pkcs11
        self._pkcs11: Pkcs11Backend | None = None
        # PINs a token refused, kept across backends: see RETRY_FIRST.
        self._refused_pins: set[bytes] = set()

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
                self._pkcs11 = Pkcs11Backend(self._pkcs11_config, self._refused_pins)
            return await self._pkcs11.open(keyref)
        if os.path.sep in keyref or keyref.endswith(".pem"):
            described = describe_keyref(keyref)
            raise SigningKeyError(
                f"key reference {described!r} needs a scheme: write file:{described}"
            )
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


def check_validity(certificate: x509.Certificate, now: dt.datetime) -> None:
    """CG2.3 / KM3.5: a key is used only while its certificate is valid."""
    if now < certificate.not_valid_before_utc:
        raise KeyRefused(
            f"certificate {certificate.subject.rfc4514_string()!r} is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}"
        )
    if now > certificate.not_valid_after_utc:
        raise KeyRefused(
            f"certificate {certificate.subject.rfc4514_string()!r} expired at "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}"
        )


async def check_signer(signer: Signer, certificate: x509.Certificate, now: dt.datetime) -> None:
    """CG2.3 / KM3.5: never sign with a key whose certificate is not valid, or not its own."""
    check_validity(certificate, now)
    subject = certificate.subject.rfc4514_string()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if signer.public_key.public_bytes(der, spki) != certificate.public_key().public_bytes(
        der, spki
    ):
        raise KeyRefused(f"key {signer.description} does not match certificate {subject!r}")
    # A test signature proves the token really holds the private half, not only the public key.
    challenge = b"ocspd key check " + os.urandom(16)
    try:
        verify_signature(
            certificate.public_key(), signer.algorithm, await signer.sign(challenge), challenge
        )
    except InvalidSignature as e:
        raise KeyRefused(
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


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class KeptKey:
    """A Signer for one key that a KeyKeeper opens, and opens again when its token fails.

    While the key is not open, sign() raises SigningKeyError (the responder answers tryLater)
    and `ready` is false (/readyz names the key's issuer). The algorithm and public key come
    from the certificate, so nothing about them waits for the token.
    """

    def __init__(
        self, keeper: KeyKeeper, name: str, keyref: str, certificate: x509.Certificate
    ) -> None:
        self.name = name
        self.keyref = keyref
        self.certificate = certificate
        self._keeper = keeper
        self._public_key: PublicKeyTypes = certificate.public_key()
        self._algorithm = algorithm_for_key(self._public_key)
        self._description = describe_keyref(keyref)
        # Read once: the certificate's dates are parsed anew on every access.
        self._valid = (certificate.not_valid_before_utc, certificate.not_valid_after_utc)
        self._signer: Signer | None = None
        # Why the key is not open (None while it is): one line, never a PIN.
        self.problem: str | None = "not opened yet"

    @property
    def algorithm(self) -> SignatureAlgorithm:
        return self._algorithm

    @property
    def public_key(self) -> PublicKeyTypes:
        return self._public_key

    @property
    def description(self) -> str:
        return self._description

    @property
    def ready(self) -> bool:
        return self._signer is not None

    @property
    def in_token(self) -> bool:
        return self.keyref.startswith("pkcs11:")

    async def sign(self, data: bytes) -> bytes:
        signer = self._signer
        if signer is None:
            raise SigningKeyError(f"key {self._description} is not open: {self.problem}")
        try:
            # KM3.5 while serving too: the certificate may expire after the key was opened.
            now = self._keeper.clock()
            if not self._valid[0] <= now <= self._valid[1]:
                check_validity(self.certificate, now)  # raises, saying which bound
            return await signer.sign(data)
        except SigningKeyError as e:
            self._keeper.failed(self, signer, e)
            raise

    def close(self) -> None:
        """The keeper closes the keys it opened."""


class KeyKeeper:
    """Opens a long-running process's signing keys and keeps them open.

    A key that cannot be opened (token absent, PIN refused, module failing, certificate not
    valid yet) is tried again with backoff (RETRY_FIRST, RETRY_MAX), and so is a key whose
    signature failed, its token lost: for PKCS#11 the module is then finalized and loaded
    afresh, which is what makes a token that came back visible again. Meanwhile only that
    key's issuer gets tryLater. `run` does the retrying; `open_all` is one attempt.
    """

    def __init__(
        self,
        pkcs11: Pkcs11Config,
        log: logging.Logger,
        clock: Callable[[], dt.datetime] = _utcnow,
        first: float = RETRY_FIRST,
        most: float = RETRY_MAX,
    ) -> None:
        self._opener = KeyOpener(pkcs11)
        self._log = log
        self.clock = clock
        self._first = first
        self._most = most
        self.keys: list[KeptKey] = []
        self._wake = asyncio.Event()
        # Set when a key in a token failed: the module is reloaded before the next attempt.
        self._reload = False

    def key(self, name: str, keyref: str, certificate: x509.Certificate) -> KeptKey:
        """A key for issuer `name`, to be kept open once passed to `keep`."""
        return KeptKey(self, name, keyref, certificate)

    def keep(self, keys: Sequence[KeptKey]) -> None:
        """Keys for open_all and run to open and keep open."""
        self.keys.extend(keys)

    async def open_all(self, raise_refused: bool = False) -> bool:
        """One attempt at every key that is not open; True when all are. A key the rules
        refuse (KeyRefused) is raised with `raise_refused` (at start-up: a configuration to
        fix, not an outage to wait out) and otherwise reported and retried like the rest."""
        in_token = [k for k in self.keys if k.in_token]
        if in_token and (self._reload or not any(k.ready for k in in_token)):
            # After a token failed, or with nothing open in a token yet: C_Finalize, and the
            # next open loads the module afresh and sees the tokens there are now (SoftHSM2
            # and some HSM libraries list tokens only as they were at C_Initialize).
            for key in in_token:
                self._close(key, key.problem or "the PKCS#11 module is being reloaded")
            await asyncio.to_thread(self._opener.close)
            self._reload = False
        for key in self.keys:
            if key.ready:
                continue
            try:
                signer = await self._opener.open(key.keyref, key.certificate, self.clock())
            except SigningKeyError as e:
                if raise_refused and isinstance(e, KeyRefused):
                    raise
                if str(e) != key.problem:
                    self._log.error(
                        "signing key unavailable; retrying",
                        extra={"issuer": key.name, "key": key.description, "error": str(e)},
                    )
                key.problem = str(e)
                continue
            again = key.problem != "not opened yet"
            key._signer, key.problem = signer, None
            self._log.log(
                logging.WARNING if again else logging.INFO,
                "signing key open again" if again else "signing key open",
                extra={"issuer": key.name, "key": key.description},
            )
        return all(k.ready for k in self.keys)

    def failed(self, key: KeptKey, signer: Signer, error: SigningKeyError) -> None:
        """A signature with `signer` failed: close the key and have it opened again soon."""
        if key._signer is not signer:
            return  # reported already by another signature in flight
        self._close(key, str(error))
        if key.in_token and not isinstance(error, KeyRefused):
            self._reload = True
        self._log.error(
            "signing key failed; it is opened again when it can be",
            extra={"issuer": key.name, "key": key.description, "error": str(error)},
        )
        self._wake.set()

    def _close(self, key: KeptKey, problem: str) -> None:
        signer, key._signer = key._signer, None
        key.problem = problem
        if signer is not None:
            signer.close()

    async def run(self) -> None:
        """Open what is not open, with backoff, until cancelled."""
        delay = self._first
        while True:
            if all(k.ready for k in self.keys):
                self._wake.clear()
                await self._wake.wait()
                delay = self._first
            # Even the first retry waits: a token that has just failed is not asked at once.
            await asyncio.sleep(delay)
            delay = self._first if await self.open_all() else min(delay * 2, self._most)

    def close(self) -> None:
        for key in self.keys:
            self._close(key, "closed")
        self._opener.close()
