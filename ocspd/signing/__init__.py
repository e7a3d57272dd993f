"""Signing keys behind one interface: PEM key files and PKCS#11 tokens (RFC 7512 URIs)."""

from ocspd.signing.base import SignatureAlgorithm, Signer, algorithm_for_key
from ocspd.signing.keys import open_signer

__all__ = ["SignatureAlgorithm", "Signer", "algorithm_for_key", "open_signer"]
