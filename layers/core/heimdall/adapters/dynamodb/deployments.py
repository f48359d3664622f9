"""Deployments, API keys, rate limits and usage on the registry's DynamoDB table (same single table).

Item layout, in the conventions of :mod:`heimdall.adapters.dynamodb.registry` (escaped key components,
``{t}`` = :func:`heimdall.domain.registry.chronological_key`)::

    deployment      PK DEPLOYMENT#{id}          SK META
                    GSI1 OWNER#{o}#MODEL#{m} / DEPLOYMENT#{t}        (by owner and model)
                    GSI3 OWNER#{o} / DEPLOYMENT#{t}                  (by owner)
    history entry   PK DEPLOYMENT#{id}          SK EVENT#{t}#{uuid}  (oldest first by sort key)
    API key         PK APIKEY#{key_id}          SK META              (key_hash only, never the key)
    rate log        PK RATE#{key_id}            SK LOG               (admitted, version; expires_at: TTL)
    usage           PK USAGE#{deployment_id}    SK TOTAL             (request_count, total_inference_ms,
                                                                      last_request_at)

Every change that must be atomic is one write: a transition is a transaction of the conditional status
update (``#status = :current``) and the history entry; a rotation updates the deployment, revokes the old
key, puts the new key and the history entry in one transaction; a deletion deletes the deployment and
revokes its key in one transaction (history and usage are dropped after it, best effort: nothing reads
them without the deployment).

A key's rate limit is a sliding log (:func:`heimdall.domain.deployments.admit_request`) in one item:
``admitted``
is the log as bytes (the newest time, 8 bytes, then each time's distance behind it in microseconds,
4 bytes each, ascending: 4 kB for an enterprise key's 1000, far under the 400 kB item limit; a number
list would take twice that, and its write units, and far longer to parse), ``version`` a random token
replaced by every write. An inference request reads the log in the same consistent ``BatchGetItem`` as
the key and the deployment; an admitted request then writes the new log with one ``PutItem`` on the
condition that the version is still the one read (``attribute_not_exists(PK)`` for a key's first), so
two instances cannot both admit into the same room. When the condition fails, the failure returns the
item as it now stands (``ReturnValuesOnConditionCheckFailure``) and the decision is made again on it,
without another read: every lost race means another request was admitted, so at most ``limit`` races
are lost before the log is full (bounded; beyond it the request is refused with ``Retry-After: 1``). A
refused request writes nothing. ``expires_at`` is the newest time plus the window and a grace, so TTL
removes the logs of idle keys once nothing in them counts. A random version, not a counter, so that a
write based on a log TTL has since deleted cannot match a new log that starts again at the same number.
Usage is ``ADD`` counters plus
``SET last_request_at``: the last writer wins, so two requests finishing out of order can leave the
earlier time (seconds apart).
"""

from __future__ import annotations

import json
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from heimdall.adapters.dynamodb.registry import (
    TTL_ATTRIBUTE,
    DynamoRegistry,
    _call,
    _ConditionFailed,
    _decode,
    _esc,
    _Listing,
    _owner_pk,
    _record_attributes,
    _TransactionCancelled,
)
from heimdall.domain.deployments import (
    ApiKeyRecord,
    Deployment,
    DeploymentAction,
    DeploymentEvent,
    DeploymentStatus,
    UsageSummary,
    action_for,
    check_latency,
    new_event_id,
    same_status_conflict,
)
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page
from heimdall.domain.rate_limits import (
    RATE_LOG_GRACE_S,
    RATE_WINDOW_S,
    RateDecision,
    admit_request,
    check_rate_limit,
    rate_moment,
)
from heimdall.domain.records import chronological_key, utcnow
from heimdall.errors import ConflictError, RecordNotFound

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["DynamoDeploymentStore"]

_META = "META"
_EVENT = "EVENT#"
#: How often a conditional write is retried when a concurrent writer moved the state under it.
_MAX_RACES = 5
#: How many races a rate-limit write may lose (each lost one is another request admitted, so a log
#: fills after ``limit`` of them; this bounds the round trips of a crowd on one key).
_RATE_RACES = 32
#: How many logs read with a key and its deployment an instance holds for the request that follows
#: (each is taken by it; this bounds those never taken: a request refused before its rate limit).
_RATE_READ_MAX = 1000


def _deployment_key(deployment_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"DEPLOYMENT#{_esc(deployment_id)}"}, "SK": {"S": _META}}


def _api_key_key(key_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"APIKEY#{_esc(key_id)}"}, "SK": {"S": _META}}


def _rate_key(key_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"RATE#{_esc(key_id)}"}, "SK": {"S": "LOG"}}


def _usage_key(deployment_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"USAGE#{_esc(deployment_id)}"}, "SK": {"S": "TOTAL"}}


def _model_pk(owner: str, model_id: str) -> str:
    return f"OWNER#{_esc(owner)}#MODEL#{_esc(model_id)}"


def _deployment_item(deployment: Deployment) -> dict[str, Any]:
    order = chronological_key(deployment.created_at, deployment.deployment_id)
    return {
        **_record_attributes(deployment),
        **_deployment_key(deployment.deployment_id),
        "entity": {"S": "DEPLOYMENT"},
        "GSI1PK": {"S": _model_pk(deployment.owner, deployment.model_id)},
        "GSI1SK": {"S": f"DEPLOYMENT#{order}"},
        "GSI3PK": {"S": _owner_pk(deployment.owner)},
        "GSI3SK": {"S": f"DEPLOYMENT#{order}"},
    }


def _event_item(event: DeploymentEvent) -> dict[str, Any]:
    return {
        **_record_attributes(event),
        "PK": _deployment_key(event.deployment_id)["PK"],
        "SK": {"S": f"{_EVENT}{chronological_key(event.at, new_event_id())}"},
        "entity": {"S": "DEPLOYMENT_EVENT"},
    }


def _api_key_item(record: ApiKeyRecord) -> dict[str, Any]:
    # No NULL attributes: revocation is ``if_not_exists(revoked_at, :now)``, and NULL counts as existing.
    attributes = {k: v for k, v in _record_attributes(record).items() if v != {"NULL": True}}
    return {**attributes, **_api_key_key(record.key_id), "entity": {"S": "API_KEY"}}


_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(datetime)


def _time_attribute(moment: datetime) -> dict[str, Any]:
    """``moment`` (UTC) serialised exactly as a record's timestamp field is."""
    return {"S": json.loads(_TIMESTAMP.dump_json(moment.astimezone(UTC)))}


@dataclass(frozen=True)
class _RateLog:
    """A key's rate log as read: the admitted times (ascending) and the version (None: no item)."""

    admitted: tuple[int, ...] = ()
    version: str | None = None


def _rate_log(item: dict[str, Any] | None) -> _RateLog:
    if item is None:
        return _RateLog()
    data = item["admitted"]["B"]
    newest, *behind = struct.unpack(f">q{(len(data) - 8) // 4}I", data)
    return _RateLog(tuple(newest - distance for distance in behind), item["version"]["S"])


def _rate_log_item(key_id: str, admitted: tuple[int, ...], version: str) -> dict[str, Any]:
    newest = admitted[-1]
    packed = struct.pack(f">q{len(admitted)}I", newest, *(newest - t for t in admitted))
    return {
        **_rate_key(key_id),
        "entity": {"S": "RATE_LOG"},
        "admitted": {"B": packed},
        "version": {"S": version},
        # Once the newest time has left the window nothing in the log counts; the grace covers clocks.
        TTL_ATTRIBUTE: {"N": str(newest // 1_000_000 + RATE_WINDOW_S + RATE_LOG_GRACE_S)},
    }


class DynamoDeploymentStore:
    """:class:`heimdall.domain.deployments.DeploymentStore` on the registry's DynamoDB table.

    No client is created at import or construction time (the first call makes one, as
    :class:`~heimdall.adapters.dynamodb.registry.DynamoRegistry` does). ``now`` is the clock of
    ``updated_at``,
    history entries and revocations.
    """

    def __init__(
        self, table_name: str, client: DynamoDBClient | None = None, *, now: Callable[[], datetime] = utcnow
    ) -> None:
        self.table_name = table_name
        self._now = now
        # The registry's table access: lazy client, consistent reads, paginated index queries.
        self._table = DynamoRegistry(table_name, client, now=now)
        # key id -> its rate log as read with the key and the deployment, for the request's rate limit.
        self._rate_read: dict[str, _RateLog] = {}

    @classmethod
    def beside(cls, registry: DynamoRegistry) -> DynamoDeploymentStore:
        """A store on ``registry``'s table sharing its client (one client per container)."""
        store = cls(registry.table_name, now=registry._now)
        store._table = registry
        return store

    @property
    def client(self) -> DynamoDBClient:
        """The DynamoDB client (created on first use)."""
        return self._table.client

    def _revoke_update(self, key_id: str, now: datetime) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table_name,
                "Key": _api_key_key(key_id),
                "UpdateExpression": "SET revoked_at = if_not_exists(revoked_at, :now)",
                "ConditionExpression": "attribute_exists(PK)",
                "ExpressionAttributeValues": {":now": _time_attribute(now)},
            }
        }

    def _put_op(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self.table_name,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(PK)",
            }
        }

    def _key_exists(self, key_id: str) -> bool:
        return self._table._get(_api_key_key(key_id)) is not None

    # deployments --------------------------------------------------------------------------------

    def put_deployment(
        self, deployment: Deployment, *, api_key: ApiKeyRecord | None = None, actor: str | None = None
    ) -> Deployment:
        """Create the deployment, its key and its ``created`` entry in one transaction."""
        event = DeploymentEvent(
            deployment_id=deployment.deployment_id,
            at=self._now(),
            actor=actor or deployment.owner,
            action=DeploymentAction.CREATED,
            after=deployment.status,
        )
        items = [self._put_op(_deployment_item(deployment)), self._put_op(_event_item(event))]
        if api_key is not None:
            items.append(self._put_op(_api_key_item(api_key)))
        try:
            _call(self.client.transact_write_items, TransactItems=items)
        except _TransactionCancelled as cancelled:
            if api_key is not None and cancelled.reasons[2:3] == ["ConditionalCheckFailed"]:
                raise ConflictError(f"api key {api_key.key_id} already exists", field="key_id") from None
            raise ConflictError(
                f"deployment {deployment.deployment_id} already exists", field="deployment_id"
            ) from None
        return deployment

    def get_deployment(self, owner: str, deployment_id: str) -> Deployment:
        """The deployment, if ``owner`` has it; else RecordNotFound."""
        deployment = self.get_deployment_any_owner(deployment_id)
        if deployment.owner != owner:
            raise RecordNotFound(f"deployment {deployment_id} not found", field="deployment_id")
        return deployment

    def get_deployment_any_owner(self, deployment_id: str) -> Deployment:
        """The deployment whoever owns it (the inference path has only an API key)."""
        item = self._table._get(_deployment_key(deployment_id))
        if item is None:
            raise RecordNotFound(f"deployment {deployment_id} not found", field="deployment_id")
        return _decode(item, Deployment)

    def list_deployments(
        self,
        owner: str,
        *,
        model_id: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[Deployment]:
        """The owner's deployments (of one model if given), newest first (GSI1 or GSI3)."""
        if model_id is None:
            listing = _Listing("GSI3", _owner_pk(owner), "DEPLOYMENT#")
        else:
            listing = _Listing("GSI1", _model_pk(owner, model_id), "DEPLOYMENT#")
        items, next_cursor = self._table._query(listing, limit, cursor)
        return Page(items=[_decode(item, Deployment) for item in items], cursor=next_cursor)

    def delete_deployment(self, owner: str, deployment_id: str) -> None:
        """Delete the deployment and revoke its key in one transaction; then drop history and usage."""
        for _ in range(_MAX_RACES):
            current = self.get_deployment(owner, deployment_id)
            items: list[dict[str, Any]] = [
                {
                    "Delete": {
                        "TableName": self.table_name,
                        "Key": _deployment_key(deployment_id),
                        "ConditionExpression": "#owner = :owner AND #updated_at = :updated_at",
                        "ExpressionAttributeNames": {"#owner": "owner", "#updated_at": "updated_at"},
                        "ExpressionAttributeValues": {
                            ":owner": {"S": owner},
                            ":updated_at": _record_attributes(current)["updated_at"],
                        },
                    }
                }
            ]
            if current.key_id is not None and self._key_exists(current.key_id):
                items.append(self._revoke_update(current.key_id, self._now()))
            try:
                _call(self.client.transact_write_items, TransactItems=items)
            except _TransactionCancelled:
                continue  # changed (a transition, a rotation) or deleted meanwhile: read again
            self._drop_history_and_usage(deployment_id)
            return
        raise ConflictError(f"deployment {deployment_id} kept changing; not deleted", field="deployment_id")

    def _event_items(self, deployment_id: str, *, keys_only: bool = False) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "PK = :pk AND begins_with(SK, :prefix)",
            "ExpressionAttributeValues": {
                ":pk": _deployment_key(deployment_id)["PK"],
                ":prefix": {"S": _EVENT},
            },
            "ConsistentRead": True,
            "ScanIndexForward": True,
        }
        if keys_only:
            kwargs["ProjectionExpression"] = "PK, SK"
        found: list[dict[str, Any]] = []
        while True:
            response = _call(self.client.query, **kwargs)
            found.extend(response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if start is None:
                return found
            kwargs["ExclusiveStartKey"] = start

    def _drop_history_and_usage(self, deployment_id: str) -> None:
        keys = [{"PK": i["PK"], "SK": i["SK"]} for i in self._event_items(deployment_id, keys_only=True)]
        keys.append(_usage_key(deployment_id))
        for start in range(0, len(keys), 25):
            requests = [{"DeleteRequest": {"Key": key}} for key in keys[start : start + 25]]
            # Unprocessed deletes are left for a later clean-up: nothing reads them without the deployment.
            _call(self.client.batch_write_item, RequestItems={self.table_name: requests})

    def transition_deployment(
        self, owner: str, deployment_id: str, target: DeploymentStatus, *, actor: str
    ) -> Deployment:
        """Conditional status update (``#status = :current``) and history entry, in one transaction."""
        target = DeploymentStatus(target)
        for _ in range(_MAX_RACES):
            current = self.get_deployment(owner, deployment_id)
            if current.status is target:
                raise same_status_conflict(current, target)
            now = self._now()
            changed = current.model_copy(update={"status": target, "updated_at": now})
            event = DeploymentEvent(
                deployment_id=deployment_id,
                at=now,
                actor=actor,
                action=action_for(target),
                before=current.status,
                after=target,
            )
            attributes = _record_attributes(changed)
            update = {
                "Update": {
                    "TableName": self.table_name,
                    "Key": _deployment_key(deployment_id),
                    "UpdateExpression": "SET #status = :target, #updated_at = :updated_at",
                    "ConditionExpression": "#status = :current AND #owner = :owner",
                    "ExpressionAttributeNames": {
                        "#status": "status",
                        "#updated_at": "updated_at",
                        "#owner": "owner",
                    },
                    "ExpressionAttributeValues": {
                        ":target": {"S": str(target)},
                        ":current": {"S": str(current.status)},
                        ":updated_at": attributes["updated_at"],
                        ":owner": {"S": owner},
                    },
                }
            }
            try:
                _call(
                    self.client.transact_write_items,
                    TransactItems=[update, self._put_op(_event_item(event))],
                )
            except _TransactionCancelled:
                continue  # moved meanwhile: read again (and refuse if it is now at the target)
            return changed
        raise ConflictError(f"deployment {deployment_id} kept changing; {target} not applied", field="status")

    def history(self, owner: str, deployment_id: str) -> list[DeploymentEvent]:
        """The deployment's history, oldest first (a consistent query of its partition)."""
        self.get_deployment(owner, deployment_id)
        return [_decode(item, DeploymentEvent) for item in self._event_items(deployment_id)]

    # API keys -----------------------------------------------------------------------------------

    def put_api_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        """Store a new key record; ConflictError if the key id exists."""
        try:
            self._table._put(_api_key_item(record), "attribute_not_exists(PK)")
        except _ConditionFailed:
            raise ConflictError(f"api key {record.key_id} already exists", field="key_id") from None
        return record

    def get_api_key(self, key_id: str) -> ApiKeyRecord:
        """The key record (any owner); RecordNotFound if there is none or it was revoked."""
        item = self._table._get(_api_key_key(key_id))
        record = None if item is None else _decode(item, ApiKeyRecord)
        if record is None or record.revoked_at is not None:
            raise RecordNotFound("api key not found", field="key_id")
        return record

    def get_api_key_and_deployment(
        self, key_id: str, deployment_id: str
    ) -> tuple[ApiKeyRecord | None, Deployment | None]:
        """Both items in one consistent ``BatchGetItem`` (what an inference request reads first), with
        the key's rate log, held for the :meth:`consume_rate_limit` that follows (one read a request)."""
        keys = [_api_key_key(key_id), _deployment_key(deployment_id), _rate_key(key_id)]
        found: list[dict[str, Any]] = []
        for _ in range(_MAX_RACES):
            response = _call(
                self.client.batch_get_item,
                RequestItems={self.table_name: {"Keys": keys, "ConsistentRead": True}},
            )
            found += response.get("Responses", {}).get(self.table_name, [])
            keys = response.get("UnprocessedKeys", {}).get(self.table_name, {}).get("Keys", [])
            if not keys:
                break
        else:  # throttled each time: read what is left one by one (each read has its own retries)
            found += [item for key in keys if (item := self._table._get(key)) is not None]
        record: ApiKeyRecord | None = None
        deployment: Deployment | None = None
        rate_item: dict[str, Any] | None = None
        for item in found:
            entity = item.get("entity", {}).get("S")
            if entity == "API_KEY":
                record = _decode(item, ApiKeyRecord)
            elif entity == "DEPLOYMENT":
                deployment = _decode(item, Deployment)
            elif entity == "RATE_LOG":
                rate_item = item
        if record is not None and record.revoked_at is not None:
            record = None
        if record is not None:  # only live keys: made-up key ids must not fill the instance's memory
            if len(self._rate_read) >= _RATE_READ_MAX:
                self._rate_read.pop(next(iter(self._rate_read)), None)
            self._rate_read[key_id] = _rate_log(rate_item)
        return record, deployment

    def revoke_api_key(self, key_id: str) -> None:
        """Set ``revoked_at`` (the first revocation's time is kept); RecordNotFound for an unknown key."""
        update = self._revoke_update(key_id, self._now())["Update"]
        try:
            _call(self.client.update_item, **update)
        except _ConditionFailed:
            raise RecordNotFound("api key not found", field="key_id") from None

    def rotate_api_key(
        self, owner: str, deployment_id: str, new_key: ApiKeyRecord, *, actor: str
    ) -> Deployment:
        """One transaction: the deployment's new key id (guarded by the old one), the old key revoked,
        the new key stored, the ``key_rotated`` entry recorded."""
        for _ in range(_MAX_RACES):
            current = self.get_deployment(owner, deployment_id)
            old_key = current.key_id
            if old_key is None:
                raise ConflictError(f"deployment {deployment_id} has no API key", field="deployment_id")
            if new_key.key_id == old_key:  # one transaction cannot both put and revoke the same item
                raise ConflictError(f"api key {new_key.key_id} already exists", field="key_id")
            now = self._now()
            changed = current.model_copy(update={"key_id": new_key.key_id, "updated_at": now})
            event = DeploymentEvent(
                deployment_id=deployment_id,
                at=now,
                actor=actor,
                action=DeploymentAction.KEY_ROTATED,
                before=current.status,
                after=current.status,
                detail={"old_key_id": old_key, "new_key_id": new_key.key_id},
            )
            items: list[dict[str, Any]] = [
                self._put_op(_api_key_item(new_key)),
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": _deployment_key(deployment_id),
                        "UpdateExpression": "SET key_id = :new, #updated_at = :updated_at",
                        "ConditionExpression": "key_id = :old AND #owner = :owner",
                        "ExpressionAttributeNames": {"#owner": "owner", "#updated_at": "updated_at"},
                        "ExpressionAttributeValues": {
                            ":new": {"S": new_key.key_id},
                            ":old": {"S": old_key},
                            ":owner": {"S": owner},
                            ":updated_at": _record_attributes(changed)["updated_at"],
                        },
                    }
                },
                self._put_op(_event_item(event)),
            ]
            if self._key_exists(old_key):
                items.append(self._revoke_update(old_key, now))
            try:
                _call(self.client.transact_write_items, TransactItems=items)
            except _TransactionCancelled as cancelled:
                if cancelled.reasons[:1] == ["ConditionalCheckFailed"]:
                    raise ConflictError(f"api key {new_key.key_id} already exists", field="key_id") from None
                continue  # the deployment changed meanwhile: read again
            return changed
        raise ConflictError(f"deployment {deployment_id} kept changing; key not rotated", field="key_id")

    # rate limits and usage ----------------------------------------------------------------------

    def consume_rate_limit(self, key_id: str, limit_per_minute: int, now: datetime) -> RateDecision:
        """Decide on the log read with the key (else read it now); an admitted request writes the new
        log with one conditional ``PutItem``, decided again on the item a lost race returns."""
        limit = check_rate_limit(limit_per_minute)
        now_us = rate_moment(now)
        log = self._rate_read.pop(key_id, None)
        if log is None:
            log = _rate_log(self._table._get(_rate_key(key_id)))
        for _ in range(min(limit, _RATE_RACES) + 1):
            decision, admitted = admit_request(log.admitted, limit, now_us)
            if admitted is None:
                return decision
            try:
                self._put_rate_log(key_id, admitted, log.version)
            except _ConditionFailed as moved:
                log = _rate_log(moved.item)  # another request was admitted meanwhile: decide again
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
        _call(
            self.client.put_item,
            TableName=self.table_name,
            Item=_rate_log_item(key_id, admitted, secrets.token_hex(8)),
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
            **condition,
        )

    def record_usage(self, deployment_id: str, latency_ms: float, now: datetime) -> None:
        """``ADD`` one request and its time, ``SET`` the last request's time (one ``UpdateItem``)."""
        latency_ms = check_latency(latency_ms)
        _call(
            self.client.update_item,
            TableName=self.table_name,
            Key=_usage_key(deployment_id),
            UpdateExpression="SET last_request_at = :now, #entity = :entity "
            "ADD request_count :one, total_inference_ms :ms",
            ExpressionAttributeNames={"#entity": "entity"},
            ExpressionAttributeValues={
                ":now": _time_attribute(now),
                ":entity": {"S": "USAGE"},
                ":one": {"N": "1"},
                ":ms": {"N": str(Decimal(repr(latency_ms)))},
            },
        )

    def get_usage(self, deployment_id: str) -> UsageSummary:
        """The deployment's usage (zeros if it served nothing)."""
        item = self._table._get(_usage_key(deployment_id))
        return UsageSummary() if item is None else _decode(item, UsageSummary)
