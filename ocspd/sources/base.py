"""The one interface every layer implements, and the value it returns."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Protocol

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
    etag: str = field(init=False)

    def __post_init__(self) -> None:
        # Computed once per signed response, not per request served.
        object.__setattr__(self, "etag", '"' + hashlib.sha256(self.der).hexdigest()[:32] + '"')


class Source(Protocol):
    async def response(self, request: OcspRequest) -> Response:
        """Answer `request`, or raise MalformedRequest, Unauthorized, TryLater/Unavailable."""
        ...
