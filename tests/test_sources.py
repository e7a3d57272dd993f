"""The Source layers alone, with a fake inner Source and a fake clock (no database)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ocspd import devpki
from ocspd.config import NoncePolicy
from ocspd.errors import TryLater, Unauthorized
from ocspd.metrics import ResponderMetrics
from ocspd.protocol.request import CertId, HashAlgorithm, OcspRequest
from ocspd.protocol.response import AnswerStatus, ResponderIdentity
from ocspd.signing.filekey import FileSigner
from ocspd.sources.base import Response
from ocspd.sources.cache import CacheSource
from ocspd.sources.filter import FilterSource
from ocspd.sources.issuers import IssuerTable, ServedIssuer
from ocspd.sources.live import SigningLimiter
from ocspd.store.issuers import CertIdHashes, Issuer

START = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


class FakeSource:
    """Answers every request with a new Response; counts calls; can be made slow."""

    def __init__(self, clock: Clock, delay: float = 0.0) -> None:
        self.calls = 0
        self.clock = clock
        self.delay = delay

    async def response(self, request: OcspRequest) -> Response:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        now = self.clock()
        return Response(
            f"response {self.calls}".encode(),
            now,
            now + dt.timedelta(days=2),
            (AnswerStatus.GOOD,),
            cacheable=request.nonce is None,
        )


def _served(issuer_id: int, name: str, ca: devpki.Issued) -> tuple[Issuer, ServedIssuer]:
    issuer = Issuer(issuer_id, name, ca.cert, None, "file:/x", CertIdHashes.of(ca.cert))
    signer = FileSigner(ca.key, Path("/x"))  # type: ignore[arg-type]
    return issuer, ServedIssuer(
        issuer_id, name, signer, ResponderIdentity.from_certificate(ca.cert), ca.cert
    )


@pytest.fixture(scope="module")
def cas() -> tuple[devpki.Issued, devpki.Issued, devpki.Issued]:
    return devpki.make_ca("CA one"), devpki.make_ca("CA two"), devpki.make_ca("Not served")


@pytest.fixture
def table(cas: tuple[devpki.Issued, devpki.Issued, devpki.Issued]) -> IssuerTable:
    return IssuerTable([_served(1, "one", cas[0]), _served(2, "two", cas[1])])


def _req(
    ca: devpki.Issued,
    *serials: int,
    nonce: bytes | None = None,
    alg: HashAlgorithm = HashAlgorithm.SHA1,
) -> OcspRequest:
    return OcspRequest(tuple(CertId.of(ca.cert, s, alg) for s in serials), nonce, b"")


def _cache(inner: FakeSource, table: IssuerTable, clock: Clock, **kw: object) -> CacheSource:
    options: dict[str, object] = {
        "refresh_after": dt.timedelta(hours=12),
        "max_entries": 100,
        "nonce": NoncePolicy.ECHO,
    }
    options.update(kw)
    return CacheSource(
        inner, table, clock, options["refresh_after"], options["max_entries"], options["nonce"],  # type: ignore[arg-type]
        ResponderMetrics(CollectorRegistry()),
    )  # fmt: skip


async def test_issuers_found_by_every_hash_algorithm(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    for alg in HashAlgorithm:
        found = table.find(CertId.of(cas[1].cert, 5, alg))
        assert found is not None and found.name == "two"
    assert table.find(CertId.of(cas[2].cert, 5)) is None


async def test_filter_refuses_unserved_and_mixed_issuers(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    inner = FakeSource(Clock())
    source = FilterSource(inner, table)
    with pytest.raises(Unauthorized):
        await source.response(_req(cas[2], 1))
    mixed = OcspRequest((CertId.of(cas[0].cert, 1), CertId.of(cas[1].cert, 2)), None, b"")
    with pytest.raises(Unauthorized, match="different issuers"):
        await source.response(mixed)
    await source.response(_req(cas[0], 1, 2, 3))
    assert inner.calls == 1


async def test_cache_hits_until_refresh_is_due(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    clock = Clock()
    inner = FakeSource(clock)
    cache = _cache(inner, table, clock)
    first = await cache.response(_req(cas[0], 7))
    clock.now += dt.timedelta(hours=11)
    assert await cache.response(_req(cas[0], 7)) is first
    clock.now += dt.timedelta(hours=2)  # past refresh_after (pkio71: never older than 4 days)
    refreshed = await cache.response(_req(cas[0], 7))
    assert refreshed is not first and inner.calls == 2


async def test_cache_key_is_the_whole_cert_id(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    clock = Clock()
    inner = FakeSource(clock)
    cache = _cache(inner, table, clock)
    a = await cache.response(_req(cas[0], 7))
    b = await cache.response(_req(cas[0], 7, alg=HashAlgorithm.SHA256))
    c = await cache.response(_req(cas[1], 7))
    assert len({a.der, b.der, c.der}) == 3  # RS1.4: no cross-wiring between hashes or issuers


async def test_invalidation_drops_every_hash_variant(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    clock = Clock()
    inner = FakeSource(clock)
    cache = _cache(inner, table, clock)
    for alg in (HashAlgorithm.SHA1, HashAlgorithm.SHA256):
        await cache.response(_req(cas[0], 7, alg=alg))
    await cache.response(_req(cas[0], 8))
    cache.invalidate([(1, 7)])
    assert len(cache) == 1
    await cache.response(_req(cas[0], 7))
    assert inner.calls == 4


async def test_a_bulk_change_clears_the_whole_cache(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    """The feed saw more changes than it hands over (ChangeFeed max_rows): every answer,
    and every request-bytes shortcut to one, is forgotten."""
    clock = Clock()
    inner = FakeSource(clock)
    cache = _cache(inner, table, clock)
    request = OcspRequest((CertId.of(cas[0].cert, 7),), None, b"request-7-bytes")
    await cache.response(request)
    await cache.response(_req(cas[1], 8))
    cache.clear()
    assert len(cache) == 0 and cache.lookup_request(request.der) is None
    await cache.response(request)
    assert inner.calls == 3


async def test_response_fetched_across_an_invalidation_is_not_kept(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    clock = Clock()
    inner = FakeSource(clock, delay=0.05)
    cache = _cache(inner, table, clock)
    fetch = asyncio.create_task(cache.response(_req(cas[0], 9)))
    await asyncio.sleep(0.01)
    cache.invalidate([(1, 9)])  # the status changed while the old one was being signed
    await fetch
    assert len(cache) == 0


async def test_concurrent_misses_fetch_once(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    clock = Clock()
    inner = FakeSource(clock, delay=0.02)
    cache = _cache(inner, table, clock)
    answers = await asyncio.gather(*(cache.response(_req(cas[0], 11)) for _ in range(50)))
    assert inner.calls == 1 and len({a.der for a in answers}) == 1


async def test_nonce_policies(table: IssuerTable, cas: tuple[devpki.Issued, ...]) -> None:
    clock = Clock()
    inner = FakeSource(clock)
    echo = _cache(inner, table, clock)
    await echo.response(_req(cas[0], 12, nonce=b"\x04\x02ab"))
    await echo.response(_req(cas[0], 12, nonce=b"\x04\x02ab"))
    assert inner.calls == 2 and len(echo) == 0  # each nonce signed afresh, none cached
    ignore = _cache(inner, table, clock, nonce=NoncePolicy.IGNORE)
    a = await ignore.response(_req(cas[0], 12, nonce=b"\x04\x02ab"))
    b = await ignore.response(_req(cas[0], 12, nonce=b"\x04\x02cd"))
    assert a is b and inner.calls == 3


async def test_cache_is_bounded(table: IssuerTable, cas: tuple[devpki.Issued, ...]) -> None:
    clock = Clock()
    cache = _cache(FakeSource(clock), table, clock, max_entries=10)
    for serial in range(50):
        await cache.response(_req(cas[0], serial + 1))
    assert len(cache) == 10
    assert len(cache._keys) == 10  # the reverse index shrinks with the entries


async def test_signing_limiter_refuses_past_the_waiting_line() -> None:
    limiter = SigningLimiter(1, 2, ResponderMetrics(CollectorRegistry()))
    release = asyncio.Event()
    outcomes: list[str] = []

    async def sign() -> None:
        try:
            async with limiter:
                await release.wait()
            outcomes.append("signed")
        except TryLater:
            outcomes.append("tryLater")

    tasks = [asyncio.create_task(sign()) for _ in range(5)]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(outcomes) == ["signed"] * 3 + ["tryLater"] * 2  # 1 in flight + 2 waiting


async def test_lookup_by_request_bytes(table: IssuerTable, cas: tuple[devpki.Issued, ...]) -> None:
    clock = Clock()
    inner = FakeSource(clock)
    cache = _cache(inner, table, clock)
    request = OcspRequest((CertId.of(cas[0].cert, 21),), None, b"request-21-bytes")
    assert cache.lookup_request(request.der) is None  # never parsed: unknown
    first = await cache.response(request)
    assert cache.lookup_request(request.der) is first
    assert cache.lookup_request(b"other bytes") is None
    cache.invalidate([(1, 21)])
    assert cache.lookup_request(request.der) is None  # never outlives the status it shows
    second = await cache.response(request)
    clock.now += dt.timedelta(hours=13)
    assert cache.lookup_request(request.der) is None  # due for refresh
    assert await cache.response(request) is not second
    with_nonce = OcspRequest((CertId.of(cas[0].cert, 22),), b"\x04\x01n", b"nonce-bytes")
    await cache.response(with_nonce)
    assert cache.lookup_request(with_nonce.der) is None


class FakeStore:
    """Stands in for StatusStore: every serial is good; counts the lookups."""

    def __init__(self) -> None:
        self.lookups = 0

    async def lookup_one(self, issuer_id: int, serial: int, cert_id_der: bytes):  # type: ignore[no-untyped-def]
        from ocspd.model import CertStatus
        from ocspd.store.status import StatusRow

        self.lookups += 1
        return StatusRow(
            serial, CertStatus.GOOD, None, None, START + dt.timedelta(days=90), 1
        ), None

    async def store(self, *args: object) -> None:
        pass


async def test_nonce_requests_reuse_a_current_status(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    import logging

    from ocspd.config import ResponderConfig
    from ocspd.sources.live import LiveSource

    store = FakeStore()
    current = [True]
    live = LiveSource(
        store,  # type: ignore[arg-type]
        table, ResponderConfig(), lambda: dt.datetime.now(dt.UTC), ResponderMetrics(CollectorRegistry()),
        logging.getLogger("test"), status_current=lambda: current[0],
    )  # fmt: skip
    nonce = _req(cas[0], 31, nonce=b"\x04\x02n1")
    await live.response(nonce)
    await live.response(nonce)
    assert store.lookups == 1  # the second nonce request signed from the remembered row
    current[0] = False  # the change feed is behind: back to the database
    await live.response(nonce)
    assert store.lookups == 2
    current[0] = True
    live.invalidate([(1, 31)])  # the status changed: forget the row
    await live.response(nonce)
    assert store.lookups == 3
    await live.response(_req(cas[0], 31))  # without a nonce the stored-response lookup runs
    assert store.lookups == 4
    await live.response(nonce)
    assert store.lookups == 4
    live.forget()  # a bulk change: every remembered row goes
    await live.response(nonce)
    assert store.lookups == 5
    await live.close()


async def test_live_source_waits_for_the_feed_before_reading_the_database(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    """With the feed behind, a nonce request for a remembered row waits for one poll: if it
    comes, the row is used (or read again if the poll dropped it); if not, the database."""
    import logging

    from ocspd.config import ResponderConfig
    from ocspd.sources.live import LiveSource

    store = FakeStore()
    polls: list[Callable[[], None]] = []

    async def catch_up() -> bool:
        for poll in polls:
            poll()
        return bool(polls)

    live = LiveSource(
        store,  # type: ignore[arg-type]
        table, ResponderConfig(), lambda: dt.datetime.now(dt.UTC),
        ResponderMetrics(CollectorRegistry()), logging.getLogger("test"),
        status_current=lambda: False, catch_up=catch_up,
    )  # fmt: skip
    nonce = _req(cas[0], 31, nonce=b"\x04\x02n1")
    await live.response(nonce)
    assert store.lookups == 1
    polls.append(lambda: None)  # the poll comes, nothing changed: the row is current
    await live.response(nonce)
    assert store.lookups == 1
    polls[0] = lambda: live.invalidate([(1, 31)])  # the poll brings a change to serial 31
    await live.response(nonce)
    assert store.lookups == 2
    polls.clear()  # no poll in time
    await live.response(nonce)
    assert store.lookups == 3
    await live.close()


async def test_a_row_the_feed_brings_answers_the_next_request_without_a_lookup(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    """The change feed hands over the changed rows whole: the next cacheable request for
    such a certificate is signed from that row (its new status) without reading the
    database; later ones look up the shared store again, as every other request does."""
    import logging

    from cryptography.x509 import ocsp

    from ocspd.config import ResponderConfig
    from ocspd.model import CertStatus, Reason
    from ocspd.sources.live import LiveSource
    from ocspd.store.status import StatusRow

    store = FakeStore()
    live = LiveSource(
        store,  # type: ignore[arg-type]
        table, ResponderConfig(), lambda: dt.datetime.now(dt.UTC),
        ResponderMetrics(CollectorRegistry()), logging.getLogger("test"),
        status_current=lambda: True,
    )  # fmt: skip
    plain = _req(cas[0], 41)
    await live.response(plain)
    assert store.lookups == 1
    revoked = StatusRow(
        41, CertStatus.REVOKED, START, Reason.keyCompromise, START + dt.timedelta(days=90), 7
    )
    live.changed([(1, revoked)])
    answer = ocsp.load_der_ocsp_response((await live.response(plain)).der)
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert store.lookups == 1  # no round trip: the poll read the row
    await live.response(plain)
    assert store.lookups == 2  # the pushed row answered once; then the store is asked
    # A bulk change (more rows than half the remembered rows) is not pushed.
    small = LiveSource(
        store,  # type: ignore[arg-type]
        table, ResponderConfig(cache_entries=2), lambda: dt.datetime.now(dt.UTC),
        ResponderMetrics(CollectorRegistry()), logging.getLogger("test"),
        status_current=lambda: True,
    )  # fmt: skip
    small.changed([(1, revoked), (1, replace(revoked, serial=42))])
    await small.response(plain)
    assert store.lookups == 3
    await live.close()
    await small.close()


async def test_nonce_responses_in_one_second_share_their_encoded_answers(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    """The per-second memo of encoded answers: same bytes but for nonce and signature, and a
    status change (another row) or another second encodes afresh."""
    import logging

    from cryptography.x509 import ocsp

    from ocspd.config import ResponderConfig
    from ocspd.model import CertStatus, Reason
    from ocspd.sources.live import LiveSource
    from ocspd.store.status import StatusRow

    class Store(FakeStore):
        row = StatusRow(31, CertStatus.GOOD, None, None, START + dt.timedelta(days=90), 1)

        async def lookup_one(self, issuer_id: int, serial: int, cert_id_der: bytes):  # type: ignore[no-untyped-def]
            return self.row, None

    clock = Clock()
    store = Store()
    live = LiveSource(
        store,  # type: ignore[arg-type]
        table, ResponderConfig(), clock, ResponderMetrics(CollectorRegistry()),
        logging.getLogger("test"),
    )  # fmt: skip

    async def answer(nonce: bytes) -> ocsp.OCSPResponse:
        response = await live.response(_req(cas[0], 31, nonce=b"\x04\x02" + nonce))
        return ocsp.load_der_ocsp_response(response.der)

    a, b = await answer(b"n1"), await answer(b"n2")
    assert a.tbs_response_bytes != b.tbs_response_bytes  # the nonces differ
    assert a.tbs_response_bytes.replace(b"n1", b"n2") == b.tbs_response_bytes
    from cryptography.hazmat.primitives.asymmetric import ec

    assert b.signature_hash_algorithm is not None
    key = cas[0].cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(b.signature, b.tbs_response_bytes, ec.ECDSA(b.signature_hash_algorithm))
    revoked_at = START - dt.timedelta(hours=1)
    store.row = StatusRow(31, CertStatus.REVOKED, revoked_at, Reason.keyCompromise, START, 2)
    c = await answer(b"n3")
    assert c.certificate_status == ocsp.OCSPCertStatus.REVOKED
    clock.now += dt.timedelta(seconds=1)
    d = await answer(b"n4")
    assert d.this_update_utc == START + dt.timedelta(seconds=1)
    assert d.certificate_status == ocsp.OCSPCertStatus.REVOKED
    await live.close()


async def test_cache_asks_the_database_while_the_feed_is_behind(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    """A cached answer is current only while the change feed is: when the feed is late the
    inner source (the database) answers; only if it cannot is the cached answer served."""
    clock = Clock()
    inner = FakeSource(clock)
    current = [True]
    cache = CacheSource(
        inner, table, clock, dt.timedelta(hours=12), 100, NoncePolicy.ECHO,
        ResponderMetrics(CollectorRegistry()), status_current=lambda: current[0],
    )  # fmt: skip
    request = OcspRequest((CertId.of(cas[0].cert, 9),), None, b"request-bytes")
    first = await cache.response(request)
    assert await cache.response(request) is first and inner.calls == 1
    assert cache.lookup_request(b"request-bytes") is first

    current[0] = False  # the feed missed its 1-second budget
    assert cache.lookup_request(b"request-bytes") is None
    fresh = await cache.response(request)
    assert fresh is not first and inner.calls == 2  # the database was asked

    class Down(FakeSource):
        async def response(self, request: OcspRequest) -> Response:
            raise TryLater("database unreachable")

    cache._inner = Down(clock)  # the database cannot answer either: an outage
    assert await cache.response(request) is first


async def test_cache_waits_for_the_feed_to_catch_up_before_asking_the_database(
    table: IssuerTable, cas: tuple[devpki.Issued, ...]
) -> None:
    """With the feed behind, a request first waits for one poll (shared by every request):
    if it comes, the cached answer is current again, or gone if the poll dropped it; only
    if it does not come is the database asked, request by request."""
    clock = Clock()
    inner = FakeSource(clock)
    current = [True]
    polls: list[Callable[[], None]] = []

    async def catch_up() -> bool:
        for poll in polls:
            poll()
        current[0] = bool(polls)
        return bool(polls)

    cache = CacheSource(
        inner, table, clock, dt.timedelta(hours=12), 100, NoncePolicy.ECHO,
        ResponderMetrics(CollectorRegistry()), status_current=lambda: current[0],
        catch_up=catch_up,
    )  # fmt: skip
    cert_id = CertId.of(cas[0].cert, 9)
    request = OcspRequest((cert_id,), None, b"request-bytes")
    first = await cache.response(request)

    current[0] = False
    polls.append(lambda: None)  # the poll comes and changes nothing
    assert await cache.response(request) is first and inner.calls == 1

    current[0] = False
    polls[0] = lambda: cache.invalidate([(1, 9)])  # the poll brings a change to serial 9
    fresh = await cache.response(request)
    assert fresh is not first and inner.calls == 2

    current[0] = False
    polls.clear()  # no poll in time: the database is asked
    assert await cache.response(request) is not fresh and inner.calls == 3
