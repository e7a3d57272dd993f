"""Audit MAC keys (AA7.1): HMAC-SHA256 with a key in a file or in a PKCS#11 token.

A key is named like a signing key: `file:/path` (hex text of at least 32 random bytes, mode
0600; `ocspd audit keygen` or `openssl rand -hex 32` makes one) or an RFC 7512 URI naming a
generic secret key, e.g.
    pkcs11:token=audit;object=audit-mac?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/ocspd/pin
made in the token with
    pkcs11-tool --module M --login --keygen --key-type GENERIC:32 --label audit-mac --usage-sign --sensitive
KM1.1 reads as wanting the PKCS#11 kind in production; the file kind is for development and
small setups.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import Protocol
from urllib.parse import unquote

from pkcs11 import Mechanism

from ocspd.config import Pkcs11Config
from ocspd.errors import AuditKeyError, SigningKeyError
from ocspd.signing.keys import describe_keyref
from ocspd.signing.pkcs11 import Pkcs11Backend, Pkcs11SecretKey

MIN_KEY_BYTES = 32
# key_id = the first 16 hex digits of SHA-256(HMAC(key, this)): names the key in every record
# and lets anyone holding it check which key it is, without revealing anything of it.
_KEY_ID_LABEL = b"ocspd audit key id"


class AuditKey(Protocol):
    """An HMAC-SHA256 key. `mac` may block briefly (PKCS#11 runs on its own thread)."""

    @property
    def key_id(self) -> str: ...

    @property
    def description(self) -> str:
        """Where the key lives, for messages; never holds a PIN."""
        ...

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of `data`: 32 octets."""
        ...

    def close(self) -> None: ...


def key_id_from(mac_of_label: bytes) -> str:
    return hashlib.sha256(mac_of_label).hexdigest()[:16]


class FileAuditKey:
    """An HMAC key read from a file; the bytes stay in this process only."""

    def __init__(self, secret: bytes, description: str) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise AuditKeyError(
                f"audit key {description} has {len(secret)} bytes; at least {MIN_KEY_BYTES} are required"
            )
        self._secret = secret
        self._description = description
        self._key_id = key_id_from(self.mac(_KEY_ID_LABEL))

    @classmethod
    def load(cls, path: Path) -> FileAuditKey:
        description = f"file:{path}"
        try:
            info = path.stat()
        except OSError as e:
            raise AuditKeyError(f"cannot read audit key file {path}: {e.strerror}") from e
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditKeyError(
                f"audit key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        try:
            text = path.read_text(encoding="ascii")
            secret = bytes.fromhex("".join(text.split()))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise AuditKeyError(
                f"audit key file {path} must hold the key as hex text "
                "(ocspd audit keygen --out FILE, or openssl rand -hex 32)"
            ) from e
        return cls(secret, description)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def description(self) -> str:
        return self._description

    def mac(self, data: bytes) -> bytes:
        return hmac.digest(self._secret, data, "sha256")

    def close(self) -> None:
        pass


class Pkcs11AuditKey:
    """A generic secret key in a token; C_Sign with CKM_SHA256_HMAC, the key never leaves it."""

    def __init__(self, backend: Pkcs11Backend, key: Pkcs11SecretKey) -> None:
        self._backend = backend
        self._key = key
        self._key_id = key_id_from(self.mac(_KEY_ID_LABEL))

    @classmethod
    async def open(cls, uri: str, config: Pkcs11Config) -> Pkcs11AuditKey:
        # A backend of its own: CLI commands open signing keys before and close them first.
        backend = Pkcs11Backend(config)
        try:
            key = await backend.open_secret(uri)
            return cls(backend, key)
        except BaseException:
            backend.close()
            raise

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def description(self) -> str:
        return self._key.description

    def mac(self, data: bytes) -> bytes:
        try:
            return self._key.sign_blocking(data, Mechanism.SHA256_HMAC)
        except SigningKeyError as e:
            raise AuditKeyError(str(e)) from e

    def close(self) -> None:
        self._backend.close()


async def open_audit_key(keyref: str, pkcs11: Pkcs11Config) -> AuditKey:
    """Open `file:...` or `pkcs11:...`; errors are AuditKeyError naming the key, never a PIN."""
    if keyref.startswith("file:"):
        path = unquote(keyref.removeprefix("file:"))
        if path.startswith("//"):  # file:///abs/path
            path = path[2:]
        return FileAuditKey.load(Path(path))
    if keyref.startswith("pkcs11:"):
        try:
            return await Pkcs11AuditKey.open(keyref, pkcs11)
        except SigningKeyError as e:
            raise AuditKeyError(f"audit key: {e}") from e
    raise AuditKeyError(
        f"audit key reference {describe_keyref(keyref)!r} is neither file:/path nor a pkcs11: URI"
    )


def write_key_file(path: Path) -> str:
    """Create `path` (mode 0600, never overwriting) with a fresh 32-byte key; return its key_id."""
    secret = os.urandom(MIN_KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AuditKeyError(f"{path} exists already; a key file is never overwritten") from None
    except OSError as e:
        raise AuditKeyError(f"cannot create {path}: {e.strerror}") from e
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(binascii.hexlify(secret).decode("ascii") + "\n")
        f.flush()
        os.fsync(f.fileno())
    return FileAuditKey(secret, f"file:{path}").key_id


class KeyRing:
    """The keys `audit verify` checks records with, by key_id (the current one and retired
    ones given with --key); a context manager that closes them all."""

    def __init__(self, keys: list[AuditKey]) -> None:
        self._keys = {k.key_id: k for k in keys}
        self._all = keys

    def get(self, key_id: str) -> AuditKey | None:
        return self._keys.get(key_id)

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def close(self) -> None:
        for key in self._all:
            key.close()

    def __enter__(self) -> KeyRing:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
