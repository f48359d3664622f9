"""Adversarial arrival times for the rate limit, and the exact rule a store's answers are checked against.

The promise: no 60-second window admits more than the limit, and a request is admitted whenever the
60 s before it (``(t - 60 s, t]``) hold fewer than ``limit`` admitted requests. :func:`check_exact`
replays one key's arrivals through a store and checks every answer against that rule, both ways, with
``remaining`` and an exact ``Retry-After``. Shared by the in-memory store's unit tests and the DynamoDB
store's contract tests on the emulator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from heimdall.domain.rate_limits import RateDecision

#: A minute boundary (12:00:00 UTC): offsets below are seconds from here.
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
WINDOW_S = 60

Consume = Callable[[datetime], RateDecision]


def at(offset_s: float) -> datetime:
    """``T0`` plus ``offset_s`` seconds, at the clock's (datetime's) microsecond resolution."""
    return T0 + timedelta(microseconds=round(offset_s * 1_000_000))


def in_window(admitted: Sequence[datetime], now: datetime) -> list[datetime]:
    """The admitted requests in the 60 s ending at ``now``: ``(now - 60 s, now]``."""
    return [t for t in admitted if now - timedelta(seconds=WINDOW_S) < t <= now]


def fits(admitted: Sequence[datetime], limit: int, now: datetime) -> bool:
    """Whether one more request at ``now`` keeps every 60-s window at or under ``limit``."""
    return len(in_window(admitted, now)) < limit


def most_in_any_window(admitted: Sequence[datetime]) -> int:
    """The most admitted requests any 60-s window ``(a, a + 60 s]`` holds (it suffices to end one at each)."""
    return max((len(in_window(admitted, end)) for end in admitted), default=0)


def check_exact(consume: Consume, arrivals: Sequence[datetime], limit: int) -> list[datetime]:
    """Replay ``arrivals`` (in this order, one clock) through ``consume`` and check every answer.

    Admitted iff the window before it has room; ``remaining`` is the room left after it; a refusal's
    ``Retry-After`` is the first whole second at which one more request fits if no other arrives.
    Returns the admitted times.
    """
    admitted: list[datetime] = []
    for n, now in enumerate(arrivals):
        decision = consume(now)
        expected = fits(admitted, limit, now)
        assert decision.allowed is expected, (n, now, decision, in_window(admitted, now))
        if decision.allowed:
            admitted.append(now)
            assert decision.remaining == limit - len(in_window(admitted, now)), (n, decision)
            continue
        assert decision.remaining == 0, (n, decision)
        oldest = min(in_window(admitted, now))
        wait = (oldest + timedelta(seconds=WINDOW_S) - now).total_seconds()
        assert decision.retry_after_s == math.ceil(wait), (n, decision, wait)
        assert 1 <= decision.retry_after_s <= WINDOW_S
        retry = timedelta(seconds=decision.retry_after_s)
        assert fits(admitted, limit, now + retry)
        assert not fits(admitted, limit, now + retry - timedelta(seconds=1))
    assert most_in_any_window(admitted) <= limit
    return admitted


# --- arrival patterns --------------------------------------------------------------------------------

#: Where bursts start: just before, at and after minute boundaries, at thirds of a window, anywhere.
_EDGES = [59.8, 59.999, 59.999999, 60.0, 60.000001, 0.2, 20.0, 40.0, 30.0, 50.0]


@st.composite
def bursts(draw: st.DrawFn, max_requests: int = 60) -> list[datetime]:
    """Bursts (several requests at one instant, or within a few ms) at adversarial offsets, in order."""
    times: list[float] = []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        minute = draw(st.integers(min_value=0, max_value=3)) * WINDOW_S
        start = minute + draw(st.sampled_from(_EDGES) | st.floats(min_value=0, max_value=WINDOW_S))
        spread = draw(st.sampled_from([0.0, 0.001, 0.5]))
        size = draw(st.integers(min_value=1, max_value=15))
        times += [start + spread * i / size for i in range(size)]
    return [at(t) for t in sorted(times)[:max_requests]]


def thirds(limit: int, windows: int = 4) -> list[datetime]:
    """``limit`` requests at every third of a window (each burst refused once the first fills it)."""
    return [at(third * WINDOW_S / 3) for third in range(windows * 3) for _ in range(limit)]


@st.composite
def random_arrivals(draw: st.DrawFn, max_requests: int = 60) -> list[datetime]:
    """Random arrival times over four minutes, in order."""
    offsets = draw(
        st.lists(st.floats(min_value=0, max_value=4 * WINDOW_S), min_size=1, max_size=max_requests)
    )
    return [at(t) for t in sorted(offsets)]


def arrivals(max_requests: int = 60) -> st.SearchStrategy[list[datetime]]:
    """Any of the patterns above."""
    return bursts(max_requests) | random_arrivals(max_requests)


#: The case that was seen: bursts of 10 at second 59.8 of a minute, then 30 s and 50 s later.
SEEN_BURSTS = [at(59.8)] * 10 + [at(89.8)] * 10 + [at(109.8)] * 10
