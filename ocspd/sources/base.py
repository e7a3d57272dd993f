"""The one interface every layer implements, and the value it returns."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from email.utils import format_datetime
from functools import cached_property
from typing import Protocol

from ocspd.audit.requests import answer_fields
from ocspd.protocol.request import OcspRequest
from ocspd.protocol.response import AnswerStatus


@dataclass(frozen=True)
class Response:
    """A signed OCSPResponse and what the HTTP layer needs to serve it."""

    der: bytes
    this_update: dt.datetime
    next_update: dt.datetime
    # One per CertID answered, for metrics.
    statuses: tuple[AnswerStatus, ...]
    # False for responses that echo a nonce: they are for one client only.
    cacheable: bool = True
    # For the audit record (RS3.1): the CertIDs answered, as the request sent them, and the
    # key hash of the responder certificate that signed.
    cert_ids: tuple[bytes, ...] = ()
    signer: bytes = b""

    # Computed on first use and kept with the response, so a cached response costs no hashing
    # or date formatting per request served.
    @cached_property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.der).digest()

    @cached_property
    def etag(self) -> str:
        return '"' + self.sha256.hex()[:32] + '"'

    @cached_property
    def audit_fields(self) -> bytes:
        """What this response answered, encoded for the audit record (RS3.1) once."""
        return answer_fields(
            self.sha256, self.signer, self.cert_ids, tuple(s.name.lower() for s in self.statuses)
        )

    @cached_property
    def cache_headers(self) -> dict[str, str]:
        """RFC 5019 6.2 headers except Cache-Control, whose max-age depends on the time."""
        return {
            "Last-Modified": format_datetime(self.this_update.astimezone(dt.UTC), usegmt=True),
            "Expires": format_datetime(self.next_update.astimezone(dt.UTC), usegmt=True),
            "ETag": self.etag,
        }

    @cached_property
    def header_lines(self) -> bytes:
        """cache_headers, encoded as HTTP header lines once per response."""
        return "".join(f"{k}: {v}\r\n" for k, v in self.cache_headers.items()).encode("latin-1")


class Source(Protocol):
    async def response(self, request: OcspRequest) -> Response:
        """Answer `request`, or raise MalformedRequest, Unauthorized, TryLater/Unavailable."""
        ...
