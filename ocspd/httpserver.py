"""A small HTTP/1.1 server for the responder's listener: llhttp (httptools) parsing on uvloop.

Why not aiohttp's web server here: an OCSP response served from the cache is a dict lookup
and a few pre-encoded bytes, and aiohttp's request and response objects cost several times
that (bench/RESULTS.md). This server does only what an OCSP and CRL endpoint needs:

- GET and POST with Content-Length or chunked bodies, keep-alive, HTTP/1.0, pipelining
  (answers leave in request order), `Expect: 100-continue`;
- limits on the request line and headers, on the body (checked against Content-Length
  before reading it and while reading it), and on pipelined requests waiting per connection;
- deadlines for a request to arrive in full and for an idle keep-alive connection, so a slow
  or silent client holds a socket, never a worker;
- a handler that may answer at once (a cache hit is written without creating a task) or
  return an awaitable;
- a graceful close: stop accepting, let in-flight requests finish, then close idle sockets.

Paths reach the handler exactly as sent (RFC 6960 A.1 GETs carry base64's '/' and '+').
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol, cast

import httptools


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    # The request target as sent, query included, never normalised.
    target: str
    # Header names in lower case; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes
    remote: str | None
    local: str | None = None  # the address the client connected to


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    # Pre-encoded header lines ("Name: value\r\n" each) besides Date, Content-Length and
    # Connection, which the server adds.
    headers: bytes = b""
    body: bytes = b""
    # HEAD: the headers of the GET answer, Content-Length included, and no body.
    head_only: bool = False


def header_lines(headers: dict[str, str]) -> bytes:
    """Encodes headers once, for replies built from them many times."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")


def text_reply(status: int, text: str, extra: bytes = b"") -> HttpReply:
    return HttpReply(
        status,
        b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-cache, no-store\r\n" + extra,
        text.encode(),
    )


Answer = HttpReply | Awaitable[HttpReply]


class Handler(Protocol):
    def __call__(self, request: HttpRequest) -> Answer: ...


@dataclass(frozen=True)
class Limits:
    max_body: int = 10_000
    # Request line plus headers; RFC 6960 GETs of the largest body fit with room to spare.
    max_head: int = 32_768
    max_headers: int = 100
    # From the first byte of a request to its last (headers and body dribbled slowly).
    request_timeout: float = 10.0
    # A keep-alive connection with nothing in flight is closed after this long.
    keepalive_timeout: float = 75.0
    # Complete requests waiting behind an unfinished one before reading pauses.
    max_pipelined: int = 16


# RFC 9110 9.1, 5.6.2: a method is a token (after the empty lines RFC 9112 2.2 lets a
# server skip), followed by the space before the target.
_METHOD_TOKEN = re.compile(rb"(?:\r?\n)*[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}(?: |$)")
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Clock:
    """The Date header (RFC 9110 6.6.1), formatted once per second, not once per reply."""

    def __init__(self) -> None:
        self._second = -1
        self._header = b""

    def date_header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._header


class _RequestTooLarge(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler, writes answers in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._handler = server.handler
        self._limits = server.limits
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._remote: str | None = None
        self._local: str | None = None
        # The request being parsed.
        self._target = bytearray()
        self._method = b""
        self._headers: dict[str, str] = {}
        self._head_size = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_message = False
        self._messages = 0  # complete requests read, for telling where an error began
        # An HTTP status for a body over the cap: the body is read and dropped, then answered.
        self._discarding = 0
        # An answer that waits for the one in flight, after which the connection closes.
        self._last_words: HttpReply | None = None
        # Requests parsed but not answered yet: the one in flight, then those behind it.
        self._waiting: collections.deque[tuple[HttpRequest, bool]] = collections.deque()
        self._busy = False
        self._closing = False
        self._write_paused = False
        self._read_paused = False
        # Deadline (loop time) checked by the server's sweep; 0 while a handler is running.
        self.deadline = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else None
        own = transport.get_extra_info("sockname")
        self._local = f"{own[0]}:{own[1]}" if isinstance(own, tuple) else None
        self.deadline = self._loop.time() + self._limits.keepalive_timeout
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._transport = None
        self._waiting.clear()
        self._server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._last_words is not None:
            return
        between = not self._in_message
        messages = self._messages
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400)  # no WebSocket or h2c here
        except httptools.HttpParserInvalidMethodError:
            # RFC 9110 9.1: a method the server does not recognise SHOULD get 501 (405 and
            # Allow, for a known method a resource does not take, are the handler's answer);
            # bytes that are no method at all (TLS to a plain port, say) are a bad request.
            # llhttp tells neither which nor where the request began: when it began this
            # data, its first word tells; otherwise 400 is the safe answer.
            began_here = between and self._messages == messages
            self._fail(501 if began_here and _METHOD_TOKEN.match(data) else 400)
        except httptools.HttpParserError as e:
            # httptools wraps what a callback raised; a limit carries its own status.
            cause = e.__cause__ or e.__context__
            self._fail(cause.status if isinstance(cause, _RequestTooLarge) else 400)

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests until it does.
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if len(self._waiting) <= self._limits.max_pipelined:
            self._resume_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._target.clear()
        self._method = b""
        self._headers = {}
        self._head_size = 0
        self._body = []
        self._body_size = 0
        self._discarding = 0
        self._in_message = True
        self.deadline = self._loop.time() + self._limits.request_timeout

    def on_url(self, url: bytes) -> None:
        if not self._target:
            self._method = self._parser.get_method()  # known once the URL starts
        self._target += url
        self._head_size += len(url)
        if self._head_size > self._limits.max_head:
            raise _RequestTooLarge(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if (
            self._head_size > self._limits.max_head
            or len(self._headers) >= self._limits.max_headers
        ):
            raise _RequestTooLarge(431)
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        expects = self._headers.get("expect", "").lower() == "100-continue"
        if length is not None and length.isdigit() and int(length) > self._limits.max_body:
            if expects:
                raise _RequestTooLarge(413)  # refused before the client sends the body
            # Read the body and drop it, then answer: closing with unread data would reset the
            # connection and could destroy the answer before the client reads it.
            self._discarding = 413
        elif expects and self._transport is not None:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._discarding:
            return
        self._body_size += len(body)
        if self._body_size > self._limits.max_body:
            self._discarding = 413  # a chunked body that grew past the cap
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._messages += 1
        if self._discarding:
            self._fail(self._discarding)
            return
        parser = self._parser
        request = HttpRequest(
            self._method.decode("ascii"),
            self._target.decode("latin-1"),
            self._headers,
            self._body[0] if len(self._body) == 1 else b"".join(self._body),
            self._remote,
            self._local,
        )
        keep_alive = parser.should_keep_alive() and not self._server.closing
        if self._busy:
            # The handler's own timeouts bound the wait, not the deadline this request's first
            # byte set: a complete request is never timed out while the one before it runs.
            self.deadline = 0.0
            self._waiting.append((request, keep_alive))
            if len(self._waiting) > self._limits.max_pipelined:
                self._pause_reading()
            return
        self._run(request, keep_alive)

    # answering

    def _run(self, request: HttpRequest, keep_alive: bool) -> None:
        try:
            answer = self._handler(request)
        except Exception:
            self._server.log.exception("HTTP handler failed")
            answer = self._server.error_reply
        if isinstance(answer, HttpReply):
            self._write(answer, keep_alive)
            return
        self._busy = True
        self.deadline = 0.0  # the handler's own timeouts bound it, not the client's deadline
        self._loop.create_task(self._finish(answer, keep_alive))

    async def _finish(self, answer: Awaitable[HttpReply], keep_alive: bool) -> None:
        try:
            reply = await answer
        except Exception:
            self._server.log.exception("HTTP handler failed")
            reply = self._server.error_reply
        self._busy = False
        self._write(reply, keep_alive)
        # Requests that arrived meanwhile, in order, until one has to wait again.
        while self._waiting and not self._busy and not self._closing:
            request, keep_alive = self._waiting.popleft()
            self._run(request, keep_alive)
        if not self._busy and not self._waiting and self._last_words is not None:
            self._write(self._last_words, keep_alive=False)
        elif not self._waiting and not self._write_paused:
            self._resume_reading()

    def _write(self, reply: HttpReply, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        if self._server.closing:
            keep_alive = False
        body = reply.body
        transport.write(
            b"".join(
                (
                    _STATUS_LINES.get(reply.status) or b"HTTP/1.1 %d \r\n" % reply.status,
                    self._server.clock.date_header(),
                    reply.headers,
                    b"Content-Length: %d\r\n" % len(body),
                    b"\r\n" if keep_alive else b"Connection: close\r\n\r\n",
                    b"" if reply.head_only else body,
                )
            )
        )
        if not keep_alive:
            self._closing = True
            transport.close()  # after the buffered answer has been written
            # A client that does not read the answer gets as long as one that sends slowly.
            self.deadline = self._loop.time() + self._limits.request_timeout
        elif not self._busy:
            self.deadline = self._loop.time() + self._limits.keepalive_timeout

    def _fail(self, status: int) -> None:
        """A request that cannot be parsed or is over a limit: answer it, then close, since
        the rest of the stream cannot be trusted to start at a request boundary."""
        self._in_message = False
        refused = HttpRequest(
            self._method.decode("ascii", "replace"),
            self._target.decode("latin-1"),
            self._headers,
            b"",
            self._remote,
            self._local,
        )
        reply = self._server.refusal(status, refused)
        if self._busy or self._waiting:
            # Answers leave in order: this one goes after those before it, which the
            # handler's own timeouts bound.
            self._last_words = reply
            self.deadline = 0.0
            self._pause_reading()
            return
        self._write(reply, keep_alive=False)

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self._transport is not None and not self._closing:
            self._read_paused = False
            self._transport.resume_reading()

    # the server's sweep and shutdown

    def expire(self, now: float) -> None:
        transport = self._transport
        if not self.deadline or now <= self.deadline or transport is None:
            return
        if self._closing:
            # Closed, yet answers are still buffered: close() waits for the client to read
            # them, forever if it never does. It had its time; drop them.
            transport.abort()
        elif self._in_message:
            self._fail(408)  # a request that did not arrive in time
        else:
            self._closing = True
            transport.close()  # keep-alive timeout: nothing to answer
            self.deadline = now + self._limits.request_timeout

    def abort(self) -> None:
        if self._transport is not None:
            self._closing = True
            self._transport.abort()

    def close_if_idle(self) -> None:
        if not self._busy and not self._waiting and self._transport is not None:
            self._closing = True
            self._transport.close()

    @property
    def idle(self) -> bool:
        return not self._busy and not self._waiting


class HttpServer:
    """Listens with SO_REUSEPORT (one per worker process) and owns the connections."""

    def __init__(
        self,
        handler: Handler,
        log: logging.Logger,
        limits: Limits = Limits(),
        error_reply: HttpReply | None = None,
        refusal: Callable[[int, HttpRequest], HttpReply] | None = None,
    ) -> None:
        self.handler = handler
        # The answer to a request refused before it reached the handler (400, 408, 413, ...),
        # given what is known of the request.
        self.refusal = refusal or (
            lambda status, request: text_reply(status, HTTPStatus(status).phrase + "\n")
        )
        self.log = log
        self.limits = limits
        self.error_reply = error_reply or text_reply(500, "internal error\n")
        self.loop = asyncio.get_running_loop()
        self.clock = _Clock()
        self.connections: set[HttpConnection] = set()
        self.closing = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def listen(self, host: str, port: int, backlog: int = 2048) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Each worker binds the same port; the kernel spreads connections across them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
        self._server = await self.loop.create_server(
            lambda: HttpConnection(self), sock=sock, backlog=backlog
        )
        self._sweeper = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            for connection in list(self.connections):
                connection.expire(now)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, close idle connections, let busy ones answer (with Connection:
        close), and after `timeout` close whatever is left."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            for connection in list(self.connections):
                connection.close_if_idle()
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.wait_closed()
