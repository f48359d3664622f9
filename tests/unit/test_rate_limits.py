"""The sliding-window rate limit's arithmetic: the allowance, and a Retry-After that is exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from heimdall.deployments import (
    InMemoryDeploymentStore,
    RateWindow,
    rate_allowance,
    rate_limited,
    rate_window,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def allowed_after(limit: int, previous: int, current: int, elapsed_s: float, wait_s: float) -> bool:
    """Whether one more request fits ``wait_s`` from now if no other arrives meanwhile."""
    at = elapsed_s + wait_s
    if at < 60:
        return current < rate_allowance(limit, previous, RateWindow(number=1, elapsed_s=at))
    if at < 120:  # the next minute: this one's count weighs on it, nothing counted there yet
        return rate_allowance(limit, current, RateWindow(number=2, elapsed_s=at - 60)) > 0
    return True


def test_the_window_and_what_the_previous_minute_still_weighs() -> None:
    window = rate_window(T0 + timedelta(seconds=15))
    assert (window.number, window.elapsed_s) == (int(T0.timestamp()) // 60, 15.0)
    assert rate_allowance(10, 0, window) == 10
    assert rate_allowance(10, 8, window) == 4  # 8 x 45/60 = 6
    assert rate_allowance(10, 7, window) == 4  # 7 x 45/60 = 5.25, rounded up
    assert rate_allowance(10, 10, RateWindow(number=1, elapsed_s=0.0)) == 0
    assert rate_allowance(5, 50, RateWindow(number=1, elapsed_s=30.0)) == -20


@given(
    limit=st.integers(min_value=1, max_value=1000),
    previous=st.integers(min_value=0, max_value=1000),
    current=st.integers(min_value=0, max_value=1000),
    elapsed_s=st.floats(min_value=0, max_value=59.999, allow_nan=False),
)
def test_retry_after_is_the_first_whole_second_a_request_fits(
    limit: int, previous: int, current: int, elapsed_s: float
) -> None:
    window = RateWindow(number=1, elapsed_s=elapsed_s)
    if current < rate_allowance(limit, previous, window):
        return  # allowed now: nothing to refuse
    decision = rate_limited(limit, previous, current, window)
    assert not decision.allowed and decision.remaining == 0
    assert 1 <= decision.retry_after_s <= 120
    assert allowed_after(limit, previous, current, elapsed_s, decision.retry_after_s)
    if decision.retry_after_s > 1:
        assert not allowed_after(limit, previous, current, elapsed_s, decision.retry_after_s - 1)


@given(
    offsets=st.lists(st.floats(min_value=0, max_value=180, allow_nan=False), min_size=1, max_size=60),
    limit=st.integers(min_value=1, max_value=12),
)
def test_no_burst_gets_more_than_the_limit_through(offsets: list[float], limit: int) -> None:
    """A burst within one second, anywhere (across a minute boundary too): the first ``limit`` get through."""
    store = InMemoryDeploymentStore()
    start = T0 + timedelta(seconds=sorted(offsets)[0])
    moments = sorted(start + timedelta(seconds=(o % 1.0)) for o in offsets)
    allowed = [store.consume_rate_limit("k", limit, moment).allowed for moment in moments]
    through = min(limit, len(moments))
    assert allowed == [True] * through + [False] * (len(moments) - through)
