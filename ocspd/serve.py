"""`ocspd serve`: a supervisor process and N worker processes sharing the port.

Each worker runs the responder (ocspd.app) behind ocspd.httpserver on uvloop and binds the
listener with SO_REUSEPORT, so the kernel spreads connections. The supervisor serves /metrics on the admin listener (Prometheus
multiprocess mode adds up the workers), replaces a worker that dies, and on SIGTERM drains:
workers report 503 on /readyz for `drain_seconds`, finish in-flight requests, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import os
import queue
import resource
import shutil
import signal
import tempfile
import time
from multiprocessing.queues import Queue
from pathlib import Path

from aiohttp import web

from ocspd.config import Config
from ocspd.errors import OcspdError
from ocspd.logs import setup_logging

WORKER_START_TIMEOUT = 60.0
# Exit code of a worker that could not start (bad key, no database): not worth restarting.
EXIT_START_FAILED = 3


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.

    Every client connection is a file descriptor, and the usual soft limit (1024) would let a
    few hundred idle keep-alive clients stop a worker from accepting anyone else. Workers
    inherit the limit from the supervisor. The hard limit is the operator's (systemd
    LimitNOFILE=); an unlimited one is capped at the kernel's nr_open.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft  # not allowed here (a container, say): keep what there is
        return target
    return soft


def worker_count(config: Config) -> int:
    return config.responder.workers or os.cpu_count() or 1


def run_worker(config: Config, index: int, ready: Queue[tuple[int, str | None]]) -> None:
    """Entry point of a worker process (spawned, so it starts from a clean interpreter)."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    try:
        uvloop.run(_worker(config, index, ready))
    except OcspdError as e:
        ready.put((index, str(e)))
        raise SystemExit(EXIT_START_FAILED) from None


async def _worker(config: Config, index: int, ready: Queue[tuple[int, str | None]]) -> None:
    from prometheus_client import CollectorRegistry

    from ocspd.app import open_responder
    from ocspd.httpserver import HttpServer, Limits

    log = setup_logging(config.responder.log_level)
    async with contextlib.AsyncExitStack() as stack:
        try:
            responder = await stack.enter_async_context(
                open_responder(config, CollectorRegistry(), log, worker=index)
            )
        except OSError as e:  # a file it needs (the database is retried in the background)
            raise OcspdError(f"worker {index} could not start: {e}") from e
        handler = responder.handler
        server = HttpServer(
            handler,
            log,
            Limits(
                max_body=config.responder.max_request_bytes,
                request_timeout=config.responder.request_timeout.total_seconds(),
                keepalive_timeout=config.responder.keepalive_timeout.total_seconds(),
            ),
            refusal=handler.refusal,
        )
        host, port = config.responder.listen
        await server.listen(host, port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        orphaned = asyncio.create_task(_supervisor_gone(stop, log))
        ready.put((index, None))
        log.info(
            "worker serving",
            extra={"worker": index, "pid": os.getpid(), "listen": f"{host}:{port}"},
        )
        await stop.wait()
        # Load balancers see 503 on /readyz and stop sending; requests still arriving are
        # answered until drain_seconds is over, then in-flight ones finish.
        responder.readiness.draining = True
        log.info("draining", extra={"worker": index, "seconds": config.responder.drain_seconds})
        await asyncio.sleep(config.responder.drain_seconds)
        await server.close(timeout=10.0)
        orphaned.cancel()


async def _supervisor_gone(stop: asyncio.Event, log: logging.Logger) -> None:
    """Stop (draining) when the supervisor is gone, killed with SIGKILL say: a worker left
    behind would go on answering on the port, unsupervised and never stopped, beside the
    workers of the next `ocspd serve`."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.error("the supervisor is gone; stopping", extra={"pid": os.getpid()})
    stop.set()


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.log = setup_logging(config.responder.log_level)
        self.ctx = multiprocessing.get_context("spawn")
        self.ready: Queue[tuple[int, str | None]] = self.ctx.Queue()
        self.workers: dict[int, multiprocessing.process.BaseProcess] = {}
        # Replacements of each worker that failed to start in a row: the next waits longer.
        self.failures: dict[int, int] = {}
        self.stopping = False

    def start_worker(self, index: int) -> None:
        process = self.ctx.Process(
            target=run_worker, args=(self.config, index, self.ready), name=f"ocspd-worker-{index}"
        )
        process.start()
        self.workers[index] = process

    async def wait_ready(self, indexes: list[int]) -> str | None:
        """None when all started, else the first worker's error."""
        pending = set(indexes)
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while pending:
            try:
                index, error = await asyncio.to_thread(self.ready.get, True, 0.5)
            except queue.Empty:
                if time.monotonic() > deadline:
                    return "workers did not start within 60 seconds"
                for i in pending:
                    if not self.workers[i].is_alive():
                        return (
                            f"worker {i} exited with code {self.workers[i].exitcode} while starting"
                        )
                continue
            if error:
                return error
            pending.discard(index)
        return None

    async def supervise(self) -> None:
        from prometheus_client import multiprocess

        while not self.stopping:
            await asyncio.sleep(0.5)
            for index, process in list(self.workers.items()):
                if process.is_alive() or self.stopping:
                    continue
                self.log.error(
                    "worker died; starting a new one",
                    extra={"worker": index, "exitcode": process.exitcode},
                )
                if process.pid is not None:
                    multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
                # A worker that cannot start (a refused key, say) is not restarted in a tight
                # loop: 1, 2, 4 ... up to 30 seconds between attempts.
                failures = self.failures.get(index, 0)
                if failures:
                    await asyncio.sleep(min(30.0, 2.0 ** (failures - 1)))
                    if self.stopping:
                        return
                self.start_worker(index)
                error = await self.wait_ready([index])
                if error:
                    self.failures[index] = failures + 1
                    self.log.error(
                        "replacement worker failed", extra={"worker": index, "error": error}
                    )
                else:
                    self.failures.pop(index, None)

    def stop_workers(self) -> None:
        for process in self.workers.values():
            if process.is_alive() and process.pid:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.responder.drain_seconds + 15
        for process in self.workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)


def _admin_app() -> web.Application:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]

    async def metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def _serve(config: Config) -> int:
    open_files = raise_open_files_limit()  # before the workers start: they inherit it
    supervisor = Supervisor(config)
    count = worker_count(config)
    for index in range(count):
        supervisor.start_worker(index)
    error = await supervisor.wait_ready(list(range(count)))
    if error:
        supervisor.stopping = True
        supervisor.stop_workers()
        raise OcspdError(error)

    runner = web.AppRunner(_admin_app(), access_log=None, handle_signals=False)
    await runner.setup()
    admin_host, admin_port = config.responder.admin_listen
    await web.TCPSite(runner, admin_host, admin_port).start()
    host, port = config.responder.listen
    supervisor.log.info(
        "ocspd serving",
        extra={
            "listen": f"{host}:{port}",
            "admin": f"{admin_host}:{admin_port}",
            "workers": count,
            "open_files": open_files,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(supervisor.supervise())
    await stop.wait()
    supervisor.stopping = True
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    supervisor.log.info("stopping: draining workers")
    await asyncio.to_thread(supervisor.stop_workers)
    await runner.cleanup()
    return 0


def serve(config: Config) -> int:
    # Multiprocess metrics: workers write to files here, the supervisor adds them up. It must
    # be set before any worker (or prometheus_client in this process) starts.
    metrics_dir = tempfile.mkdtemp(prefix="ocspd-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return asyncio.run(_serve(config))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
