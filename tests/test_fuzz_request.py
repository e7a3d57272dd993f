"""Property-based fuzzing of everything that reads a client's bytes before any trust exists:
the DER request parser, its shape-remembering front (RequestParser), GET path decoding, and
the HTTP handler that maps what they raise to RFC 6960 statuses (issue 7: hostile input).

The properties: only MalformedRequest (or its subclass UnsupportedHashAlgorithm) ever comes
out of the parser and the decoder, whatever the input; RequestParser answers exactly as
parse_request does; and the handler answers every such body with an unsigned OCSP error
(malformedRequest, or unauthorized once a well-formed request names an issuer not served),
never internalError (RFC 6960 2.3, 4.2.1).

Deterministic (derandomize) and without an example database, so a run depends on nothing
but the code; the example counts keep the module well under 20 s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import cryptography_vectors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ocspd import devpki
from ocspd.config import ResponderConfig
from ocspd.crlfiles import CrlFiles
from ocspd.errors import Unauthorized
from ocspd.http import OCSP_REQUEST, OcspHandler, Readiness
from ocspd.httpserver import HttpReply, HttpRequest
from ocspd.metrics import ResponderMetrics
from ocspd.protocol.request import (
    CertId,
    HashAlgorithm,
    MalformedRequest,
    OcspRequest,
    RequestParser,
    decode_get_path,
    parse_request,
)
from ocspd.sources.base import Response

FUZZ = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HANDLER_FUZZ = settings(FUZZ, max_examples=400)


# --- real requests to mutate --------------------------------------------------------------


def _vector(name: str) -> bytes:
    with cryptography_vectors.open_vector_file(f"x509/ocsp/{name}", "rb") as f:
        data: bytes = f.read()
    return data


def _real_requests() -> list[bytes]:
    """Requests as clients send them: cryptography's builder (SHA-1 and SHA-256, with and
    without a nonce), the same with three CertIDs (which the builder does not make, so they
    are assembled around CertIDs as openssl encodes them), and cryptography's test vectors."""
    ca = devpki.make_ca("Fuzz CA")
    key = devpki.new_key()
    leaves = [devpki.make_leaf(f"leaf{i}", ca, key) for i in range(3)]
    built = []
    for algorithm, ours in (
        (hashes.SHA1(), HashAlgorithm.SHA1),
        (hashes.SHA256(), HashAlgorithm.SHA256),
    ):
        for nonce in (None, secrets.token_bytes(16), secrets.token_bytes(32)):
            builder = ocsp.OCSPRequestBuilder().add_certificate(leaves[0], ca.cert, algorithm)
            if nonce is not None:
                builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
            built.append(builder.build().public_bytes(serialization.Encoding.DER))
            cert_ids = b"".join(
                _tlv(0x30, CertId.of(ca.cert, leaf.serial_number, ours).der) for leaf in leaves
            )
            extensions = b""
            if nonce is not None:
                extension = _tlv(0x30, _NONCE_OID + _tlv(0x04, _tlv(0x04, nonce)))
                extensions = _tlv(0xA2, _tlv(0x30, extension))
            built.append(_tlv(0x30, _tlv(0x30, _tlv(0x30, cert_ids) + extensions)))
    vectors = [
        _vector(name)
        for name in (
            "req-sha1.der",
            "req-multi-sha1.der",
            "req-ext-nonce.der",
            "req-ext-unknown-oid.der",
            "req-acceptable-responses.der",
            "req-duplicate-ext.der",
            "req-invalid-hash-alg.der",
        )
    ]
    return built + vectors + [_bare_nonce_request(b"ab"), _bare_nonce_request(b"b" * 16)]


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def _tlv(tag: int, contents: bytes) -> bytes:
    return bytes((tag,)) + _length(len(contents)) + contents


_NONCE_OID = bytes.fromhex("06092b0601050507300102")  # id-pkix-ocsp-nonce, with its tag
_SHA1_CERT_ID = _tlv(
    0x30,
    _tlv(0x30, bytes.fromhex("06052b0e03021a0500"))
    + _tlv(0x04, b"n" * 20)
    + _tlv(0x04, b"k" * 20)
    + _tlv(0x02, b"\x01"),
)


def _bare_nonce_request(extn_value: bytes) -> bytes:
    """A request whose nonce extension holds the nonce octets bare, not in an OCTET STRING
    (some old clients; accepted and echoed as sent)."""
    nonce = _tlv(0x30, _NONCE_OID + _tlv(0x04, extn_value))
    return _tlv(
        0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, _SHA1_CERT_ID)) + _tlv(0xA2, _tlv(0x30, nonce)))
    )


REAL = _real_requests()


# One edit of a buffer: (kind, position as a fraction of the length, a value).
_EDITS = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "duplicate", "huge-length", "cut"]),
    st.floats(min_value=0, max_value=1, allow_nan=False),
    st.integers(min_value=0, max_value=255),
)
_HUGE_LENGTHS = (
    b"\x84\xff\xff\xff\xff",  # 4 GiB
    b"\x84\x7f\xff\xff\xff",
    b"\x83\x01\x00\x00",
    b"\x89" + b"\xff" * 9,  # more length octets than DER here allows
    b"\x80",  # indefinite (BER)
    b"\x81\x05",  # non-minimal
    b"\xff",
)


def _apply(data: bytes, edits: list[tuple[str, float, int]]) -> bytes:
    buffer = bytearray(data)
    for kind, where, value in edits:
        if not buffer:
            buffer.append(value)
            continue
        pos = min(int(where * len(buffer)), len(buffer) - 1)
        if kind == "flip":
            buffer[pos] ^= 1 << (value % 8)
        elif kind == "set":
            buffer[pos] = value
        elif kind == "insert":
            buffer.insert(pos, value)
        elif kind == "delete":
            del buffer[pos]
        elif kind == "duplicate":
            buffer[pos:pos] = buffer[pos : pos + 1 + value % 32]
        elif kind == "huge-length":
            # Replace the length octet after an identifier octet with an oversized one.
            buffer[pos + 1 : pos + 2] = _HUGE_LENGTHS[value % len(_HUGE_LENGTHS)]
        else:
            del buffer[pos:]
    return bytes(buffer)


MUTATED = st.builds(_apply, st.sampled_from(REAL), st.lists(_EDITS, min_size=1, max_size=6))


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """Deep nesting of constructed tags, alone or where a request expects a structure."""
    depth = draw(st.integers(min_value=1, max_value=3000))
    tag = draw(st.sampled_from([0x30, 0xA0, 0xA1, 0xA2, 0x31, 0x24]))
    inner = draw(st.binary(max_size=8))
    for _ in range(depth):
        inner = _tlv(tag, inner)
    where = draw(st.sampled_from(["alone", "signature", "extensions", "request-list"]))
    if where == "alone":
        return inner
    cert_id = _SHA1_CERT_ID
    if where == "signature":
        return _tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, cert_id))) + _tlv(0xA0, inner))
    if where == "extensions":
        return _tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, cert_id)) + _tlv(0xA2, inner)))
    return _tlv(0x30, _tlv(0x30, _tlv(0x30, inner)))


@st.composite
def huge_lengths(draw: st.DrawFn) -> bytes:
    """A TLV claiming far more contents than follow, at the top or inside a request."""
    header = bytes((draw(st.sampled_from([0x30, 0x04, 0x02, 0xA0, 0xA2])),)) + draw(
        st.sampled_from(_HUGE_LENGTHS)
    )
    tail = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        return header + tail
    sample = draw(st.sampled_from(REAL))
    cut = draw(st.integers(min_value=0, max_value=len(sample)))
    return sample[:cut] + header + tail


HOSTILE = st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=64).map(lambda b: _tlv(0x30, b)),  # a SEQUENCE around anything
    MUTATED,
    MUTATED,  # twice the weight: mutations of real requests find the deep paths
    nested(),
    huge_lengths(),
)


def _parse_or_refuse(data: bytes) -> OcspRequest | None:
    """parse_request's contract: a request, or MalformedRequest; anything else fails the test
    (pytest reports the exception with the input hypothesis shrank it to)."""
    try:
        parsed = parse_request(data)
    except MalformedRequest:
        return None
    # What is echoed (RS1.4) is a slice of what was sent.
    for cert_id in parsed.cert_ids:
        assert cert_id.der in data
    assert parsed.der == data
    return parsed


# --- the parser -------------------------------------------------------------------------------


@FUZZ
@given(HOSTILE)
@example(b"")
@example(b"\x30\x84\xff\xff\xff\xff")
@example(REAL[0][:-1])
def test_parse_request_raises_only_malformed_request(data: bytes) -> None:
    _parse_or_refuse(data)


def _primed_parser() -> RequestParser:
    """A RequestParser that has remembered the shapes of the real nonce requests."""
    parser = RequestParser()
    for sample in REAL:
        with contextlib.suppress(MalformedRequest):
            parser.parse(sample)
    return parser


@FUZZ
@given(
    st.one_of(
        HOSTILE,
        st.builds(
            lambda s, n: s[: -len(n)] + n if len(n) < len(s) else n,
            st.sampled_from(REAL),
            st.binary(min_size=1, max_size=40),
        ),
    )
)
# Found by this test: a remembered bare 2-octet nonce let `04 00` through in its place, an
# empty nonce that parse_request refuses (RFC 8954 2.1).
@example(_bare_nonce_request(b"ab")[:-2] + b"\x04\x00")
def test_request_parser_agrees_with_parse_request(data: bytes) -> None:
    """The remembered shapes are a shortcut, never a second opinion: for any bytes, including
    a real nonce request whose trailing octets were replaced, RequestParser returns what
    parse_request returns, or refuses what it refuses."""
    parser = _primed_parser()
    try:
        expected: OcspRequest | None = parse_request(data)
    except MalformedRequest:
        expected = None
    try:
        got: OcspRequest | None = parser.parse(data)
    except MalformedRequest:
        got = None
    assert got == expected
    if got is not None:
        assert expected is not None and got.nonce == expected.nonce


# --- GET paths ------------------------------------------------------------------------------

_B64ISH = st.text(
    alphabet=st.sampled_from(
        list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_% ")
    ),
    max_size=300,
)
# What reaches the handler: the request target as llhttp passed it, decoded as latin-1.
_LATIN1 = st.text(alphabet=st.characters(max_codepoint=255), max_size=300)


@FUZZ
@given(st.one_of(_B64ISH, _LATIN1, st.text(max_size=100)))
@example("%")
@example("%C3%28")
@example("M" * 10_000)
def test_decode_get_path_raises_only_malformed_request(tail: str) -> None:
    try:
        decoded = decode_get_path(tail)
    except MalformedRequest:
        return
    assert decoded  # never an empty request
    _parse_or_refuse(decoded)


# --- the HTTP handler, in process -----------------------------------------------------------


class _NoIssuers:
    """A Source serving no issuer: every well-formed request is `unauthorized`."""

    async def response(self, request: OcspRequest) -> Response:
        raise Unauthorized("no issuer served")


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OcspHandler]:
    def clock() -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    crl_dir = tmp_path_factory.mktemp("crl")
    yield OcspHandler(
        _NoIssuers(),
        ResponderConfig(),
        CrlFiles(Path(crl_dir), dt.timedelta(hours=1), clock),
        Readiness(),
        ResponderMetrics(CollectorRegistry()),
        logging.getLogger("test.fuzz"),
        clock,
    )


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _answer(
    handler: OcspHandler, loop: asyncio.AbstractEventLoop, request: HttpRequest
) -> HttpReply:
    answer = handler(request)
    if isinstance(answer, HttpReply):
        return answer

    async def wait() -> HttpReply:
        return await answer  # type: ignore[misc]

    return loop.run_until_complete(wait())


# RFC 6960 4.2.1: malformedRequest (1); unauthorized (6) for a well-formed request about an
# issuer not served. internalError (2) would mean something raised that should not have.
_ALLOWED = {ocsp.OCSPResponseStatus.MALFORMED_REQUEST, ocsp.OCSPResponseStatus.UNAUTHORIZED}


def _check_error_reply(reply: HttpReply) -> None:
    assert reply.status in (200, 413, 414), reply
    assert b"Content-Type: application/ocsp-response\r\n" in reply.headers
    assert b"no-cache" in reply.headers  # an error is never cached
    assert ocsp.load_der_ocsp_response(reply.body).response_status in _ALLOWED


@HANDLER_FUZZ
@given(st.one_of(HOSTILE, st.binary(min_size=10_001, max_size=10_050)))
def test_handler_answers_hostile_posts_with_ocsp_errors(
    handler: OcspHandler, loop: asyncio.AbstractEventLoop, body: bytes
) -> None:
    request = HttpRequest("POST", "/", {"content-type": OCSP_REQUEST}, body, "192.0.2.1")
    _check_error_reply(_answer(handler, loop, request))


@HANDLER_FUZZ
@given(st.one_of(_B64ISH, _LATIN1, MUTATED.map(lambda b: base64.b64encode(b).decode())))
def test_handler_answers_hostile_gets_with_ocsp_errors(
    handler: OcspHandler, loop: asyncio.AbstractEventLoop, tail: str
) -> None:
    target = "/" + tail
    path = target.split("?", 1)[0]
    if path.startswith(("/healthz", "/readyz", "/crl/")):
        return  # not OCSP paths
    request = HttpRequest("GET", target, {}, b"", "192.0.2.1")
    _check_error_reply(_answer(handler, loop, request))
