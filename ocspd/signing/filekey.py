"""PEM key files (`file:/path/key.pem`): for development and small deployments."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from ocspd.errors import SigningKeyError
from ocspd.signing.base import SignatureAlgorithm, algorithm_for_key


class FileSigner:
    """Signs in-process with a key read from a PEM file.

    Signing runs on the caller's thread: an ECDSA signature costs tens of microseconds, less
    than handing it to an executor would.
    """

    def __init__(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, path: Path) -> None:
        self._key = key
        self._public_key = key.public_key()
        self._algorithm = algorithm_for_key(self._public_key)
        self._path = path
        # Made once: the padding or ECDSA object would otherwise be built per signature.
        self._how: padding.PKCS1v15 | ec.ECDSA = (
            padding.PKCS1v15()
            if isinstance(key, rsa.RSAPrivateKey)
            else ec.ECDSA(self._algorithm.hash)
        )

    @classmethod
    def load(cls, path: Path) -> FileSigner:
        try:
            info = path.stat()
        except OSError as e:
            raise SigningKeyError(f"cannot read key file {path}: {e.strerror}") from e
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SigningKeyError(
                f"key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as e:
            raise SigningKeyError(
                f"key file {path} does not hold an unencrypted PEM private key"
            ) from e
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise SigningKeyError(f"key file {path}: {type(key).__name__} keys are not supported")
        return cls(key, path)

    @property
    def algorithm(self) -> SignatureAlgorithm:
        return self._algorithm

    @property
    def public_key(self) -> PublicKeyTypes:
        return self._public_key

    @property
    def description(self) -> str:
        return f"file:{self._path}"

    async def sign(self, data: bytes) -> bytes:
        return self.sign_sync(data)

    def sign_sync(self, data: bytes) -> bytes:
        how = self._how
        if isinstance(how, ec.ECDSA):
            assert isinstance(self._key, ec.EllipticCurvePrivateKey)
            return self._key.sign(data, how)
        assert isinstance(self._key, rsa.RSAPrivateKey)
        return self._key.sign(data, how, self._algorithm.hash)

    def close(self) -> None:
        pass
