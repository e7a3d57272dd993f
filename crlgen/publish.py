"""Publication: DIR/NAME.crl replaced atomically, so readers see the old CRL or the new one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def publish(directory: Path, issuer_name: str, der: bytes) -> Path:
    """Write, fsync, rename over the old file, fsync the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{issuer_name}.crl"
    _remove_stale(directory, issuer_name)
    temporary = directory / f".{issuer_name}.crl.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(der)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(temporary, target)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def _remove_stale(directory: Path, issuer_name: str) -> None:
    """Remove what a publisher killed while writing left behind: temporary files of processes
    that no longer run (never another live process's, which it is about to rename)."""
    for path in directory.glob(f".{issuer_name}.crl.*.tmp"):
        pid = path.name.removeprefix(f".{issuer_name}.crl.").removesuffix(".tmp")
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                path.unlink()
        except PermissionError:
            pass  # a live process of another user
