"""Reading what operators hand us: certificate files (PEM, DER, bundles) and openssl indexes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ocspd.errors import InvalidInput
from ocspd.model import CertStatus, Reason, parse_serial_hex


def read_certificates(path: Path) -> list[x509.Certificate]:
    """All certificates in a PEM file or bundle, or the one in a DER file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidInput(f"{path}: {e.strerror}") from e
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise InvalidInput(f"{path}: not a PEM or DER X.509 certificate ({e})") from e
    return certs


def read_one_certificate(path: Path, what: str) -> x509.Certificate:
    certs = read_certificates(path)
    if len(certs) != 1:
        raise InvalidInput(
            f"{path}: the {what} file must hold exactly one certificate, found {len(certs)}"
        )
    return certs[0]


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True if `ca_cert`'s name and key issued `cert` (name match and a verifying signature)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class IndexEntry:
    """One line of an `openssl ca` index.txt (database) file."""

    line: int
    serial: int
    not_after: dt.datetime
    status: CertStatus
    revoked_at: dt.datetime | None
    reason: Reason | None
    invalidity_date: dt.datetime | None


def _openssl_time(text: str, where: str) -> dt.datetime:
    # openssl writes UTCTime (YYMMDDHHMMSSZ) or, past 2049, GeneralizedTime (YYYYMMDDHHMMSSZ).
    for fmt in ("%y%m%d%H%M%SZ", "%Y%m%d%H%M%SZ"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    raise InvalidInput(f"{where}: bad time {text!r}")


_OPENSSL_REASON_ALIASES = {
    "keyTime": "keyCompromise",
    "CAkeyTime": "cACompromise",
    "holdInstruction": "certificateHold",
}


def parse_openssl_index(path: Path) -> Iterator[IndexEntry]:
    """Yield the entries of index.txt: status, expiry, revocation[,reason[,time]], serial, file, DN."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InvalidInput(f"{path}: {e.strerror}") from e
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        fields = line.split("\t")
        if len(fields) < 4 or fields[0] not in ("V", "R", "E"):
            raise InvalidInput(
                f"{where}: not an openssl index line (expected V/R/E and tab-separated fields)"
            )
        flag, expiry, revocation, serial_text = fields[:4]
        not_after = _openssl_time(expiry, where)
        serial = parse_serial_hex(serial_text)
        status, revoked_at, reason, invalidity = CertStatus.GOOD, None, None, None
        if flag == "R":
            parts = revocation.split(",")
            revoked_at = _openssl_time(parts[0], where)
            name = parts[1] if len(parts) > 1 and parts[1] else "unspecified"
            # `openssl ca` writes its own names where the reason carries an extra field:
            # keyTime / CAkeyTime (with -crl_compromise) and holdInstruction (with -crl_hold).
            name = _OPENSSL_REASON_ALIASES.get(name, name)
            reason = Reason.parse(name)
            if reason is Reason.removeFromCRL:
                raise InvalidInput(f"{where}: removeFromCRL is not a revocation reason")
            if reason is Reason.certificateHold:
                status = CertStatus.HOLD  # parts[2] is the hold instruction, not kept
            else:
                status = CertStatus.REVOKED
                if reason in (Reason.keyCompromise, Reason.cACompromise) and len(parts) > 2:
                    invalidity = _openssl_time(parts[2], where)  # the compromise time
        yield IndexEntry(number, serial, not_after, status, revoked_at, reason, invalidity)
