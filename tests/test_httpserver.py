"""ocspd.httpserver on its own: framing, limits, deadlines and order, over real sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ocspd.httpserver import Answer, HttpReply, HttpRequest, HttpServer, Limits
from tests.responder import free_port

pytestmark = pytest.mark.asyncio

LOG = logging.getLogger("test")


def echo(request: HttpRequest) -> Answer:
    """Answers at once with what it saw; a path starting /slow/N answers after N ms."""
    text = f"{request.method} {request.target} {len(request.body)} {request.body[:20]!r}"
    reply = HttpReply(200, b"Content-Type: text/plain\r\n", text.encode())
    if request.target.startswith("/slow/"):
        delay = int(request.target.split("/")[2]) / 1000

        async def later() -> HttpReply:
            await asyncio.sleep(delay)
            return reply

        return later()
    if request.target == "/boom":
        raise RuntimeError("handler bug")
    return reply


@pytest.fixture
async def server() -> AsyncIterator[Callable[..., Awaitable[tuple[HttpServer, int]]]]:
    started: list[HttpServer] = []

    async def start(limits: Limits | None = None, handler=echo) -> tuple[HttpServer, int]:  # type: ignore[no-untyped-def]
        s = HttpServer(handler, LOG, limits or Limits())
        port = free_port()
        await s.listen("127.0.0.1", port)
        started.append(s)
        return s, port

    yield start
    for s in started:
        await s.close(timeout=1)


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def test_keep_alive_and_pipelined_answers_keep_request_order(server) -> None:  # type: ignore[no-untyped-def]
    _, port = await server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # The slow one is first: the fast ones behind it must wait for it, not overtake it.
    writer.write(
        b"GET /slow/100 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    )
    bodies = [(await read_reply(reader))[2] for _ in range(3)]
    assert bodies == [b"GET /slow/100 0 b''", b"GET /one 0 b''", b"POST /two 3 b'abc'"]
    status, headers, _ = await read_reply(
        (writer.write(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n"), reader)[1]
    )
    assert status == 200 and "connection" not in headers and "date" in headers
    writer.close()


async def test_paths_reach_the_handler_unnormalised(server) -> None:  # type: ignore[no-untyped-def]
    _, port = await server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET //MEow+a/b%2Fc/../d?q HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_reply(reader))[2] == b"GET //MEow+a/b%2Fc/../d?q 0 b''"
    writer.close()


async def test_chunked_body_is_reassembled(server) -> None:  # type: ignore[no-untyped-def]
    _, port = await server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    assert (await read_reply(reader))[2] == b"POST / 7 b'abcdefg'"
    writer.close()


async def test_body_dribbled_in_pieces(server) -> None:  # type: ignore[no-untyped-def]
    _, port = await server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"
    for i in range(len(request)):
        writer.write(request[i : i + 1])
        await writer.drain()
    assert (await read_reply(reader))[2] == b"POST /p 10 b'0123456789'"
    writer.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_the_cap_gets_413_and_close(server, chunked: bool) -> None:  # type: ignore[no-untyped-def]
    _, port = await server(Limits(max_body=100))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b"x" * 5000
    if chunked:
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(body)
            + body
            + b"\r\n0\r\n\r\n"
        )
    else:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + body)
    status, headers, _ = await read_reply(reader)
    assert status == 413 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
    writer.close()


async def test_expect_100_continue(server) -> None:  # type: ignore[no-untyped-def]
    _, port = await server(Limits(max_body=100))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert (
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"abc")
    assert (await read_reply(reader))[2] == b"POST / 3 b'abc'"
    # Too large: refused at once, before the client sends the body.
    writer.write(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    )
    assert (await read_reply(reader))[0] == 413
    writer.close()


async def test_oversized_headers_get_431(server) -> None:  # type: ignore[no-untyped-def]
    _, port = await server(Limits(max_head=1000))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
    assert (await read_reply(reader))[0] == 431
    writer.close()


async def test_garbage_gets_400_and_close(server) -> None:  # type: ignore[no-untyped-def]
    _, port = await server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x16\x03\x01\x02\x00 this is a TLS hello, not HTTP\r\n\r\n")
    status, headers, _ = await read_reply(reader)
    assert status == 400 and headers["connection"] == "close"
    writer.close()


async def test_http10_closes_after_the_answer(server) -> None:  # type: ignore[no-untyped-def]
    _, port = await server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /old HTTP/1.0\r\n\r\n")
    status, headers, body = await read_reply(reader)
    assert status == 200 and headers["connection"] == "close" and body == b"GET /old 0 b''"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_slow_request_gets_408_and_idle_connection_is_closed(server) -> None:  # type: ignore[no-untyped-def]
    _, port = await server(Limits(request_timeout=1.0, keepalive_timeout=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    status, headers, _ = await asyncio.wait_for(read_reply(reader), 5)
    assert status == 408 and headers["connection"] == "close"
    writer.close()
    # A connection that sends nothing is closed after the keep-alive timeout, without answer.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_handler_exception_is_a_500_without_traceback(server) -> None:  # type: ignore[no-untyped-def]
    _, port = await server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_reply(reader)
    assert status == 500 and b"Traceback" not in body
    writer.write(b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection still serves
    assert (await read_reply(reader))[0] == 200
    writer.close()


async def test_close_lets_in_flight_requests_finish(server) -> None:  # type: ignore[no-untyped-def]
    s, port = await server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(s.close(timeout=5))
    status, headers, _ = await read_reply(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # idle: closed at once
    await closing
    writer.close()
    idle_writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
