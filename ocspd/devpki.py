"""A throwaway PKI for the demo and the tests: root, issuing CA, delegated responder, leaves.

Never for production: keys are generated in software and written to files.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey


def new_key(kind: str = "p256") -> PrivateKey:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:] or 2048))
    raise ValueError(f"unknown key kind {kind!r}")


def random_serial() -> int:
    # pkio177: at least 64 random bits; 127 bits keeps the DER encoding within 16 octets.
    return secrets.randbits(127) | 1


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ocspd demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    return hashes.SHA256()


def _builder(
    subject: x509.Name,
    issuer: Issued | None,
    public_key: PrivateKey,
    serial: int | None,
    not_before: dt.datetime,
    days: float,
) -> x509.CertificateBuilder:
    issuer_name = issuer.cert.subject if issuer else subject
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key.public_key())
        .serial_number(serial or random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key.public_key()), critical=False
        )
    )
    if issuer:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    return b


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)


def make_ca(
    common_name: str,
    issuer: Issued | None = None,
    key: PrivateKey | None = None,
    days: float = 3650,
    not_before: dt.datetime | None = None,
) -> Issued:
    key = key or new_key()
    b = _builder(_name(common_name), issuer, key, None, not_before or _now(), days)
    b = b.add_extension(
        x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True
    )
    b = b.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    signer = issuer.key if issuer else key
    return Issued(b.sign(signer, _hash_for(signer)), key)


def make_responder(
    common_name: str,
    ca: Issued,
    key: PrivateKey | None = None,
    days: float = 365,
    not_before: dt.datetime | None = None,
) -> Issued:
    """A delegated OCSP responder certificate (RFC 6960 4.2.2.2) with id-pkix-ocsp-nocheck."""
    key = key or new_key()
    b = _builder(_name(common_name), ca, key, None, not_before or _now(), days)
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    b = b.add_extension(x509.OCSPNoCheck(), critical=False)
    b = b.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    return Issued(b.sign(ca.key, _hash_for(ca.key)), key)


def make_leaf(
    common_name: str,
    ca: Issued,
    key: PrivateKey,
    serial: int | None = None,
    days: float = 90,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """A TLS server certificate; leaves may share one key to keep large test sets cheap."""
    b = _builder(_name(common_name), ca, key, serial, not_before or _now(), days)
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
    return b.sign(ca.key, _hash_for(ca.key))


def write_cert(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def write_key(path: Path, key: PrivateKey) -> Path:
    """Write an unencrypted PKCS#8 PEM key readable by the owner only."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path
