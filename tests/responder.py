"""Runs a real `ocspd serve` (supervisor and worker processes) for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(
    url: str, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def http_post(
    url: str, body: bytes, content_type: str = "application/ocsp-request", timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@dataclass
class Responder:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def metrics(self, wait_for: str | None = None, timeout: float = 5.0) -> str:
        """The admin /metrics text; with `wait_for` (a regular expression), polled until it
        matches (workers publish their request counters every metrics.PUBLISH_INTERVAL)."""
        deadline = time.monotonic() + timeout
        while True:
            text = http_get(f"http://127.0.0.1:{self.admin_port}/metrics")[2].decode()
            if wait_for is None or re.search(wait_for, text) or time.monotonic() > deadline:
                return text
            time.sleep(0.1)

    def worker_pids(self) -> set[int]:
        """The supervisor's worker processes (its children, besides multiprocessing's resource
        tracker)."""
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return set()
        workers = set()
        for child in children:
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in command:
                workers.add(int(child))
        return workers

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_responder(
    db_url: str,
    tmp: Path,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    config: str | None = None,
    args: Sequence[str] = (),
    wait: bool = True,
    port: int | None = None,
    admin_port: int | None = None,
) -> Responder:
    port, admin_port = port or free_port(), admin_port or free_port()
    env = {**os.environ, "OCSPD_DATABASE_URL": db_url, **(extra_env or {})}
    env.pop("OCSPD_CONFIG", None)
    command = [sys.executable, "-m", "ocspd"]
    if config is not None:
        path = tmp / f"ocspd-{port}.toml"
        path.write_text(config)
        command += ["--config", str(path)]
    command += [
        "serve", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}",
        "--workers", str(workers), *args,
    ]  # fmt: skip
    log = tmp / f"ocspd-{port}.log"
    with log.open("ab") as out:  # a restart on the same port adds to the log
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    responder = Responder(process, port, admin_port, log)
    if wait:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"ocspd serve exited with {process.returncode}:\n{log.read_text()}"
                )
            try:
                status, _, _ = http_get(f"{responder.url}readyz", timeout=1)
                admin = http_get(f"http://127.0.0.1:{admin_port}/healthz", timeout=1)[0]
                if status == 200 and admin == 200:
                    return responder
            except OSError:
                pass
            time.sleep(0.1)
        responder.stop()
        raise RuntimeError(f"ocspd serve did not become ready:\n{log.read_text()}")
    return responder
