"""The rate limit is exact: no 60-second window admits more than the limit, and a request is admitted
whenever the 60 s before it have room, whatever the arrival pattern; ``Retry-After`` is exact."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tests.support.rate_arrivals import (
    SEEN_BURSTS,
    Consume,
    arrivals,
    at,
    check_exact,
    most_in_any_window,
    thirds,
)

from heimdall.domain.rate_limits import MAX_RATE_LIMIT, check_rate_limit
from heimdall.testing.deployments import InMemoryDeploymentStore


def consume_on(store: InMemoryDeploymentStore, key_id: str, limit: int) -> Consume:
    return lambda now: store.consume_rate_limit(key_id, limit, now)


def test_the_seen_bursts_get_the_limit_through_and_no_more() -> None:
    """10 at second 59.8, 10 at +30 s, 10 at +50 s on a 10/min key: 10 in all (the old window let 18)."""
    store = InMemoryDeploymentStore()
    admitted = check_exact(consume_on(store, "k", 10), SEEN_BURSTS, 10)
    assert admitted == SEEN_BURSTS[:10]
    # The first burst leaves the window at 119.8 s: the third burst's refusals say 10 s.
    assert store.consume_rate_limit("k", 10, at(109.8)).retry_after_s == 10
    assert not store.consume_rate_limit("k", 10, at(118.8)).allowed
    assert store.consume_rate_limit("k", 10, at(119.8)).allowed


@pytest.mark.parametrize("limit", [1, 2, 3, 10, 100])
def test_bursts_at_every_third_of_a_window(limit: int) -> None:
    store = InMemoryDeploymentStore()
    admitted = check_exact(consume_on(store, "k", limit), thirds(limit), limit)
    # Each window's first burst fills it; the bursts at 20 s and 40 s into it are refused.
    assert len(admitted) == 4 * limit


@settings(max_examples=300, deadline=None)
@given(times=arrivals(), limit=st.integers(min_value=1, max_value=12))
@example(times=SEEN_BURSTS, limit=10)
def test_every_arrival_pattern_is_answered_exactly(times: list[datetime], limit: int) -> None:
    check_exact(consume_on(InMemoryDeploymentStore(), "k", limit), times, limit)


@settings(max_examples=200, deadline=None)
@given(
    times=arrivals(),
    limit=st.integers(min_value=1, max_value=12),
    skew_ms=st.lists(st.integers(min_value=-50, max_value=50), min_size=60, max_size=60),
)
def test_clocks_that_disagree_by_milliseconds_never_get_more_than_the_limit_through(
    times: list[datetime], limit: int, skew_ms: list[int]
) -> None:
    """Instances' clocks are not in step: the times a key's requests carry do not arrive in order."""
    store = InMemoryDeploymentStore()
    skewed = [t + timedelta(milliseconds=s) for t, s in zip(times, skew_ms, strict=False)]
    random.Random(len(skewed)).shuffle(skewed)  # a slow instance's request lands after a newer one
    admitted = [now for now in skewed if store.consume_rate_limit("k", limit, now).allowed]
    assert most_in_any_window(admitted) <= limit


def test_limits_change_with_the_tier_without_losing_what_was_admitted() -> None:
    store = InMemoryDeploymentStore()
    assert [store.consume_rate_limit("k", 3, at(1)).allowed for _ in range(4)] == [True] * 3 + [False]
    # A higher tier: the 3 still count against its 5.
    assert [store.consume_rate_limit("k", 5, at(2)).allowed for _ in range(3)] == [True, True, False]
    # A lower one: the 5 in the window are more than its 2.
    refused = store.consume_rate_limit("k", 2, at(30))
    assert not refused.allowed and refused.retry_after_s == 32  # the second newest leaves at 62 s


def test_keys_are_limited_apart() -> None:
    store = InMemoryDeploymentStore()
    assert [store.consume_rate_limit("a", 1, at(5)).allowed for _ in range(2)] == [True, False]
    assert store.consume_rate_limit("b", 1, at(5)).allowed


def test_a_limit_is_a_positive_int_no_larger_than_an_item_holds() -> None:
    assert check_rate_limit(1) == 1
    assert check_rate_limit(MAX_RATE_LIMIT) == MAX_RATE_LIMIT
    for bad in (0, -1, MAX_RATE_LIMIT + 1, True, 1.5, "10"):
        with pytest.raises(ValueError):
            check_rate_limit(bad)  # type: ignore[arg-type]
