"""Reading OCSP requests: real ones (cryptography's vectors, openssl, cryptography's builder),
hand-made edge cases, hostile input, and GET path decoding."""

from __future__ import annotations

import base64
import hashlib
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import cryptography_vectors
import pytest
from asn1crypto import keys
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ocspd import devpki
from ocspd.protocol import (
    CertId,
    HashAlgorithm,
    MalformedRequest,
    OcspRequest,
    UnsupportedHashAlgorithm,
    decode_get_path,
    parse_request,
)
from ocspd.store.issuers import CertIdHashes

# Test DER is written out by hand here, independently of ocspd.protocol.der.


def tlv(tag: int, *parts: bytes) -> bytes:
    contents = b"".join(parts)
    n = len(contents)
    if n < 0x80:
        return bytes((tag, n)) + contents
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + contents


SHA1_OID = bytes.fromhex("06052b0e03021a")
SHA256_OID = bytes.fromhex("0609608648016503040201")
NONCE_OID = bytes.fromhex("06092b0601050507300102")
NULL = b"\x05\x00"


def cert_id(
    serial: bytes = b"\x01\x02",
    algorithm: bytes = SHA1_OID + NULL,
    name_hash: bytes = b"n" * 20,
    key_hash: bytes = b"k" * 20,
) -> bytes:
    """A CertID; `serial` is the INTEGER's contents, as they go on the wire."""
    return tlv(
        0x30, tlv(0x30, algorithm), tlv(0x04, name_hash), tlv(0x04, key_hash), tlv(0x02, serial)
    )


def extension(oid: bytes, value: bytes, critical: bool | None = None) -> bytes:
    flag = b"" if critical is None else tlv(0x01, b"\xff" if critical else b"\x00")
    return tlv(0x30, oid, flag, tlv(0x04, value))


def nonce_extension(nonce: bytes) -> bytes:
    return extension(NONCE_OID, tlv(0x04, nonce))


def request(
    *cert_ids: bytes,
    extensions: tuple[bytes, ...] = (),
    prefix: bytes = b"",
    single_extensions: tuple[bytes, ...] = (),
    signature: bytes = b"",
) -> bytes:
    """An OCSPRequest; `prefix` goes before requestList (version, requestorName)."""
    requests = [
        tlv(0x30, c, tlv(0xA0, tlv(0x30, *single_extensions)) if single_extensions else b"")
        for c in (cert_ids or (cert_id(),))
    ]
    exts = tlv(0xA2, tlv(0x30, *extensions)) if extensions else b""
    tbs = tlv(0x30, prefix, tlv(0x30, *requests), exts)
    return tlv(0x30, tbs, signature)


def vector(name: str) -> bytes:
    with cryptography_vectors.open_vector_file(f"x509/ocsp/{name}", "rb") as f:
        data: bytes = f.read()
    return data


def assert_echo_safe(parsed: OcspRequest) -> None:
    """Each CertID's DER is canonical and matches its decoded fields (asn1crypto as oracle)."""
    for c in parsed.cert_ids:
        assert c.der in parsed.der
        loaded = asn1_ocsp.CertId.load(c.der, strict=True)
        assert loaded.dump(force=True) == c.der
        assert loaded["hash_algorithm"]["algorithm"].native == c.hash_algorithm.value
        assert loaded["issuer_name_hash"].native == c.issuer_name_hash
        assert loaded["issuer_key_hash"].native == c.issuer_key_hash
        assert loaded["serial_number"].native == c.serial


# cryptography's vectors


@dataclass(frozen=True)
class Vector:
    name: str
    serials: tuple[int, ...]
    nonce: bytes | None = None


NONCE_VALUE = bytes.fromhex("04107b805a1d3726b8b84f48d2f8bfd72dfd")

GOOD_VECTORS = [
    Vector("req-sha1.der", (0x98D9E5C0B4C373552DF77C5D0F1EB5128E4945F9,)),
    Vector(
        "req-multi-sha1.der",
        (0x98D9E5C0B4C373552DF77C5D0F1EB5128E4945F9, 0x98D9E5C0B4C373552DF77C5D0F1EB5128E4945F0),
    ),
    Vector("req-ext-nonce.der", (0x01AF1EFBDD5EAE0952320B24FE6B5568,), NONCE_VALUE),
    # Unknown and known-but-unused extensions that are not critical are ignored.
    Vector("req-ext-unknown-oid.der", (0x01AF1EFBDD5EAE0952320B24FE6B5568,)),
    Vector("req-acceptable-responses.der", (0xE5249FDAA8B47C86E7CCB85DDCF0162F,)),
    Vector("ocsp-army.valid-req.der", (0x0391AD,)),
    Vector("ocsp-army.revoked-req.der", (0x0391AE,)),
    Vector("ocsp-army.inapplicable-req.der", (0x01,)),
]


@pytest.mark.parametrize("case", GOOD_VECTORS, ids=lambda v: v.name)
def test_vectors(case: Vector) -> None:
    data = vector(case.name)
    parsed = parse_request(data)
    assert parsed.der == data
    assert tuple(c.serial for c in parsed.cert_ids) == case.serials
    assert all(c.hash_algorithm is HashAlgorithm.SHA1 for c in parsed.cert_ids)
    assert parsed.nonce == case.nonce
    assert_echo_safe(parsed)
    if len(case.serials) == 1:  # cryptography reads only single-CertID requests
        reference = ocsp.load_der_ocsp_request(data)
        (c,) = parsed.cert_ids
        assert c.serial == reference.serial_number
        assert c.issuer_name_hash == reference.issuer_name_hash
        assert c.issuer_key_hash == reference.issuer_key_hash
        assert c.hash_algorithm.value == reference.hash_algorithm.name


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("req-duplicate-ext.der", MalformedRequest),  # the nonce twice
        ("req-invalid-version.der", MalformedRequest),  # v2, which RFC 6960 does not define
        ("req-invalid-hash-alg.der", UnsupportedHashAlgorithm),
    ],
)
def test_refused_vectors(name: str, error: type[MalformedRequest]) -> None:
    with pytest.raises(error):
        parse_request(vector(name))


def test_cert_id_is_a_cache_key() -> None:
    first, second = parse_request(vector("req-multi-sha1.der")).cert_ids
    again = parse_request(vector("req-sha1.der")).cert_ids[0]
    assert first == again and hash(first) == hash(again)
    assert first != second
    assert len({first, second, again}) == 2


# Requests from openssl and from cryptography's builder


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[devpki.Issued, Path]:
    ca = devpki.make_ca("Request Test CA")
    path = devpki.write_cert(tmp_path_factory.mktemp("req") / "ca.pem", ca.cert)
    return ca, path


def issuer_hashes(cert: x509.Certificate, algorithm: HashAlgorithm) -> tuple[bytes, bytes]:
    hashes_ = CertIdHashes.of(cert)
    if algorithm is HashAlgorithm.SHA1:
        return hashes_.name_sha1, hashes_.key_sha1
    if algorithm is HashAlgorithm.SHA256:
        return hashes_.name_sha256, hashes_.key_sha256
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bits = keys.PublicKeyInfo.load(spki)["public_key"].contents[1:]
    h = getattr(hashlib, algorithm.value)
    return h(cert.subject.public_bytes()).digest(), h(bits).digest()


# 1, the sign boundary, and the largest serial RFC 5280 allows (20 octets, 21 in DER).
SERIALS = (1, 0x7F, 0x80, 0x0391AD, (1 << 160) - 1)


@pytest.mark.parametrize("algorithm", list(HashAlgorithm), ids=lambda a: a.value)
@pytest.mark.parametrize("with_nonce", [False, True], ids=["no-nonce", "nonce"])
def test_openssl_requests(
    ca: tuple[devpki.Issued, Path], tmp_path: Path, algorithm: HashAlgorithm, with_nonce: bool
) -> None:
    out = tmp_path / "req.der"
    # openssl applies the digest option to the -serial/-cert options after it.
    args = ["openssl", "ocsp", f"-{algorithm.value}", "-issuer", str(ca[1])]
    for serial in SERIALS:
        args += ["-serial", hex(serial)]
    args += ["-reqout", str(out), "-nonce" if with_nonce else "-no_nonce"]
    subprocess.run(args, check=True, capture_output=True)
    data = out.read_bytes()

    parsed = parse_request(data)
    name_hash, key_hash = issuer_hashes(ca[0].cert, algorithm)
    assert [c.serial for c in parsed.cert_ids] == list(SERIALS)
    for c in parsed.cert_ids:
        assert c.hash_algorithm is algorithm
        assert (c.issuer_name_hash, c.issuer_key_hash) == (name_hash, key_hash)
        assert c == CertId.of(ca[0].cert, c.serial, algorithm)  # openssl encodes as we do
    assert_echo_safe(parsed)
    if with_nonce:
        assert parsed.nonce is not None
        assert parsed.nonce[:2] == b"\x04\x10" and len(parsed.nonce) == 18  # 16 random octets
    else:
        assert parsed.nonce is None


def test_openssl_signed_request_is_accepted(ca: tuple[devpki.Issued, Path], tmp_path: Path) -> None:
    """optionalSignature (and the requestorName openssl sets with it) are skipped."""
    requester = devpki.make_responder("Requester", ca[0])
    cert = devpki.write_cert(tmp_path / "signer.pem", requester.cert)
    key = devpki.write_key(tmp_path / "signer.key", requester.key)
    out = tmp_path / "req.der"
    subprocess.run(
        ["openssl", "ocsp", "-issuer", str(ca[1]), "-serial", "0x1234",
         "-signer", str(cert), "-signkey", str(key), "-reqout", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    parsed = parse_request(out.read_bytes())
    assert [c.serial for c in parsed.cert_ids] == [0x1234]
    assert parsed.nonce is not None


@pytest.mark.parametrize(
    "hash_",
    [hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()],
    ids=lambda h: h.name,
)
def test_cryptography_requests(ca: tuple[devpki.Issued, Path], hash_: hashes.HashAlgorithm) -> None:
    leaf = devpki.make_leaf("leaf.example", ca[0], devpki.new_key())
    built = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(leaf, ca[0].cert, hash_)
        .add_extension(x509.OCSPNonce(b"\xaa" * 32), critical=False)
        .build()
    )
    data = built.public_bytes(serialization.Encoding.DER)
    (c,) = parse_request(data).cert_ids
    assert c.hash_algorithm.value == hash_.name
    assert c.serial == leaf.serial_number == built.serial_number
    assert c.issuer_name_hash == built.issuer_name_hash
    assert c.issuer_key_hash == built.issuer_key_hash
    assert parse_request(data).nonce == b"\x04\x20" + b"\xaa" * 32


# Hand-made edge cases


@pytest.mark.parametrize(
    "data",
    [
        request(cert_id(b"\x00")),  # serial 0: not RFC 5280, but answerable ("unknown")
        request(cert_id(b"\x00" + b"\xff" * 20)),  # 20 octets plus the sign octet
        request(cert_id(algorithm=SHA1_OID)),  # RFC 5754: absent parameters
        request(cert_id(), prefix=tlv(0xA0, tlv(0x02, b"\x00"))),  # explicit v1
        request(cert_id(), prefix=tlv(0xA1, tlv(0x82, b"host.example"))),  # requestorName
        request(cert_id(), signature=tlv(0xA0, tlv(0x30, b"anything"))),
        request(cert_id(), single_extensions=(extension(b"\x06\x03\x2a\x03\x04", b"x"),)),
        request(cert_id(), extensions=(extension(b"\x06\x03\x2a\x03\x04", b"x", critical=False),)),
    ],
)
def test_accepted(data: bytes) -> None:
    assert_echo_safe(parse_request(data))


def test_serials() -> None:
    big = (1 << 160) - 1
    assert parse_request(request(cert_id(b"\x00"))).cert_ids[0].serial == 0
    assert parse_request(request(cert_id(b"\x00" + b"\xff" * 20))).cert_ids[0].serial == big


@pytest.mark.parametrize("size", [1, 16, 32, 33, 128])
def test_nonce_lengths_accepted(size: int) -> None:
    nonce = bytes(range(size))
    parsed = parse_request(request(extensions=(nonce_extension(nonce),)))
    assert parsed.nonce == tlv(0x04, nonce)


def test_critical_nonce_accepted() -> None:
    ext = extension(NONCE_OID, tlv(0x04, b"n" * 16), critical=True)
    assert parse_request(request(extensions=(ext,))).nonce == tlv(0x04, b"n" * 16)


def test_bare_nonce_is_echoed_as_sent() -> None:
    """Some old clients put the nonce directly in extnValue, without the inner OCTET STRING."""
    ext = extension(NONCE_OID, b"\x9f" * 20)
    assert parse_request(request(extensions=(ext,))).nonce == b"\x9f" * 20


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (request(extensions=(nonce_extension(b""),)), "empty nonce"),
        (request(extensions=(nonce_extension(b"n" * 129),)), "nonce over 128 octets"),
        (request(extensions=(extension(NONCE_OID, b""),)), "empty extnValue"),
        (
            request(extensions=(extension(b"\x06\x03\x2a\x03\x04", b"x", critical=True),)),
            "unknown critical extension",
        ),
        (
            request(cert_id(), single_extensions=(extension(b"\x06\x01\x2a", b"", critical=True),)),
            "critical singleRequestExtension",
        ),
        (request(cert_id(b"\xff")), "negative serial"),
        (request(cert_id(b"\x80" + b"\x00" * 5)), "negative serial"),
        (request(cert_id(b"\x01" + b"\x00" * 20)), "serial over 20 octets"),
        (request(cert_id(b"\x00\x01")), "non-minimal serial"),
        (request(cert_id(b"")), "empty serial"),
        (request(cert_id(name_hash=b"n" * 32)), "hash length does not match SHA-1"),
        (request(cert_id(algorithm=SHA256_OID + NULL)), "SHA-1 sized hashes under SHA-256"),
        (request(cert_id(algorithm=SHA1_OID + b"\x04\x00")), "non-NULL hash parameters"),
        (request(cert_id(algorithm=b"")), "empty AlgorithmIdentifier"),
        (tlv(0x30, tlv(0x30, tlv(0x30))), "no CertIDs"),
        (tlv(0x30, tlv(0x30)), "no requestList"),
        (request(prefix=tlv(0xA0, tlv(0x02, b"\x01"))), "version v2"),
        (request(prefix=tlv(0xA3, b"")), "unknown TBSRequest field"),
        (request(signature=tlv(0xA1, b"")), "unknown OCSPRequest field"),
        (request(signature=tlv(0xA0, b"") + tlv(0xA0, b"")), "two signatures"),
        (request(extensions=(nonce_extension(b"a"), nonce_extension(b"b"))), "duplicate nonce"),
        (request(extensions=(tlv(0x30, NONCE_OID),)), "extension without extnValue"),
        (
            request(extensions=(tlv(0x30, NONCE_OID, tlv(0x01, b"\xff\xff"), tlv(0x04, b"x")),)),
            "BOOLEAN of two octets",
        ),
        (request(cert_id(), cert_id(algorithm=NULL)), "second CertID damaged"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_refused(data: bytes, why: str) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(data)


@pytest.mark.parametrize(
    "oid",
    [
        bytes.fromhex("06082a864886f70d0205"),  # MD5
        bytes.fromhex("0609608648016503040204"),  # SHA-224
        bytes.fromhex("0609608648016503040208"),  # SHA3-256
    ],
)
def test_unsupported_hash_algorithm(oid: bytes) -> None:
    with pytest.raises(UnsupportedHashAlgorithm):
        parse_request(request(cert_id(algorithm=oid + NULL)))


def test_cert_id_cap() -> None:
    ids = [cert_id(bytes((i + 1,))) for i in range(17)]
    assert len(parse_request(request(*ids[:16])).cert_ids) == 16
    with pytest.raises(MalformedRequest, match="more than 16"):
        parse_request(request(*ids))
    assert len(parse_request(request(*ids), max_cert_ids=17).cert_ids) == 17
    with pytest.raises(MalformedRequest):
        parse_request(request(*ids[:2]), max_cert_ids=1)


def test_cert_id_build_matches_parse() -> None:
    built = CertId.build(HashAlgorithm.SHA256, b"a" * 32, b"b" * 32, 0x80)
    parsed = parse_request(request(built.der)).cert_ids[0]
    assert parsed == built
    assert (parsed.hash_algorithm, parsed.issuer_name_hash, parsed.issuer_key_hash) == (
        HashAlgorithm.SHA256,
        b"a" * 32,
        b"b" * 32,
    )
    assert parsed.serial == 0x80


# Hostile input: only MalformedRequest, ever


def valid_samples() -> list[bytes]:
    return [
        vector("req-ext-nonce.der"),
        vector("req-multi-sha1.der"),
        request(
            cert_id(),
            cert_id(b"\x00" + b"\xff" * 20, SHA256_OID, b"a" * 32, b"b" * 32),
            prefix=tlv(0xA0, tlv(0x02, b"\x00")) + tlv(0xA1, tlv(0x82, b"x")),
            extensions=(nonce_extension(b"n" * 32), extension(b"\x06\x01\x2a", b"", False)),
            single_extensions=(extension(b"\x06\x01\x2b", b"v"),),
            signature=tlv(0xA0, tlv(0x30, b"sig")),
        ),
    ]


def parse_or_refuse(data: bytes) -> OcspRequest | None:
    try:
        parsed = parse_request(data)
    except MalformedRequest:
        return None
    assert_echo_safe(parsed)
    return parsed


def test_samples_are_valid() -> None:
    for sample in valid_samples():
        assert parse_or_refuse(sample) is not None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x30",
        b"\x30\x00",
        b"\x30\x80\x00\x00",  # indefinite length
        b"\x30\x84\xff\xff\xff\xff",  # a 4 GiB length
        b"\x30\x89" + b"\xff" * 9,  # a length of nine octets
        b"\x30\x81\x05" + b"\x05\x00" * 2 + b"\x00",  # non-minimal length
        b"\x1f\x81\x00\x00",  # high tag number
        b"GET / HTTP/1.1\r\n\r\n",
        bytes(range(256)),
        b"\x30" * 5000,
    ],
)
def test_garbage(data: bytes) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(data)


def test_deeply_nested() -> None:
    data = b""
    for _ in range(5000):
        data = tlv(0x30, data)
    with pytest.raises(MalformedRequest):
        parse_request(data)
    data = b""
    for _ in range(5000):
        data = tlv(0xA0, data)
    with pytest.raises(MalformedRequest):
        parse_request(request(signature=data, extensions=(tlv(0x30, data),)))


def test_every_truncation_and_trailing_data() -> None:
    for sample in valid_samples():
        for end in range(len(sample)):
            with pytest.raises(MalformedRequest):
                parse_request(sample[:end])
        for tail in (b"\x00", b"\x30\x00", sample):
            with pytest.raises(MalformedRequest, match="trailing"):
                parse_request(sample + tail)


def test_random_mutations() -> None:
    rng = random.Random(6960)
    samples = valid_samples()
    accepted = 0
    for _ in range(4000):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            op = rng.randrange(6)
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 2:
                del data[pos]
            elif op == 3:
                data.insert(pos, rng.randrange(256))
            elif op == 4:
                data[pos] = rng.choice((0x00, 0x7F, 0x80, 0x81, 0x82, 0x84, 0xFF))
            else:
                end = min(len(data), pos + rng.randint(1, 16))
                data[pos:pos] = data[pos:end]
        if parse_or_refuse(bytes(data)) is not None:
            accepted += 1
    # Most mutations break the request; some (inside hashes, nonces) leave it well-formed.
    assert 0 < accepted < 4000


def test_random_bytes() -> None:
    rng = random.Random(8954)
    for _ in range(2000):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        parse_or_refuse(b"\x30" + bytes((len(data),)) + data if len(data) < 128 else data)


# GET paths


@pytest.fixture(scope="module")
def awkward() -> tuple[bytes, str]:
    """A real request whose base64 holds '+', '/' and '=' padding."""
    for nonce_size in (1, 2, 3):
        for serial in range(0x40000000, 0x40010000):
            nonce = nonce_extension(b"n" * nonce_size)
            data = request(cert_id(serial.to_bytes(4, "big")), extensions=(nonce,))
            text = base64.b64encode(data).decode()
            if "+" in text and "/" in text and text.endswith("=") and "//" not in text:
                return data, text
    raise AssertionError("no suitable serial")


def test_get_path_forms(awkward: tuple[bytes, str]) -> None:
    data, text = awkward
    urlsafe = base64.urlsafe_b64encode(data).decode()
    forms = [
        text,  # raw: '/' splits the path, '+' literal
        quote(text, safe=""),  # fully percent-encoded: %2F, %2B, %3D
        quote(text, safe="/"),  # '/' raw, '+' as %2B
        text.replace("+", " "),  # '+' decoded to a space by something on the way
        text.replace("+", "%20"),
        "/" + text,  # doubled separator
        "//" + quote(text, safe=""),
        text.rstrip("="),  # padding dropped
        urlsafe,
        urlsafe.rstrip("="),
    ]
    for form in forms:
        assert decode_get_path(form) == data, form
        assert parse_request(decode_get_path(form)).der == data


@pytest.mark.parametrize(
    "tail",
    [
        "",
        "/",
        "///",
        "!!!!",
        "MA=A",
        "M",
        "MEUw%",
        "%ZZ",
        "MEU\u00e9",
        "%C3%28AAA",
        "MA==MA==",
        "M A",
    ],
)
def test_get_path_refused(tail: str) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(decode_get_path(tail))


# --- RequestParser: remembered shapes of nonce requests ------------------------------------


def test_request_parser_answers_like_parse_request_for_any_nonce() -> None:
    from ocspd.protocol.request import RequestParser

    parser = RequestParser()
    rng = random.Random(5)
    first = request(cert_id(b"\x05"), extensions=(nonce_extension(b"a" * 32),))
    assert parser.parse(first) == parse_request(first)
    for _ in range(200):
        # Any octets as the nonce, the same length: the shape is reused and must agree.
        nonce = rng.randbytes(32)
        der = request(cert_id(b"\x05"), extensions=(nonce_extension(nonce),))
        parsed = parser.parse(der)
        assert parsed == parse_request(der)
        assert parsed.nonce == tlv(0x04, nonce) and parsed.der == der
    # Another length, another serial, a bare nonce: parsed in full, still agree.
    for der in (
        request(cert_id(b"\x05"), extensions=(nonce_extension(b"b" * 16),)),
        request(cert_id(b"\x06"), extensions=(nonce_extension(b"c" * 32),)),
        request(cert_id(b"\x05"), extensions=(extension(NONCE_OID, b"d" * 32),)),
    ):
        assert parser.parse(der) == parse_request(der)
        assert parser.parse(der[:-1] + b"Z") == parse_request(der[:-1] + b"Z")


def test_request_parser_never_reuses_a_shape_for_different_bytes() -> None:
    from ocspd.protocol.request import RequestParser

    parser = RequestParser()
    nonce_last = request(cert_id(b"\x05"), extensions=(nonce_extension(b"a" * 32),))
    parser.parse(nonce_last)
    # Same length, a byte changed before the nonce (the serial): parsed in full.
    other = nonce_last.replace(b"\x02\x01\x05", b"\x02\x01\x07")
    assert len(other) == len(nonce_last)
    assert parser.parse(other).cert_ids[0].serial == 7
    # A nonce that is not the last extension: its shape is not remembered, nor misread.
    critical = extension(b"\x06\x03\x2a\x03\x04", b"x", critical=True)
    with pytest.raises(MalformedRequest, match="critical"):
        parser.parse(request(extensions=(nonce_extension(b"n" * 32), critical)))
    with pytest.raises(MalformedRequest, match="critical"):
        parser.parse(request(extensions=(nonce_extension(b"m" * 32), critical)))
    # Malformed input is refused as parse_request refuses it.
    with pytest.raises(MalformedRequest):
        parser.parse(nonce_last[:-40])
    with pytest.raises(MalformedRequest):
        parser.parse(b"")
