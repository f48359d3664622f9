"""Rate limits of platform-endpoint API keys: exact over every 60-second window (DESIGN §7).

Exact: no 60-second window admits more than a key's limit, and a request is admitted whenever the
60 s before it, ``(now - 60 s, now]``, hold fewer than the limit. The scheme is a sliding log: per
key, the times (microseconds since the epoch, the Lambda's clock) of its last ``limit`` admitted
requests, ascending. A request is admitted iff fewer than ``limit`` of them are later than
``now - 60 s`` (:func:`admit_request`); an admitted request replaces the oldest time by its own, a
refused one changes nothing. ``Retry-After`` is exact: the oldest of the ``limit`` times plus 60 s
less now, rounded up to a whole second, is the first second at which one more request fits if no
other arrives. Why not a counter or a token bucket: a sliding window over minute counters
(weighting the previous minute, as before) lets a burst at second 59.8 and bursts 30 s and 50 s
later through 18 times on a 10/min key within 51 s; a token bucket or GCRA with a burst of
``limit`` admits the burst and then the refill within the same 60 s. Exactness over every window
needs the last ``limit`` times: this is that state and no more.

Clocks of concurrent instances differ by milliseconds, so times need not arrive in order: a log
keeps the ``limit`` *latest* times, sorted, and times later than ``now`` count as inside the
window; whatever order the times arrive in, no 60-s window of them holds more than the limit.
The DynamoDB store keeps a key's log in one item read with the key and the deployment and written
with one conditional write per admitted request (:mod:`heimdall.adapters.dynamodb.deployments`).

The per-tier limits (:data:`heimdall.domain.deployments.RATE_LIMITS`) live with the tiers; the stores
(:class:`heimdall.domain.deployments.DeploymentStore`) apply :func:`admit_request` to the log they keep.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from heimdall.domain.records import as_utc

__all__ = [
    "MAX_RATE_LIMIT",
    "RATE_LOG_GRACE_S",
    "RATE_WINDOW_S",
    "RATE_WINDOW_US",
    "RateDecision",
    "admit_request",
    "check_rate_limit",
    "rate_moment",
]

#: Length of the rate-limit window; how long a key's log outlives its newest time (then TTL deletes it).
RATE_WINDOW_S = 60
RATE_WINDOW_US = RATE_WINDOW_S * 1_000_000
RATE_LOG_GRACE_S = 300
#: The largest limit a key may have: its log stays small in one DynamoDB item (4 bytes a time there,
#: 40 kB at this limit, far under the 400 kB item limit; the tiers go to 1000).
MAX_RATE_LIMIT = 10_000
#: A log drops times this far behind its newest: they lie in no window any instance's clock opens
#: (instances agree to milliseconds), and it bounds what the DynamoDB item stores per time.
_RATE_LOG_HORIZON_US = 3600 * 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class RateDecision:
    """The answer of a rate limiter: allowed or not, when to retry, how many requests are left."""

    allowed: bool
    retry_after_s: int
    remaining: int


def rate_moment(now: datetime) -> int:
    """``now`` in whole microseconds since the epoch (a datetime's resolution: exact, no float)."""
    return (as_utc(now) - _EPOCH) // _MICROSECOND


def admit_request(
    admitted: Sequence[int], limit: int, now_us: int
) -> tuple[RateDecision, tuple[int, ...] | None]:
    """The answer to one request at ``now_us`` of a key whose log is ``admitted`` (ascending times of
    its last admitted requests), and the log to store: None when it is refused (nothing changes).

    Only the ``limit`` latest times matter (a log holds no more; after a tier change it may hold more
    or fewer): the request fits iff fewer than ``limit`` of them are later than ``now_us - 60 s``.
    Times after ``now_us`` (an instance whose clock runs ahead) count as inside the window.
    """
    recent = admitted[-limit:]
    inside = len(recent) - bisect.bisect_right(recent, now_us - RATE_WINDOW_US)
    if inside >= limit:
        # All ``limit`` are inside: one more fits once the oldest of them has left the window.
        wait_us = recent[0] + RATE_WINDOW_US - now_us
        return RateDecision(allowed=False, retry_after_s=-(-wait_us // 1_000_000), remaining=0), None
    log = list(recent)
    bisect.insort(log, now_us)
    # A full log admits only when its oldest time has left the window: that one goes.
    del log[: max(0, len(log) - limit)]
    del log[: bisect.bisect_left(log, log[-1] - _RATE_LOG_HORIZON_US)]
    return RateDecision(allowed=True, retry_after_s=0, remaining=limit - inside - 1), tuple(log)


def check_rate_limit(limit_per_minute: int) -> int:
    """``limit_per_minute`` if it is an int from 1 to :data:`MAX_RATE_LIMIT`, else ValueError (a
    programming error)."""
    if (
        isinstance(limit_per_minute, bool)
        or not isinstance(limit_per_minute, int)
        or not 1 <= limit_per_minute <= MAX_RATE_LIMIT
    ):
        raise ValueError(f"limit_per_minute must be an int from 1 to {MAX_RATE_LIMIT}")
    return limit_per_minute
