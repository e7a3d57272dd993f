"""The outermost Source: refuses what no inner layer should see."""

from __future__ import annotations

from ocspd.errors import Unauthorized
from ocspd.protocol.request import OcspRequest
from ocspd.sources.base import Response, Source
from ocspd.sources.issuers import IssuerTable


class FilterSource:
    """Every CertID must name an issuer we serve, and all the same one: a response has one
    signer, and answering for an issuer we do not serve would be a lie (RFC 6960 2.3)."""

    def __init__(self, inner: Source, issuers: IssuerTable) -> None:
        self._inner = inner
        self._issuers = issuers

    async def response(self, request: OcspRequest) -> Response:
        first = None
        for cert_id in request.cert_ids:
            issuer = self._issuers.find(cert_id)
            if issuer is None:
                raise Unauthorized(
                    f"no served issuer has the hashes of CertID serial {cert_id.serial:x}"
                )
            if first is None:
                first = issuer
            elif issuer is not first:
                raise Unauthorized("the CertIDs of one request name different issuers")
        return await self._inner.response(request)
