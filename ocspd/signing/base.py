"""The Signer protocol and the signature-algorithm policy both backends share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from asn1crypto import algos, core
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from ocspd.errors import SigningKeyError

MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class SignatureAlgorithm:
    """A signature algorithm fit for purpose (RS2.2): RSA PKCS#1 v1.5 or ECDSA, SHA-2."""

    # asn1crypto's name for the AlgorithmIdentifier, e.g. "sha256_rsa", "sha384_ecdsa".
    name: str
    hash: hashes.HashAlgorithm

    def identifier(self) -> algos.SignedDigestAlgorithm:
        """The AlgorithmIdentifier to place in signed DER structures (no parameters for ECDSA,
        NULL for RSA, as RFC 5754 and RFC 4055 require)."""
        if self.name.endswith("_rsa"):
            return algos.SignedDigestAlgorithm({"algorithm": self.name, "parameters": core.Null()})
        return algos.SignedDigestAlgorithm({"algorithm": self.name})


SHA256_RSA = SignatureAlgorithm("sha256_rsa", hashes.SHA256())
SHA256_ECDSA = SignatureAlgorithm("sha256_ecdsa", hashes.SHA256())
SHA384_ECDSA = SignatureAlgorithm("sha384_ecdsa", hashes.SHA384())


def algorithm_for_key(public_key: PublicKeyTypes) -> SignatureAlgorithm:
    """Pick the signature algorithm for a key, refusing keys outside the policy."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise SigningKeyError(
                f"RSA key has {public_key.key_size} bits; at least {MIN_RSA_BITS} are required"
            )
        return SHA256_RSA
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if isinstance(public_key.curve, ec.SECP256R1):
            return SHA256_ECDSA
        if isinstance(public_key.curve, ec.SECP384R1):
            return SHA384_ECDSA
        raise SigningKeyError(
            f"EC curve {public_key.curve.name} is not allowed; use P-256 or P-384"
        )
    raise SigningKeyError(f"{type(public_key).__name__} keys are not supported; use RSA or ECDSA")


def verify_signature(
    public_key: PublicKeyTypes, algorithm: SignatureAlgorithm, signature: bytes, data: bytes
) -> None:
    """Verify as a relying party would; raises cryptography's InvalidSignature on mismatch."""
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), algorithm.hash)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(algorithm.hash))
    else:
        raise SigningKeyError(f"cannot verify with a {type(public_key).__name__}")


class Signer(Protocol):
    """Something that signs bytes with one private key.

    Callers assemble the DER of what they sign themselves (cryptography's builders cannot use
    a key they do not hold) and place `algorithm.identifier()` and the returned signature in it.
    """

    @property
    def algorithm(self) -> SignatureAlgorithm: ...

    @property
    def public_key(self) -> PublicKeyTypes: ...

    @property
    def description(self) -> str:
        """Where the key lives, for logs and errors; never contains a PIN."""
        ...

    async def sign(self, data: bytes) -> bytes:
        """Return the signature over `data` as X.509 carries it (ECDSA as a DER SEQUENCE)."""
        ...

    def close(self) -> None: ...
