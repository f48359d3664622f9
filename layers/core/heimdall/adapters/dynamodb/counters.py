"""What the inference path writes per request on the registry table: a key's rate log, a deployment's usage.

::

    rate log        PK RATE#{key_id}            SK LOG               (admitted, version; expires_at: TTL)
    usage           PK USAGE#{deployment_id}    SK TOTAL             (request_count, total_inference_ms,
                                                                      last_request_at)

A key's rate limit is a sliding log (:func:`heimdall.domain.rate_limits.admit_request`) in one item:
``admitted`` is the log as bytes (the newest time, 8 bytes, then each time's distance behind it in
microseconds, 4 bytes each, ascending: 4 kB for an enterprise key's 1000, far under the 400 kB item
limit; a number list would take twice that, and its write units, and far longer to parse), ``version`` a
random token replaced by every write. An inference request reads the log in the same consistent
``BatchGetItem`` as the key and the deployment; an admitted request then writes the new log with one
``PutItem`` on the condition that the version is still the one read (``attribute_not_exists(PK)`` for a
key's first), so two instances cannot both admit into the same room. When the condition fails, the
failure returns the item as it now stands (``ReturnValuesOnConditionCheckFailure``) and the decision is
made again on it, without another read: every lost race means another request was admitted, so at most
``limit`` races are lost before the log is full (bounded; beyond it the request is refused with
``Retry-After: 1``). A refused request writes nothing. ``expires_at`` is the newest time plus the window
and a grace, so TTL removes the logs of idle keys once nothing in them counts. A random version, not a
counter, so that a write based on a log TTL has since deleted cannot match a new log that starts again at
the same number.

Usage is ``ADD`` counters plus ``SET last_request_at``: the last writer wins, so two requests finishing
out of order can leave the earlier time (seconds apart).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from heimdall.adapters.dynamodb.table import (
    TTL_ATTRIBUTE,
    ConditionFailed,
    Table,
    call,
    decode,
    key_part,
    time_attribute,
)
from heimdall.domain.deployments import UsageSummary, check_latency
from heimdall.domain.rate_limits import (
    RATE_LOG_GRACE_S,
    RATE_WINDOW_S,
    RateDecision,
    admit_request,
    check_rate_limit,
    rate_moment,
)

__all__ = ["InferenceCounters", "RateLog", "rate_key", "rate_log_item", "read_rate_log", "usage_key"]

#: How many races a rate-limit write may lose (each lost one is another request admitted, so a log
#: fills after ``limit`` of them; this bounds the round trips of a crowd on one key).
_RATE_RACES = 32
#: How many logs read with a key and its deployment an instance holds for the request that follows
#: (each is taken by it; this bounds those never taken: a request refused before its rate limit).
_RATE_READ_MAX = 1000


def rate_key(key_id: str) -> dict[str, Any]:
    """The key of ``key_id``'s rate log."""
    return {"PK": {"S": f"RATE#{key_part(key_id)}"}, "SK": {"S": "LOG"}}


def usage_key(deployment_id: str) -> dict[str, Any]:
    """The key of the deployment's usage counters."""
    return {"PK": {"S": f"USAGE#{key_part(deployment_id)}"}, "SK": {"S": "TOTAL"}}


@dataclass(frozen=True)
class RateLog:
    """A key's rate log as read: the admitted times (ascending) and the version (None: no item)."""

    admitted: tuple[int, ...] = ()
    version: str | None = None


def read_rate_log(item: dict[str, Any] | None) -> RateLog:
    """The log stored in ``item`` (None: an empty log, never written)."""
    if item is None:
        return RateLog()
    data = item["admitted"]["B"]
    newest, *behind = struct.unpack(f">q{(len(data) - 8) // 4}I", data)
    return RateLog(tuple(newest - distance for distance in behind), item["version"]["S"])


def rate_log_item(key_id: str, admitted: tuple[int, ...], version: str) -> dict[str, Any]:
    """The item of ``key_id``'s log of ``admitted`` times (ascending, microseconds), under ``version``."""
    newest = admitted[-1]
    packed = struct.pack(f">q{len(admitted)}I", newest, *(newest - t for t in admitted))
    return {
        **rate_key(key_id),
        "entity": {"S": "RATE_LOG"},
        "admitted": {"B": packed},
        "version": {"S": version},
        # Once the newest time has left the window nothing in the log counts; the grace covers clocks.
        TTL_ATTRIBUTE: {"N": str(newest // 1_000_000 + RATE_WINDOW_S + RATE_LOG_GRACE_S)},
    }


class InferenceCounters:
    """The rate-limit and usage methods of the deployment store
    (:class:`~heimdall.adapters.dynamodb.deployments.DynamoDeploymentStore`).

    Holds the rate logs read with a key and its deployment (:meth:`hold_rate_log`) for the
    :meth:`consume_rate_limit` of the same request, so that a request reads its log once.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        # key id -> its rate log as read with the key and the deployment, for the request's rate limit.
        self._rate_read: dict[str, RateLog] = {}

    def hold_rate_log(self, key_id: str, item: dict[str, Any] | None) -> None:
        """Keep the rate log ``item`` (None: the key has none yet) for the key's next rate limit."""
        if len(self._rate_read) >= _RATE_READ_MAX:
            self._rate_read.pop(next(iter(self._rate_read)), None)
        self._rate_read[key_id] = read_rate_log(item)

    def consume_rate_limit(self, key_id: str, limit_per_minute: int, now: datetime) -> RateDecision:
        """Decide on the log read with the key (else read it now); an admitted request writes the new
        log with one conditional ``PutItem``, decided again on the item a lost race returns."""
        limit = check_rate_limit(limit_per_minute)
        now_us = rate_moment(now)
        log = self._rate_read.pop(key_id, None)
        if log is None:
            log = read_rate_log(self.table.get(rate_key(key_id)))
        for _ in range(min(limit, _RATE_RACES) + 1):
            decision, admitted = admit_request(log.admitted, limit, now_us)
            if admitted is None:
                return decision
            try:
                self._put_rate_log(key_id, admitted, log.version)
            except ConditionFailed as moved:
                log = read_rate_log(moved.item)  # another request was admitted meanwhile: decide again
                continue
            return decision
        # Lost every race: a crowd on this key; a second from now it will have thinned or filled the log.
        return RateDecision(allowed=False, retry_after_s=1, remaining=0)

    def _put_rate_log(self, key_id: str, admitted: tuple[int, ...], version: str | None) -> None:
        """Write the log if it is still the one read (``version``; None: there was none)."""
        condition: dict[str, Any] = (
            {"ConditionExpression": "attribute_not_exists(PK)"}
            if version is None
            else {
                "ConditionExpression": "#version = :read",
                "ExpressionAttributeNames": {"#version": "version"},
                "ExpressionAttributeValues": {":read": {"S": version}},
            }
        )
        call(
            self.table.client.put_item,
            TableName=self.table.name,
            Item=rate_log_item(key_id, admitted, secrets.token_hex(8)),
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
            **condition,
        )

    def record_usage(self, deployment_id: str, latency_ms: float, now: datetime) -> None:
        """``ADD`` one request and its time, ``SET`` the last request's time (one ``UpdateItem``)."""
        latency_ms = check_latency(latency_ms)
        call(
            self.table.client.update_item,
            TableName=self.table.name,
            Key=usage_key(deployment_id),
            UpdateExpression="SET last_request_at = :now, #entity = :entity "
            "ADD request_count :one, total_inference_ms :ms",
            ExpressionAttributeNames={"#entity": "entity"},
            ExpressionAttributeValues={
                ":now": time_attribute(now),
                ":entity": {"S": "USAGE"},
                ":one": {"N": "1"},
                ":ms": {"N": str(Decimal(repr(latency_ms)))},
            },
        )

    def get_usage(self, deployment_id: str) -> UsageSummary:
        """The deployment's usage (zeros if it served nothing)."""
        item = self.table.get(usage_key(deployment_id))
        return UsageSummary() if item is None else decode(item, UsageSummary)
