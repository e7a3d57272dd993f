"""Building OCSP responses (RFC 6960 4.2) as DER, by concatenating precomputed pieces.

Everything that depends only on the responder (responderID, certs) or is constant is encoded
once; per response we encode the SingleResponses, producedAt and extensions, sign, and wrap.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ocspd.model import Reason
from ocspd.protocol import der
from ocspd.protocol.request import CertId
from ocspd.signing.base import SignatureAlgorithm, Signer
from ocspd.store.issuers import subject_public_key_bits


class ResponseStatus(enum.IntEnum):
    """OCSPResponseStatus (RFC 6960 4.2.1); 4 is not used."""

    successful = 0
    malformedRequest = 1
    internalError = 2
    tryLater = 3
    sigRequired = 5
    unauthorized = 6


# An error response is the bare status: no responseBytes, no signature (4.2.1).
_ERROR_RESPONSES: dict[ResponseStatus, bytes] = {
    status: der.tlv(der.SEQUENCE, der.tlv(der.ENUMERATED, bytes((status,))))
    for status in ResponseStatus
    if status is not ResponseStatus.successful
}


def error_response(status: ResponseStatus) -> bytes:
    """The unsigned OCSPResponse for a non-successful status."""
    encoded = _ERROR_RESPONSES.get(status)
    if encoded is None:
        raise ValueError("a successful response needs answers; use build_response")
    return encoded


class AnswerStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


# RFC 6960 2.2: a never-issued serial may be answered "revoked" on 1970-01-01 for
# certificateHold, with the extended-revoke extension in the response.
NEVER_ISSUED_REVOKED_AT = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class SingleAnswer:
    """The status of one CertID: one SingleResponse (RFC 6960 4.2.1).

    `reason` None or unspecified omits revocationReason (RFC 5280 5.3.1: absent rather than
    unspecified). `never_issued` marks an extended-revoke answer (RFC 6960 2.2); build it with
    `extended_revoked`.
    """

    cert_id: CertId
    status: AnswerStatus
    revoked_at: dt.datetime | None
    reason: Reason | None
    this_update: dt.datetime
    # Always present (pkio71): without it clients may cache the answer indefinitely.
    next_update: dt.datetime
    never_issued: bool = False

    def __post_init__(self) -> None:
        if (self.status is AnswerStatus.REVOKED) != (self.revoked_at is not None):
            raise ValueError("revoked_at is required for, and only for, a revoked answer")
        if self.reason is not None and self.status is not AnswerStatus.REVOKED:
            raise ValueError("only a revoked answer has a reason")
        if self.reason is Reason.removeFromCRL:
            raise ValueError("removeFromCRL only exists in delta CRLs; the answer is good")
        if self.never_issued and (
            self.revoked_at != NEVER_ISSUED_REVOKED_AT or self.reason is not Reason.certificateHold
        ):
            raise ValueError("a never-issued answer is revoked on 1970-01-01 for certificateHold")
        if not self.this_update < self.next_update:
            raise ValueError("next_update must be after this_update")

    @classmethod
    def extended_revoked(
        cls, cert_id: CertId, this_update: dt.datetime, next_update: dt.datetime
    ) -> SingleAnswer:
        """RFC 6960 2.2: "revoked" for a serial the CA never issued."""
        return cls(
            cert_id,
            AnswerStatus.REVOKED,
            NEVER_ISSUED_REVOKED_AT,
            Reason.certificateHold,
            this_update,
            next_update,
            never_issued=True,
        )


@dataclass(frozen=True)
class ResponderIdentity:
    """What a response says about its signer, encoded once per responder certificate."""

    # SHA-1 of the responder's subjectPublicKey BIT STRING value (RFC 6960 4.2.1 KeyHash).
    key_hash: bytes
    # ResponderID byKey: [2] EXPLICIT KeyHash.
    responder_id: bytes
    # BasicOCSPResponse.certs: [0] EXPLICIT SEQUENCE OF Certificate.
    certs: bytes

    @classmethod
    def from_certificate(
        cls, responder_cert: x509.Certificate, chain: Sequence[x509.Certificate] = ()
    ) -> ResponderIdentity:
        """`responder_cert` signs the responses: a delegated responder certificate (4.2.2.2,
        which clients need in certs) or the CA itself (harmless to include). `chain` adds
        further certificates after it."""
        key_hash = hashlib.sha1(subject_public_key_bits(responder_cert)).digest()
        certificates = b"".join(
            c.public_bytes(serialization.Encoding.DER) for c in (responder_cert, *chain)
        )
        return cls(
            key_hash=key_hash,
            responder_id=der.tlv(der.context(2), der.tlv(der.OCTET_STRING, key_hash)),
            certs=der.tlv(der.context(0), der.tlv(der.SEQUENCE, certificates)),
        )


_BASIC_RESPONSE_TYPE = der.oid("1.3.6.1.5.5.7.48.1.1")  # id-pkix-ocsp-basic
_SUCCESSFUL = der.tlv(der.ENUMERATED, b"\x00")
_NONCE_OID = der.oid("1.3.6.1.5.5.7.48.1.2")  # id-pkix-ocsp-nonce
# id-pkix-ocsp-extended-revoke, non-critical, extnValue NULL (RFC 6960 4.4.8).
_EXTENDED_REVOKE = der.tlv(
    der.SEQUENCE,
    der.oid("1.3.6.1.5.5.7.48.1.9") + der.tlv(der.OCTET_STRING, der.tlv(der.NULL, b"")),
)
# CertStatus (4.2.1): good [0] IMPLICIT NULL, unknown [2] IMPLICIT UnknownInfo (NULL).
_GOOD = der.tlv(der.context(0, constructed=False), b"")
_UNKNOWN = der.tlv(der.context(2, constructed=False), b"")
_REVOKED_TAG = der.context(1)  # [1] IMPLICIT RevokedInfo, a SEQUENCE
# revocationReason [0] EXPLICIT CRLReason (ENUMERATED), one encoding per reason.
_REASONS = {
    reason: der.tlv(der.context(0), der.tlv(der.ENUMERATED, bytes((reason,))))
    for reason in Reason
    if reason is not Reason.unspecified
}
_NEXT_UPDATE_TAG = der.context(0)  # nextUpdate [0] EXPLICIT

_signature_algorithms: dict[str, bytes] = {}


def _algorithm_identifier(algorithm: SignatureAlgorithm) -> bytes:
    encoded = _signature_algorithms.get(algorithm.name)
    if encoded is None:
        encoded = _signature_algorithms[algorithm.name] = algorithm.identifier().dump()
    return encoded


def _generalized_time(when: dt.datetime) -> bytes:
    """GeneralizedTime in UTC, whole seconds (RFC 5280 4.1.2.5.2: no fractions)."""
    if when.tzinfo is None:
        raise ValueError("OCSP times must be timezone-aware")
    t = when.astimezone(dt.UTC)
    text = b"%04d%02d%02d%02d%02d%02dZ" % (t.year, t.month, t.day, t.hour, t.minute, t.second)
    return der.tlv(der.GENERALIZED_TIME, text)


def _single_response(answer: SingleAnswer) -> bytes:
    if answer.status is AnswerStatus.GOOD:
        status = _GOOD
    elif answer.status is AnswerStatus.UNKNOWN:
        status = _UNKNOWN
    else:
        assert answer.revoked_at is not None  # checked in SingleAnswer.__post_init__
        info = _generalized_time(answer.revoked_at)
        if answer.reason is not None and answer.reason is not Reason.unspecified:
            info += _REASONS[answer.reason]
        status = der.tlv(_REVOKED_TAG, info)
    return der.tlv(
        der.SEQUENCE,
        answer.cert_id.der  # exactly as received (RS1.4)
        + status
        + _generalized_time(answer.this_update)
        + der.tlv(_NEXT_UPDATE_TAG, _generalized_time(answer.next_update)),
    )


@dataclass(frozen=True)
class ResponseBody:
    """ResponseData without its nonce: the same bytes for every nonce signed in one second,
    so a responder signing many nonce requests for one certificate encodes it once."""

    fields: bytes  # responderID, producedAt, responses
    extended_revoke: bool  # a never-issued answer: the extension goes with it (2.2)

    @classmethod
    def encode(
        cls, answers: Sequence[SingleAnswer], identity: ResponderIdentity, produced_at: dt.datetime
    ) -> ResponseBody:
        if not answers:
            raise ValueError("a response needs at least one answer")
        return cls(
            # version v1 is the DEFAULT, so DER omits it.
            identity.responder_id
            + _generalized_time(produced_at)
            + der.tlv(der.SEQUENCE, b"".join(_single_response(a) for a in answers)),
            any(a.never_issued for a in answers),
        )


def encode_response_data(
    answers: Sequence[SingleAnswer] | ResponseBody,
    identity: ResponderIdentity,
    produced_at: dt.datetime,
    nonce: bytes | None = None,
) -> bytes:
    """The DER of ResponseData (tbsResponseData), the bytes the signature covers. `answers`
    may come pre-encoded (ResponseBody.encode with the same identity and produced_at)."""
    encoded = (
        answers
        if isinstance(answers, ResponseBody)
        else ResponseBody.encode(answers, identity, produced_at)
    )
    extensions = b""
    if nonce is not None:
        # The request's extnValue contents, unchanged (4.4.1).
        extensions += der.tlv(der.SEQUENCE, _NONCE_OID + der.tlv(der.OCTET_STRING, nonce))
    if encoded.extended_revoke:
        extensions += _EXTENDED_REVOKE  # required with a never-issued answer (2.2)
    body = encoded.fields
    if extensions:
        body += der.tlv(der.context(1), der.tlv(der.SEQUENCE, extensions))
    return der.tlv(der.SEQUENCE, body)


def encode_signed_response(
    response_data: bytes,
    algorithm: SignatureAlgorithm,
    signature: bytes,
    identity: ResponderIdentity,
) -> bytes:
    """Wrap signed ResponseData in BasicOCSPResponse and a successful OCSPResponse."""
    basic = der.tlv(
        der.SEQUENCE,
        response_data
        + _algorithm_identifier(algorithm)
        + der.tlv(der.BIT_STRING, b"\x00" + signature)  # no unused bits
        + identity.certs,
    )
    response_bytes = der.tlv(der.SEQUENCE, _BASIC_RESPONSE_TYPE + der.tlv(der.OCTET_STRING, basic))
    return der.tlv(der.SEQUENCE, _SUCCESSFUL + der.tlv(der.context(0), response_bytes))


async def build_response(
    answers: Sequence[SingleAnswer] | ResponseBody,
    identity: ResponderIdentity,
    signer: Signer,
    produced_at: dt.datetime,
    nonce: bytes | None = None,
) -> bytes:
    """A signed, successful OCSPResponse answering `answers` in order.

    `signer` must hold the key of the certificate `identity` was built from.
    """
    response_data = encode_response_data(answers, identity, produced_at, nonce)
    signature = await signer.sign(response_data)
    return encode_signed_response(response_data, signer.algorithm, signature, identity)
