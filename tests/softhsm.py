"""Throw-away SoftHSM2 tokens for tests that need a real PKCS#11 module.

SoftHSM2 reads SOFTHSM2_CONF once, at C_Initialize, so one process can only use one token
directory at a time: create a SoftHSM, add every token it needs (`add_token`) before the
first backend opens a key, and close backends (which finalizes the module) before the
SoftHSM itself, which restores the environment.

    with SoftHSM.create(tmp_path) as hsm:
        uri = hsm.import_key(private_key, "signer")
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from needs import missing

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
DEFAULT_TOKEN = "ocspd-test"
DEFAULT_PIN = "1234"
DEFAULT_SO_PIN = "12345678"


def softhsm_module() -> str | None:
    """The SoftHSM2 module path, or None when SoftHSM2 is not installed."""
    if shutil.which("softhsm2-util") is None:
        return None
    return next((path for path in MODULE_CANDIDATES if os.path.isfile(path)), None)


def require_softhsm() -> str:
    """The module path; skip the test without SoftHSM2, but fail in CI, where it must exist."""
    module = softhsm_module()
    if module is None:
        message = (
            "SoftHSM2 is not installed (softhsm2-util and libsofthsm2.so are needed for "
            "PKCS#11 tests): apt-get install softhsm2"
        )
        missing(message)
    return module


def _run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args[:2])} failed ({result.returncode}): "
            f"{result.stdout.strip()} {result.stderr.strip()}"
        )
    return result.stdout


class SoftHSM:
    """A SoftHSM2 token directory in `directory`, active (SOFTHSM2_CONF) until closed."""

    def __init__(
        self,
        directory: Path,
        module: str,
        token: str = DEFAULT_TOKEN,
        pin: str = DEFAULT_PIN,
        so_pin: str = DEFAULT_SO_PIN,
    ) -> None:
        self.directory = directory
        self.module = module
        self.token = token
        self.pin = pin
        self.so_pin = so_pin
        self._next_id = 1
        self._saved_conf: str | None = None
        self._active = False
        (directory / "tokens").mkdir(parents=True, exist_ok=True)
        self.conf = directory / "softhsm2.conf"
        self.conf.write_text(
            f"directories.tokendir = {directory / 'tokens'}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
        )
        self.pin_file = self.write_pin_file(pin, "pin")

    @classmethod
    def create(cls, directory: Path, token: str = DEFAULT_TOKEN, pin: str = DEFAULT_PIN) -> SoftHSM:
        """Make the directory's configuration current and initialise one token in it."""
        hsm = cls(directory, require_softhsm(), token, pin)
        hsm.activate()
        try:
            hsm.add_token(token, pin)
        except BaseException:
            hsm.close()
            raise
        return hsm

    def activate(self) -> None:
        if not self._active:
            self._saved_conf = os.environ.get("SOFTHSM2_CONF")
            os.environ["SOFTHSM2_CONF"] = str(self.conf)
            self._active = True

    def close(self) -> None:
        """Restore SOFTHSM2_CONF. Close PKCS#11 backends first: they still use this directory."""
        if not self._active:
            return
        if self._saved_conf is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = self._saved_conf
        self._active = False

    def __enter__(self) -> SoftHSM:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def write_pin_file(self, pin: str, name: str) -> Path:
        """A 0600 file holding `pin` and a newline, as an operator would write it."""
        path = self.directory / name
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(pin + "\n")
        return path

    def add_token(self, label: str, pin: str | None = None) -> None:
        """Initialise another token (before any backend has loaded the module)."""
        _run(
            "softhsm2-util", "--init-token", "--free", "--label", label,
            "--pin", pin or self.pin, "--so-pin", self.so_pin,
        )  # fmt: skip

    def import_key(
        self,
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        label: str,
        key_id: bytes | None = None,
        token: str | None = None,
    ) -> str:
        """Import `key` (private and public objects) under `label`; return its pkcs11: URI."""
        if key_id is None:
            key_id = self._next_id.to_bytes(2, "big")
            self._next_id += 1
        pem = self.directory / f"import-{label}.pem"
        pem.touch(mode=0o600)
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        try:
            # softhsm2-util --import stores both the private and the public key object.
            _run(
                "softhsm2-util", "--import", str(pem), "--token", token or self.token,
                "--label", label, "--id", key_id.hex(), "--pin", self.pin,
            )  # fmt: skip
        finally:
            pem.unlink()
        return self.uri(label, token=token)

    def add_secret_key(self, label: str, sensitive: bool = True, token: str | None = None) -> str:
        """Generate a 32-byte generic secret (HMAC) key in the token; return its pkcs11: URI.

        The way an operator makes the audit MAC key (ocspd/audit/mac.py).
        """
        _run(
            "pkcs11-tool", "--module", self.module, "--token-label", token or self.token,
            "--login", "--pin", self.pin, "--keygen", "--key-type", "GENERIC:32",
            "--label", label, "--usage-sign", *(["--sensitive"] if sensitive else []),
        )  # fmt: skip
        return self.uri(label, token=token)

    def delete_public_key(self, label: str, token: str | None = None) -> None:
        """Remove the public key object of `label`, leaving a lone private key."""
        _run(
            "pkcs11-tool", "--module", self.module, "--token-label", token or self.token,
            "--login", "--pin", self.pin, "--delete-object", "--type", "pubkey",
            "--label", label,
        )  # fmt: skip

    def uri(
        self,
        label: str,
        token: str | None = None,
        pin_source: str | None = None,
        with_module: bool = True,
    ) -> str:
        """pkcs11:token=...;object=...?module-path=...&pin-source=file:... (RFC 7512)."""
        path = f"pkcs11:token={_pct(token or self.token)};object={_pct(label)}"
        query = []
        if with_module:
            query.append(f"module-path={self.module}")
        query.append(f"pin-source={pin_source or 'file:' + str(self.pin_file)}")
        return path + "?" + "&".join(query)


def _pct(value: str) -> str:
    """Percent-encode a path attribute value (RFC 7512 section 2.3)."""
    return quote(value, safe="-._~!$'()*+,=:@")
