"""Errors raised while reading OCSP requests; the HTTP layer maps them to OCSPResponseStatus."""

from ocspd.errors import OcspdError


class MalformedRequest(OcspdError):
    """The request is not one we can answer: bad DER, wrong structure or out-of-policy values.

    RFC 6960 4.2.1: answered with malformedRequest. The message is for logs only.
    """


class UnsupportedHashAlgorithm(MalformedRequest):
    """A CertID uses a hash algorithm we do not compute.

    Kept distinct so the caller chooses the answer: RFC 6960 leaves it open, and many
    responders send unauthorized (4.2.1) rather than malformedRequest.
    """
