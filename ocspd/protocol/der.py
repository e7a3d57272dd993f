"""Just enough DER (X.690) to read OCSP requests strictly and to write responses by concatenation.

Both directions are on the hot path. asn1crypto takes ~0.3 ms to parse a one-CertID request
(ten times a P-256 signature), accepts BER, and raises assorted exceptions lazily; the
request grammar is small enough to walk by hand with every length checked up front.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from ocspd.protocol.errors import MalformedRequest

# Universal tags (X.690 8.1.2), with the constructed bit where the type is always constructed.
BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
ENUMERATED = 0x0A
GENERALIZED_TIME = 0x18
SEQUENCE = 0x30


def context(number: int, constructed: bool = True) -> int:
    """The identifier octet of a context-specific tag [number] (EXPLICIT tags are constructed)."""
    return 0x80 | (0x20 if constructed else 0) | number


# A length above this cannot belong to an OCSP request we would read; the HTTP layer caps the
# body far lower, so 4 length octets are plenty.
_MAX_LENGTH_OCTETS = 4


class Element(NamedTuple):
    """One TLV inside a buffer, by offsets; the buffer itself is never copied.

    A NamedTuple: a request holds ~20 of these and a frozen dataclass costs 4x as much to make.
    """

    tag: int
    start: int  # offset of the identifier octet
    body: int  # offset of the first content octet
    end: int  # offset just past the contents


def read_element(data: bytes, pos: int, limit: int) -> Element:
    """Read the TLV at `pos`, which must end at or before `limit`.

    DER only (X.690 10.1): definite, minimal lengths; low tag numbers (OCSP uses no others).
    """
    if limit - pos < 2:
        raise MalformedRequest("truncated DER element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise MalformedRequest("unexpected high tag number")
    first = data[pos + 1]
    body = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise MalformedRequest("indefinite length (BER) is not DER")
        if count > _MAX_LENGTH_OCTETS:
            raise MalformedRequest("DER length too large")
        if limit - body < count:
            raise MalformedRequest("truncated DER length")
        length = int.from_bytes(data[body : body + count], "big")
        if data[body] == 0 or length < 0x80:
            raise MalformedRequest("non-minimal DER length")
        body += count
    if limit - body < length:
        raise MalformedRequest("truncated DER element")
    return Element(tag, pos, body, body + length)


def iter_elements(data: bytes, start: int, end: int) -> Iterator[Element]:
    """The TLVs filling data[start:end] exactly, one after another."""
    pos = start
    while pos < end:
        element = read_element(data, pos, end)
        yield element
        pos = element.end


def children(data: bytes, parent: Element) -> list[Element]:
    """The TLVs filling `parent`'s contents exactly."""
    result = []
    pos, end = parent.body, parent.end
    while pos < end:
        element = read_element(data, pos, end)
        result.append(element)
        pos = element.end
    return result


def expect(element: Element, tag: int, what: str) -> Element:
    if element.tag != tag:
        raise MalformedRequest(f"{what}: expected tag 0x{tag:02x}, found 0x{element.tag:02x}")
    return element


def dotted(oid: bytes) -> str:
    """The dotted form of OBJECT IDENTIFIER contents, for messages (X.690 8.19)."""
    arcs: list[int] = []
    value = 0
    for octet in oid[:64]:
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        return "(empty)"
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


# Writing


def length_prefix(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def tlv(tag: int, contents: bytes) -> bytes:
    return bytes((tag,)) + length_prefix(len(contents)) + contents


def integer(value: int) -> bytes:
    """A DER INTEGER for a non-negative value: minimal, with a 0x00 sign octet when needed."""
    if value < 0:
        raise ValueError("negative INTEGER")
    return tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def oid(text: str) -> bytes:
    """A DER OBJECT IDENTIFIER from dotted text (for module constants)."""
    arcs = [int(a) for a in text.split(".")]
    contents = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        contents.extend(reversed(chunk))
    return tlv(OID, bytes(contents))
