"""ocspd: an OCSP responder (RFC 6960) and CRL publisher (RFC 5280) for certificate authorities."""

__version__ = "0.1.0"
