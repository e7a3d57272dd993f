"""Prometheus metrics of the responder, created on a registry passed in.

Labels come from fixed sets (methods, outcomes, statuses); never serials or addresses.
With several workers, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set
by `ocspd serve`) aggregates what each worker records.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ResponderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
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
            "In-process response cache lookups by result (hit, miss, stale).",
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
        self.feed_lag = Gauge(
            "ocspd_change_feed_age_seconds",
            "Seconds since the change feed last polled the status database successfully.",
            registry=registry,
            multiprocess_mode="max",
        )
