"""At-most-once processing with a lease and a done marker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from heimdall.logic.once import LEASE_S, run_once
from heimdall.testing.registry import InMemoryRegistry


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_done_work_is_never_repeated_even_days_later() -> None:
    clock = Clock()
    registry = InMemoryRegistry(now=clock)
    calls: list[int] = []

    def work() -> str:
        calls.append(1)
        return "done"

    assert run_once(registry, "k", work, duplicate="dup") == "done"
    clock.now += timedelta(days=3)
    assert run_once(registry, "k", work, duplicate="dup") == "dup"
    assert calls == [1]


def test_a_failure_releases_the_lease_for_an_immediate_retry() -> None:
    registry = InMemoryRegistry()

    def boom() -> str:
        raise RuntimeError("S3 is down")

    with pytest.raises(RuntimeError):
        run_once(registry, "k", boom, duplicate="dup")
    assert run_once(registry, "k", lambda: "done", duplicate="dup") == "done"


def test_a_worker_killed_mid_way_is_retried_once_its_lease_expires() -> None:
    clock = Clock()
    registry = InMemoryRegistry(now=clock)
    assert registry.claim_once("k", LEASE_S)  # a worker took the lease, then was killed (no release)
    assert (
        run_once(registry, "k", lambda: "done", duplicate="dup") == "dup"
    )  # still running, as far as we know
    clock.now += timedelta(seconds=LEASE_S)
    assert run_once(registry, "k", lambda: "done", duplicate="dup") == "done"
