"""Prometheus metrics of the responder, created on a registry passed in.

Labels come from fixed sets (methods, outcomes, statuses); never serials or addresses.
With several workers, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set
by `ocspd serve`) aggregates what each worker records.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# How often each worker adds its tallies to /metrics: so a scrape, or a check right after a
# burst of requests, is at most this far behind. A flush costs at most about 70 µs (every
# counter and histogram of a busy worker), less than 0.03 % of a core at this rate.
PUBLISH_INTERVAL = 0.25


class Tally:
    """A counter counted in a plain int and added to its Prometheus child by `flush`.

    In multiprocess mode every inc() writes a memory-mapped file under a lock, which costs
    more than answering a cached request; the hot path counts here instead, and the worker
    flushes every PUBLISH_INTERVAL (so /metrics lags by at most that).
    """

    __slots__ = ("_child", "value")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def flush(self) -> None:
        if self.value:
            self._child.inc(self.value)
            self.value = 0


class TallyHistogram:
    """A histogram child observed into plain numbers, flushed like Tally.

    Adds to the child's bucket and sum values directly, which prometheus_client does not
    offer as API; tests/test_metrics.py checks the exposition against Histogram.observe.
    """

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child: Any = child
        self._bounds: tuple[float, ...] = tuple(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._sum += amount
        # The first bucket whose upper bound is >= amount, as Histogram.observe picks it.
        self._counts[bisect_left(self._bounds, amount)] += 1

    def flush(self) -> None:
        if self._sum or any(self._counts):
            self._child._sum.inc(self._sum)
            for bucket, count in zip(self._child._buckets, self._counts, strict=True):
                if count:
                    bucket.inc(count)
            self._sum = 0.0
            self._counts = [0] * len(self._bounds)


class ResponderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._flushes: list[Callable[[], None]] = []
        self.requests = Counter(
            "ocspd_requests_total",
            "OCSP requests by HTTP method and outcome (an RFC 6960 response status, or not_modified).",
            ["method", "outcome"],
            registry=registry,
        )
        self.answers = Counter(
            "ocspd_answers_total",
            "Certificate statuses returned in successful responses.",
            ["status"],
            registry=registry,
        )
        self.latency = Histogram(
            "ocspd_request_duration_seconds",
            "Time from request received to response written.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache = Counter(
            "ocspd_cache_lookups_total",
            "In-process response cache lookups by result (hit, miss, stale, feed_behind: the change feed was late, so the database was asked).",
            ["result"],
            registry=registry,
        )
        self.stored = Counter(
            "ocspd_stored_responses_total",
            "Lookups of the shared pre-signed response store by result (hit, miss, write_error).",
            ["result"],
            registry=registry,
        )
        self.signing_latency = Histogram(
            "ocspd_signing_duration_seconds",
            "Time to sign one OCSP response, waiting for a signing slot included.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.signing_in_flight = Gauge(
            "ocspd_signing_in_flight",
            "Live signatures in progress.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.signing_refused = Counter(
            "ocspd_signing_refused_total",
            "Live signatures refused with tryLater because the waiting line was full.",
            registry=registry,
        )
        self.db_pool_in_use = Gauge(
            "ocspd_db_pool_connections_in_use",
            "Status-database connections in use.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.db_pool_size = Gauge(
            "ocspd_db_pool_connections",
            "Status-database connections open.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.responder_cert_expiry = Gauge(
            "ocspd_responder_certificate_expiry_seconds",
            "Seconds until the certificate that signs an issuer's responses expires.",
            ["issuer"],
            registry=registry,
            multiprocess_mode="min",
        )
        self.ready = Gauge(
            "ocspd_ready",
            "1 while /readyz answers 200 (database feed current, signers usable, audit keeping "
            "up, not draining), else 0; the minimum over the workers.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.ca_cert_expiry = Gauge(
            "ocspd_ca_certificate_expiry_seconds",
            "Seconds until the certificate of a served issuing CA expires.",
            ["issuer"],
            registry=registry,
            multiprocess_mode="min",
        )
        self.oldest_cached = Gauge(
            "ocspd_cache_oldest_response_age_seconds",
            "Age (now - thisUpdate) of the oldest response held in the in-process cache.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.cache_entries = Gauge(
            "ocspd_cache_entries",
            "Responses held in the in-process cache.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.revocation_pending_age = Gauge(
            "ocspd_revocation_request_oldest_pending_seconds",
            "Age of the oldest revocation, hold or release request not yet applied or refused "
            "(RM1.1: applied within 60 minutes); 0 when none waits.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.audit_pending = Gauge(
            "ocspd_audit_pending_records",
            "Audit records of OCSP requests not yet stored in PostgreSQL (in memory or spooled).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.audit_stored = Counter(
            "ocspd_audit_stored_records_total",
            "Audit records of OCSP requests stored in PostgreSQL.",
            registry=registry,
        )
        self.audit_errors = Counter(
            "ocspd_audit_store_errors_total",
            "Failed attempts to store audit records (they are kept and retried, or spooled).",
            registry=registry,
        )
        self.audit_refused = Counter(
            "ocspd_audit_refused_requests_total",
            "OCSP requests answered tryLater because audit storage was behind (policy tryLater).",
            registry=registry,
        )
        self.feed_lag = Gauge(
            "ocspd_change_feed_age_seconds",
            "Age of the change feed's view: seconds since its last successful poll of the "
            "status database started.",
            registry=registry,
            multiprocess_mode="max",
        )

    def tally(self, child: Counter) -> Tally:
        """A Tally for a counter (or label child) that is flushed with the others."""
        tally = Tally(child)
        self._flushes.append(tally.flush)
        return tally

    def tally_histogram(self, child: Histogram) -> TallyHistogram:
        tally = TallyHistogram(child)
        self._flushes.append(tally.flush)
        return tally

    def on_flush(self, update: Callable[[], None]) -> None:
        """Runs `update` at every flush: for gauges that are cheaper to read than to track."""
        self._flushes.append(update)

    def flush(self) -> None:
        """Adds what the tallies counted since the last flush to the Prometheus metrics."""
        for flush in self._flushes:
            flush()
