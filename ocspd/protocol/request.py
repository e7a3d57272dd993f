"""Reading OCSP requests (RFC 6960 4.1) from POST bodies and GET paths (appendix A.1)."""

from __future__ import annotations

import base64
import enum
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from cryptography import x509

from ocspd.model import MAX_SERIAL_OCTETS
from ocspd.protocol import der
from ocspd.protocol.der import (
    SEQUENCE,
    Element,
    children,
    context,
    expect,
    iter_elements,
    read_element,
)
from ocspd.protocol.errors import MalformedRequest, UnsupportedHashAlgorithm
from ocspd.store.issuers import subject_public_key_bits

__all__ = [
    "DEFAULT_MAX_CERT_IDS",
    "MAX_NONCE_OCTETS",
    "CertId",
    "HashAlgorithm",
    "MalformedRequest",
    "OcspRequest",
    "RequestParser",
    "UnsupportedHashAlgorithm",
    "decode_get_path",
    "parse_request",
]

# Clients ask about one certificate (RFC 5019 2.1.1 allows only one); a few batch. The cap
# bounds the work a single request can cause.
DEFAULT_MAX_CERT_IDS = 16

# RFC 8954 2.1: accept 1..32 octets, and reject 0 or more than 128 with malformedRequest.
MAX_NONCE_OCTETS = 128

_NONCE_OID = bytes.fromhex("2b0601050507300102")  # id-pkix-ocsp-nonce, RFC 6960 4.4.1
_NULL = b"\x05\x00"


class HashAlgorithm(enum.Enum):
    """The CertID hash algorithms we compute (values are asn1crypto's names)."""

    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    def digest(self, data: bytes) -> bytes:
        digest: bytes = _HASHLIB[self](data).digest()
        return digest

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZES[self]

    @property
    def oid(self) -> bytes:
        """The contents of the algorithm's OBJECT IDENTIFIER."""
        return _OIDS[self]


_HASHLIB: dict[HashAlgorithm, Callable[..., Any]] = {
    HashAlgorithm.SHA1: hashlib.sha1,
    HashAlgorithm.SHA256: hashlib.sha256,
    HashAlgorithm.SHA384: hashlib.sha384,
    HashAlgorithm.SHA512: hashlib.sha512,
}
_OIDS: dict[HashAlgorithm, bytes] = {
    HashAlgorithm.SHA1: bytes.fromhex("2b0e03021a"),
    HashAlgorithm.SHA256: bytes.fromhex("608648016503040201"),
    HashAlgorithm.SHA384: bytes.fromhex("608648016503040202"),
    HashAlgorithm.SHA512: bytes.fromhex("608648016503040203"),
}
_BY_OID = {value: algorithm for algorithm, value in _OIDS.items()}
_DIGEST_SIZES: dict[HashAlgorithm, int] = {
    algorithm: _HASHLIB[algorithm]().digest_size for algorithm in HashAlgorithm
}


@dataclass(frozen=True)
class CertId:
    """A CertID (RFC 6960 4.1.1) with the exact DER it arrived in.

    The response repeats `der` byte for byte (RS1.4), and equality and hashing use it alone so
    a CertId is a cache key. The other fields are decoded from it.
    """

    hash_algorithm: HashAlgorithm = field(compare=False)
    issuer_name_hash: bytes = field(compare=False)
    issuer_key_hash: bytes = field(compare=False)
    serial: int = field(compare=False)
    der: bytes

    @classmethod
    def build(
        cls,
        hash_algorithm: HashAlgorithm,
        issuer_name_hash: bytes,
        issuer_key_hash: bytes,
        serial: int,
    ) -> CertId:
        """Encode a CertID as openssl and cryptography do (NULL hash parameters), e.g. for
        responses produced without a request."""
        algorithm = der.tlv(der.SEQUENCE, der.tlv(der.OID, hash_algorithm.oid) + _NULL)
        encoded = der.tlv(
            der.SEQUENCE,
            algorithm
            + der.tlv(der.OCTET_STRING, issuer_name_hash)
            + der.tlv(der.OCTET_STRING, issuer_key_hash)
            + der.integer(serial),
        )
        return cls(hash_algorithm, issuer_name_hash, issuer_key_hash, serial, encoded)

    @classmethod
    def of(
        cls,
        issuer: x509.Certificate,
        serial: int,
        hash_algorithm: HashAlgorithm = HashAlgorithm.SHA1,
    ) -> CertId:
        """The CertID a client would send for `serial` issued by `issuer`."""
        return cls.build(
            hash_algorithm,
            hash_algorithm.digest(issuer.subject.public_bytes()),
            hash_algorithm.digest(subject_public_key_bits(issuer)),
            serial,
        )


@dataclass(frozen=True)
class OcspRequest:
    cert_ids: tuple[CertId, ...]
    # The nonce extension's extnValue contents, echoed unchanged (RFC 6960 4.4.1).
    nonce: bytes | None
    der: bytes


def parse_request(der: bytes, max_cert_ids: int = DEFAULT_MAX_CERT_IDS) -> OcspRequest:
    """Parse an OCSPRequest; raises MalformedRequest (or UnsupportedHashAlgorithm) and nothing
    else, whatever the input."""
    data = der  # (the parameter shadows the der module here)
    top = expect(read_element(data, 0, len(data)), SEQUENCE, "OCSPRequest")
    if top.end != len(data):
        raise MalformedRequest("trailing data after the OCSPRequest")
    parts = children(data, top)
    # optionalSignature [0]: we require no signature (RFC 6960 4.1.2), so it is skipped unread.
    if not 1 <= len(parts) <= 2 or (len(parts) == 2 and parts[1].tag != context(0)):
        raise MalformedRequest("OCSPRequest must hold a TBSRequest and an optional signature")
    tbs = children(data, expect(parts[0], SEQUENCE, "TBSRequest"))

    index = 0
    if index < len(tbs) and tbs[index].tag == context(0):
        _check_version(data, tbs[index])
        index += 1
    if index < len(tbs) and tbs[index].tag == context(1):
        index += 1  # requestorName: only meaningful with a signature, which we ignore
    if index == len(tbs):
        raise MalformedRequest("TBSRequest has no requestList")
    request_list = expect(tbs[index], SEQUENCE, "requestList")
    index += 1
    nonce = None
    if index < len(tbs) and tbs[index].tag == context(2):
        nonce = _request_extensions(data, tbs[index])
        index += 1
    if index != len(tbs):
        raise MalformedRequest("unexpected field in TBSRequest")

    cert_ids: list[CertId] = []
    for request in iter_elements(data, request_list.body, request_list.end):
        if len(cert_ids) == max_cert_ids:
            raise MalformedRequest(f"more than {max_cert_ids} CertIDs in one request")
        cert_ids.append(_request(data, request))
    if not cert_ids:
        raise MalformedRequest("requestList is empty")
    return OcspRequest(tuple(cert_ids), nonce, data)


class RequestParser:
    """parse_request, remembering the shapes of nonce requests.

    Clients that send a nonce send the same bytes each time but for the nonce, and most put
    the nonce extension last, so the request ends with the nonce octets. Every byte before
    them (lengths included) then determines the parse: another request with those same bytes
    and a nonce of the same length at the end parses to the same CertIDs, whatever the nonce
    octets are. Such a request is answered from the remembered parse without reading its DER
    again; anything else is parsed in full (and its shape remembered when it qualifies).
    """

    # Distinct nonce lengths looked up per request: clients use one or two (16, 32 octets).
    MAX_LENGTHS = 4

    def __init__(self, max_shapes: int = 10_000, max_cert_ids: int = DEFAULT_MAX_CERT_IDS):
        self._max_shapes = max_shapes
        self._max_cert_ids = max_cert_ids
        # nonce payload length -> (request bytes before the payload -> (CertIDs, len(nonce)))
        self._shapes: dict[int, OrderedDict[bytes, tuple[tuple[CertId, ...], int]]] = {}

    def parse(self, data: bytes) -> OcspRequest:
        for length, shapes in self._shapes.items():
            shape = shapes.get(data[:-length])
            if shape is not None and len(data) > length:
                cert_ids, nonce_length = shape
                return OcspRequest(cert_ids, data[-nonce_length:], data)
        request = parse_request(data, self._max_cert_ids)
        if request.nonce is not None and self._max_shapes > 0 and data.endswith(request.nonce):
            self._remember(request)
        return request

    def _remember(self, request: OcspRequest) -> None:
        assert request.nonce is not None
        # The varying part: the nonce inside its OCTET STRING. A bare nonce (extnValue
        # contents without the OCTET STRING) is not remembered: whether it is valid depends on
        # its octets (`04 00` reads as an empty OCTET STRING, which RFC 8954 refuses).
        payload = 0
        if request.nonce[:1] == b"\x04":
            try:
                inner = read_element(request.nonce, 0, len(request.nonce))
            except MalformedRequest:
                pass
            else:
                if inner.end == len(request.nonce):
                    payload = inner.end - inner.body
        if payload < 1:
            return
        shapes = self._shapes.get(payload)
        if shapes is None:
            if len(self._shapes) >= self.MAX_LENGTHS:
                return
            shapes = self._shapes[payload] = OrderedDict()
        shapes[request.der[:-payload]] = (request.cert_ids, len(request.nonce))
        if len(shapes) > self._max_shapes:
            shapes.popitem(last=False)


def _only_child(data: bytes, parent: Element, tag: int, what: str) -> Element:
    items = children(data, parent)
    if len(items) != 1:
        raise MalformedRequest(f"{what}: expected exactly one element")
    return expect(items[0], tag, what)


def _check_version(data: bytes, wrapper: Element) -> None:
    # DER omits the DEFAULT v1 (X.690 11.5), but an explicit v1 is harmless; RFC 6960 defines no
    # other version.
    version = _only_child(data, wrapper, der.INTEGER, "version")
    if data[version.body : version.end] != b"\x00":
        raise MalformedRequest("unsupported OCSPRequest version")


def _request(data: bytes, request: Element) -> CertId:
    items = children(data, expect(request, der.SEQUENCE, "Request"))
    if not 1 <= len(items) <= 2:
        raise MalformedRequest("Request must hold a CertID and optional extensions")
    if len(items) == 2:
        extensions = _extensions(data, expect(items[1], der.context(0), "singleRequestExtensions"))
        # None is understood (the service locator is for proxies, 4.4.6): refuse critical ones.
        for oid, (critical, _) in extensions.items():
            if critical:
                raise MalformedRequest(f"unsupported critical request extension {der.dotted(oid)}")
    return _cert_id(data, expect(items[0], der.SEQUENCE, "CertID"))


def _cert_id(data: bytes, element: Element) -> CertId:
    items = children(data, element)
    if len(items) != 4:
        raise MalformedRequest("CertID must have four fields")
    algorithm_id, name_hash, key_hash, serial = items

    algorithm_items = children(data, expect(algorithm_id, der.SEQUENCE, "hashAlgorithm"))
    if not algorithm_items:
        raise MalformedRequest("hashAlgorithm is empty")
    oid = data[expect(algorithm_items[0], der.OID, "hashAlgorithm").body : algorithm_items[0].end]
    # RFC 5754 2: hash parameters are absent or NULL.
    if len(algorithm_items) > 2 or (
        len(algorithm_items) == 2
        and data[algorithm_items[1].start : algorithm_items[1].end] != _NULL
    ):
        raise MalformedRequest("hashAlgorithm parameters must be absent or NULL")
    algorithm = _BY_OID.get(oid)
    if algorithm is None:
        raise UnsupportedHashAlgorithm(f"unsupported CertID hash algorithm {der.dotted(oid)}")

    size = algorithm.digest_size
    name_digest = data[expect(name_hash, der.OCTET_STRING, "issuerNameHash").body : name_hash.end]
    key_digest = data[expect(key_hash, der.OCTET_STRING, "issuerKeyHash").body : key_hash.end]
    if len(name_digest) != size or len(key_digest) != size:
        raise MalformedRequest(f"CertID hashes are not {algorithm.value} digests")

    return CertId(
        algorithm, name_digest, key_digest, _serial(data, serial), data[element.start : element.end]
    )


def _serial(data: bytes, element: Element) -> int:
    contents = data[expect(element, der.INTEGER, "serialNumber").body : element.end]
    if not contents:
        raise MalformedRequest("empty serialNumber")
    # X.690 8.3.2: the first nine bits are never all zero or all one; the CertID is echoed, so
    # it must be DER.
    if len(contents) > 1 and (
        (contents[0] == 0x00 and contents[1] < 0x80)
        or (contents[0] == 0xFF and contents[1] >= 0x80)
    ):
        raise MalformedRequest("serialNumber is not minimally encoded")
    if contents[0] & 0x80:
        raise MalformedRequest("serialNumber is negative")
    serial = int.from_bytes(contents, "big")
    # RFC 5280 4.1.2.2: at most 20 octets (21 in DER with the sign octet).
    if serial.bit_length() > 8 * MAX_SERIAL_OCTETS:
        raise MalformedRequest(f"serialNumber is longer than {MAX_SERIAL_OCTETS} octets")
    return serial


def _extensions(data: bytes, wrapper: Element) -> dict[bytes, tuple[bool, Element]]:
    """Extensions by OID contents: (critical, extnValue). Duplicates are refused, as RFC 5280
    4.2 requires for certificates."""
    result: dict[bytes, tuple[bool, Element]] = {}
    sequence = _only_child(data, wrapper, der.SEQUENCE, "Extensions")
    for extension in der.iter_elements(data, sequence.body, sequence.end):
        items = children(data, expect(extension, der.SEQUENCE, "Extension"))
        if len(items) not in (2, 3):
            raise MalformedRequest("Extension must have two or three fields")
        oid = data[expect(items[0], der.OID, "extnID").body : items[0].end]
        critical = False
        if len(items) == 3:
            flag = data[expect(items[1], der.BOOLEAN, "critical").body : items[1].end]
            if len(flag) != 1:
                raise MalformedRequest("critical is not a BOOLEAN")
            critical = flag != b"\x00"
        value = expect(items[-1], der.OCTET_STRING, "extnValue")
        if oid in result:
            raise MalformedRequest(f"duplicate request extension {der.dotted(oid)}")
        result[oid] = (critical, value)
    return result


def _request_extensions(data: bytes, wrapper: Element) -> bytes | None:
    nonce = None
    for oid, (critical, value) in _extensions(data, wrapper).items():
        if oid == _NONCE_OID:
            nonce = _nonce(data[value.body : value.end])
        elif critical:
            # Non-critical ones (acceptable responses, preferred algorithms, ...) are ignored.
            raise MalformedRequest(f"unsupported critical request extension {der.dotted(oid)}")
    return nonce


def _nonce(value: bytes) -> bytes:
    # RFC 6960 4.4.1: extnValue holds a DER OCTET STRING around the nonce. Some old clients put
    # the nonce bytes there bare; echoing `value` unchanged serves both, and the length limit
    # applies to the nonce itself.
    length = len(value)
    if value[:1] == b"\x04":
        try:
            inner = read_element(value, 0, len(value))
        except MalformedRequest:
            pass
        else:
            if inner.end == len(value):
                length = inner.end - inner.body
    if not 1 <= length <= MAX_NONCE_OCTETS:
        raise MalformedRequest(f"nonce of {length} octets (RFC 8954 allows 1..{MAX_NONCE_OCTETS})")
    return value


def decode_get_path(tail: str) -> bytes:
    """The DER request in a GET path (RFC 6960 appendix A.1, RFC 5019 5): the base64 of the
    request, URL-encoded or not, as found after the responder's prefix.

    Tolerated as clients and proxies send it: percent-encoding or none (`/` arrives raw, so
    the path may look like several segments), `+` turned into a space, extra leading slashes,
    missing padding, and the base64url alphabet.
    """
    text = unquote(tail).replace(" ", "+")  # bad UTF-8 becomes U+FFFD, refused below
    # A DER OCSPRequest starts with 0x30, whose base64 starts with 'M': a leading '/' is never
    # part of the request, only of a doubled separator.
    text = text.lstrip("/").translate(_URLSAFE_TO_STANDARD)
    text += "=" * (-len(text) % 4)
    try:
        decoded = base64.b64decode(text, validate=True)
    except ValueError as e:  # binascii.Error, or non-ASCII text
        raise MalformedRequest("GET request is not valid base64") from e
    if not decoded:
        raise MalformedRequest("GET request is empty")
    return decoded


_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
