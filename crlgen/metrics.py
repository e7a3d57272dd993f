"""crlgen's Prometheus metrics, on a registry passed in. The issuer label is an operator-given
name from a fixed set, never anything a client sends."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CrlMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_signed = Gauge(
            "ocspd_crl_last_signed_timestamp_seconds",
            "When the latest CRL of an issuer was signed (its thisUpdate), Unix time.",
            ["issuer"],
            registry=registry,
        )
        self.next_update = Gauge(
            "ocspd_crl_next_update_seconds",
            "Seconds until the latest CRL's nextUpdate; negative once it has expired.",
            ["issuer"],
            registry=registry,
        )
        self.entries = Gauge(
            "ocspd_crl_entries",
            "Entries on the latest CRL.",
            ["issuer"],
            registry=registry,
        )
        self.duration = Histogram(
            "ocspd_crl_signing_duration_seconds",
            "Time to read, encode, sign, verify and archive one CRL.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60),
            registry=registry,
        )
        self.failures = Counter(
            "ocspd_crl_failures_total",
            "CRLs that could not be produced or published, by stage.",
            ["issuer", "stage"],
            registry=registry,
        )
        self.leader = Gauge(
            "ocspd_crl_leader",
            "1 while this crlgen instance holds the leader lock and signs.",
            registry=registry,
        )
