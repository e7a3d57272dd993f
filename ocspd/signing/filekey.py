"""PEM key files (`file:/path/key.pem`): for development and small deployments."""

from __future__ import annotations

import asyncio
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from ocspd.errors import SigningKeyError
from ocspd.signing.base import SignatureAlgorithm, algorithm_for_key


class FileSigner:
    """Signs in-process with a key read from a PEM file.

    An ECDSA signature costs tens of microseconds, less than handing it to a thread would:
    it runs on the caller's thread. An RSA signature costs about a millisecond at 2048 bits
    and several at 4096, and cryptography releases the GIL while it computes one: it runs on
    a signing thread of its own, so the event loop goes on serving other connections (cached
    answers above all) meanwhile, instead of stalling for every signature.
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
        # Started on the first signature (one-shot commands that never sign start none).
        self._thread: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="rsa-sign")
            if isinstance(key, rsa.RSAPrivateKey)
            else None
        )
        self._closed = False

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
        if self._thread is None:
            return self.sign_sync(data)
        if self._closed:
            raise SigningKeyError(f"key file {self._path} was closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.sign_sync, data)

    def sign_sync(self, data: bytes) -> bytes:
        how = self._how
        if isinstance(how, ec.ECDSA):
            assert isinstance(self._key, ec.EllipticCurvePrivateKey)
            return self._key.sign(data, how)
        assert isinstance(self._key, rsa.RSAPrivateKey)
        return self._key.sign(data, how, self._algorithm.hash)

    def close(self) -> None:
        # Signatures already handed to the thread still finish; new ones are refused.
        self._closed = True
        if self._thread is not None:
            self._thread.shutdown(wait=False)
