"""The HTTP edge: decode, limits, cache headers, ETag/304, and errors mapped to OCSP statuses.

Paths are never normalised: base64 GET requests carry '/' and '+' that path cleaning would
break (RFC 6960 A.1, RFC 5019 5), so the handler dispatches on the raw request target.

A request whose bytes are in the cache is answered without parsing and without a task: the
handler returns the reply itself. Anything else returns a coroutine that parses, asks the
Source and maps its exceptions to OCSP statuses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable

from ocspd.audit.log import RequestAudit
from ocspd.audit.requests import answer_fields, field
from ocspd.config import ResponderConfig
from ocspd.crlfiles import CrlFiles
from ocspd.errors import Unauthorized, Unavailable
from ocspd.httpserver import Answer, HttpReply, HttpRequest, text_reply
from ocspd.metrics import ResponderMetrics
from ocspd.protocol.request import MalformedRequest, OcspRequest, RequestParser, decode_get_path
from ocspd.protocol.response import AnswerStatus, ResponseStatus, error_response
from ocspd.sources.base import Response, Source

OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
_METHODS = ("GET", "POST")
_OUTCOMES = (
    "successful",
    "not_modified",
    "malformedRequest",
    "internalError",
    "tryLater",
    "unauthorized",
    "rejected",
)
_NO_CACHE = b"Cache-Control: no-cache, no-store\r\n"
_CONTENT_TYPE = b"Content-Type: application/ocsp-response\r\n"
_NOT_FOUND = text_reply(404, "not found\n")
_HEALTHY = text_reply(200, "ok\n")
_READY = text_reply(200, "ready\n")
_NOT_OCSP = text_reply(405, "method not allowed\n", b"Allow: GET, POST\r\n")


def _ocsp_error(status: ResponseStatus, http_status: int = 200) -> HttpReply:
    # RFC 6960 2.3: an unsuccessful response is unsigned; never cached by anyone.
    return HttpReply(http_status, _CONTENT_TYPE + _NO_CACHE, error_response(status))


# Built once: an error answer is the same bytes every time.
_ERRORS: dict[tuple[ResponseStatus, int], HttpReply] = {
    (status, http_status): _ocsp_error(status, http_status)
    for status in ResponseStatus
    if status is not ResponseStatus.successful
    for http_status in (200, 413, 414, 415)
}


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
        lookup: Callable[[bytes | str], Response | None] = lambda body: None,
        alias: Callable[[str, bytes], None] = lambda path, body: None,
        audit: RequestAudit | None = None,
    ) -> None:
        self._source = source
        # A cache lookup by the raw request bytes or GET path, tried before decoding or
        # parsing them (see CacheSource.lookup_request and alias_request).
        self._lookup = lookup
        self._alias = alias
        self._parse = RequestParser().parse
        # One audit record per OCSP request (RS3.1); None when [audit] requests = off.
        self._audit = audit
        self._audit_refused = metrics.tally(metrics.audit_refused)
        self._hold = audit.hold if audit is not None else 0.0
        # Encoded once: the record fields that repeat (addresses of a connection, method and
        # outcome).
        self._address_fields: dict[tuple[str | None, str | None], bytes] = {}
        self._method_outcome = {
            (m, o): field(m.encode()) + field(o.encode())
            for m in (*_METHODS, "other")
            for o in _OUTCOMES
        }
        self._crls = crls
        self._prefix = config.path
        self._max_bytes = config.max_request_bytes
        self._max_age = int(config.max_cache_age.total_seconds())
        self._readiness = readiness
        self._log = log
        self._clock = clock
        # Label children resolved once, and counted in tallies flushed a few times a second: both
        # labels() and multiprocess inc() per request showed up in profiles.
        self._counted = {
            (m, o): metrics.tally(metrics.requests.labels(m, o))
            for m in (*_METHODS, "other")
            for o in _OUTCOMES
        }
        self._timed = {
            m: metrics.tally_histogram(metrics.latency.labels(m)) for m in (*_METHODS, "other")
        }
        self._answered = {
            s: metrics.tally(metrics.answers.labels(s.name.lower())) for s in AnswerStatus
        }

    def __call__(self, request: HttpRequest) -> Answer:
        path = request.target.split("?", 1)[0]
        if path.startswith(self._prefix) and not path.startswith(("/healthz", "/readyz", "/crl/")):
            return self._ocsp(request, path)
        if path == "/healthz":
            return _HEALTHY
        if path == "/readyz":
            failing = self._readiness.failing()
            if failing:
                return text_reply(503, "not ready: " + ", ".join(failing) + "\n")
            return _READY
        if path.startswith("/crl/"):
            return self._crls(request, path.removeprefix("/crl/"))
        if path + "/" == self._prefix:
            return self._ocsp(request, path)
        return _NOT_FOUND

    def refusal(self, http_status: int, request: HttpRequest) -> HttpReply:
        """The answer to a request the HTTP server refused before the handler saw it. A body
        over the cap is still an OCSP request: it gets malformedRequest, counted as such.
        Either way the refusal is on record (RS3.1)."""
        if http_status in (413, 414):
            reply = _ERRORS[ResponseStatus.malformedRequest, http_status]
            outcome = "malformedRequest"
        else:
            reply = text_reply(http_status, f"request refused ({http_status})\n")
            outcome = "rejected"
        method = request.method if request.method in _METHODS else "other"
        return self._done(request, method, outcome, time.perf_counter(), reply)

    def _ocsp(self, request: HttpRequest, path: str, held_since: float | None = None) -> Answer:
        started = time.perf_counter() if held_since is None else held_since
        method = request.method
        if self._audit is not None and self._audit.refusing:
            # Audit storage is behind and the policy is tryLater: answer nothing that could
            # not be put on record (AA1.1 e). First wait up to `[audit] hold` for room (why:
            # AuditConfig.hold).
            if held_since is None and self._hold > 0:
                return self._held(request, path, started)
            self._audit_refused.inc()
            return self._done(
                request, "other", "tryLater", started, _ERRORS[ResponseStatus.tryLater, 200]
            )
        if method == "GET":
            tail = path[len(self._prefix) :]
            answer = self._lookup(tail)
            if answer is not None:
                return self._served(request, method, answer, started)
            if len(tail) > self._max_bytes * 2:
                return self._done(
                    request, method, "malformedRequest", started, _ERRORS[_MALFORMED, 414]
                )
            try:
                body = decode_get_path(tail)
            except MalformedRequest:
                return self._done(
                    request, method, "malformedRequest", started, _ERRORS[_MALFORMED, 200]
                )
            return self._answer(request, method, body, started, alias=tail)
        if method == "POST":
            if path + ("" if path.endswith("/") else "/") != self._prefix:
                return _NOT_FOUND
            content_type = request.headers.get("content-type", "")
            if content_type.split(";", 1)[0].strip().lower() != OCSP_REQUEST:
                return self._done(
                    request, method, "malformedRequest", started, _ERRORS[_MALFORMED, 415]
                )
            body = request.body
            if len(body) > self._max_bytes:
                return self._done(
                    request, method, "malformedRequest", started, _ERRORS[_MALFORMED, 413]
                )
            answer = self._lookup(body)
            if answer is not None:
                return self._served(request, method, answer, started)
            return self._answer(request, method, body, started)
        return self._done(request, "other", "rejected", started, _NOT_OCSP)

    async def _held(self, request: HttpRequest, path: str, started: float) -> HttpReply:
        assert self._audit is not None
        await self._audit.wait_for_room(self._hold)
        answer = self._ocsp(request, path, held_since=started)
        return answer if isinstance(answer, HttpReply) else await answer

    async def _answer(
        self,
        request: HttpRequest,
        method: str,
        body: bytes,
        started: float,
        alias: str | None = None,
    ) -> HttpReply:
        parsed: OcspRequest | None = None
        try:
            parsed = self._parse(body)
            answer = await self._source.response(parsed)
            if alias is not None:
                self._alias(alias, body)
        except MalformedRequest:
            return self._done(
                request, method, "malformedRequest", started, _ERRORS[_MALFORMED, 200]
            )
        except Unauthorized:
            return self._failed(request, method, "unauthorized", started, parsed)
        except Unavailable as e:
            self._log.warning("answered tryLater", extra={"error": str(e)})
            return self._failed(request, method, "tryLater", started, parsed)
        except Exception:
            # The last resort: an RFC 6960 status, never a traceback page (and log it).
            self._log.exception("internal error answering an OCSP request")
            return self._failed(request, method, "internalError", started, parsed)
        return self._served(request, method, answer, started, parsed.nonce is not None)

    def _failed(
        self,
        request: HttpRequest,
        method: str,
        outcome: str,
        started: float,
        parsed: OcspRequest | None,
    ) -> HttpReply:
        reply = _ERRORS[ResponseStatus[outcome], 200]
        if parsed is None:
            return self._done(request, method, outcome, started, reply)
        return self._done(
            request,
            method,
            outcome,
            started,
            reply,
            cert_ids=tuple(c.der for c in parsed.cert_ids),
            nonce=parsed.nonce is not None,
        )

    def _served(
        self,
        request: HttpRequest,
        method: str,
        answer: Response,
        started: float,
        nonce: bool = False,
    ) -> HttpReply:
        for status in answer.statuses:
            self._answered[status].inc()
        if not answer.cacheable:
            reply = HttpReply(200, _CONTENT_TYPE + _NO_CACHE, answer.der)
            return self._done(request, method, "successful", started, reply, answer, nonce=nonce)
        # RFC 5019 6.2: max-age up to nextUpdate, capped so caches ask again well before.
        remaining = int((answer.next_update - self._clock()).total_seconds())
        cache_control = b"Cache-Control: max-age=%d, public, no-transform, must-revalidate\r\n" % (
            max(0, min(remaining, self._max_age))
        )
        if method == "GET" and answer.etag in request.headers.get("if-none-match", ""):
            reply = HttpReply(304, cache_control + answer.header_lines)
            return self._done(request, method, "not_modified", started, reply, answer, nonce=nonce)
        reply = HttpReply(200, _CONTENT_TYPE + cache_control + answer.header_lines, answer.der)
        return self._done(request, method, "successful", started, reply, answer, nonce=nonce)

    def _addresses(self, request: HttpRequest) -> bytes:
        if len(self._address_fields) > 10_000:
            self._address_fields.clear()  # many clients: start over rather than grow
        encoded = field((request.remote or "").encode()) + field((request.local or "").encode())
        self._address_fields[request.remote, request.local] = encoded
        return encoded

    def _done(
        self,
        request: HttpRequest,
        method: str,
        outcome: str,
        started: float,
        reply: HttpReply,
        answer: Response | None = None,
        cert_ids: tuple[bytes, ...] = (),
        nonce: bool = False,
    ) -> HttpReply:
        """Counts, times, logs (at debug) and puts on record (RS3.1) one OCSP request."""
        self._counted[method, outcome].inc()
        elapsed = time.perf_counter() - started
        self._timed[method].observe(elapsed)
        audit = self._audit
        if audit is not None:
            if answer is not None:
                # A 304 sent no body: the record names the response its ETag stands for.
                answered = answer.audit_fields
            else:
                answered = answer_fields(hashlib.sha256(reply.body).digest(), b"", cert_ids, ())
            addresses = self._address_fields.get((request.remote, request.local))
            if addresses is None:
                addresses = self._addresses(request)
            audit.record(nonce, addresses, self._method_outcome[method, outcome], answered)
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(
                "request",
                extra={
                    "method": method,
                    "outcome": outcome,
                    "remote": request.remote,
                    "ms": round(elapsed * 1000, 3),
                },
            )
        return reply


_MALFORMED = ResponseStatus.malformedRequest
