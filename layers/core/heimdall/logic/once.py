"""At-most-once processing of a notification, robust to a worker killed mid-way.

A *lease* (a claim that expires) marks work in progress; a *done* marker, written only after the work
succeeded, remembers it for days. A duplicate delivered while the work runs, or any time after it
succeeded, is skipped; a delivery after a worker died (timeout, out of memory) finds the lease expired
and the work is done again — which is safe because everything the use cases write is derived from the
notification's identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from heimdall.domain.claims import IdempotencyClaims

T = TypeVar("T")

#: Longer than the slowest handler may run (the ingest function's timeout is 900 s).
LEASE_S = 20 * 60
#: How long finished work is remembered (S3 and SQS redeliver within minutes or hours).
DONE_TTL_S = 14 * 24 * 3600


def run_once(claims: IdempotencyClaims, key: str, work: Callable[[], T], *, duplicate: T) -> T:
    """Run ``work`` unless ``key`` was already processed or is being processed; else ``duplicate``."""
    done = f"{key}#done"
    if claims.is_claimed(done) or not claims.claim_once(key, LEASE_S):
        return duplicate
    try:
        result = work()
    except BaseException:
        claims.release_claim(key)  # failed: the next delivery tries again at once
        raise
    claims.claim_once(done, DONE_TTL_S)
    return result
