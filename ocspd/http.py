"""The HTTP edge: decode, limits, cache headers, ETag/304, and errors mapped to OCSP statuses.

Paths are never normalised: base64 GET requests carry '/' and '+' that path cleaning would
break (RFC 6960 A.1, RFC 5019 5), so one catch-all route dispatches on the raw path.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from aiohttp import web

from ocspd.config import ResponderConfig
from ocspd.crlfiles import CrlFiles
from ocspd.errors import Unauthorized, Unavailable
from ocspd.metrics import ResponderMetrics
from ocspd.protocol.request import MalformedRequest, decode_get_path, parse_request
from ocspd.protocol.response import AnswerStatus, ResponseStatus, error_response
from ocspd.sources.base import Response, Source

OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
_METHODS = frozenset({"GET", "POST"})
_OUTCOMES = (
    "successful",
    "not_modified",
    "malformedRequest",
    "internalError",
    "tryLater",
    "unauthorized",
    "rejected",
)


class Readiness:
    """What /readyz reports: serving state the app's parts update."""

    def __init__(self) -> None:
        self.draining = False
        self.checks: dict[str, Callable[[], bool]] = {}

    def failing(self) -> list[str]:
        failed = ["draining"] if self.draining else []
        return failed + [name for name, check in self.checks.items() if not check()]


class OcspHandler:
    def __init__(
        self,
        source: Source,
        config: ResponderConfig,
        crls: CrlFiles,
        readiness: Readiness,
        metrics: ResponderMetrics,
        log: logging.Logger,
        clock: Callable[[], dt.datetime],
        lookup: Callable[[bytes], Response | None] = lambda body: None,
    ) -> None:
        self._source = source
        # A cache lookup by the raw request bytes, tried before parsing (see CacheSource).
        self._lookup = lookup
        self._crls = crls
        self._prefix = config.path
        self._max_bytes = config.max_request_bytes
        self._max_age = int(config.max_cache_age.total_seconds())
        self._readiness = readiness
        self._log = log
        self._clock = clock
        # Label children resolved once: labels() per request showed up in profiles.
        self._counted = {
            (m, o): metrics.requests.labels(m, o) for m in (*_METHODS, "other") for o in _OUTCOMES
        }
        self._timed = {m: metrics.latency.labels(m) for m in (*_METHODS, "other")}
        self._answered = {s: metrics.answers.labels(s.name.lower()) for s in AnswerStatus}

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if path == "/healthz":
            return web.Response(text="ok\n")
        if path == "/readyz":
            failing = self._readiness.failing()
            if failing:
                return web.Response(status=503, text="not ready: " + ", ".join(failing) + "\n")
            return web.Response(text="ready\n")
        if path.startswith("/crl/"):
            return self._crls(request, path.removeprefix("/crl/"))
        if not (path.startswith(self._prefix) or path + "/" == self._prefix):
            raise web.HTTPNotFound(text="not found\n")
        return await self._ocsp(request, path)

    async def _ocsp(self, request: web.Request, path: str) -> web.StreamResponse:
        started = time.perf_counter()
        method = request.method if request.method in _METHODS else "other"
        outcome = "internalError"
        try:
            response, outcome = await self._answer(request, path)
            return response
        except web.HTTPException:
            outcome = "rejected"  # not an OCSP request at all: wrong method or path
            raise
        finally:
            self._counted[method, outcome].inc()
            self._timed[method].observe(time.perf_counter() - started)
            if self._log.isEnabledFor(logging.DEBUG):
                self._log.debug(
                    "request",
                    extra={
                        "method": request.method,
                        "outcome": outcome,
                        "remote": request.remote,
                        "ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )

    async def _answer(self, request: web.Request, path: str) -> tuple[web.StreamResponse, str]:
        if request.method == "POST":
            if path + ("" if path.endswith("/") else "/") != self._prefix:
                raise web.HTTPNotFound(text="not found\n")
            if request.content_type != OCSP_REQUEST:
                return self._error(
                    ResponseStatus.malformedRequest, http_status=415
                ), "malformedRequest"
            if request.content_length is not None and request.content_length > self._max_bytes:
                return self._error(
                    ResponseStatus.malformedRequest, http_status=413
                ), "malformedRequest"
            body = await self._read_body(request)
            if len(body) > self._max_bytes:
                return self._error(
                    ResponseStatus.malformedRequest, http_status=413
                ), "malformedRequest"
        elif request.method == "GET":
            tail = path[len(self._prefix) :]
            if len(tail) > self._max_bytes * 2:
                return self._error(
                    ResponseStatus.malformedRequest, http_status=414
                ), "malformedRequest"
            try:
                body = decode_get_path(tail)
            except MalformedRequest:
                return self._error(ResponseStatus.malformedRequest), "malformedRequest"
        else:
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])

        answer = self._lookup(body)
        try:
            if answer is None:
                answer = await self._source.response(parse_request(body))
        except MalformedRequest:
            return self._error(ResponseStatus.malformedRequest), "malformedRequest"
        except Unauthorized:
            return self._error(ResponseStatus.unauthorized), "unauthorized"
        except Unavailable as e:
            self._log.warning("answered tryLater", extra={"error": str(e)})
            return self._error(ResponseStatus.tryLater), "tryLater"
        except Exception:
            # The last resort: an RFC 6960 status, never a traceback page (and log it).
            self._log.exception("internal error answering an OCSP request")
            return self._error(ResponseStatus.internalError), "internalError"
        for status in answer.statuses:
            self._answered[status].inc()
        if not answer.cacheable:
            return self._no_cache(
                web.Response(body=answer.der, content_type=OCSP_RESPONSE)
            ), "successful"
        headers = self._cache_headers(answer)
        if request.method == "GET" and answer.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers), "not_modified"
        return web.Response(
            body=answer.der, content_type=OCSP_RESPONSE, headers=headers
        ), "successful"

    async def _read_body(self, request: web.Request) -> bytes:
        """Up to max_request_bytes + 1 bytes: enough to tell an oversized body, never more.
        A body arrives in as many pieces as the network delivers, so read until the end."""
        body = bytearray()
        while len(body) <= self._max_bytes:
            chunk = await request.content.read(self._max_bytes + 1 - len(body))
            if not chunk:
                break
            body += chunk
        return bytes(body)

    def _cache_headers(self, answer: Response) -> dict[str, str]:
        # RFC 5019 6.2: max-age up to nextUpdate, capped so caches ask again well before.
        remaining = int((answer.next_update - self._clock()).total_seconds())
        max_age = max(0, min(remaining, self._max_age))
        headers = dict(answer.cache_headers)
        headers["Cache-Control"] = f"max-age={max_age}, public, no-transform, must-revalidate"
        return headers

    def _error(self, status: ResponseStatus, http_status: int = 200) -> web.Response:
        return self._no_cache(
            web.Response(
                status=http_status, body=error_response(status), content_type=OCSP_RESPONSE
            )
        )

    @staticmethod
    def _no_cache(response: web.Response) -> web.Response:
        response.headers["Cache-Control"] = "no-cache, no-store"
        return response
