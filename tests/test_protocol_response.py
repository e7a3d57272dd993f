"""Building OCSP responses, checked by cryptography, asn1crypto, openssl and pkilint."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ObjectIdentifier, OCSPExtensionOID
from pkilint import loader, pkix  # type: ignore[import-untyped]
from pkilint.pkix import extension, name  # type: ignore[import-untyped]
from pkilint.pkix import ocsp as pkilint_ocsp

from ocspd import devpki
from ocspd.model import Reason
from ocspd.protocol import (
    AnswerStatus,
    CertId,
    HashAlgorithm,
    ResponderIdentity,
    ResponseStatus,
    SingleAnswer,
    build_response,
    error_response,
    parse_request,
)
from ocspd.protocol.response import NEVER_ISSUED_REVOKED_AT
from ocspd.signing.base import verify_signature
from ocspd.signing.filekey import FileSigner

EXTENDED_REVOKE = ObjectIdentifier("1.3.6.1.5.5.7.48.1.9")
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
THIS_UPDATE = NOW - dt.timedelta(minutes=1)
NEXT_UPDATE = NOW + dt.timedelta(days=1)
REVOKED_AT = NOW - dt.timedelta(days=3, seconds=17)


@dataclass(frozen=True)
class Pki:
    dir: Path
    root: devpki.Issued
    ca: devpki.Issued
    responder: devpki.Issued
    identity: ResponderIdentity
    signer: FileSigner


def make_pki(directory: Path, kind: str, delegated: bool = True) -> Pki:
    root = devpki.make_ca("Response Test Root")
    ca = devpki.make_ca("Response Test CA", issuer=root)
    responder = (
        devpki.make_responder("Response Test OCSP", ca, key=devpki.new_key(kind))
        if delegated
        else ca
    )
    devpki.write_cert(directory / "root.pem", root.cert)
    devpki.write_cert(directory / "ca.pem", ca.cert)
    devpki.write_cert(directory / "responder.pem", responder.cert)
    return Pki(
        directory,
        root,
        ca,
        responder,
        ResponderIdentity.from_certificate(responder.cert),
        FileSigner(responder.key, directory / "responder.key"),
    )


@pytest.fixture(scope="module", params=["p256", "p384", "rsa2048"])
def any_pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("p256"), "p256")


def answer(
    cert_id: CertId,
    status: AnswerStatus = AnswerStatus.GOOD,
    revoked_at: dt.datetime | None = None,
    reason: Reason | None = None,
) -> SingleAnswer:
    return SingleAnswer(cert_id, status, revoked_at, reason, THIS_UPDATE, NEXT_UPDATE)


def check_common(
    pki: Pki, der: bytes, answers: Sequence[SingleAnswer], produced_at: dt.datetime = NOW
) -> ocsp.OCSPResponse:
    """Every field cryptography exposes that does not depend on the status."""
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.produced_at_utc == produced_at.replace(microsecond=0)
    assert response.responder_name is None
    # byKey: SHA-1 over the subjectPublicKey bits, which is also the RFC 5280 method-1 SKI.
    ski = x509.SubjectKeyIdentifier.from_public_key(pki.responder.cert.public_key())
    assert response.responder_key_hash == ski.digest == pki.identity.key_hash
    assert response.certificates == [pki.responder.cert]
    assert response.signature_algorithm_oid.dotted_string == (
        pki.signer.algorithm.identifier()["algorithm"].dotted
    )
    verify_signature(
        pki.responder.cert.public_key(),
        pki.signer.algorithm,
        response.signature,
        response.tbs_response_bytes,
    )
    singles = list(response.responses)
    assert len(singles) == len(answers)
    for single, expected in zip(singles, answers, strict=True):
        c = expected.cert_id
        assert single.serial_number == c.serial
        assert single.issuer_name_hash == c.issuer_name_hash
        assert single.issuer_key_hash == c.issuer_key_hash
        assert single.hash_algorithm.name == c.hash_algorithm.value
        assert single.this_update_utc == expected.this_update
        assert single.next_update_utc == expected.next_update
        assert c.der in der  # echoed byte for byte (RS1.4)
    # DER, not merely BER: asn1crypto re-encodes every value to the same bytes.
    assert asn1_ocsp.OCSPResponse.load(der, strict=True).dump(force=True) == der
    return response


def lint(der: bytes) -> list[tuple[str, str | None]]:
    """pkilint's OCSP response linter (what `lint_ocsp_response lint` runs), every severity."""
    validator = pkilint_ocsp.create_pkix_ocsp_response_validator_container(
        [
            pkilint_ocsp.create_response_decoder(),
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [],
    )
    results = validator.validate(loader.load_der_ocsp_response(der, "response").root)
    return [(f.finding.code, f.message) for r in results for f in r.finding_descriptions]


# One case per answer shape: (answers, expected status, revocation time, reason).


@dataclass(frozen=True)
class Case:
    id: str
    status: AnswerStatus
    revoked_at: dt.datetime | None = None
    reason: Reason | None = None
    expected_reason: x509.ReasonFlags | None = None


CASES = [
    Case("good", AnswerStatus.GOOD),
    Case("unknown", AnswerStatus.UNKNOWN),
    Case("revoked-no-reason", AnswerStatus.REVOKED, REVOKED_AT),
    # RFC 5280 5.3.1: unspecified is expressed by leaving revocationReason out.
    Case("revoked-unspecified", AnswerStatus.REVOKED, REVOKED_AT, Reason.unspecified),
    Case(
        "revoked-keyCompromise",
        AnswerStatus.REVOKED,
        REVOKED_AT,
        Reason.keyCompromise,
        x509.ReasonFlags.key_compromise,
    ),
    Case(
        "hold",
        AnswerStatus.REVOKED,
        REVOKED_AT,
        Reason.certificateHold,
        x509.ReasonFlags.certificate_hold,
    ),
    Case(
        "revoked-aACompromise",
        AnswerStatus.REVOKED,
        REVOKED_AT,
        Reason.aACompromise,
        x509.ReasonFlags.aa_compromise,
    ),
]

CERT_STATUS = {
    AnswerStatus.GOOD: ocsp.OCSPCertStatus.GOOD,
    AnswerStatus.REVOKED: ocsp.OCSPCertStatus.REVOKED,
    AnswerStatus.UNKNOWN: ocsp.OCSPCertStatus.UNKNOWN,
}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_answer_fields(pki: Pki, case: Case) -> None:
    cert_id = CertId.of(pki.ca.cert, 0x0123456789ABCDEF)
    answers = [answer(cert_id, case.status, case.revoked_at, case.reason)]
    der = await build_response(answers, pki.identity, pki.signer, NOW)

    response = check_common(pki, der, answers)
    assert response.certificate_status is CERT_STATUS[case.status]
    assert response.revocation_time_utc == case.revoked_at
    assert response.revocation_reason == case.expected_reason
    assert len(response.extensions) == 0
    assert len(response.single_extensions) == 0
    assert lint(der) == []


async def test_signatures(any_pki: Pki) -> None:
    """P-256, P-384 and RSA-2048 responder keys (check_common verifies the signature)."""
    answers = [answer(CertId.of(any_pki.ca.cert, 42))]
    der = await build_response(answers, any_pki.identity, any_pki.signer, NOW)
    response = check_common(any_pki, der, answers)
    assert response.signature_hash_algorithm is not None
    assert response.signature_hash_algorithm.name == any_pki.signer.algorithm.hash.name
    assert lint(der) == []


async def test_signed_by_the_ca_itself(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, "p256", delegated=False)
    answers = [answer(CertId.of(pki.ca.cert, 42))]
    der = await build_response(answers, pki.identity, pki.signer, NOW)
    assert check_common(pki, der, answers).certificates == [pki.ca.cert]
    openssl_verify(pki, der, ["-VAfile", str(pki.dir / "ca.pem")], [42])


async def test_extended_revoke(pki: Pki) -> None:
    """RFC 6960 2.2: a never-issued serial is revoked at the epoch for certificateHold, and
    the response carries id-pkix-ocsp-extended-revoke (NULL, non-critical, 4.4.8)."""
    never = SingleAnswer.extended_revoked(CertId.of(pki.ca.cert, 0xDEAD), THIS_UPDATE, NEXT_UPDATE)
    assert never.never_issued and never.revoked_at == NEVER_ISSUED_REVOKED_AT
    der = await build_response([never], pki.identity, pki.signer, NOW)

    response = check_common(pki, der, [never])
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert response.revocation_reason is x509.ReasonFlags.certificate_hold
    ext = response.extensions.get_extension_for_oid(EXTENDED_REVOKE)
    assert not ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension) and ext.value.value == b"\x05\x00"
    assert len(response.single_extensions) == 0
    assert lint(der) == []
    out = openssl_verify(pki, der, ["-VAfile", str(pki.dir / "responder.pem")], [0xDEAD])
    assert "Revocation Time: Jan  1 00:00:00 1970 GMT" in out


async def test_nonce_echo(pki: Pki) -> None:
    leaf = devpki.make_leaf("nonce.example", pki.ca, devpki.new_key())
    built = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(leaf, pki.ca.cert, hashes.SHA256())
        .add_extension(x509.OCSPNonce(b"\x5a" * 32), critical=False)
        .build()
    )
    request = parse_request(built.public_bytes(serialization.Encoding.DER))
    answers = [answer(request.cert_ids[0])]
    der = await build_response(answers, pki.identity, pki.signer, NOW, request.nonce)

    response = check_common(pki, der, answers)
    nonce = response.extensions.get_extension_for_class(x509.OCSPNonce)
    assert not nonce.critical
    assert nonce.value == built.extensions.get_extension_for_class(x509.OCSPNonce).value
    assert len(response.extensions) == 1
    assert lint(der) == []


async def test_bare_nonce_echoed_unchanged(pki: Pki) -> None:
    """A nonce sent without the inner OCTET STRING goes back exactly as it came."""
    answers = [answer(CertId.of(pki.ca.cert, 1))]
    der = await build_response(answers, pki.identity, pki.signer, NOW, b"\x9f" * 20)
    nonce_oid = bytes.fromhex("06092b0601050507300102")
    assert tlv(0x30, nonce_oid, tlv(0x04, b"\x9f" * 20)) in der
    assert ocsp.load_der_ocsp_response(der).certificate_status is ocsp.OCSPCertStatus.GOOD


async def test_nonce_and_extended_revoke_together(pki: Pki) -> None:
    answers = [
        answer(CertId.of(pki.ca.cert, 1)),
        SingleAnswer.extended_revoked(CertId.of(pki.ca.cert, 2), THIS_UPDATE, NEXT_UPDATE),
    ]
    der = await build_response(answers, pki.identity, pki.signer, NOW, b"\x04\x01\x07")
    response = check_common(pki, der, answers)
    assert [e.oid for e in response.extensions] == [OCSPExtensionOID.NONCE, EXTENDED_REVOKE]
    assert lint(der) == []


async def test_multiple_cert_ids_in_order(pki: Pki) -> None:
    answers = [
        answer(CertId.of(pki.ca.cert, 3, HashAlgorithm.SHA256), AnswerStatus.UNKNOWN),
        answer(CertId.of(pki.ca.cert, 1), AnswerStatus.REVOKED, REVOKED_AT, Reason.superseded),
        answer(CertId.of(pki.ca.cert, 2, HashAlgorithm.SHA512)),
    ]
    der = await build_response(answers, pki.identity, pki.signer, NOW)
    singles = list(check_common(pki, der, answers).responses)
    assert [s.certificate_status for s in singles] == [
        ocsp.OCSPCertStatus.UNKNOWN,
        ocsp.OCSPCertStatus.REVOKED,
        ocsp.OCSPCertStatus.GOOD,
    ]
    assert singles[1].revocation_reason is x509.ReasonFlags.superseded
    assert singles[1].revocation_time_utc == REVOKED_AT
    assert lint(der) == []
    out = openssl_verify(pki, der, ["-VAfile", str(pki.dir / "responder.pem")], [1])
    assert "0x1: revoked" in out and "Reason: superseded" in out


@pytest.mark.parametrize("algorithm", list(HashAlgorithm), ids=lambda a: a.value)
async def test_cert_id_hash_algorithms(pki: Pki, algorithm: HashAlgorithm) -> None:
    answers = [answer(CertId.of(pki.ca.cert, 0x7F, algorithm))]
    der = await build_response(answers, pki.identity, pki.signer, NOW)
    check_common(pki, der, answers)
    args = ["-VAfile", str(pki.dir / "responder.pem"), f"-{algorithm.value}"]
    assert "0x7f: good" in openssl_verify(pki, der, args, [0x7F])


def tlv(tag: int, *parts: bytes) -> bytes:
    contents = b"".join(parts)
    assert len(contents) < 0x80
    return bytes((tag, len(contents))) + contents


async def test_cert_id_echoed_as_received(pki: Pki) -> None:
    """A CertID with absent hash parameters (RFC 5754) comes back without them, though we
    would encode NULL ourselves."""
    ours = CertId.of(pki.ca.cert, 5)
    cert_id_der = tlv(
        0x30,
        tlv(0x30, bytes.fromhex("06052b0e03021a")),
        tlv(0x04, ours.issuer_name_hash),
        tlv(0x04, ours.issuer_key_hash),
        tlv(0x02, b"\x05"),
    )
    request = tlv(0x30, tlv(0x30, tlv(0x30, tlv(0x30, cert_id_der))))
    (cert_id,) = parse_request(request).cert_ids
    assert cert_id.der == cert_id_der != ours.der
    answers = [answer(cert_id)]
    der = await build_response(answers, pki.identity, pki.signer, NOW)
    check_common(pki, der, answers)


async def test_times_are_whole_seconds_in_utc(pki: Pki) -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    produced = dt.datetime(2030, 6, 1, 13, 14, 15, 999_999, tzinfo=cet)
    single = SingleAnswer(
        CertId.of(pki.ca.cert, 9),
        AnswerStatus.REVOKED,
        dt.datetime(2030, 5, 1, 0, 0, 0, 500_000, tzinfo=dt.UTC),
        None,
        dt.datetime(2030, 6, 1, 12, 0, 0, 123_456, tzinfo=dt.UTC),
        dt.datetime(2030, 6, 2, 12, 0, 0, tzinfo=cet),
    )
    der = await build_response([single], pki.identity, pki.signer, produced)
    response = ocsp.load_der_ocsp_response(der)
    assert response.produced_at_utc == dt.datetime(2030, 6, 1, 12, 14, 15, tzinfo=dt.UTC)
    assert response.revocation_time_utc == dt.datetime(2030, 5, 1, tzinfo=dt.UTC)
    assert response.this_update_utc == dt.datetime(2030, 6, 1, 12, tzinfo=dt.UTC)
    assert response.next_update_utc == dt.datetime(2030, 6, 2, 11, tzinfo=dt.UTC)
    assert b"20300601121415Z" in der
    assert lint(der) == []


async def test_identity_includes_chain(pki: Pki) -> None:
    identity = ResponderIdentity.from_certificate(pki.responder.cert, [pki.ca.cert])
    assert identity.key_hash == pki.identity.key_hash
    answers = [answer(CertId.of(pki.ca.cert, 1))]
    der = await build_response(answers, identity, pki.signer, NOW)
    assert ocsp.load_der_ocsp_response(der).certificates == [pki.responder.cert, pki.ca.cert]


# Error responses


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (ResponseStatus.malformedRequest, ocsp.OCSPResponseStatus.MALFORMED_REQUEST),
        (ResponseStatus.internalError, ocsp.OCSPResponseStatus.INTERNAL_ERROR),
        (ResponseStatus.tryLater, ocsp.OCSPResponseStatus.TRY_LATER),
        (ResponseStatus.sigRequired, ocsp.OCSPResponseStatus.SIG_REQUIRED),
        (ResponseStatus.unauthorized, ocsp.OCSPResponseStatus.UNAUTHORIZED),
    ],
)
def test_error_responses(status: ResponseStatus, expected: ocsp.OCSPResponseStatus) -> None:
    der = error_response(status)
    assert der == bytes((0x30, 0x03, 0x0A, 0x01, status.value))
    assert ocsp.load_der_ocsp_response(der).response_status is expected
    assert lint(der) == []


def test_no_error_response_for_success() -> None:
    with pytest.raises(ValueError):
        error_response(ResponseStatus.successful)


# Misuse is refused early


@pytest.mark.parametrize(
    "changes",
    [
        {"status": AnswerStatus.REVOKED},  # no revocation time
        {"revoked_at": REVOKED_AT},  # a time on a good answer
        {"reason": Reason.keyCompromise},  # a reason on a good answer
        {"status": AnswerStatus.REVOKED, "revoked_at": REVOKED_AT, "reason": Reason.removeFromCRL},
        {"next_update": THIS_UPDATE},
        {"never_issued": True},
    ],
)
def test_invalid_answers(pki: Pki, changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(answer(CertId.of(pki.ca.cert, 1)), **changes)


async def test_naive_times_and_empty_answers_refused(pki: Pki) -> None:
    naive = dt.datetime(2030, 1, 1)
    with pytest.raises(ValueError, match="timezone"):
        await build_response([answer(CertId.of(pki.ca.cert, 1))], pki.identity, pki.signer, naive)
    with pytest.raises(ValueError):
        await build_response([], pki.identity, pki.signer, NOW)


# openssl as a relying party


def openssl_verify(pki: Pki, der: bytes, trust: list[str], serials: list[int]) -> str:
    path = pki.dir / "response.der"
    path.write_bytes(der)
    args = ["openssl", "ocsp", "-respin", str(path), "-issuer", str(pki.dir / "ca.pem")]
    args += [*trust, "-no_nonce", "-resp_text"]
    for serial in serials:
        args += ["-serial", hex(serial)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "Response verify OK" in result.stderr, result.stderr
    return result.stdout


async def test_openssl_verifies(any_pki: Pki) -> None:
    answers = [
        answer(CertId.of(any_pki.ca.cert, 0x1001)),
        answer(
            CertId.of(any_pki.ca.cert, 0x1002),
            AnswerStatus.REVOKED,
            REVOKED_AT,
            Reason.keyCompromise,
        ),
        answer(CertId.of(any_pki.ca.cert, 0x1003), AnswerStatus.UNKNOWN),
    ]
    der = await build_response(answers, any_pki.identity, any_pki.signer, NOW)
    serials = [0x1001, 0x1002, 0x1003]
    # Trusting the responder certificate directly...
    out = openssl_verify(any_pki, der, ["-VAfile", str(any_pki.dir / "responder.pem")], serials)
    assert "0x1001: good" in out and "0x1002: revoked" in out and "0x1003: unknown" in out
    assert "Reason: keyCompromise" in out
    # ...and as a delegated responder chained to the root (RFC 6960 4.2.2.2).
    chain = ["-CAfile", str(any_pki.dir / "root.pem"), "-verify_other", str(any_pki.dir / "ca.pem")]
    openssl_verify(any_pki, der, chain, serials)


async def test_openssl_checks_nonce(pki: Pki, tmp_path: Path) -> None:
    request_path = tmp_path / "request.der"
    subprocess.run(
        ["openssl", "ocsp", "-issuer", str(pki.dir / "ca.pem"), "-serial", "0x77",
         "-reqout", str(request_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    request = parse_request(request_path.read_bytes())
    assert request.nonce is not None
    response_path = tmp_path / "response.der"

    def verify() -> str:
        # Without -serial: openssl would build a new request, with a new nonce.
        result = subprocess.run(
            ["openssl", "ocsp", "-reqin", str(request_path), "-respin", str(response_path),
             "-VAfile", str(pki.dir / "responder.pem")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "Response verify OK" in result.stderr
        return result.stderr

    answers = [answer(request.cert_ids[0])]
    response_path.write_bytes(
        await build_response(answers, pki.identity, pki.signer, NOW, request.nonce)
    )
    assert "nonce" not in verify().lower()
    # The check is live: leave the nonce out and openssl notices.
    response_path.write_bytes(await build_response(answers, pki.identity, pki.signer, NOW))
    assert "WARNING: no nonce in response" in verify()


# The lint harness itself finds problems


def test_lint_harness_reports_findings(pki: Pki) -> None:
    empty_certs = replace(pki.identity, certs=b"\xa0\x02\x30\x00")
    from ocspd.protocol.response import encode_response_data, encode_signed_response

    data = encode_response_data([answer(CertId.of(pki.ca.cert, 1))], empty_certs, NOW)
    der = encode_signed_response(
        data, pki.signer.algorithm, pki.signer.sign_sync(data), empty_certs
    )
    assert [code for code, _ in lint(der)] == ["pkix.ocsp_certs_sequence_is_empty"]
