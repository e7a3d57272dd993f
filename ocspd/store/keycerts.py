"""Which certificates carry TSP signing keys: CA and OCSP responder certificates (RM1.4).

RM1.4 puts their revocation under dual control. A status row counts as one when
- the certificate itself says so, seen when it is imported from a certificate file:
  basicConstraints cA=TRUE ('ca') or extended key usage id-kp-OCSPSigning ('ocsp'); or
- the issuers registry says so: it is the CA certificate of a registered issuer, issued by
  another registered issuer ('ca'), or the delegated responder certificate of a registered
  issuer ('ocsp').
Such rows carry certificates.key_use, which the database guard (sql/0004) checks and never
lets change. An openssl index line holds no certificate: a CA or responder certificate known
only from an index, and not registered as an issuer, is not recognised; import its file too.
"""

from __future__ import annotations

import enum

import asyncpg
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ocspd.certfiles import issued_by
from ocspd.model import serial_to_bytes
from ocspd.store.issuers import list_issuers


class KeyUse(enum.Enum):
    CA = "ca"
    OCSP = "ocsp"

    @property
    def title(self) -> str:
        return "a CA certificate" if self is KeyUse.CA else "an OCSP responder certificate"


def key_use_of(cert: x509.Certificate) -> KeyUse | None:
    """What the certificate's own extensions say its key is for."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return KeyUse.CA
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    return KeyUse.OCSP if ExtendedKeyUsageOID.OCSP_SIGNING in usages else None


async def registered_key_certificates(
    conn: asyncpg.Connection,
) -> dict[tuple[int, bytes], KeyUse]:
    """(issuer id, serial) of every CA and responder certificate the issuers table names."""
    registered = await list_issuers(conn, with_counts=False)
    found: dict[tuple[int, bytes], KeyUse] = {}
    for issuer in registered:
        if issuer.responder_cert is not None:
            # `issuer add` checked the responder certificate was issued by this CA.
            found[(issuer.id, serial_to_bytes(issuer.responder_cert.serial_number))] = KeyUse.OCSP
        for parent in registered:
            if parent.id != issuer.id and issued_by(issuer.ca_cert, parent.ca_cert):
                found[(parent.id, serial_to_bytes(issuer.ca_cert.serial_number))] = KeyUse.CA
    return found


async def mark_registered(conn: asyncpg.Connection) -> int:
    """Set key_use on status rows the registry identifies; returns how many were marked."""
    found = await registered_key_certificates(conn)
    if not found:
        return 0
    keys = list(found)
    status = await conn.execute(
        """UPDATE certificates c SET key_use = t.use
           FROM unnest($1::integer[], $2::bytea[], $3::text[]) AS t(issuer_id, serial, use)
           WHERE c.issuer_id = t.issuer_id AND c.serial = t.serial AND c.key_use IS NULL""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [found[k].value for k in keys],
    )
    return int(status.rsplit(" ", 1)[-1])
