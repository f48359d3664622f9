"""Deployments, their history and API keys on the registry's DynamoDB table (same single table).

Item layout, in the conventions of :mod:`heimdall.adapters.dynamodb.table` (escaped key components,
``{t}`` = :func:`heimdall.domain.records.chronological_key`)::

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

Rate logs and usage counters, what the inference path writes per request, are
:mod:`heimdall.adapters.dynamodb.counters`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from heimdall.adapters.dynamodb.counters import InferenceCounters, rate_key, usage_key
from heimdall.adapters.dynamodb.table import (
    MAX_RACES,
    META,
    ConditionFailed,
    Listing,
    Table,
    TransactionCancelled,
    call,
    decode,
    key_part,
    owner_partition,
    record_attributes,
    time_attribute,
)
from heimdall.domain.deployments import (
    ApiKeyRecord,
    Deployment,
    DeploymentAction,
    DeploymentEvent,
    DeploymentStatus,
    action_for,
    new_event_id,
    same_status_conflict,
)
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page
from heimdall.domain.records import chronological_key, owned, utcnow
from heimdall.errors import ConflictError, RecordNotFound

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from heimdall.adapters.dynamodb.registry import DynamoRegistry

__all__ = ["DynamoDeploymentStore", "api_key_item", "deployment_item"]

_EVENT = "EVENT#"


def _deployment_key(deployment_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"DEPLOYMENT#{key_part(deployment_id)}"}, "SK": {"S": META}}


def _api_key_key(key_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"APIKEY#{key_part(key_id)}"}, "SK": {"S": META}}


def _model_pk(owner: str, model_id: str) -> str:
    return f"OWNER#{key_part(owner)}#MODEL#{key_part(model_id)}"


def deployment_item(deployment: Deployment) -> dict[str, Any]:
    order = chronological_key(deployment.created_at, deployment.deployment_id)
    return {
        **record_attributes(deployment),
        **_deployment_key(deployment.deployment_id),
        "entity": {"S": "DEPLOYMENT"},
        "GSI1PK": {"S": _model_pk(deployment.owner, deployment.model_id)},
        "GSI1SK": {"S": f"DEPLOYMENT#{order}"},
        "GSI3PK": {"S": owner_partition(deployment.owner)},
        "GSI3SK": {"S": f"DEPLOYMENT#{order}"},
    }


def _event_item(event: DeploymentEvent) -> dict[str, Any]:
    return {
        **record_attributes(event),
        "PK": _deployment_key(event.deployment_id)["PK"],
        "SK": {"S": f"{_EVENT}{chronological_key(event.at, new_event_id())}"},
        "entity": {"S": "DEPLOYMENT_EVENT"},
    }


def api_key_item(record: ApiKeyRecord) -> dict[str, Any]:
    # No NULL attributes: revocation is ``if_not_exists(revoked_at, :now)``, and NULL counts as existing.
    attributes = {k: v for k, v in record_attributes(record).items() if v != {"NULL": True}}
    return {**attributes, **_api_key_key(record.key_id), "entity": {"S": "API_KEY"}}


class DynamoDeploymentStore(InferenceCounters):
    """:class:`heimdall.domain.deployments.DeploymentStore` on the registry's DynamoDB table.

    No client is created at import or construction time (the first call makes one, as
    :class:`~heimdall.adapters.dynamodb.registry.DynamoRegistry` does). ``now`` is the clock of
    ``updated_at``,
    history entries and revocations.
    """

    def __init__(
        self, table_name: str, client: DynamoDBClient | None = None, *, now: Callable[[], datetime] = utcnow
    ) -> None:
        # The table's access: lazy client, consistent reads, paginated index queries, the clock.
        super().__init__(Table(table_name, client, now=now))

    @classmethod
    def beside(cls, registry: DynamoRegistry) -> DynamoDeploymentStore:
        """A store on ``registry``'s table, sharing its client and clock (one client per container)."""
        store = cls(registry.table.name)
        store.table = registry.table
        return store

    @property
    def client(self) -> DynamoDBClient:
        """The DynamoDB client (created on first use)."""
        return self.table.client

    def _revoke_update(self, key_id: str, now: datetime) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table.name,
                "Key": _api_key_key(key_id),
                "UpdateExpression": "SET revoked_at = if_not_exists(revoked_at, :now)",
                "ConditionExpression": "attribute_exists(PK)",
                "ExpressionAttributeValues": {":now": time_attribute(now)},
            }
        }

    def _put_op(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self.table.name,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(PK)",
            }
        }

    def _key_exists(self, key_id: str) -> bool:
        return self.table.get(_api_key_key(key_id)) is not None

    # deployments --------------------------------------------------------------------------------

    def put_deployment(
        self, deployment: Deployment, *, api_key: ApiKeyRecord | None = None, actor: str | None = None
    ) -> Deployment:
        """Create the deployment, its key and its ``created`` entry in one transaction."""
        event = DeploymentEvent(
            deployment_id=deployment.deployment_id,
            at=self.table.now(),
            actor=actor or deployment.owner,
            action=DeploymentAction.CREATED,
            after=deployment.status,
        )
        items = [self._put_op(deployment_item(deployment)), self._put_op(_event_item(event))]
        if api_key is not None:
            items.append(self._put_op(api_key_item(api_key)))
        try:
            call(self.table.client.transact_write_items, TransactItems=items)
        except TransactionCancelled as cancelled:
            if api_key is not None and cancelled.reasons[2:3] == ["ConditionalCheckFailed"]:
                raise ConflictError(f"api key {api_key.key_id} already exists", field="key_id") from None
            raise ConflictError(
                f"deployment {deployment.deployment_id} already exists", field="deployment_id"
            ) from None
        return deployment

    def get_deployment(self, owner: str, deployment_id: str) -> Deployment:
        """The deployment, if ``owner`` has it; else RecordNotFound."""
        return owned(
            self._deployment(deployment_id),
            owner,
            what="deployment",
            record_id=deployment_id,
            field="deployment_id",
        )

    def get_deployment_any_owner(self, deployment_id: str) -> Deployment:
        """The deployment whoever owns it (the inference path has only an API key)."""
        return owned(
            self._deployment(deployment_id),
            None,
            what="deployment",
            record_id=deployment_id,
            field="deployment_id",
        )

    def _deployment(self, deployment_id: str) -> Deployment | None:
        item = self.table.get(_deployment_key(deployment_id))
        return None if item is None else decode(item, Deployment)

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
            listing = Listing("GSI3", owner_partition(owner), "DEPLOYMENT#")
        else:
            listing = Listing("GSI1", _model_pk(owner, model_id), "DEPLOYMENT#")
        items, next_cursor = self.table.query(listing, limit, cursor)
        return Page(items=[decode(item, Deployment) for item in items], cursor=next_cursor)

    def delete_deployment(self, owner: str, deployment_id: str) -> None:
        """Delete the deployment and revoke its key in one transaction; then drop history and usage."""
        for _ in range(MAX_RACES):
            current = self.get_deployment(owner, deployment_id)
            items: list[dict[str, Any]] = [
                {
                    "Delete": {
                        "TableName": self.table.name,
                        "Key": _deployment_key(deployment_id),
                        "ConditionExpression": "#owner = :owner AND #updated_at = :updated_at",
                        "ExpressionAttributeNames": {"#owner": "owner", "#updated_at": "updated_at"},
                        "ExpressionAttributeValues": {
                            ":owner": {"S": owner},
                            ":updated_at": record_attributes(current)["updated_at"],
                        },
                    }
                }
            ]
            if current.key_id is not None and self._key_exists(current.key_id):
                items.append(self._revoke_update(current.key_id, self.table.now()))
            try:
                call(self.table.client.transact_write_items, TransactItems=items)
            except TransactionCancelled:
                continue  # changed (a transition, a rotation) or deleted meanwhile: read again
            self._drop_history_and_usage(deployment_id)
            return
        raise ConflictError(f"deployment {deployment_id} kept changing; not deleted", field="deployment_id")

    def _event_items(self, deployment_id: str, *, keys_only: bool = False) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table.name,
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
            response = call(self.table.client.query, **kwargs)
            found.extend(response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if start is None:
                return found
            kwargs["ExclusiveStartKey"] = start

    def _drop_history_and_usage(self, deployment_id: str) -> None:
        keys = [{"PK": i["PK"], "SK": i["SK"]} for i in self._event_items(deployment_id, keys_only=True)]
        keys.append(usage_key(deployment_id))
        for start in range(0, len(keys), 25):
            requests = [{"DeleteRequest": {"Key": key}} for key in keys[start : start + 25]]
            # Unprocessed deletes are left for a later clean-up: nothing reads them without the deployment.
            call(self.table.client.batch_write_item, RequestItems={self.table.name: requests})

    def transition_deployment(
        self, owner: str, deployment_id: str, target: DeploymentStatus, *, actor: str
    ) -> Deployment:
        """Conditional status update (``#status = :current``) and history entry, in one transaction."""
        target = DeploymentStatus(target)
        for _ in range(MAX_RACES):
            current = self.get_deployment(owner, deployment_id)
            if current.status is target:
                raise same_status_conflict(current, target)
            now = self.table.now()
            changed = current.model_copy(update={"status": target, "updated_at": now})
            event = DeploymentEvent(
                deployment_id=deployment_id,
                at=now,
                actor=actor,
                action=action_for(target),
                before=current.status,
                after=target,
            )
            attributes = record_attributes(changed)
            update = {
                "Update": {
                    "TableName": self.table.name,
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
                call(
                    self.table.client.transact_write_items,
                    TransactItems=[update, self._put_op(_event_item(event))],
                )
            except TransactionCancelled:
                continue  # moved meanwhile: read again (and refuse if it is now at the target)
            return changed
        raise ConflictError(f"deployment {deployment_id} kept changing; {target} not applied", field="status")

    def history(self, owner: str, deployment_id: str) -> list[DeploymentEvent]:
        """The deployment's history, oldest first (a consistent query of its partition)."""
        self.get_deployment(owner, deployment_id)
        return [decode(item, DeploymentEvent) for item in self._event_items(deployment_id)]

    # API keys -----------------------------------------------------------------------------------

    def put_api_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        """Store a new key record; ConflictError if the key id exists."""
        try:
            self.table.put(api_key_item(record), "attribute_not_exists(PK)")
        except ConditionFailed:
            raise ConflictError(f"api key {record.key_id} already exists", field="key_id") from None
        return record

    def get_api_key(self, key_id: str) -> ApiKeyRecord:
        """The key record (any owner); RecordNotFound if there is none or it was revoked."""
        item = self.table.get(_api_key_key(key_id))
        record = None if item is None else decode(item, ApiKeyRecord)
        if record is None or record.revoked_at is not None:
            raise RecordNotFound("api key not found", field="key_id")
        return record

    def get_api_key_and_deployment(
        self, key_id: str, deployment_id: str
    ) -> tuple[ApiKeyRecord | None, Deployment | None]:
        """Both items in one consistent ``BatchGetItem`` (what an inference request reads first), with
        the key's rate log, held for the :meth:`consume_rate_limit` that follows (one read a request)."""
        keys = [_api_key_key(key_id), _deployment_key(deployment_id), rate_key(key_id)]
        found: list[dict[str, Any]] = []
        for _ in range(MAX_RACES):
            response = call(
                self.table.client.batch_get_item,
                RequestItems={self.table.name: {"Keys": keys, "ConsistentRead": True}},
            )
            found += response.get("Responses", {}).get(self.table.name, [])
            keys = response.get("UnprocessedKeys", {}).get(self.table.name, {}).get("Keys", [])
            if not keys:
                break
        else:  # throttled each time: read what is left one by one (each read has its own retries)
            found += [item for key in keys if (item := self.table.get(key)) is not None]
        record: ApiKeyRecord | None = None
        deployment: Deployment | None = None
        rate_item: dict[str, Any] | None = None
        for item in found:
            entity = item.get("entity", {}).get("S")
            if entity == "API_KEY":
                record = decode(item, ApiKeyRecord)
            elif entity == "DEPLOYMENT":
                deployment = decode(item, Deployment)
            elif entity == "RATE_LOG":
                rate_item = item
        if record is not None and record.revoked_at is not None:
            record = None
        if record is not None:  # only live keys: made-up key ids must not fill the instance's memory
            self.hold_rate_log(key_id, rate_item)
        return record, deployment

    def revoke_api_key(self, key_id: str) -> None:
        """Set ``revoked_at`` (the first revocation's time is kept); RecordNotFound for an unknown key."""
        update = self._revoke_update(key_id, self.table.now())["Update"]
        try:
            call(self.table.client.update_item, **update)
        except ConditionFailed:
            raise RecordNotFound("api key not found", field="key_id") from None

    def rotate_api_key(
        self, owner: str, deployment_id: str, new_key: ApiKeyRecord, *, actor: str
    ) -> Deployment:
        """One transaction: the deployment's new key id (guarded by the old one), the old key revoked,
        the new key stored, the ``key_rotated`` entry recorded."""
        for _ in range(MAX_RACES):
            current = self.get_deployment(owner, deployment_id)
            old_key = current.key_id
            if old_key is None:
                raise ConflictError(f"deployment {deployment_id} has no API key", field="deployment_id")
            if new_key.key_id == old_key:  # one transaction cannot both put and revoke the same item
                raise ConflictError(f"api key {new_key.key_id} already exists", field="key_id")
            now = self.table.now()
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
                self._put_op(api_key_item(new_key)),
                {
                    "Update": {
                        "TableName": self.table.name,
                        "Key": _deployment_key(deployment_id),
                        "UpdateExpression": "SET key_id = :new, #updated_at = :updated_at",
                        "ConditionExpression": "key_id = :old AND #owner = :owner",
                        "ExpressionAttributeNames": {"#owner": "owner", "#updated_at": "updated_at"},
                        "ExpressionAttributeValues": {
                            ":new": {"S": new_key.key_id},
                            ":old": {"S": old_key},
                            ":owner": {"S": owner},
                            ":updated_at": record_attributes(changed)["updated_at"],
                        },
                    }
                },
                self._put_op(_event_item(event)),
            ]
            if self._key_exists(old_key):
                items.append(self._revoke_update(old_key, now))
            try:
                call(self.table.client.transact_write_items, TransactItems=items)
            except TransactionCancelled as cancelled:
                if cancelled.reasons[:1] == ["ConditionalCheckFailed"]:
                    raise ConflictError(f"api key {new_key.key_id} already exists", field="key_id") from None
                continue  # the deployment changed meanwhile: read again
            return changed
        raise ConflictError(f"deployment {deployment_id} kept changing; key not rotated", field="key_id")
