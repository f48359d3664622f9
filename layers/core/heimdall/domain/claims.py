"""Idempotency claims: the port that makes redelivered work happen once.

Notifications (S3, EventBridge, SQS) are delivered at least once, and API clients retry. The use cases
guard their work with claims the registry's store keeps beside the records: a claim that expires
(:meth:`IdempotencyClaims.claim_once`, the lease and done marker of :func:`heimdall.logic.once.run_once`),
the fingerprint an ``Idempotency-Key`` first stood for (:meth:`IdempotencyClaims.claim_request`), and the
one object revision a presigned import takes (:meth:`IdempotencyClaims.claim_import_upload`).

``heimdall.adapters.dynamodb.registry.DynamoRegistry`` implements this port and
:class:`~heimdall.domain.registry.Registry` on one table (wiring passes the same object for both);
``heimdall.testing.registry.InMemoryRegistry`` is the fake of both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from heimdall.domain.records import ImportRecord, as_utc

__all__ = ["IdempotencyClaims", "check_ttl", "epoch_seconds"]


def epoch_seconds(moment: datetime) -> int:
    """``moment`` as whole Unix seconds (DynamoDB's TTL format, and when a claim expires)."""
    return int(as_utc(moment).timestamp())


def check_ttl(ttl_s: int) -> int:
    """``ttl_s`` if it is a positive whole number of seconds, else ValueError (a programming error)."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
        raise ValueError("ttl_s must be a positive number of seconds")
    return ttl_s


class IdempotencyClaims(Protocol):
    """Claims that make at-least-once deliveries and retried requests take effect once.

    Errors: :class:`~heimdall.errors.RecordNotFound` for an unknown import; a real store also raises
    :class:`~heimdall.errors.RegistryUnavailable` (503, retryable).
    """

    def claim_import_upload(self, import_id: str, revision: str) -> ImportRecord | None:
        """Let the object revision ``revision`` claim the import (atomically, the first one wins).

        Returns the record as claimed: by this revision now, or by this revision before (a
        redelivery). None when another revision holds it. RecordNotFound for an unknown import.
        """
        ...

    def claim_once(self, key: str, ttl_s: int) -> bool:
        """True the first time ``key`` is claimed (for ``ttl_s`` seconds), False while it is held.

        Safe under concurrency: of simultaneous claims exactly one wins. An expired claim can be
        claimed again.
        """
        ...

    def release_claim(self, key: str) -> None:
        """Give a claim back (the work it guarded failed and should be retried)."""
        ...

    def is_claimed(self, key: str) -> bool:
        """Whether ``key`` is currently claimed (held and not expired); claims nothing."""
        ...

    def claim_request(self, key: str, fingerprint: str) -> str:
        """The fingerprint of the first request ``key`` stood for: ``fingerprint`` if this call is the
        first (it is recorded), else the one recorded then.

        Safe under concurrency: simultaneous first calls all get the winner's. Unlike claims, the record
        does not expire: a key stands for its request as long as what the request made exists.
        """
        ...
