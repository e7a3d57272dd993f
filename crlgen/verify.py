"""The checks a freshly signed CRL passes before it is archived and published.

Modelled on Boulder's crl-storer: parse the DER with an independent implementation
(cryptography, not our encoder), check the signature with the CA's key, the scope (issuer),
that the number moves forward, and the validity window.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from crlgen.build import certificate_subject_der
from ocspd.errors import OcspdError
from ocspd.protocol import der as derlib
from ocspd.protocol.errors import MalformedRequest

# pkio65: nextUpdate at most 10 days after thisUpdate.
MAX_LIFETIME = dt.timedelta(days=10)
# How far ahead of our clock thisUpdate may be (clock skew between signer and verifier).
CLOCK_SKEW = dt.timedelta(minutes=1)


class CrlRejected(OcspdError):
    """A signed CRL failed verification; it must not be published. One line, names the check."""


@dataclass(frozen=True)
class CrlInfo:
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    entries: int
    sha256: bytes
    issuer_der: bytes  # the issuer Name exactly as encoded in the CRL


def _load(der: bytes) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(der)
    except ValueError as e:
        raise ValueError(f"not a DER CRL: {e}") from e


def _issuer_der(crl: x509.CertificateRevocationList) -> bytes:
    """The issuer Name from the TBSCertList as it is encoded (version?, signature, issuer)."""
    tbs = crl.tbs_certlist_bytes
    try:
        top = derlib.read_element(tbs, 0, len(tbs))
        fields = derlib.iter_elements(tbs, top.body, top.end)
        first = next(fields)
        if first.tag == derlib.INTEGER:  # version, present in v2 CRLs
            next(fields)
        issuer = next(fields)
    except (MalformedRequest, StopIteration) as e:
        raise ValueError("CRL TBSCertList has no issuer") from e
    return tbs[issuer.start : issuer.end]


def _info(crl: x509.CertificateRevocationList, der: bytes) -> CrlInfo:
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        raise ValueError("CRL has no cRLNumber extension") from None
    next_update = crl.next_update_utc
    if next_update is None:
        raise ValueError("CRL has no nextUpdate")
    return CrlInfo(
        number=number,
        this_update=crl.last_update_utc,
        next_update=next_update,
        entries=len(crl),
        sha256=hashlib.sha256(der).digest(),
        issuer_der=_issuer_der(crl),
    )


def crl_info(der: bytes) -> CrlInfo:
    """What `crlgen show` prints about a CRL; no checks beyond parsing. ValueError on junk."""
    crl = _load(der)
    return _info(crl, der)


def verify_crl(
    der: bytes,
    ca_cert: x509.Certificate,
    previous_number: int | None,
    max_lifetime: dt.timedelta = MAX_LIFETIME,
    *,
    now: dt.datetime | None = None,
) -> CrlInfo:
    """Check a signed CRL of `ca_cert` before it is published; CrlRejected names the failure.

    `previous_number` is the number of the last CRL published for this CA (None for the
    first); the new one must be strictly greater (RFC 5280 5.2.3: monotonically increasing).
    """
    try:
        crl = _load(der)
        info = _info(crl, der)
    except ValueError as e:
        raise CrlRejected(f"CRL rejected: {e}") from e
    subject = certificate_subject_der(ca_cert)
    if info.issuer_der != subject:
        raise CrlRejected(
            f"CRL rejected: issuer {crl.issuer.rfc4514_string()!r} is not the CA subject "
            f"{ca_cert.subject.rfc4514_string()!r}"
        )
    public_key = ca_cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CrlRejected(f"CRL rejected: cannot verify with a {type(public_key).__name__}")
    try:
        valid = crl.is_signature_valid(public_key)
    except (TypeError, ValueError):  # e.g. an ECDSA signature checked against an RSA key
        valid = False
    if not valid:
        raise CrlRejected(
            f"CRL rejected: signature does not verify with the key of CA "
            f"{ca_cert.subject.rfc4514_string()!r}"
        )
    if previous_number is not None and info.number <= previous_number:
        raise CrlRejected(
            f"CRL rejected: number {info.number} is not greater than the previous "
            f"CRL's {previous_number}"
        )
    lifetime = info.next_update - info.this_update
    if lifetime <= dt.timedelta(0):
        raise CrlRejected(
            f"CRL rejected: nextUpdate {info.next_update:%Y-%m-%dT%H:%M:%SZ} is not after "
            f"thisUpdate {info.this_update:%Y-%m-%dT%H:%M:%SZ}"
        )
    if lifetime > max_lifetime:
        raise CrlRejected(
            f"CRL rejected: nextUpdate - thisUpdate is {lifetime}, more than the maximum "
            f"{max_lifetime}"
        )
    now = now or dt.datetime.now(dt.UTC)
    if info.this_update > now + CLOCK_SKEW:
        raise CrlRejected(
            f"CRL rejected: thisUpdate {info.this_update:%Y-%m-%dT%H:%M:%SZ} is in the future "
            f"(now {now:%Y-%m-%dT%H:%M:%SZ})"
        )
    return info
