"""The issuers a responder serves, loaded once at start-up, indexed by CertID hashes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryptography import x509

from ocspd.protocol.request import CertId, HashAlgorithm
from ocspd.protocol.response import ResponderIdentity
from ocspd.signing.base import Signer
from ocspd.store.issuers import Issuer, subject_public_key_bits


@dataclass(frozen=True)
class ServedIssuer:
    """An issuer with everything signing needs prepared once: signer and encoded identity."""

    id: int
    name: str
    signer: Signer
    identity: ResponderIdentity
    signing_cert: x509.Certificate
    # The issuing CA's certificate (the same as signing_cert when the CA signs itself).
    ca_cert: x509.Certificate | None = None

    def seconds_until_expiry(self, now: dt.datetime) -> float:
        return (self.signing_cert.not_valid_after_utc - now).total_seconds()

    def seconds_until_ca_expiry(self, now: dt.datetime) -> float | None:
        if self.ca_cert is None:
            return None
        return (self.ca_cert.not_valid_after_utc - now).total_seconds()


class IssuerTable:
    """Finds the issuer of a CertID by (hash algorithm, issuerNameHash, issuerKeyHash)."""

    def __init__(self, served: Iterable[tuple[Issuer, ServedIssuer]]) -> None:
        self._by_hashes: dict[tuple[HashAlgorithm, bytes, bytes], ServedIssuer] = {}
        self._all: list[ServedIssuer] = []
        for issuer, served_issuer in served:
            self._all.append(served_issuer)
            name = issuer.ca_cert.subject.public_bytes()
            key = subject_public_key_bits(issuer.ca_cert)
            # RFC 6960 4.1.1: every hash algorithm a client may choose, computed up front.
            for algorithm in HashAlgorithm:
                self._by_hashes[(algorithm, algorithm.digest(name), algorithm.digest(key))] = (
                    served_issuer
                )

    def find(self, cert_id: CertId) -> ServedIssuer | None:
        return self._by_hashes.get(
            (cert_id.hash_algorithm, cert_id.issuer_name_hash, cert_id.issuer_key_hash)
        )

    def __iter__(self) -> Iterator[ServedIssuer]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)
