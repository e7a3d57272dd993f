"""Single failures the responder withstands (SO2.1), each against real processes: a PKCS#11
token that is away or refuses the PIN at start, a token lost while serving, a worker killed
with SIGKILL, and responders restarted one after the other behind a load balancer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli, Pki
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from responder import Responder, free_port, http_get, http_post, start_responder
from softhsm import SoftHSM


def _request(pki: Pki, cert: x509.Certificate, nonce: bool = False) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, pki.ca.cert, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(secrets.token_bytes(16)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _leaf(ocspd: Cli, pki: Pki, name: str, issuer: str = "ca") -> x509.Certificate:
    path = pki.leaf(name)
    ocspd.ok("cert", "import", "--issuer", issuer, path)
    return x509.load_pem_x509_certificate(path.read_bytes())


def _outcome(url: str, body: bytes) -> str:
    """'good', 'revoked', the OCSP response status's name, or what went wrong."""
    try:
        status, _, answer = http_post(url, body, timeout=10)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    if status != 200:
        return f"HTTP {status}"
    response = ocsp.load_der_ocsp_response(answer)
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return response.response_status.name
    return response.certificate_status.name.lower()


def _wait_for(condition, timeout: float, message: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, message
        time.sleep(0.1)
    return time.monotonic() - started


def _readyz(responder: Responder) -> tuple[int, str]:
    status, _, body = http_get(responder.url + "readyz", timeout=5)
    return status, body.decode()


def _log_lines(responder: Responder) -> list[dict[str, object]]:
    return [
        json.loads(line) for line in responder.log.read_text().splitlines() if line.startswith("{")
    ]


# --- the PKCS#11 token ----------------------------------------------------------------------


@pytest.fixture
def hsm_issuer(ocspd: Cli, pki: Pki, tmp_path: Path) -> Iterator[SoftHSM]:
    """The responder key in a SoftHSM2 token, registered as issuer 'ca'."""
    with SoftHSM.create(tmp_path / "hsm") as hsm:
        uri = hsm.import_key(pki.responder.key, "ocsp-responder")
        ocspd.ok(
            "issuer", "add", "ca", "--ca-cert", pki.ca_cert,
            "--responder-cert", pki.responder_cert, "--responder-key", uri,
        )  # fmt: skip
        yield hsm


def test_wrong_pin_at_start_is_not_retried_until_it_changes(
    ocspd: Cli, pki: Pki, hsm_issuer: SoftHSM, tmp_path: Path
) -> None:
    """A wrong PIN: one line in the log (without the PIN), the responder up but not ready,
    naming the signer, and no second login with that PIN (it would count towards locking the
    token); a corrected PIN file is picked up without a restart."""
    cert = _leaf(ocspd, pki, "pin")
    wrong = "97531"
    hsm_issuer.pin_file.write_text(wrong + "\n")
    responder = start_responder(ocspd.url, tmp_path, workers=1, wait=False)
    try:
        _wait_for(lambda: "signing key unavailable" in responder.log.read_text(), 30, "no log")
        assert http_get(responder.url + "healthz")[0] == 200
        status, body = _readyz(responder)
        assert status == 503 and "signer ca" in body, body
        # Nothing stored or cached for it: live signing is needed, and gets tryLater.
        assert _outcome(responder.url, _request(pki, cert)) == "TRY_LATER"
        time.sleep(7)  # attempts at 2 and 6 s: neither offers the refused PIN again
        failures = [
            line
            for line in _log_lines(responder)
            if line["msg"] == "signing key unavailable; retrying"
        ]
        assert [("incorrect" in str(f["error"])) for f in failures] == [True, False], failures
        assert "refused before" in str(failures[1]["error"])
        assert wrong not in responder.log.read_text()

        hsm_issuer.pin_file.write_text(hsm_issuer.pin + "\n")
        _wait_for(lambda: _readyz(responder)[0] == 200, 20, "the corrected PIN was not used")
        assert _outcome(responder.url, _request(pki, cert)) == "good"
        assert responder.process.poll() is None
    finally:
        responder.stop()
    assert "Traceback" not in responder.log.read_text()


def test_token_away_at_start_and_lost_while_serving(
    ocspd: Cli, pki: Pki, hsm_issuer: SoftHSM, tmp_path: Path
) -> None:
    """The token's directory gone at start: the responder waits for it; gone while serving:
    live signing gets tryLater, /readyz names the signer, and both recover without a
    restart once it is back."""
    cert = _leaf(ocspd, pki, "token")
    tokens = hsm_issuer.directory / "tokens"
    away = hsm_issuer.directory / "tokens.away"
    tokens.rename(away)
    responder = start_responder(ocspd.url, tmp_path, workers=1, wait=False)
    try:
        _wait_for(lambda: "signing key unavailable" in responder.log.read_text(), 30, "no log")
        status, body = _readyz(responder)
        assert status == 503 and "signer ca" in body, body
        assert _outcome(responder.url, _request(pki, cert, nonce=True)) == "TRY_LATER"
        away.rename(tokens)
        _wait_for(lambda: _readyz(responder)[0] == 200, 25, "the token was not opened")
        assert _outcome(responder.url, _request(pki, cert, nonce=True)) == "good"
        workers = responder.worker_pids()

        # Lost while serving.
        tokens.rename(away)
        outcomes = {_outcome(responder.url, _request(pki, cert, nonce=True)) for _ in range(3)}
        assert outcomes == {"TRY_LATER"}, outcomes
        status, body = _readyz(responder)
        assert status == 503 and "signer ca" in body, body
        # A cached answer needs no signature: still served.
        away.rename(tokens)
        _wait_for(lambda: _readyz(responder)[0] == 200, 25, "the token was not opened again")
        assert _outcome(responder.url, _request(pki, cert, nonce=True)) == "good"
        assert responder.worker_pids() == workers
    finally:
        if away.exists() and not tokens.exists():
            away.rename(tokens)
        responder.stop()
    log = responder.log.read_text()
    assert "Traceback" not in log and "worker died" not in log
    assert hsm_issuer.pin not in {str(line.get("error")) for line in _log_lines(responder)}


# --- workers and restarts ---------------------------------------------------------------------


@pytest.fixture
def file_issuer(ocspd: Cli, pki: Pki) -> str:
    ocspd.ok(
        "issuer", "add", "ca", "--ca-cert", pki.ca_cert,
        "--responder-cert", pki.responder_cert, "--responder-key", f"file:{pki.responder_key}",
    )  # fmt: skip
    return "ca"


def test_killed_worker_is_replaced(ocspd: Cli, pki: Pki, file_issuer: str, tmp_path: Path) -> None:
    cert = _leaf(ocspd, pki, "kill")
    responder = start_responder(ocspd.url, tmp_path, workers=2)
    try:
        before = responder.worker_pids()
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        _wait_for(
            lambda: (
                len(responder.worker_pids() - before) == 1 and len(responder.worker_pids()) == 2
            ),
            30,
            "the killed worker was not replaced",
        )
        _wait_for(lambda: _readyz(responder)[0] == 200, 30, "not ready after the replacement")
        # Both workers answer (each connection lands on either).
        assert {_outcome(responder.url, _request(pki, cert)) for _ in range(20)} == {"good"}
        assert responder.process.poll() is None
        assert victim not in responder.worker_pids()
    finally:
        assert responder.stop() == 0
    died = [
        line for line in _log_lines(responder) if line["msg"] == "worker died; starting a new one"
    ]
    assert len(died) == 1 and died[0]["exitcode"] == -signal.SIGKILL


def test_workers_stop_when_the_supervisor_is_killed(
    ocspd: Cli, file_issuer: str, tmp_path: Path
) -> None:
    """A supervisor killed with SIGKILL leaves no worker answering on the port on its own."""
    responder = start_responder(
        ocspd.url, tmp_path, workers=2, config="[responder]\ndrain_seconds = 0.5\n"
    )
    workers = responder.worker_pids()
    assert len(workers) == 2
    responder.process.send_signal(signal.SIGKILL)
    responder.process.wait(10)

    def gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in workers)

    try:
        _wait_for(gone, 15, "workers outlived their supervisor")
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with pytest.raises(OSError):
        http_get(responder.url + "healthz", timeout=2)


class Balancer:
    """A tiny TCP load balancer: each client connection goes to a backend whose /readyz said
    200 at the last probe (every 100 ms), the next one if connecting fails."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.ready: set[int] = set()
        self.port = free_port()
        self._turn = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Balancer:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self._loop.create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        while True:
            results = await asyncio.gather(*(self._probe(p) for p in self.backends))
            self.ready = {p for p, ok in zip(self.backends, results, strict=True) if ok}
            await asyncio.sleep(0.1)

    async def _probe(self, port: int) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
            line = await asyncio.wait_for(reader.readline(), 1)
            return line.split()[1:2] == [b"200"]
        except (OSError, TimeoutError, IndexError):
            return False
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ready = sorted(self.ready)
        self._turn += 1
        for port in (
            ready[self._turn % max(1, len(ready)) :] + ready[: self._turn % max(1, len(ready))]
        ):
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            await asyncio.gather(
                _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
            )
            return
        writer.close()  # no backend: the client sees the connection closed


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError):
            writer.close()


def test_rolling_restart_behind_a_balancer_loses_no_request(
    ocspd: Cli, pki: Pki, file_issuer: str, tmp_path: Path
) -> None:
    """Two responders restarted one after the other (SIGTERM: /readyz 503 while draining,
    then exit; a new process on the same port) while a client keeps asking through the
    balancer: every request gets a successful answer."""
    cert = _leaf(ocspd, pki, "rolling")
    config = "[responder]\ndrain_seconds = 2\n"
    responders = [start_responder(ocspd.url, tmp_path, workers=1, config=config) for _ in range(2)]
    outcomes: list[str] = []
    done = threading.Event()
    with Balancer([r.port for r in responders]) as balancer:
        _wait_for(lambda: len(balancer.ready) == 2, 10, "the balancer never saw both ready")
        url = f"http://127.0.0.1:{balancer.port}/"

        def client() -> None:
            while not done.is_set():
                outcomes.append(_outcome(url, _request(pki, cert, nonce=len(outcomes) % 2 == 1)))

        thread = threading.Thread(target=client)
        thread.start()
        try:
            for i, old in enumerate(responders):
                time.sleep(0.5)
                assert old.stop() == 0
                new = start_responder(
                    ocspd.url, tmp_path, workers=1, config=config, port=old.port,
                    admin_port=old.admin_port,
                )  # fmt: skip
                responders[i] = new
                _wait_for(lambda new=new: new.port in balancer.ready, 10, "not back in the pool")
            time.sleep(0.5)
        finally:
            done.set()
            thread.join(30)
            for r in responders:
                r.stop()
    assert len(outcomes) > 50
    assert set(outcomes) == {"good"}, {o: outcomes.count(o) for o in set(outcomes)}
