"""Tallies (ocspd.metrics): counted in plain numbers, published exactly as direct calls would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ocspd.metrics import LATENCY_BUCKETS, ResponderMetrics, Tally, TallyHistogram


def _exposition(registry: CollectorRegistry) -> list[str]:
    # Creation timestamps differ between the two registries; everything else must match.
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


def test_tallied_histogram_and_counter_expose_what_direct_calls_would() -> None:
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", ["m"], buckets=LATENCY_BUCKETS, registry=direct)
    h2 = Histogram("h", "h", ["m"], buckets=LATENCY_BUCKETS, registry=tallied)
    c1 = Counter("c", "c", registry=direct)
    c2 = Counter("c", "c", registry=tallied)
    th, tc = TallyHistogram(h2.labels("GET")), Tally(c2)
    rng = random.Random(7)
    # Values on bucket bounds too: a bound is inclusive (le), on both paths.
    values = [rng.choice((rng.random() * 3, rng.choice(LATENCY_BUCKETS))) for _ in range(500)]
    for v in values:
        h1.labels("GET").observe(v)
        th.observe(v)
        c1.inc()
        tc.inc()
    assert _exposition(direct) != _exposition(tallied)  # nothing published before the flush
    th.flush()
    tc.flush()
    assert _exposition(direct) == _exposition(tallied)
    th.flush()  # a second flush adds nothing
    tc.flush()
    assert _exposition(direct) == _exposition(tallied)


def test_responder_metrics_flush_publishes_tallies_and_flush_hooks() -> None:
    registry = CollectorRegistry()
    metrics = ResponderMetrics(registry)
    hits = metrics.tally(metrics.cache.labels("hit"))
    seen = []
    metrics.on_flush(lambda: seen.append(True))
    hits.inc(3)
    assert registry.get_sample_value("ocspd_cache_lookups_total", {"result": "hit"}) == 0
    metrics.flush()
    assert registry.get_sample_value("ocspd_cache_lookups_total", {"result": "hit"}) == 3
    assert seen == [True]
