"""The registry's idempotency claims on DynamoDB: who got to do a piece of work first.

::

    claim           PK IDEMPOTENCY#{sha256}    SK CLAIM           (expires_at: the table's TTL attribute)
    request         PK IDEMPOTENCY#{sha256}    SK REQUEST         (the first request's fingerprint)

A claim is one conditional put (absent, or past ``expires_at``); DynamoDB's TTL sweeper removes expired
claims eventually, and an expired one counts as free before it does.
"""

from __future__ import annotations

import hashlib
from typing import Any

from heimdall.adapters.dynamodb.table import TTL_ATTRIBUTE, ConditionFailed, Table, call
from heimdall.domain.claims import check_ttl, epoch_seconds
from heimdall.errors import RegistryError

__all__ = ["ClaimItems"]


def _claim_key(key: str) -> dict[str, Any]:
    # Hashed: S3 keys can be 1 KiB and more once escaped, and a partition key is capped at 2 KiB.
    return {"PK": {"S": f"IDEMPOTENCY#{hashlib.sha256(key.encode()).hexdigest()}"}, "SK": {"S": "CLAIM"}}


class ClaimItems:
    """The claim methods of :class:`~heimdall.adapters.dynamodb.registry.DynamoRegistry`: the
    :class:`~heimdall.domain.claims.IdempotencyClaims` port on the table."""

    table: Table

    def claim_once(self, key: str, ttl_s: int) -> bool:
        """True the first time ``key`` is claimed, False while the claim is held (conditional put).

        A claim past ``expires_at`` counts as free even before DynamoDB's TTL sweeper (which can lag by
        days) deletes it.
        """
        check_ttl(ttl_s)
        now = epoch_seconds(self.table.now())
        try:
            self.table.put(
                {
                    **_claim_key(key),
                    "entity": {"S": "CLAIM"},
                    "claim_key": {"S": key[:1024]},
                    TTL_ATTRIBUTE: {"N": str(now + ttl_s)},
                },
                "attribute_not_exists(PK) OR #expires_at <= :now",
                ExpressionAttributeNames={"#expires_at": TTL_ATTRIBUTE},
                ExpressionAttributeValues={":now": {"N": str(now)}},
            )
        except ConditionFailed:
            return False
        return True

    def release_claim(self, key: str) -> None:
        """Give a claim back (the work it guarded failed and should be retried)."""
        call(self.table.client.delete_item, TableName=self.table.name, Key=_claim_key(key))

    def is_claimed(self, key: str) -> bool:
        """Whether ``key`` is claimed and its claim has not expired (a consistent read)."""
        item = self.table.get(_claim_key(key))
        if item is None:
            return False
        return int(item[TTL_ATTRIBUTE]["N"]) > epoch_seconds(self.table.now())

    def claim_request(self, key: str, fingerprint: str) -> str:
        """The first request's fingerprint under ``key``: a conditional put, else a consistent read.

        Beside the key's claims (same partition), with no TTL: it lives as long as the table's records.
        """
        item_key = {**_claim_key(key), "SK": {"S": "REQUEST"}}
        try:
            self.table.put(
                {
                    **item_key,
                    "entity": {"S": "REQUEST"},
                    "claim_key": {"S": key[:1024]},
                    "fingerprint": {"S": fingerprint},
                },
                "attribute_not_exists(PK)",
            )
        except ConditionFailed:
            stored = self.table.get(item_key)
            if stored is not None:
                return str(stored["fingerprint"]["S"])
            raise RegistryError(f"the request recorded under {key[:64]!r} vanished") from None
        return fingerprint
