"""Encoding full X.509 v2 CRLs (RFC 5280 section 5) as DER, streamed into one buffer.

A CA may have a million revoked certificates in its CRL. cryptography's
CertificateRevocationListBuilder keeps one Python object per entry and cannot sign with a key
it does not hold (PKCS#11), so, like the OCSP responses in ocspd.protocol.response, the CRL is
assembled from DER pieces: every constant (issuer, extensions, reasonCode per reason, tag and
length octets) is encoded once, each revokedCertificates entry is appended to a bytearray as
it arrives from the database cursor, and only the TBSCertList is handed to the Signer.

Memory is the encoded size (about 40 to 55 bytes per entry) in the buffer, plus one copy each
for the TBSCertList and the signed CertificateList while they are made.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ocspd.model import MAX_SERIAL_OCTETS, Reason
from ocspd.protocol import der
from ocspd.signing.base import SignatureAlgorithm, Signer

# A CRL is a v2 CRL whenever it has extensions (5.1.2.1): Version v2 is INTEGER 1.
_VERSION_V2 = der.tlv(der.INTEGER, b"\x01")
_CRL_EXTENSIONS_TAG = der.context(0)  # crlExtensions [0] EXPLICIT Extensions

# Two decimal digits for 0..99: formatting a time by table lookup is several times faster than
# strftime, and it runs once or twice for each of a million entries.
_DIGITS = tuple(b"%02d" % i for i in range(100))


def _extension(oid: str, value: bytes, critical: bool = False) -> bytes:
    """Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }.

    DER omits critical when it is FALSE (the DEFAULT).
    """
    flag = der.tlv(der.BOOLEAN, b"\xff") if critical else b""
    return der.tlv(der.SEQUENCE, der.oid(oid) + flag + der.tlv(der.OCTET_STRING, value))


# reasonCode (5.3.1), one encoding per code. unspecified (0) is never written: "the reason code
# CRL entry extension SHOULD be absent instead of using the unspecified (0) reasonCode value".
# removeFromCRL (8) only exists in delta CRLs, and 7 is not a code; a full CRL refuses both.
_REASON_CODE_OID = "2.5.29.21"
_MAX_REASON = max(Reason)
_FULL_CRL_REASONS = {int(r) for r in Reason} - {Reason.unspecified, Reason.removeFromCRL}
_REASON_EXTENSIONS: tuple[bytes | None, ...] = tuple(
    _extension(_REASON_CODE_OID, der.tlv(der.ENUMERATED, bytes((code,))))
    if code in _FULL_CRL_REASONS
    else None
    for code in range(_MAX_REASON + 1)
)

# invalidityDate (5.3.2) is always a GeneralizedTime, and without fractions of a second it is
# always 15 octets long: "YYYYMMDDHHMMSSZ". Its extension is a constant prefix and those 15.
_INVALIDITY_DATE_PREFIX = _extension("2.5.29.24", der.tlv(der.GENERALIZED_TIME, b"0" * 15))[:-15]
_INVALIDITY_DATE_LENGTH = len(_INVALIDITY_DATE_PREFIX) + 15

# crlEntryExtensions (an untagged SEQUENCE OF Extension) for each combination: the reasonCode
# alone, or the reasonCode (or nothing) followed by the invalidityDate prefix. Every entry is
# short: its contents are at most 23 (serial) + 17 (time) + 40 (extensions) octets.
_REASON_ONLY: tuple[bytes | None, ...] = tuple(
    None if ext is None else der.tlv(der.SEQUENCE, ext) for ext in _REASON_EXTENSIONS
)
_WITH_INVALIDITY: tuple[bytes | None, ...] = tuple(
    None
    if ext is None and code != Reason.unspecified
    else (
        bytes((der.SEQUENCE, len(ext or b"") + _INVALIDITY_DATE_LENGTH))
        + (ext or b"")
        + _INVALIDITY_DATE_PREFIX
    )
    for code, ext in enumerate(_REASON_EXTENSIONS)
)
# A SEQUENCE header for each short length: entries are always shorter than 128 octets.
_SHORT_SEQUENCE = tuple(bytes((der.SEQUENCE, n)) for n in range(128))

# The INTEGER header for a serial of n magnitude octets, indexed [n][first octet]: a 0x00 sign
# octet is added when the high bit is set (the serial is positive). None marks a leading zero
# (not minimal, or a zero serial, which RFC 5280 4.1.2.2 does not allow).
_SERIAL_HEADERS: tuple[tuple[bytes | None, ...], ...] = tuple(
    tuple(
        None
        if first == 0 or n == 0
        else bytes((der.INTEGER, n + 1, 0))
        if first & 0x80
        else bytes((der.INTEGER, n))
        for first in range(256)
    )
    for n in range(MAX_SERIAL_OCTETS + 1)
)

# cRLNumber (5.2.3): "CRL issuers MUST NOT use CRLNumber values longer than 20 octets".
MAX_CRL_NUMBER = (1 << (8 * 20 - 1)) - 1


def _utc(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is dt.UTC:
        return when
    if when.utcoffset() is None:
        raise ValueError(f"CRL times must be timezone-aware, got {when.isoformat()}")
    return when.astimezone(dt.UTC)


def encode_time(when: dt.datetime) -> bytes:
    """Time (5.1.2.4): UTCTime for 1950 through 2049, GeneralizedTime otherwise; whole seconds
    (any fraction is dropped), in UTC with Z."""
    t = _utc(when)
    d = _DIGITS
    year = t.year
    if 1950 <= year < 2050:
        return b"\x17\x0d%s%s%s%s%s%sZ" % (
            d[year % 100], d[t.month], d[t.day], d[t.hour], d[t.minute], d[t.second]
        )  # fmt: skip
    return b"\x18\x0f%s%s%s%s%s%s%sZ" % (
        d[year // 100], d[year % 100], d[t.month], d[t.day], d[t.hour], d[t.minute], d[t.second]
    )  # fmt: skip


def _key_identifier(ca_cert: x509.Certificate) -> bytes:
    """The CA's subjectKeyIdentifier, or else method (1) of RFC 5280 4.2.1.2: the SHA-1 of the
    subjectPublicKey bits, which is what AuthorityKeyIdentifier must repeat (4.2.1.1)."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(ca_cert.public_key()).digest
    return ski.value.key_identifier


def certificate_subject_der(cert: x509.Certificate) -> bytes:
    """The subject Name exactly as encoded in the certificate (not re-encoded), which is what
    relying parties compare a CRL's issuer with."""
    encoded = cert.public_bytes(serialization.Encoding.DER)  # the certificate as it was read
    outer = der.read_element(encoded, 0, len(encoded))
    tbs = der.read_element(encoded, outer.body, outer.end)
    fields = der.iter_elements(encoded, tbs.body, tbs.end)
    first = next(fields)
    # TBSCertificate: version [0] (present for v3), serialNumber, signature, issuer, validity,
    # subject. Without the version, `first` was the serial number.
    for _ in range(4 if first.tag == der.context(0) else 3):
        next(fields)
    subject = next(fields)
    if subject.tag != der.SEQUENCE:
        raise ValueError("certificate subject is not a SEQUENCE")
    return encoded[subject.start : subject.end]


class CrlEncoder:
    """Accumulates revokedCertificates entries for one issuer, then encodes the TBSCertList.

    Feed it rows in batches with `add` (straight from a database cursor); nothing per entry is
    kept but its DER. `tbs` may be called more than once (it does not consume the entries).
    """

    def __init__(self, ca_cert: x509.Certificate, algorithm: SignatureAlgorithm) -> None:
        self._algorithm = algorithm
        self._algorithm_identifier = algorithm.identifier().dump()
        self._issuer = certificate_subject_der(ca_cert)
        # AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING }
        key_id = _key_identifier(ca_cert)
        self._authority_key_identifier = _extension(
            "2.5.29.35",
            der.tlv(der.SEQUENCE, der.tlv(der.context(0, constructed=False), key_id)),
        )
        self._entries = bytearray()
        self._count = 0

    @property
    def algorithm(self) -> SignatureAlgorithm:
        return self._algorithm

    @property
    def count(self) -> int:
        return self._count

    @property
    def encoded_size(self) -> int:
        """Octets of revokedCertificates entries so far."""
        return len(self._entries)

    def add(
        self, rows: Iterable[tuple[bytes, dt.datetime, int | None, dt.datetime | None]]
    ) -> None:
        """Append one revokedCertificates entry per row:
        (serial magnitude, big-endian, 1 to 20 octets without leading zeros; revocation date;
        reason code or None; invalidity date or None). Times must be timezone-aware.

        A row that cannot be encoded raises ValueError; the rows before it stay added.
        """
        entries = self._entries
        count = self._count
        serial_headers = _SERIAL_HEADERS
        reason_only = _REASON_ONLY
        with_invalidity = _WITH_INVALIDITY
        short_sequence = _SHORT_SEQUENCE
        d = _DIGITS
        utc = dt.UTC
        try:
            for serial, revoked, reason, invalidity in rows:
                # serialNumber
                try:
                    header = serial_headers[len(serial)][serial[0]]
                except IndexError:
                    header = None
                if header is None:
                    raise ValueError(_bad_serial(serial))
                # revocationDate: the encode_time logic inlined, this loop is the hot path.
                t = revoked if revoked.tzinfo is utc else _utc(revoked)
                year = t.year
                if 1950 <= year < 2050:
                    time = b"\x17\x0d%s%s%s%s%s%sZ" % (
                        d[year % 100], d[t.month], d[t.day], d[t.hour], d[t.minute], d[t.second]
                    )  # fmt: skip
                else:
                    time = encode_time(t)
                # crlEntryExtensions, omitted when empty.
                if reason is not None and not 0 <= reason <= _MAX_REASON:
                    raise ValueError(_bad_reason(serial, reason))
                if invalidity is None:
                    if reason:
                        extensions = reason_only[reason]
                        if extensions is None:
                            raise ValueError(_bad_reason(serial, reason))
                    else:  # None or unspecified (0)
                        extensions = b""
                else:
                    prefix = with_invalidity[reason or 0]
                    if prefix is None:
                        raise ValueError(_bad_reason(serial, reason))
                    g = invalidity if invalidity.tzinfo is utc else _utc(invalidity)
                    extensions = prefix + b"%04d%s%s%s%s%sZ" % (
                        g.year, d[g.month], d[g.day], d[g.hour], d[g.minute], d[g.second]
                    )  # fmt: skip
                entries += short_sequence[len(header) + len(serial) + len(time) + len(extensions)]
                entries += header
                entries += serial
                entries += time
                entries += extensions
                count += 1
        finally:
            self._count = count

    def tbs(self, number: int, this_update: dt.datetime, next_update: dt.datetime) -> bytes:
        """The DER TBSCertList: the bytes to sign (5.1.2)."""
        if not 0 <= number <= MAX_CRL_NUMBER:
            raise ValueError(f"CRL number {number} is outside 0..2^159-1 (20 octets, RFC 5280)")
        if not _utc(this_update) < _utc(next_update):
            raise ValueError("nextUpdate must be after thisUpdate")
        extensions = der.tlv(
            _CRL_EXTENSIONS_TAG,
            der.tlv(
                der.SEQUENCE,
                self._authority_key_identifier + _extension("2.5.29.20", der.integer(number)),
            ),
        )
        head = (
            _VERSION_V2
            + self._algorithm_identifier
            + self._issuer
            + encode_time(this_update)
            + encode_time(next_update)
        )
        # revokedCertificates is absent, not an empty SEQUENCE, when nothing is revoked (5.1.2.6).
        if self._count:
            revoked_header = bytes((der.SEQUENCE,)) + der.length_prefix(len(self._entries))
        else:
            revoked_header = b""
        length = len(head) + len(revoked_header) + len(self._entries) + len(extensions)
        return b"".join(
            (
                bytes((der.SEQUENCE,)),
                der.length_prefix(length),
                head,
                revoked_header,
                self._entries,
                extensions,
            )
        )


def _bad_serial(serial: bytes) -> str:
    if not serial:
        return "empty serial number"
    if len(serial) > MAX_SERIAL_OCTETS:
        return f"serial {serial.hex()} has {len(serial)} octets; at most {MAX_SERIAL_OCTETS}"
    return f"serial {serial.hex()} is zero or has a leading zero octet"


def _bad_reason(serial: bytes, reason: object) -> str:
    return (
        f"serial {serial.hex()}: reason code {reason!r} cannot appear in a full CRL "
        "(RFC 5280 5.3.1: 0-6, 9, 10)"
    )


async def sign_crl(tbs: bytes, algorithm: SignatureAlgorithm, signer: Signer) -> bytes:
    """CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }.

    `algorithm` is the one the TBSCertList names (CrlEncoder's); the signer must use it too.
    """
    if signer.algorithm.name != algorithm.name:
        raise ValueError(
            f"{signer.description} signs with {signer.algorithm.name}, "
            f"but the CRL names {algorithm.name}"
        )
    signature = await signer.sign(tbs)
    tail = algorithm.identifier().dump() + der.tlv(der.BIT_STRING, b"\x00" + signature)
    return b"".join((bytes((der.SEQUENCE,)), der.length_prefix(len(tbs) + len(tail)), tbs, tail))
