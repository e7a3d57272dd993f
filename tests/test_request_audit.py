"""Every OCSP request on record (RS3.1, pkio80), chained (AA7.1-2), and what happens when
audit storage fails (AA1.1 e): real responders, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import Cli, Pki
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from needs import missing
from responder import Responder, http_get, http_post, start_responder

from ocspd.audit.chain import GENESIS
from ocspd.audit.requests import (
    RequestRecord,
    SegmentVerifier,
    answer_fields,
    decode,
    encode,
    make_segment,
    seal,
    stream_key,
    unpack,
)


class Key:
    key_id = "test-key"

    def mac(self, data: bytes) -> bytes:
        return hmac.digest(b"k" * 32, data, "sha256")


def _records(n: int, start: int = 1) -> list[RequestRecord]:
    return [
        RequestRecord(
            seq,
            1_700_000_000_000_000 + seq,
            "192.0.2.7",
            "127.0.0.1:8080",
            "POST",
            "successful",
            seq % 2 == 0,
            (b"\x30\x03cid",),
            ("good",),
            bytes(32),
            b"\x01" * 20,
        )
        for seq in range(start, start + n)
    ]


def _verify(segments: list) -> SegmentVerifier:  # type: ignore[type-arg]
    verifier = SegmentVerifier("ocsp/t", Key(), "test-key")
    for segment in segments:
        if verifier.feed(segment) is not None:
            break
    return verifier


# --- the chain on its own ----------------------------------------------------------------


def test_records_round_trip_and_chain_across_segments() -> None:
    for record in _records(3):
        assert decode(encode(record)) == record
    skey = stream_key(Key(), "ocsp/t")
    first, head = seal("ocsp/t", "test-key", skey, GENESIS, _records(3))
    second, _ = seal("ocsp/t", "test-key", skey, head, _records(2, start=4))
    verifier = _verify([first, second])
    assert verifier.problem is None and verifier.count == 5 and verifier.last_seq == 5


def test_a_modified_deleted_or_swapped_record_is_named() -> None:
    skey = stream_key(Key(), "ocsp/t")
    first, head = seal("ocsp/t", "test-key", skey, GENESIS, _records(3))
    second, _ = seal("ocsp/t", "test-key", skey, head, _records(3, start=4))

    # Modified: the client address of record 5 changed in place.
    parts = list(unpack(second.records, second.first_seq))
    data, mac = parts[1]
    forged = data.replace(b"192.0.2.7", b"192.0.2.8")
    records = b"".join(
        len(d).to_bytes(4, "big") + d + m for d, m in [parts[0], (forged, mac), parts[2]]
    )
    problem = _verify([first, replace_records(second, records)]).problem
    assert problem is not None and problem.seq == 5 and "MAC mismatch" in problem.message

    # Deleted: the first segment is gone.
    problem = _verify([second]).problem
    assert problem is not None and "seq 1..3 missing" in problem.message

    # Swapped: records 4 and 5 trade places.
    swapped = b"".join(len(d).to_bytes(4, "big") + d + m for d, m in [parts[1], parts[0], parts[2]])
    problem = _verify([first, replace_records(second, swapped)]).problem
    assert problem is not None and problem.seq == 4

    # Cut short: named at the record that no longer reads.
    problem = _verify([first, replace_records(second, second.records[:-5])]).problem
    assert problem is not None and problem.seq == 6 and "unreadable" in problem.message

    # Another key: not verifiable with ours.
    problem = SegmentVerifier("ocsp/t", None, "other").feed(first)
    assert problem is not None and "not among the keys" in problem.message


def replace_records(segment, records: bytes):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(segment, records=records)


# --- a real responder --------------------------------------------------------------------


def _request(pki: Pki, cert: x509.Certificate) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, pki.ca.cert, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def _leaf(ocspd: Cli, pki: Pki, name: str) -> x509.Certificate:
    path = pki.leaf(name)
    ocspd.ok("cert", "import", "--issuer", "ca", path)
    return x509.load_pem_x509_certificate(path.read_bytes())


def _search(ocspd: Cli) -> list[dict]:  # type: ignore[type-arg]
    out = ocspd.ok("audit", "search", "--type", "ocsp-request", "--json")
    return [json.loads(line) for line in out.splitlines()]


def _as_role(url: str, role: str, statement: str) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"SET ROLE {role}")
            return list(await conn.fetch(statement))
        finally:
            await conn.close()

    return asyncio.run(go())


def _requests_on_record(ocspd: Cli) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in _search(ocspd) if r["outcome"] != "stream-open"]


def _wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_every_request_served_has_exactly_one_record(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path
) -> None:
    import base64

    good = _leaf(ocspd, pki, "audited")
    request = _request(pki, good)
    responder = start_responder(ocspd.url, tmp_path, workers=2)
    sent = 0
    try:
        for _ in range(20):
            assert http_post(responder.url, request)[0] == 200
            sent += 1
        get = base64.b64encode(request).decode()
        for _ in range(5):
            assert http_get(responder.url + get)[0] == 200
            sent += 1
        assert http_post(responder.url, b"\x30\x03garbage")[0] == 200  # malformedRequest
        sent += 1
        assert http_post(responder.url, b"x" * 20_000)[0] == 413  # over the cap
        sent += 1
    finally:
        assert responder.stop() == 0  # SIGTERM: the workers store what they hold
    records = _requests_on_record(ocspd)
    assert len(records) == sent
    assert sorted({r["outcome"] for r in records}) == ["malformedRequest", "successful"]
    served = [r for r in records if r["outcome"] == "successful"]
    assert all(r["statuses"] == ["good"] and len(r["cert_ids"]) == 1 for r in served)
    assert all(r["client"] == "127.0.0.1" and r["server"].startswith("127.0.0.1:") for r in records)
    assert {r["method"] for r in served} == {"GET", "POST"}
    # Two workers, two streams, each registered and each verifying.
    streams = {r["stream"] for r in _search(ocspd)}
    assert len(streams) == 2
    verified = ocspd.ok("audit", "verify", "--verbose")
    assert "audit trail intact" in verified
    assert all(s in verified for s in streams)


def start_one(ocspd: Cli, tmp_path: Path) -> Responder:
    return start_responder(ocspd.url, tmp_path, workers=1)


def test_recorded_response_hash_matches_what_was_sent(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path
) -> None:
    cert = _leaf(ocspd, pki, "hashed")
    responder = start_one(ocspd, tmp_path)
    try:
        _, _, body = http_post(responder.url, _request(pki, cert))
    finally:
        responder.stop()
    [record] = _requests_on_record(ocspd)
    assert record["response_sha256"] == hashlib.sha256(body).hexdigest()
    basic = ocsp.load_der_ocsp_response(body)
    assert record["signer"] == basic.responder_key_hash.hex()  # type: ignore[union-attr]


def test_tampering_with_stored_segments_is_found(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path
) -> None:
    cert = _leaf(ocspd, pki, "tampered")
    responder = start_one(ocspd, tmp_path)
    try:
        for _ in range(3):
            http_post(responder.url, _request(pki, cert))
    finally:
        responder.stop()
    assert ocspd("audit", "verify").code == 0
    # An attacker with superuser rights turns the append-only trigger off and edits.
    ocspd.sql("ALTER TABLE ocsp_audit_segments DISABLE TRIGGER ocsp_audit_segments_append_only")
    ocspd.sql(
        "UPDATE ocsp_audit_segments SET records = overlay(records placing '\\x58'::bytea "
        "from 30 for 1) WHERE first_seq > 1"
    )
    result = ocspd("audit", "verify")
    assert result.code == 1 and "ocsp/" in result.err and "seq 2" in result.err, result.err
    ocspd.sql("DELETE FROM ocsp_audit_segments")
    result = ocspd("audit", "verify")
    assert result.code == 1 and "stream deleted" in result.err, result.err


def test_no_role_can_change_request_records(
    ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path
) -> None:
    cert = _leaf(ocspd, pki, "fixed")
    responder = start_one(ocspd, tmp_path)
    try:
        http_post(responder.url, _request(pki, cert))
    finally:
        responder.stop()
    for role in ("ocspd_responder", "ocspd_auditor", "ocspd_officer", "ocspd_admin"):
        for statement in (
            "UPDATE ocsp_audit_segments SET key_id = 'x'",
            "DELETE FROM ocsp_audit_segments",
        ):
            with pytest.raises(asyncpg.PostgresError, match=r"permission denied|append-only"):
                _as_role(ocspd.url, role, statement)
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        ocspd.sql("DELETE FROM ocsp_audit_segments")  # not even the owner
    # The auditor reads them (and cannot write).
    [row] = _as_role(ocspd.url, "ocspd_auditor", "SELECT count(*) AS n FROM ocsp_audit_segments")
    assert row["n"] >= 2
    with pytest.raises(asyncpg.PostgresError, match="permission denied"):
        _as_role(
            ocspd.url,
            "ocspd_auditor",
            "INSERT INTO ocsp_audit_segments VALUES ('ocsp/x', 1, 1, now(), now(), 'k', '')",
        )


def _storage_down(ocspd: Cli) -> None:
    ocspd.sql("REVOKE INSERT ON ocsp_audit_segments FROM ocspd_responder")


def _storage_up(ocspd: Cli) -> None:
    ocspd.sql("GRANT INSERT ON ocsp_audit_segments TO ocspd_responder")


@pytest.mark.parametrize("policy", ["tryLater", "spool"])
def test_audit_storage_down(ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path, policy: str) -> None:
    """tryLater: once max_pending records wait, the answer is tryLater and /readyz fails;
    spool: answers go on, records wait on disk. Either way, after storage is back, every
    request answered is on record and the chain verifies."""
    cert = _leaf(ocspd, pki, f"down-{policy}")
    request = _request(pki, cert)
    spool = tmp_path / "spool"
    # hold = 0: refused at once (test_held_requests_wait_for_room covers the wait).
    config = (
        f'[audit]\non_failure = "{policy}"\nmax_pending = 100\nflush_interval = "50ms"\n'
        'hold = "0s"\n'
    )
    responder = start_responder(
        ocspd.url,
        tmp_path,
        workers=1,
        config=config,
        extra_env={"OCSPD_AUDIT_SPOOL_DIR": str(spool)},  # the environment wins over the file
    )
    answered = 0
    refused = 0
    try:
        _storage_down(ocspd)
        # The backlog is checked at each flush (50 ms), not per request: keep asking for a
        # few flushes past max_pending, however fast the requests go.
        deadline = time.monotonic() + 10
        while answered + refused < 150 or (
            policy == "tryLater" and not refused and time.monotonic() < deadline
        ):
            status = ocsp.load_der_ocsp_response(http_post(responder.url, request)[2])
            if status.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL:
                answered += 1
            else:
                assert status.response_status == ocsp.OCSPResponseStatus.TRY_LATER
                refused += 1
            if answered >= 100:
                time.sleep(0.005)
        if policy == "tryLater":
            assert refused > 0 and answered >= 100
            assert http_get(responder.url + "readyz")[0] == 503
            metrics = responder.metrics(wait_for=r"ocspd_audit_refused_requests_total \d")
            assert "ocspd_audit_pending_records" in metrics
        else:
            assert refused == 0
            _wait_for(lambda: any(spool.glob("*.seg")))
        _storage_up(ocspd)
        _wait_for(lambda: http_get(responder.url + "readyz")[0] == 200)
        _wait_for(lambda: len(_requests_on_record(ocspd)) >= answered)
        if policy == "spool":
            _wait_for(lambda: not any(spool.glob("*.seg")))
    finally:
        _storage_up(ocspd)
        responder.stop()
    records = _requests_on_record(ocspd)
    assert len([r for r in records if r["outcome"] == "successful"]) == answered
    assert ocspd("audit", "verify").code == 0


def test_held_requests_wait_for_room(ocspd: Cli, pki: Pki, issuer: str, tmp_path: Path) -> None:
    """AA1.1 e, tryLater policy: with the backlog full, a request waits up to `hold` for the
    writer to make room. Storage still down at the end of the wait: tryLater, after the
    wait (not at once: a cheap refusal is a record too, and refusals that outran the writer
    kept the backlog full under load). Storage back during the wait: the held request is
    answered as usual, and it is on record."""
    cert = _leaf(ocspd, pki, "held")
    request = _request(pki, cert)
    config = '[audit]\nmax_pending = 100\nflush_interval = "50ms"\nhold = "2s"\n'
    responder = start_responder(ocspd.url, tmp_path, workers=1, config=config)
    try:
        _storage_down(ocspd)
        deadline = time.monotonic() + 20
        while True:  # answered at once until the backlog fills, then held and refused
            assert time.monotonic() < deadline, "the backlog never filled"
            started = time.monotonic()
            status = ocsp.load_der_ocsp_response(http_post(responder.url, request)[2])
            waited = time.monotonic() - started
            if status.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
                break
        assert status.response_status == ocsp.OCSPResponseStatus.TRY_LATER
        assert waited >= 1.9, f"refused after {waited:.2f} s, not after the 2 s hold"
        assert http_get(responder.url + "readyz")[0] == 503

        async def held_then_room() -> tuple[ocsp.OCSPResponse, float]:
            started = time.monotonic()
            answer = asyncio.create_task(asyncio.to_thread(http_post, responder.url, request))
            await asyncio.sleep(0.3)
            assert not answer.done(), "answered while the backlog was full"
            await asyncio.to_thread(_storage_up, ocspd)
            reply = await answer
            return ocsp.load_der_ocsp_response(reply[2]), time.monotonic() - started

        status, waited = asyncio.run(held_then_room())
        assert status.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert waited < 1.9, f"answered after {waited:.2f} s: not when room was made"
        _wait_for(lambda: http_get(responder.url + "readyz")[0] == 200)
        metrics = responder.metrics(wait_for=r"ocspd_audit_refused_requests_total \d")
        assert "ocspd_audit_refused_requests_total 1.0" in metrics
    finally:
        _storage_up(ocspd)
        responder.stop()
    records = _requests_on_record(ocspd)
    assert [r["outcome"] for r in records].count("tryLater") == 1
    assert ocspd("audit", "verify").code == 0


def test_stream_mac_is_hmac_sha256() -> None:
    """The precomputed-state HMAC used per record equals RFC 2104 HMAC-SHA256 (so `audit
    verify` and anyone else can check records with any HMAC implementation)."""
    import os

    from ocspd.audit.requests import StreamMac

    for key_length in (16, 32, 64, 100):
        key = os.urandom(key_length)
        mac = StreamMac(key)
        for _ in range(20):
            a, b = os.urandom(32), os.urandom(200)
            assert mac(a, b) == hmac.digest(key, a + b, "sha256")


def test_chain_in_c_is_the_python_chain() -> None:
    """ocspd.audit._chain (C, OpenSSL) writes exactly the bytes of the pure-Python reference,
    for every field size, negative times, long keys and an empty batch; and the verifier
    accepts them. In CI the extension must have been built: a silent fallback to Python would
    cost every request several µs (bench/RESULTS.md)."""
    import os
    import random

    from ocspd.audit import requests as audit_requests

    if not audit_requests.CHAIN_IN_C:
        missing("ocspd.audit._chain is not built (setup.py: needs gcc and libssl-dev)")
    from ocspd.audit._chain import chain

    rng = random.Random(7)
    for key_length in (16, 32, 64, 65, 200):
        key = os.urandom(key_length)
        head = os.urandom(32)
        records = [
            (
                rng.randrange(-(2**63), 2**63),
                rng.random() < 0.5,
                os.urandom(rng.randrange(0, 300)),
                os.urandom(rng.randrange(0, 40)),
                os.urandom(rng.randrange(0, 2000)),
            )
            for _ in range(rng.randrange(0, 50))
        ]
        seq = rng.randrange(0, 2**40)
        assert chain(key, head, seq, records) == audit_requests.chain_records_py(
            key, head, seq, records
        )
    with pytest.raises(TypeError):
        chain(b"k", bytes(32), 0, [(1, False, b"", b"", "not bytes")])
    with pytest.raises(ValueError):
        chain(b"k", bytes(31), 0, [])
    # Records chained in C verify as a stream.
    skey = stream_key(Key(), "ocsp/t")
    sealed = [(r.at_us, r.nonce, encode(r)[18:], b"", b"") for r in _records(5)]
    packed, last = chain(skey, GENESIS, 0, sealed)
    segment = make_segment("ocsp/t", "test-key", packed, 1, 5, sealed[0][0], sealed[-1][0])
    verifier = _verify([segment])
    assert verifier.problem is None and verifier.count == 5 and verifier.head == last


def test_sealer_cuts_segments_that_chain_across() -> None:
    """Every max_records records a segment is cut, so no COPY carries an unbounded backlog;
    the cut segments still form one chain."""
    from ocspd.audit.requests import Sealer, make_segment

    skey = stream_key(Key(), "ocsp/t")
    sealer = Sealer("ocsp/t", "test-key", skey, max_records=3)
    for record in _records(7):
        sealer.add(record.at_us, record.nonce, encode(record)[18:], b"", b"")
    assert sealer.count == 7
    segments = []
    while (taken := sealer.take()) is not None:
        segments.append(make_segment("ocsp/t", "test-key", *taken))
    assert [(s.first_seq, s.last_seq) for s in segments] == [(1, 3), (4, 6), (7, 7)]
    assert sealer.count == 0
    verifier = _verify(segments)
    assert verifier.problem is None and verifier.count == 7


async def _open_audit(pool: asyncpg.Pool, stream: str) -> Any:
    """A worker's RequestAudit on `pool` with the default [audit] settings, its stream open."""
    import logging

    from ocspd.audit import log as audit_log
    from ocspd.config import AuditConfig

    audit = audit_log.RequestAudit(
        stream,
        Key(),  # type: ignore[arg-type]  # mac and key_id are all it uses
        pool,
        AuditConfig(),
        logging.getLogger("test"),
    )
    await audit.open({})
    return audit


async def test_a_backlog_goes_in_copy_after_copy_without_waiting_for_the_next_flush(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog larger than one COPY is stored by one store pass, COPY after COPY, not one
    COPY per flush_interval (which let a busy responder's backlog grow)."""

    from ocspd.audit import log as audit_log
    from ocspd.store import request_audit

    monkeypatch.setattr(audit_log, "COPY_BYTES", 2_000)  # a few segments per COPY
    copies: list[int] = []
    insert_many = request_audit.insert_many

    async def counting(pool: asyncpg.Pool, segments: list, timeout: float = 30) -> None:  # type: ignore[type-arg]
        copies.append(len(segments))
        await insert_many(pool, segments, timeout)

    monkeypatch.setattr(request_audit, "insert_many", counting)
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        audit = await _open_audit(pool, "ocsp/test/1.0/1")
        answer = answer_fields(bytes(32), b"\x01" * 20, (b"\x30\x03cid",), ("good",))
        for n in range(40):  # 40 flushes' worth, each its own segment
            for _ in range(25):
                audit.record(n % 2 == 0, b"\x00\x00" * 2, b"\x00\x00" * 2, answer)
            await audit._seal_all()
        assert audit.pending == 1000
        await audit._store_unsent()
        assert audit.pending == 0
        assert len(copies) > 3  # several COPYs in the one pass
        stored = await pool.fetchval(
            "SELECT sum(last_seq - first_seq + 1) FROM ocsp_audit_segments WHERE stream = $1",
            audit.stream,
        )
        assert stored == 1000 + 1  # and the stream-open record stored by open()
    finally:
        await pool.close()


async def test_once_a_large_backlog_is_stored_its_heap_pages_go_back(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog's memory is returned to the system once it has been stored (ocspd.heap), so
    a worker's RSS follows its backlog down; a small backlog, or one still waiting, is not
    worth the call."""

    from ocspd import heap
    from ocspd.audit import log as audit_log

    if not heap.AVAILABLE:
        pytest.fail("malloc_trim not found: ocspd's workers run on glibc")
    trims: list[int] = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: trims.append(1) or True)
    monkeypatch.setattr(audit_log, "TRIM_AFTER_BYTES", 20_000)
    monkeypatch.setattr(audit_log, "COPY_BYTES", 5_000)
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        audit = await _open_audit(pool, "ocsp/test/1.0/2")
        answer = answer_fields(bytes(32), b"\x01" * 20, (b"\x30\x03cid",), ("good",))

        async def backlog(records: int) -> None:
            for _ in range(records // 50):
                for _ in range(50):
                    audit.record(False, b"\x00\x00" * 2, b"\x00\x00" * 2, answer)
                await audit._seal_all()

        await backlog(100)  # about 5 kB: below the mark
        await audit._store_unsent()
        assert audit.pending == 0 and trims == []
        await backlog(1000)  # about 53 kB
        await audit._store_unsent()
        assert audit.pending == 0 and trims == [1] and audit.heap_trims == 1
        # At most once per TRIM_INTERVAL, however many backlogs come and go.
        await backlog(1000)
        await audit._store_unsent()
        assert trims == [1]
        monkeypatch.setattr(audit_log, "TRIM_INTERVAL", 0.0)
        await backlog(1000)
        await audit._store_unsent()
        assert trims == [1, 1]
    finally:
        await pool.close()
