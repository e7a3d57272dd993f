"""The ceiling for `ocspd serve`: aiohttp on uvloop returning fixed bytes, nothing else.

    python bench/ceiling_app.py --listen 127.0.0.1:8081 --workers 2 --body response.der

Runs like ocspd serve: N spawned worker processes, each binding the port with SO_REUSEPORT,
on uvloop, no access log. Every GET or POST on any path gets the same OCSP response (a real
one, signed once by ocspd) with the cache headers ocspd sends for a cached answer; a POST
body is read first, as ocspd must. What ocspd does beyond this is its own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.process
import signal
import time
from pathlib import Path

from aiohttp import web

HEADERS = {
    "Cache-Control": "max-age=3600, public, no-transform, must-revalidate",
    "Last-Modified": "Sat, 21 Nov 2026 23:00:00 GMT",
    "Expires": "Mon, 23 Nov 2026 23:00:00 GMT",
    "ETag": '"0123456789abcdef0123456789abcdef"',
}


def build_app(body: bytes) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        if request.method == "POST":
            await request.read()
        elif request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        return web.Response(body=body, content_type="application/ocsp-response", headers=HEADERS)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def _worker(host: str, port: int, body: bytes) -> None:
    runner = web.AppRunner(build_app(body), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=True, backlog=2048).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def run_worker(host: str, port: int, body: bytes) -> None:
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uvloop.run(_worker(host, port, body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--body", type=Path, required=True, help="file with the response DER")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    body = args.body.read_bytes()

    ctx = multiprocessing.get_context("spawn")
    workers: list[multiprocessing.process.BaseProcess] = [
        ctx.Process(target=run_worker, args=(host, int(port), body), name=f"ceiling-{i}")
        for i in range(args.workers)
    ]
    for process in workers:
        process.start()
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(p.is_alive() for p in workers):
        time.sleep(0.2)
    for process in workers:
        if process.is_alive():
            process.terminate()
    for process in workers:
        process.join(10)
        if process.is_alive():
            process.kill()


if __name__ == "__main__":
    main()
