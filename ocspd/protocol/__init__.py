"""The OCSP wire format (RFC 6960): parsing requests, building responses."""

from ocspd.protocol.errors import MalformedRequest, UnsupportedHashAlgorithm
from ocspd.protocol.request import (
    DEFAULT_MAX_CERT_IDS,
    CertId,
    HashAlgorithm,
    OcspRequest,
    decode_get_path,
    parse_request,
)
from ocspd.protocol.response import (
    AnswerStatus,
    ResponderIdentity,
    ResponseStatus,
    SingleAnswer,
    build_response,
    error_response,
)

__all__ = [
    "DEFAULT_MAX_CERT_IDS",
    "AnswerStatus",
    "CertId",
    "HashAlgorithm",
    "MalformedRequest",
    "OcspRequest",
    "ResponderIdentity",
    "ResponseStatus",
    "SingleAnswer",
    "UnsupportedHashAlgorithm",
    "build_response",
    "decode_get_path",
    "error_response",
    "parse_request",
]
