"""Serving published CRLs at /crl/NAME.crl: read once per file version, with HTTP caching."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path

from cryptography import x509

from ocspd.httpserver import HttpReply, HttpRequest, header_lines, text_reply
from ocspd.model import ISSUER_NAME

_NOT_FOUND = text_reply(404, "not found\n")
_NOT_ALLOWED = text_reply(405, "method not allowed\n", b"Allow: GET, HEAD\r\n")


@dataclass(frozen=True)
class _Loaded:
    version: tuple[int, int, int]  # inode, size, mtime_ns: a new file after each atomic rename
    der: bytes
    etag: str
    this_update: dt.datetime
    next_update: dt.datetime | None


class CrlFiles:
    """Serves DIR/NAME.crl as written by crlgen. Names are checked against the issuer-name
    pattern before touching the file system, and only regular files are read (a symbolic
    link is refused, not followed), so nothing outside DIR can be reached."""

    def __init__(
        self, directory: Path, max_age: dt.timedelta, clock: Callable[[], dt.datetime]
    ) -> None:
        self._directory = directory
        self._max_age = int(max_age.total_seconds())
        self._clock = clock
        self._loaded: dict[str, _Loaded] = {}

    def _load(self, name: str) -> _Loaded | None:
        path = self._directory / f"{name}.crl"
        try:
            # crlgen writes regular files (write, fsync, rename). A symbolic link in their
            # place was put there by someone else and may point anywhere: never followed.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self._loaded.pop(name, None)
            return None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
                self._loaded.pop(name, None)
                return None
            version = (info.st_ino, info.st_size, info.st_mtime_ns)
            cached = self._loaded.get(name)
            if cached is not None and cached.version == version:
                return cached
            der = file.read()
        crl = x509.load_der_x509_crl(der)
        loaded = _Loaded(
            version,
            der,
            '"' + hashlib.sha256(der).hexdigest()[:32] + '"',
            crl.last_update_utc,
            crl.next_update_utc,
        )
        self._loaded[name] = loaded
        return loaded

    def __call__(self, request: HttpRequest, file_name: str) -> HttpReply:
        if request.method not in ("GET", "HEAD"):
            return _NOT_ALLOWED
        name = file_name.removesuffix(".crl")
        # The name is an issuer name or nothing: no '/', no '..', no percent-escapes, no NUL
        # (the target is never decoded), so only files directly in the directory are reached.
        if not file_name.endswith(".crl") or not ISSUER_NAME.fullmatch(name):
            return _NOT_FOUND
        try:
            loaded = self._load(name)
        except (OSError, ValueError):
            return text_reply(503, "CRL unreadable\n")
        if loaded is None:
            return _NOT_FOUND
        remaining = self._max_age
        if loaded.next_update is not None:
            remaining = int((loaded.next_update - self._clock()).total_seconds())
        headers = {
            "Cache-Control": f"max-age={max(0, min(remaining, self._max_age))}, public, no-transform",
            "Last-Modified": format_datetime(loaded.this_update, usegmt=True),
            "ETag": loaded.etag,
        }
        if loaded.next_update is not None:
            headers["Expires"] = format_datetime(loaded.next_update, usegmt=True)
        if loaded.etag in request.headers.get("if-none-match", ""):
            return HttpReply(304, header_lines(headers))
        headers["Content-Type"] = "application/pkix-crl"
        return HttpReply(200, header_lines(headers), loaded.der, head_only=request.method == "HEAD")
