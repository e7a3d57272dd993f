"""ocspd.heap: freed heap memory goes back to the system (what keeps a worker's RSS flat
after an audit backlog, see ocspd.audit.log)."""

from __future__ import annotations

import os
import random

import pytest

from ocspd import heap


def _rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_free_heap_pages_are_returned() -> None:
    """Blocks of a backlog's size, freed between longer-lived ones, stay in RSS until
    release_free_memory; then most of them leave it."""
    if not heap.AVAILABLE:
        pytest.fail("malloc_trim not found: ocspd runs on glibc")
    rng = random.Random(7)
    # The first large block freed raises glibc's mmap threshold: later ones come from the
    # heap, as in a long-running worker.
    first = bytearray(300_000)
    del first
    heap.release_free_memory()
    kept: list[bytearray] = []
    backlog: list[bytearray] = []
    for _ in range(300):
        backlog.append(bytearray(rng.randint(30_000, 250_000)))
        kept.extend(bytearray(rng.randint(600, 3_000)) for _ in range(10))
    for block in backlog:  # touch every page, as segments are written
        block[::4096] = b"\x01" * len(block[::4096])
    backlog_kb = sum(len(b) for b in backlog) // 1024
    backlog.clear()
    before = _rss_kb()
    assert heap.release_free_memory()
    after = _rss_kb()
    assert before - after > backlog_kb // 2, (before, after, backlog_kb)
    assert kept  # the long-lived blocks are still there
