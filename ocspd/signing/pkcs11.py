"""Keys in a PKCS#11 token or HSM, named by RFC 7512 `pkcs11:` URIs (KM1.1).

KM1.1 wants signing keys kept in a cryptographic device: the private key never leaves the
token, we only ask it to sign. Everything that talks to the PKCS#11 module runs on one
dedicated thread per backend, because several modules (SoftHSM2 among them) crash or corrupt
state when two threads of one process use them at once, and a single thread also serialises
access to the shared logged-in session. A process should therefore hold one backend (the
KeyOpener owns it); several work, but then nothing stops two of them signing at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import unquote, unquote_to_bytes

import pkcs11
from asn1crypto.core import OctetString
from asn1crypto.keys import ECDomainParameters, PublicKeyInfo
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11.exceptions import (
    MultipleObjectsReturned,
    NoSuchKey,
    PinExpired,
    PinIncorrect,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    UserAlreadyLoggedIn,
    UserPinNotInitialized,
)
from pkcs11.util.ec import encode_ecdsa_signature

from ocspd.config import Pkcs11Config
from ocspd.errors import SigningKeyError
from ocspd.signing.base import SignatureAlgorithm, algorithm_for_key

if TYPE_CHECKING:
    # pkcs11.lib is a loader function; the class it returns lives in the extension module.
    from pkcs11._pkcs11 import lib as Pkcs11Lib

T = TypeVar("T")

# RFC 7512 section 2.3 path attributes. Those that select a token or key are honoured; the
# library-* and slot-* descriptions are accepted and ignored (the module is chosen by path).
_PATH_ATTRIBUTES = frozenset(
    {
        "token", "manufacturer", "model", "serial", "object", "type", "id", "slot-id",
        "library-manufacturer", "library-description", "library-version",
        "slot-manufacturer", "slot-description",
    }
)  # fmt: skip
_QUERY_ATTRIBUTES = frozenset({"module-path", "pin-source", "pin-value"})
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of an RFC 7512 URI that ocspd uses to find one private key."""

    # The URI as written minus any pin-value attribute: safe for logs and error messages.
    description: str
    token: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    slot_id: int | None = None
    module_path: str | None = None
    pin_source: str | None = None
    # repr=False: a dataclass repr ends up in tracebacks and logs, a PIN must not.
    pin_value: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str, key_class: str = "private") -> Pkcs11Uri:
        """Parse a URI naming one key of `key_class` (RFC 7512 type: private or secret)."""
        description = redact_uri(text)
        if not text.startswith("pkcs11:"):
            raise SigningKeyError(f"{description!r} is not a pkcs11: URI (RFC 7512)")
        path, _, query = text.removeprefix("pkcs11:").partition("?")
        path_values = _split_attributes(path, ";", _PATH_ATTRIBUTES, "path", description)
        query_values = _split_attributes(query, "&", _QUERY_ATTRIBUTES, "query", description)

        def text_of(values: Mapping[str, bytes], name: str) -> str | None:
            if name not in values:
                return None
            try:
                return values[name].decode("utf-8")
            except UnicodeDecodeError:
                raise SigningKeyError(
                    f"{description}: attribute {name} is not valid UTF-8 after percent-decoding"
                ) from None

        kind = text_of(path_values, "type")
        if kind is not None and kind != key_class:
            use = "sign" if key_class == "private" else "compute a MAC"
            raise SigningKeyError(
                f"{description}: type={kind} cannot {use}; the URI must name a {key_class} key "
                f"(type={key_class}, or no type)"
            )
        slot_text = text_of(path_values, "slot-id")
        slot_id: int | None = None
        if slot_text is not None:
            if not slot_text.isdigit():
                raise SigningKeyError(f"{description}: slot-id must be a decimal number")
            slot_id = int(slot_text)

        uri = cls(
            description=description,
            token=text_of(path_values, "token"),
            object=text_of(path_values, "object"),
            id=path_values.get("id"),
            type=kind,
            manufacturer=text_of(path_values, "manufacturer"),
            model=text_of(path_values, "model"),
            serial=text_of(path_values, "serial"),
            slot_id=slot_id,
            module_path=text_of(query_values, "module-path"),
            pin_source=text_of(query_values, "pin-source"),
            pin_value=text_of(query_values, "pin-value"),
        )
        if uri.token is None and uri.slot_id is None:
            raise SigningKeyError(f"{description}: name the token with token=<label> (or slot-id)")
        if uri.object is None and uri.id is None:
            raise SigningKeyError(f"{description}: name the key with object=<label> and/or id=")
        return uri

    @property
    def token_name(self) -> str:
        """How to name the token in messages."""
        return repr(self.token) if self.token is not None else f"in slot {self.slot_id}"

    @property
    def key_name(self) -> str:
        """How to name the key in messages."""
        parts = []
        if self.object is not None:
            parts.append(f"label {self.object!r}")
        if self.id is not None:
            parts.append(f"id {self.id.hex()}")
        return " and ".join(parts)


def _split_attributes(
    part: str, separator: str, known: frozenset[str], where: str, description: str
) -> dict[str, bytes]:
    """Split `name=value` attributes and percent-decode the values (RFC 7512 section 2.3)."""
    values: dict[str, bytes] = {}
    if not part:
        return values
    after_pin = False
    for attribute in part.split(separator):
        name, equals, value = attribute.partition("=")
        if after_pin and (not equals or name not in known):
            # Most likely the rest of a PIN: name nothing of it.
            raise SigningKeyError(
                f"{description}: the pin-value holds an unencoded {separator!r}; "
                f"percent-encode it (%{ord(separator):02X})"
            )
        after_pin = name == "pin-value"
        if not equals or not name:
            raise SigningKeyError(
                f"{description}: malformed {where} attribute {attribute!r} (expected name=value)"
            )
        if name not in known:
            if name == "module-name":
                raise SigningKeyError(
                    f"{description}: module-name is not supported; "
                    "use module-path=/path/to/module.so"
                )
            raise SigningKeyError(f"{description}: unknown {where} attribute {name!r}")
        if name in values:
            raise SigningKeyError(f"{description}: attribute {name} appears twice")
        if _BAD_PERCENT.search(value):
            raise SigningKeyError(
                f"{description}: attribute {name} has a '%' not followed by two hex digits"
            )
        values[name] = unquote_to_bytes(value)
    return values


def redact_uri(text: str) -> str:
    """The URI without its pin-value attribute, the only part that can hold a secret.

    What is redacted is what error messages show, so it must hold for URIs with mistakes
    too (L17, AC8: no PIN in logs or messages): the name is compared case-insensitively and
    percent-decoded; a pin-value among the path attributes takes the rest of the URI with it;
    and a PIN holding an unencoded '&' is dropped up to the next attribute ocspd knows.
    """
    head, question, query = text.partition("?")
    path: list[str] = []
    for attribute in head.split(";"):
        if _is_pin_value(attribute.partition("=")[0].removeprefix("pkcs11:")):
            return ";".join(path) or "pkcs11:"
        path.append(attribute)
    if not question:
        return text
    kept: list[str] = []
    in_pin = False
    for attribute in query.split("&"):
        name = attribute.partition("=")[0]
        if _is_pin_value(name):
            in_pin = True
        elif not in_pin or name in _QUERY_ATTRIBUTES:
            in_pin = False
            kept.append(attribute)
    return head + ("?" + "&".join(kept) if kept else "")


def _is_pin_value(name: str) -> bool:
    return unquote(name).strip().lower() == "pin-value"


def resolve_module(uri: Pkcs11Uri, config: Pkcs11Config) -> str:
    """The module path: the URI's module-path, else the configured default."""
    module = uri.module_path or config.module
    if not module:
        raise SigningKeyError(
            f"no PKCS#11 module for {uri.description}: add module-path=/path/to/module.so to "
            "the URI, or set OCSPD_PKCS11_MODULE ([pkcs11] module in the config file)"
        )
    if not os.path.isfile(module):
        raise SigningKeyError(f"PKCS#11 module {module} does not exist or is not a file")
    # One canonical name per file: two spellings of one module must share one loaded library
    # (a second C_Initialize in the same process fails).
    return os.path.realpath(module)


def resolve_pin(uri: Pkcs11Uri, config: Pkcs11Config) -> str:
    """The user PIN: pin-value, else pin-source from the URI, else the configured pin source.

    Messages name where the PIN was looked for, never the PIN itself.
    """
    if uri.pin_value is not None:
        return uri.pin_value
    source = uri.pin_source or config.pin_source
    if not source:
        raise SigningKeyError(
            f"no PIN for token {uri.token_name}: add pin-source=file:/path to {uri.description}, "
            "or set OCSPD_PKCS11_PIN_SOURCE ([pkcs11] pin_source in the config file)"
        )
    if source.startswith("env:"):
        name = source.removeprefix("env:")
        pin = os.environ.get(name)
        if pin is None:
            raise SigningKeyError(
                f"PIN source {source} for token {uri.token_name}: environment variable {name} "
                "is not set"
            )
    else:
        if source.startswith("file:"):
            path = source.removeprefix("file:")
            if path.startswith("//"):  # file:///abs/path
                path = path[2:]
        elif source.startswith("/"):
            path = source
        else:
            raise SigningKeyError(
                f"PIN source {source!r} for token {uri.token_name} is neither file:/path nor "
                "env:NAME"
            )
        try:
            # Only the line terminator goes: anything else may be part of the PIN.
            pin = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise SigningKeyError(
                f"cannot read PIN file {path} for token {uri.token_name}: {reason}"
            ) from None
    if not pin:
        raise SigningKeyError(f"PIN source {source} for token {uri.token_name} is empty")
    return pin


def _pin_mark(uri: Pkcs11Uri, module: str, pin: str) -> bytes:
    """A digest standing for `pin` offered to the token `uri` selects, so a refused PIN can be
    recognised without keeping it."""
    selector = [module, uri.token or "", str(uri.slot_id), uri.serial or "", pin]
    return hashlib.sha256("\0".join(selector).encode()).digest()


def _reason(e: PKCS11Error) -> str:
    """python-pkcs11 exceptions often carry no text; their class names the CKR_ code."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _SignKey(Protocol):
    """What we use of a python-pkcs11 private key (SignMixin is mixed in at run time)."""

    def sign(self, data: bytes, *, mechanism: Mechanism) -> bytes: ...


# Process-wide state, shared by every backend in the process and guarded by one lock:
# - python-pkcs11 keeps one loaded library per path and C_Initialize is per process, so the
#   count of backends using a module decides when C_Finalize may run;
# - PKCS#11 login state is per process, and python-pkcs11 calls C_Logout when it closes a
#   logged-in session, so a backend that closes while others still use the same token must
#   not close its logged-in session: it is parked until the token's last user closes.
_lock = threading.Lock()
_lib_users: dict[str, int] = {}
_token_users: dict[tuple[str, str], int] = {}
_parked: dict[tuple[str, str], list[pkcs11.Session]] = {}


def _acquire_lib(module: str) -> Pkcs11Lib:
    with _lock:
        try:
            lib = pkcs11.lib(module)
        except PKCS11Error as e:
            raise SigningKeyError(f"cannot load PKCS#11 module {module}: {_reason(e)}") from e
        _lib_users[module] = _lib_users.get(module, 0) + 1
        return lib


def _release_lib(module: str, lib: Pkcs11Lib) -> None:
    with _lock:
        users = _lib_users.get(module, 0) - 1
        if users > 0:
            _lib_users[module] = users
            return
        _lib_users.pop(module, None)
        for key in [k for k in _parked if k[0] == module]:
            del _parked[key]  # C_Finalize below closes them.
        # Finalize so that a later backend starts afresh: it re-reads the module's
        # configuration (SOFTHSM2_CONF for SoftHSM2) and sees tokens added since.
        with contextlib.suppress(PKCS11Error):
            lib.finalize()


def _acquire_token(key: tuple[str, str]) -> None:
    with _lock:
        _token_users[key] = _token_users.get(key, 0) + 1


def _release_token(key: tuple[str, str], session: pkcs11.Session, logged_in: bool) -> None:
    with _lock:
        users = _token_users.get(key, 0) - 1
        if users > 0:
            _token_users[key] = users
            if logged_in:
                _parked.setdefault(key, []).append(session)
                return
            to_close = [session]  # A session that did not log in closes without C_Logout.
        else:
            _token_users.pop(key, None)
            # The last user: nobody else signs on this token now, so closing the parked
            # sessions from this thread is safe.
            to_close = [session, *_parked.pop(key, [])]
    for each in to_close:
        # The token may be gone already; then there is nothing more to release.
        with contextlib.suppress(PKCS11Error):
            each.close()


class Pkcs11Backend:
    """Opens keys in PKCS#11 tokens, sharing one module load and one login per token.

    Every python-pkcs11 call runs on the backend's single worker thread, and the caches below
    are touched only from that thread, so they need no lock.
    """

    def __init__(self, config: Pkcs11Config, refused_pins: set[bytes] | None = None) -> None:
        self._config = config
        # PINs (as _pin_mark digests) a token refused: never offered to it again, since every
        # refused C_Login counts towards locking the token's user PIN. Shared by the backends
        # one KeyOpener makes in turn, so a reload of the module does not forget them. Added
        # to on the PKCS#11 thread, read on the caller's (single set operations, atomic).
        self._refused_pins = refused_pins if refused_pins is not None else set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pkcs11")
        self._closed = False
        # Signatures handed to the PKCS#11 thread in batches (see sign_batched).
        self._batch_lock = threading.Lock()
        self._batch: list[tuple[Callable[[], bytes], asyncio.Future[bytes]]] = []
        self._draining = False
        self._libs: dict[str, Pkcs11Lib] = {}
        # (module path, token label) -> the logged-in session all its keys use.
        self._sessions: dict[tuple[str, str], pkcs11.Session] = {}
        # The sessions above that did C_Login themselves (see _release_token).
        self._logged_in: set[tuple[str, str]] = set()

    @property
    def session_count(self) -> int:
        """Logged-in sessions held open (one per token, however many keys it holds)."""
        return len(self._sessions)

    @property
    def module_count(self) -> int:
        return len(self._libs)

    async def open(self, uri: str) -> Pkcs11Signer:
        parsed = Pkcs11Uri.parse(uri)
        # Resolved on the caller's thread: pure file and environment reads, no module calls.
        module = resolve_module(parsed, self._config)
        pin = resolve_pin(parsed, self._config)
        self._check_pin_not_refused(parsed, module, pin)
        key, public_key = await self.run(lambda: self._find_key(parsed, module, pin))
        return Pkcs11Signer(self, key, public_key, parsed.description)

    async def open_secret(self, uri: str) -> Pkcs11SecretKey:
        """A secret (HMAC) key, e.g. the audit MAC key (AA7.1, KM1.1)."""
        parsed = Pkcs11Uri.parse(uri, key_class="secret")
        module = resolve_module(parsed, self._config)
        pin = resolve_pin(parsed, self._config)
        self._check_pin_not_refused(parsed, module, pin)
        key = await self.run(lambda: self._find_secret(parsed, module, pin))
        return Pkcs11SecretKey(self, key, parsed.description)

    def _check_pin_not_refused(self, uri: Pkcs11Uri, module: str, pin: str) -> None:
        if _pin_mark(uri, module, pin) in self._refused_pins:
            raise SigningKeyError(
                f"PIN for token {uri.token_name} was refused before; it is not offered again "
                "until its PIN source changes (each wrong PIN counts towards locking the token)"
            )

    def run_blocking(self, call: Callable[[], T]) -> T:
        """Run `call` on the PKCS#11 thread and wait for it, for synchronous callers."""
        if self._closed:
            raise SigningKeyError("the PKCS#11 backend is closed")
        if threading.current_thread().name.startswith("pkcs11"):
            return call()  # already on the PKCS#11 thread: waiting for it would deadlock
        return self._executor.submit(call).result()

    async def run(self, call: Callable[[], T]) -> T:
        """Run `call` on the PKCS#11 thread."""
        if self._closed:
            raise SigningKeyError("the PKCS#11 backend is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call)

    def sign_batched(self, call: Callable[[], bytes]) -> asyncio.Future[bytes]:
        """Run a signing call on the PKCS#11 thread, batched with others waiting.

        Under load, one hand-off per signature (an executor job, a future, a wake-up of the
        event loop through its self-pipe) cost more CPU than a SoftHSM2 signature. Here the
        thread takes every call queued when it gets to them, and their results come back to
        the event loop in one callback per batch.
        """
        if self._closed:
            raise SigningKeyError("the PKCS#11 backend is closed")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        with self._batch_lock:
            self._batch.append((call, future))
            start = not self._draining
            self._draining = True
        if start:
            self._executor.submit(self._drain_batches)
        return future

    def _drain_batches(self) -> None:
        while True:
            with self._batch_lock:
                batch, self._batch = self._batch, []
                if not batch:
                    self._draining = False
                    return
            done: list[tuple[asyncio.Future[bytes], bytes | None, BaseException | None]] = []
            for call, future in batch:
                try:
                    done.append((future, call(), None))
                except BaseException as e:  # delivered to the caller, who decides
                    done.append((future, None, e))
            loops: dict[asyncio.AbstractEventLoop, list[Any]] = {}
            for item in done:
                loops.setdefault(item[0].get_loop(), []).append(item)
            for loop, items in loops.items():
                with contextlib.suppress(RuntimeError):  # a loop that closed meanwhile
                    loop.call_soon_threadsafe(_deliver, items)

    def close(self) -> None:
        """Log out, close sessions, finalize modules no other backend uses, stop the thread."""
        if self._closed:
            return
        self._closed = True
        # Queued behind any signing still in flight, on the thread that owns the sessions.
        self._executor.submit(self._close_sync).result()
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        for key, session in self._sessions.items():
            _release_token(key, session, key in self._logged_in)
        self._sessions.clear()
        self._logged_in.clear()
        for module, lib in self._libs.items():
            _release_lib(module, lib)
        self._libs.clear()

    # Everything below runs on the PKCS#11 thread.

    def _lib(self, module: str) -> Pkcs11Lib:
        lib = self._libs.get(module)
        if lib is None:
            lib = _acquire_lib(module)
            self._libs[module] = lib
        return lib

    def _token(self, uri: Pkcs11Uri, module: str) -> pkcs11.Token:
        lib = self._lib(module)
        try:
            slots = lib.get_slots(token_present=True)
            tokens = [slot.get_token() for slot in slots]
        except PKCS11Error as e:
            raise SigningKeyError(f"cannot list tokens of module {module}: {_reason(e)}") from e
        present = [t for t in tokens if t.flags & TokenFlag.TOKEN_INITIALIZED]
        matching = [
            t
            for t in present
            if (uri.token is None or t.label == uri.token)
            and (uri.slot_id is None or t.slot.slot_id == uri.slot_id)
            and (uri.manufacturer is None or t.manufacturer_id == uri.manufacturer)
            and (uri.model is None or t.model == uri.model)
            and (uri.serial is None or _serial(t) == uri.serial)
        ]
        if not matching:
            labels = ", ".join(repr(t.label) for t in present) or "none"
            raise SigningKeyError(
                f"token {uri.token_name} not found in module {module}; available tokens: {labels}"
            )
        if len(matching) > 1:
            raise SigningKeyError(
                f"{len(matching)} tokens match {uri.description}; add serial= or slot-id="
            )
        return matching[0]

    def _session(self, uri: Pkcs11Uri, module: str, pin: str) -> pkcs11.Session:
        token = self._token(uri, module)
        cache_key = (module, token.label)
        session = self._sessions.get(cache_key)
        if session is not None:
            return session
        name = repr(token.label)
        logged_in = False
        try:
            session = token.open(user_pin=pin)
            logged_in = True
        except UserAlreadyLoggedIn:
            # Login state is per process: another backend here has logged in already, and a
            # plain session shares that login. (The token did not check this PIN, then.)
            session = self._open_plain(token)
        except PinIncorrect:
            self._refused_pins.add(_pin_mark(uri, module, pin))
            raise SigningKeyError(f"PIN for token {name} is incorrect") from None
        except PinLocked:
            raise SigningKeyError(f"PIN for token {name} is locked") from None
        except PinExpired:
            raise SigningKeyError(f"PIN for token {name} has expired") from None
        except PinLenRange:
            raise SigningKeyError(f"PIN for token {name} has the wrong length") from None
        except UserPinNotInitialized:
            raise SigningKeyError(f"token {name} has no user PIN set") from None
        except PKCS11Error as e:
            raise SigningKeyError(f"cannot log in to token {name}: {_reason(e)}") from None
        self._sessions[cache_key] = session
        if logged_in:
            self._logged_in.add(cache_key)
        _acquire_token(cache_key)
        return session

    def _open_plain(self, token: pkcs11.Token) -> pkcs11.Session:
        try:
            return token.open()
        except PKCS11Error as e:
            raise SigningKeyError(
                f"cannot open a session on token {token.label!r}: {_reason(e)}"
            ) from e

    def _find_key(self, uri: Pkcs11Uri, module: str, pin: str) -> tuple[_SignKey, PublicKeyTypes]:
        session = self._session(uri, module, pin)
        where = f"on token {session.token.label!r}"
        try:
            private = session.get_key(ObjectClass.PRIVATE_KEY, label=uri.object, id=uri.id)
        except NoSuchKey:
            raise SigningKeyError(
                f"no private key with {uri.key_name} {where}"
                f" (private keys there: {_key_labels(session)})"
            ) from None
        except MultipleObjectsReturned:
            raise SigningKeyError(
                f"several private keys have {uri.key_name} {where}; add id= to the URI"
            ) from None
        except PKCS11Error as e:
            raise SigningKeyError(f"cannot search keys {where}: {_reason(e)}") from e
        try:
            public_key = _public_key(session, uri, private)
        except PKCS11Error as e:
            raise SigningKeyError(
                f"cannot read the public key for {uri.key_name} {where}: {_reason(e)}"
            ) from e
        if public_key is None:
            raise SigningKeyError(
                f"private key with {uri.key_name} {where} has no public key object with the same "
                "label or id; import the public key too (ocspd needs it to check the certificate)"
            )
        # Refuse keys outside the algorithm policy now, not at the first signature.
        algorithm_for_key(public_key)
        return cast(_SignKey, private), public_key

    def _find_secret(self, uri: Pkcs11Uri, module: str, pin: str) -> _SignKey:
        session = self._session(uri, module, pin)
        where = f"on token {session.token.label!r}"
        try:
            key = session.get_key(ObjectClass.SECRET_KEY, label=uri.object, id=uri.id)
        except NoSuchKey:
            raise SigningKeyError(f"no secret key with {uri.key_name} {where}") from None
        except MultipleObjectsReturned:
            raise SigningKeyError(
                f"several secret keys have {uri.key_name} {where}; add id= to the URI"
            ) from None
        except PKCS11Error as e:
            raise SigningKeyError(f"cannot search keys {where}: {_reason(e)}") from e
        try:
            can_sign = bool(key[Attribute.SIGN])
            sensitive = bool(key[Attribute.SENSITIVE])
        except PKCS11Error as e:
            raise SigningKeyError(
                f"cannot read the attributes of secret key {uri.key_name} {where}: {_reason(e)}"
            ) from e
        if not can_sign:
            raise SigningKeyError(
                f"secret key {uri.key_name} {where} does not allow signing (CKA_SIGN); "
                "generate it with --usage-sign"
            )
        # KM6.4: a key the token would reveal in plaintext is not protected by it.
        if not sensitive:
            raise SigningKeyError(
                f"secret key {uri.key_name} {where} is not sensitive (CKA_SENSITIVE); "
                "generate it with --sensitive"
            )
        return cast(_SignKey, key)


class Pkcs11SecretKey:
    """A secret key in a token; every call runs on the backend's PKCS#11 thread."""

    def __init__(self, backend: Pkcs11Backend, key: _SignKey, description: str) -> None:
        self._backend = backend
        self._key = key
        self.description = description

    def sign_blocking(self, data: bytes, mechanism: Mechanism) -> bytes:
        """C_Sign with a MAC mechanism (e.g. CKM_SHA256_HMAC); blocks the caller."""

        def sign() -> bytes:
            try:
                return self._key.sign(data, mechanism=mechanism)
            except PKCS11Error as e:
                raise SigningKeyError(
                    f"key {self.description} failed to compute a MAC: {_reason(e)}"
                ) from e

        return self._backend.run_blocking(sign)


def _deliver(
    items: list[tuple[asyncio.Future[bytes], bytes | None, BaseException | None]],
) -> None:
    """On the event loop: hand each caller its signature or its error."""
    for future, result, error in items:
        if future.done():  # the caller gave up (cancelled)
            continue
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)


def _serial(token: pkcs11.Token) -> str:
    # CK_TOKEN_INFO serialNumber is blank-padded text that python-pkcs11 returns as bytes.
    return token.serial.decode("ascii", "replace").rstrip()


def _key_labels(session: pkcs11.Session) -> str:
    try:
        keys = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        labels = sorted({str(k[Attribute.LABEL]) for k in keys})
    except PKCS11Error:
        return "cannot list"
    return ", ".join(repr(label) for label in labels[:20]) or "none"


def _public_key(
    session: pkcs11.Session, uri: Pkcs11Uri, private: pkcs11.Key
) -> PublicKeyTypes | None:
    """The public half, from the public key object paired with `private`.

    PKCS#11 pairs objects by CKA_ID; try the URI's own attributes first, then the private
    key's id (a URI may name the key by a label only its private object carries).
    """
    searches: list[dict[Attribute, Any]] = []
    by_uri: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PUBLIC_KEY}
    if uri.object is not None:
        by_uri[Attribute.LABEL] = uri.object
    if uri.id is not None:
        by_uri[Attribute.ID] = uri.id
    searches.append(by_uri)
    private_id = private[Attribute.ID]
    if private_id:
        searches.append({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: bytes(private_id)})
    for attrs in searches:
        found = list(session.get_objects(attrs))
        if len(found) == 1:
            return _to_cryptography(found[0], private.key_type)
    return None


def _to_cryptography(public: pkcs11.Object, key_type: KeyType) -> PublicKeyTypes:
    if key_type == KeyType.RSA:
        modulus = int.from_bytes(public[Attribute.MODULUS], "big")
        exponent = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    if key_type == KeyType.EC:
        params = ECDomainParameters.load(bytes(public[Attribute.EC_PARAMS]))
        curve = params.chosen.native if params.name == "named" else None
        spki = PublicKeyInfo(
            {
                "algorithm": {"algorithm": "ec", "parameters": params},
                "public_key": _ec_point(bytes(public[Attribute.EC_POINT]), curve),
            }
        ).dump()
        try:
            return serialization.load_der_public_key(spki)
        except (ValueError, TypeError) as e:
            raise SigningKeyError(f"EC public key on the token cannot be used: {e}") from e
    name = key_type.name if isinstance(key_type, KeyType) else str(key_type)
    raise SigningKeyError(f"{name} keys are not supported; use RSA or ECDSA")


# Bytes per coordinate of the curves we may meet, to tell a raw point from a wrapped one.
_FIELD_BYTES = {"secp256r1": 32, "secp384r1": 48, "secp521r1": 66}


def _ec_point(value: bytes, curve: str | None) -> bytes:
    """CKA_EC_POINT should be a DER OCTET STRING, but some tokens store the raw point.

    Both start with 0x04, so the length decides: a raw uncompressed point is 1 + 2 * field.
    """
    size = _FIELD_BYTES.get(curve or "")
    if size is not None and len(value) == 1 + 2 * size and value[0] == 0x04:
        return value
    try:
        wrapped = OctetString.load(value, strict=True)
        return bytes(wrapped.native)
    except ValueError:
        return value


class Pkcs11Signer:
    """One private key in a token; signs on the backend's PKCS#11 thread."""

    def __init__(
        self,
        backend: Pkcs11Backend,
        key: _SignKey,
        public_key: PublicKeyTypes,
        description: str,
    ) -> None:
        self._backend = backend
        self._key = key
        self._public_key = public_key
        self._algorithm = algorithm_for_key(public_key)
        self._description = description

    @property
    def algorithm(self) -> SignatureAlgorithm:
        return self._algorithm

    @property
    def public_key(self) -> PublicKeyTypes:
        return self._public_key

    @property
    def description(self) -> str:
        return self._description

    async def sign(self, data: bytes) -> bytes:
        if isinstance(self._public_key, rsa.RSAPublicKey):
            return await self._backend.sign_batched(
                lambda: self._sign_sync(data, Mechanism.SHA256_RSA_PKCS)
            )
        if not isinstance(self._public_key, ec.EllipticCurvePublicKey):  # pragma: no cover
            raise SigningKeyError(f"{self._description}: unsupported key type")
        # Hash here and use plain CKM_ECDSA: SoftHSM2 (and some HSMs) lack CKM_ECDSA_SHA256/384.
        digest = hashlib.new(self._algorithm.hash.name, data).digest()
        raw = await self._backend.sign_batched(lambda: self._sign_sync(digest, Mechanism.ECDSA))
        # PKCS#11 returns r || s; X.509 and OCSP carry an ECDSA-Sig-Value SEQUENCE.
        return encode_ecdsa_signature(raw)

    def _sign_sync(self, data: bytes, mechanism: Mechanism) -> bytes:
        try:
            return self._key.sign(data, mechanism=mechanism)
        except PKCS11Error as e:
            raise SigningKeyError(f"key {self._description} failed to sign: {_reason(e)}") from e

    def close(self) -> None:
        # The session is shared by every key on the token; the backend closes it.
        pass
