"""The checks a freshly signed CRL passes before it is archived and published.

Modelled on Boulder's crl-storer: parse the DER with an independent implementation
(cryptography, not our encoder), check the signature with the CA's key, the scope (issuer),
that the number moves forward, and the validity window.

The signature is checked over the TBSCertList bytes exactly as they are in the CRL, found by
walking the outer DER; cryptography's is_signature_valid and tbs_certlist_bytes re-encode the
whole list first, which for a million entries costs seconds and another copy of the CRL.
cryptography's strict DER parser has read the same bytes, so nothing non-canonical gets past.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

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


@dataclass(frozen=True)
class _Parsed:
    crl: x509.CertificateRevocationList
    tbs: memoryview  # the signed bytes, as they are in the CRL
    inner_algorithm: bytes  # TBSCertList.signature
    outer_algorithm: bytes  # CertificateList.signatureAlgorithm
    info: CrlInfo


def _parse(der: bytes) -> _Parsed:
    """Parse with cryptography, then locate the raw pieces; ValueError on anything amiss."""
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as e:
        raise ValueError(f"not a DER CRL: {e}") from e
    try:
        outer = derlib.read_element(der, 0, len(der))
        tbs = derlib.read_element(der, outer.body, outer.end)
        outer_algorithm = derlib.read_element(der, tbs.end, outer.end)
        # TBSCertList: version (an INTEGER, present in v2), signature, issuer, ...
        field = derlib.read_element(der, tbs.body, tbs.end)
        if field.tag == derlib.INTEGER:
            field = derlib.read_element(der, field.end, tbs.end)
        issuer = derlib.read_element(der, field.end, tbs.end)
    except MalformedRequest as e:  # cryptography accepted it, so this should not happen
        raise ValueError(f"not a DER CRL: {e}") from e
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        raise ValueError("CRL has no cRLNumber extension") from None
    next_update = crl.next_update_utc
    if next_update is None:
        raise ValueError("CRL has no nextUpdate")
    info = CrlInfo(
        number=number,
        this_update=crl.last_update_utc,
        next_update=next_update,
        entries=len(crl),
        sha256=hashlib.sha256(der).digest(),
        issuer_der=der[issuer.start : issuer.end],
    )
    return _Parsed(
        crl=crl,
        tbs=memoryview(der)[tbs.start : tbs.end],
        inner_algorithm=der[field.start : field.end],
        outer_algorithm=der[outer_algorithm.start : outer_algorithm.end],
        info=info,
    )


def crl_info(der: bytes) -> CrlInfo:
    """What `crlgen show` prints about a CRL; no checks beyond parsing. ValueError on junk."""
    return _parse(der).info


def _signature_valid(parsed: _Parsed, ca_cert: x509.Certificate) -> bool:
    """What cryptography's is_signature_valid checks (both AlgorithmIdentifiers equal, the
    signature over the TBSCertList), without re-encoding the TBSCertList."""
    if parsed.inner_algorithm != parsed.outer_algorithm:
        return False  # cryptography refuses to load such a CRL already; kept as a guard
    crl = parsed.crl
    key = ca_cert.public_key()
    try:
        params = crl.signature_algorithm_parameters
        hash_algorithm = crl.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey) and isinstance(params, padding.PKCS1v15 | padding.PSS):
            if hash_algorithm is None:
                return False
            # The stubs say bytes; any buffer works, and a memoryview saves a copy.
            key.verify(crl.signature, cast(bytes, parsed.tbs), params, hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            key.verify(crl.signature, parsed.tbs, params)
        else:  # another key type, or the signature is for another kind of key
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _time(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


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
        parsed = _parse(der)
    except ValueError as e:
        raise CrlRejected(f"CRL rejected: {e}") from e
    info = parsed.info
    ca_name = ca_cert.subject.rfc4514_string()
    if info.issuer_der != certificate_subject_der(ca_cert):
        raise CrlRejected(
            f"CRL rejected: issuer {parsed.crl.issuer.rfc4514_string()!r} is not the CA "
            f"subject {ca_name!r}"
        )
    if not _signature_valid(parsed, ca_cert):
        raise CrlRejected(f"CRL rejected: signature does not verify with the key of CA {ca_name!r}")
    if previous_number is not None and info.number <= previous_number:
        raise CrlRejected(
            f"CRL rejected: number {info.number} is not greater than the previous "
            f"CRL's {previous_number}"
        )
    lifetime = info.next_update - info.this_update
    if lifetime <= dt.timedelta(0):
        raise CrlRejected(
            f"CRL rejected: nextUpdate {_time(info.next_update)} is not after "
            f"thisUpdate {_time(info.this_update)}"
        )
    if lifetime > max_lifetime:
        raise CrlRejected(
            f"CRL rejected: nextUpdate - thisUpdate is {lifetime}, more than the maximum "
            f"{max_lifetime}"
        )
    now = now or dt.datetime.now(dt.UTC)
    if info.this_update > now + CLOCK_SKEW:
        raise CrlRejected(
            f"CRL rejected: thisUpdate {_time(info.this_update)} is in the future "
            f"(now {_time(now)})"
        )
    return info
