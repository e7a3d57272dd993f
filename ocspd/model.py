"""Value types shared by the responder, the revocation manager and crlgen."""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass

from ocspd.errors import InvalidInput

# pkio177 / RFC 5280 4.1.2.2: serial numbers are positive and at most 20 octets.
MAX_SERIAL_OCTETS = 20


# Issuer names appear in commands, metrics and CRL file names (/crl/NAME.crl), so they are
# kept to characters that need no quoting anywhere. sql/0001 enforces the same pattern.
ISSUER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_issuer_name(name: str) -> str:
    if not ISSUER_NAME.match(name):
        raise InvalidInput(
            f"issuer name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


class CertStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    HOLD = "hold"


class Reason(enum.IntEnum):
    """RFC 5280 5.3.1 CRLReason codes (7 is unused)."""

    unspecified = 0
    keyCompromise = 1
    cACompromise = 2
    affiliationChanged = 3
    superseded = 4
    cessationOfOperation = 5
    certificateHold = 6
    removeFromCRL = 8
    privilegeWithdrawn = 9
    aACompromise = 10

    @classmethod
    def parse(cls, text: str) -> Reason:
        """Accept the RFC 5280 name in any case (openssl writes CACompromise) or the number."""
        key = text.strip().lower()
        for reason in cls:
            if reason.name.lower() == key or str(reason.value) == key:
                return reason
        names = ", ".join(r.name for r in REVOCATION_REASONS)
        raise InvalidInput(f"unknown revocation reason {text!r}; use one of: {names}")


# The reasons an operator may give to `ocspd revoke`. certificateHold has its own command and
# removeFromCRL only exists in delta CRLs.
REVOCATION_REASONS = tuple(
    r for r in Reason if r not in (Reason.certificateHold, Reason.removeFromCRL)
)


def serial_to_bytes(serial: int) -> bytes:
    """Big-endian magnitude, the form the database stores (never a 64-bit integer: pkio177)."""
    if serial < 0:
        raise InvalidInput(f"serial number {serial} is negative")
    raw = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    if len(raw) > MAX_SERIAL_OCTETS:
        raise InvalidInput(
            f"serial number has {len(raw)} octets; at most {MAX_SERIAL_OCTETS} are allowed (pkio177)"
        )
    return raw


def serial_from_bytes(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def parse_serial_hex(text: str) -> int:
    """Parse a serial as operators write it: hex, optionally 0x-prefixed or colon-separated."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if not cleaned or any(c not in "0123456789abcdef" for c in cleaned):
        raise InvalidInput(f"serial {text!r} is not a hexadecimal number")
    serial = int(cleaned, 16)
    serial_to_bytes(serial)  # validates the length
    return serial


def format_serial(serial: int) -> str:
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


@dataclass(frozen=True)
class CertRecord:
    """One certificate's status row as the status database holds it."""

    issuer: str
    serial: int
    status: CertStatus
    not_before: dt.datetime | None
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None
    reason: Reason | None = None
    invalidity_date: dt.datetime | None = None
