"""Publication: DIR/NAME.crl replaced atomically, so readers see the old CRL or the new one."""

from __future__ import annotations

import os
from pathlib import Path


def publish(directory: Path, issuer_name: str, der: bytes) -> Path:
    """Write, fsync, rename over the old file, fsync the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{issuer_name}.crl"
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
