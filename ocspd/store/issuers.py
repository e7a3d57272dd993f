"""Issuers: CA certificates with the CertID hashes that find them, and their responder keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import asyncpg
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ocspd.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class CertIdHashes:
    """RFC 6960 4.1.1: issuerNameHash over the DER subject, issuerKeyHash over the key bits."""

    name_sha1: bytes
    key_sha1: bytes
    name_sha256: bytes
    key_sha256: bytes

    @classmethod
    def of(cls, ca_cert: x509.Certificate) -> CertIdHashes:
        name = ca_cert.subject.public_bytes()
        key_bits = subject_public_key_bits(ca_cert)
        return cls(
            name_sha1=hashlib.sha1(name).digest(),
            key_sha1=hashlib.sha1(key_bits).digest(),
            name_sha256=hashlib.sha256(name).digest(),
            key_sha256=hashlib.sha256(key_bits).digest(),
        )


def subject_public_key_bits(cert: x509.Certificate) -> bytes:
    """The value of the subjectPublicKey BIT STRING (no tag, length or unused-bits octet)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bits: bytes = asn1_x509.PublicKeyInfo.load(spki)["public_key"].contents[1:]
    return bits


@dataclass(frozen=True)
class Issuer:
    id: int
    name: str
    ca_cert: x509.Certificate
    responder_cert: x509.Certificate | None
    responder_key: str
    hashes: CertIdHashes
    certificate_count: int = 0
    # The CA key for CRLs (CG1.4); None when the CA signs its own responses with responder_key.
    ca_key: str | None = None

    @property
    def signing_cert(self) -> x509.Certificate:
        """The certificate whose key signs this issuer's OCSP responses."""
        return self.responder_cert or self.ca_cert

    @property
    def delegated(self) -> bool:
        return self.responder_cert is not None

    @property
    def crl_key(self) -> str | None:
        """The key that signs this issuer's CRLs, if one is configured."""
        return self.ca_key or (None if self.delegated else self.responder_key)


_COLUMNS = """
    SELECT i.id, i.name, i.ca_cert_der, i.responder_cert_der, i.responder_key, i.ca_key,
           i.name_sha1, i.key_sha1, i.name_sha256, i.key_sha256
"""
_COUNT = ", (SELECT count(*) FROM certificates c WHERE c.issuer_id = i.id) AS certificate_count"
_SELECT = _COLUMNS + _COUNT + " FROM issuers i"


def _from_row(row: asyncpg.Record) -> Issuer:
    responder_der = row["responder_cert_der"]
    return Issuer(
        id=row["id"],
        name=row["name"],
        ca_cert=x509.load_der_x509_certificate(row["ca_cert_der"]),
        responder_cert=x509.load_der_x509_certificate(responder_der) if responder_der else None,
        responder_key=row["responder_key"],
        hashes=CertIdHashes(
            row["name_sha1"], row["key_sha1"], row["name_sha256"], row["key_sha256"]
        ),
        certificate_count=row.get("certificate_count", 0),
        ca_key=row["ca_key"],
    )


async def list_issuers(conn: asyncpg.Connection, with_counts: bool = True) -> list[Issuer]:
    """All issuers; counting certificates scans them, so the responder skips it."""
    select = _SELECT if with_counts else _COLUMNS + " FROM issuers i"
    return [_from_row(r) for r in await conn.fetch(select + " ORDER BY i.name")]


async def get_issuer(conn: asyncpg.Connection, name: str) -> Issuer:
    row = await conn.fetchrow(_SELECT + " WHERE i.name = $1", name)
    if row is None:
        known = [r["name"] for r in await conn.fetch("SELECT name FROM issuers ORDER BY name")]
        hint = (
            f"; known issuers: {', '.join(known)}"
            if known
            else "; none is registered yet (ocspd issuer add)"
        )
        raise NotFound(f"no issuer named {name!r}{hint}")
    return _from_row(row)


async def add_issuer(
    conn: asyncpg.Connection,
    name: str,
    ca_cert: x509.Certificate,
    responder_cert: x509.Certificate | None,
    responder_key: str,
    ca_key: str | None = None,
) -> Issuer:
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM issuers WHERE name = $1", name):
            raise InvalidInput(f"an issuer named {name!r} already exists")
        der = ca_cert.public_bytes(serialization.Encoding.DER)
        existing = await conn.fetchval("SELECT name FROM issuers WHERE ca_cert_der = $1", der)
        if existing:
            raise InvalidInput(f"this CA certificate is already registered as issuer {existing!r}")
        hashes = CertIdHashes.of(ca_cert)
        spki = ca_cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        await conn.execute(
            """INSERT INTO issuers (name, ca_cert_der, subject_der, spki_der,
                   name_sha1, key_sha1, name_sha256, key_sha256, not_before, not_after,
                   responder_cert_der, responder_key, ca_key)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
            name,
            der,
            ca_cert.subject.public_bytes(),
            spki,
            hashes.name_sha1,
            hashes.key_sha1,
            hashes.name_sha256,
            hashes.key_sha256,
            ca_cert.not_valid_before_utc,
            ca_cert.not_valid_after_utc,
            responder_cert.public_bytes(serialization.Encoding.DER) if responder_cert else None,
            responder_key,
            ca_key,
        )
    return await get_issuer(conn, name)


def validity_text(cert: x509.Certificate) -> str:
    fmt = "%Y-%m-%d"
    return f"{cert.not_valid_before_utc:{fmt}}..{cert.not_valid_after_utc:{fmt}}"
