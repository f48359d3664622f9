"""The registry table's public API: its definition, key and attribute encoding, and the calls on it.

One DynamoDB table holds every record (single-table design): the registry's models, jobs, imports,
half pairs and claims (:mod:`heimdall.adapters.dynamodb.registry`) and the deployments, keys, rate logs
and usage (:mod:`heimdall.adapters.dynamodb.deployments`). What both adapters share is here, so that
each item is encoded one way whichever adapter writes it:

* the table: :func:`table_definition` (``template.yaml`` declares the same), :func:`create_registry_table`
  (with TTL on :data:`TTL_ATTRIBUTE`, for the local stack and tests), :data:`INDEXES`;
* keys: :func:`key_part` escapes a key component so that ``#`` and ``%`` in owners or names cannot forge
  another partition (``%`` → ``%25``, ``#`` → ``%23``); :func:`owner_partition` is the owner's partition
  of GSI3 (and the prefix of the by-owner-and-X partitions);
* attributes: :func:`record_attributes` (a record through JSON, floats as Decimals), :func:`to_attribute`,
  :func:`time_attribute`, and :func:`decode` back to a record;
* calls: :func:`call` translates botocore's errors (throttling and 5xx, which botocore's ``standard``
  mode has already retried, become :class:`~heimdall.errors.RegistryUnavailable`; a failed condition
  :class:`ConditionFailed`; a cancelled transaction :class:`TransactionCancelled`; any other refusal
  :class:`~heimdall.errors.RegistryError`), and :class:`Table` holds the table's name, its lazily created
  client and the clock, with consistent reads, puts and paginated index queries (:class:`Listing`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, TypeAdapter, ValidationError

from heimdall.adapters.aws import make_client
from heimdall.domain.paging import MAX_PAGE_SIZE, check_limit, decode_cursor, encode_cursor
from heimdall.domain.records import utcnow
from heimdall.errors import InvalidCursor, RegistryError, RegistryUnavailable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = [
    "INDEXES",
    "MAX_RACES",
    "META",
    "TTL_ATTRIBUTE",
    "ConditionFailed",
    "Listing",
    "Table",
    "TransactionCancelled",
    "call",
    "create_registry_table",
    "decode",
    "key_part",
    "owner_partition",
    "record_attributes",
    "table_definition",
    "time_attribute",
    "to_attribute",
]

TTL_ATTRIBUTE = "expires_at"
#: Secondary indexes: name → (partition key attribute, sort key attribute).
INDEXES: Mapping[str, tuple[str, str]] = {
    "GSI1": ("GSI1PK", "GSI1SK"),  # by owner and model name
    "GSI2": ("GSI2PK", "GSI2SK"),  # export jobs by status (owner-scoped with begins_with)
    "GSI3": ("GSI3PK", "GSI3SK"),  # by owner
}
#: Attributes that are storage, not part of a record.
_STORAGE_ATTRIBUTES = frozenset(
    {"PK", "SK", "entity", TTL_ATTRIBUTE, *(attr for pair in INDEXES.values() for attr in pair)}
)
META = "META"
#: How often a conditional write is retried when a concurrent writer moved the state under it.
MAX_RACES = 5
_THROTTLED = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
        "TransactionInProgressException",
    }
)

R = TypeVar("R", bound=BaseModel)


def table_definition(table_name: str) -> dict[str, Any]:
    """``CreateTable`` arguments for the registry table (``template.yaml`` declares the same table).

    TTL is not part of ``CreateTable``: :func:`create_registry_table` enables it on ``expires_at``.
    """
    attributes = ["PK", "SK", *(attr for pair in INDEXES.values() for attr in pair)]
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"} for name in attributes],
        "KeySchema": [
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index,
                "KeySchema": [
                    {"AttributeName": pk, "KeyType": "HASH"},
                    {"AttributeName": sk, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index, (pk, sk) in INDEXES.items()
        ],
    }


def create_registry_table(client: DynamoDBClient, table_name: str) -> None:
    """Create the registry table with its TTL if it does not exist (the local stack and tests)."""
    try:
        client.create_table(**table_definition(table_name))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
    client.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 1})
    try:
        client.update_time_to_live(
            TableName=table_name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
        )
    except ClientError as exc:  # "TimeToLive is already enabled" on a second run
        if exc.response.get("Error", {}).get("Code") != "ValidationException":
            raise


# --------------------------------------------------------------------------------------------------
# Keys


def key_part(part: str) -> str:
    """A key component that cannot contain the ``#`` separator."""
    return part.replace("%", "%25").replace("#", "%23")


def owner_partition(owner: str) -> str:
    """The owner's partition of GSI3 (``OWNER#{o}``), and the start of its by-owner-and-X partitions."""
    return f"OWNER#{key_part(owner)}"


# --------------------------------------------------------------------------------------------------
# Items

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_attribute(value: Any) -> dict[str, Any]:
    """A JSON-compatible value (numbers as Decimal) as a DynamoDB attribute value."""
    attribute: dict[str, Any] = dict(_serializer.serialize(value))
    return attribute


def record_attributes(record: BaseModel) -> dict[str, Any]:
    # Through JSON so that floats become Decimals (DynamoDB numbers) and NaN/Infinity become null.
    data = json.loads(record.model_dump_json(), parse_float=Decimal)
    return {name: to_attribute(value) for name, value in data.items()}


def _plain(value: Any) -> Any:
    """Deserialised DynamoDB data with Decimals turned back into ints and floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set | frozenset):
        return [_plain(v) for v in value]
    return value


def decode(item: Mapping[str, Any], model: type[R]) -> R:
    data = {
        name: _plain(_deserializer.deserialize(value))
        for name, value in item.items()
        if name not in _STORAGE_ATTRIBUTES
    }
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(f"the registry holds an unreadable {model.__name__}: {exc}") from None


#: What a model item keeps as attributes of its own (conditions and filters name them). The rest of the
#: record is one JSON string, ``doc``: models are only written and read whole, and a handful of
_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(datetime)


def time_attribute(moment: datetime) -> dict[str, Any]:
    """``moment`` (in UTC) as a timestamp attribute, serialised exactly as a record's timestamp field is."""
    return {"S": json.loads(_TIMESTAMP.dump_json(moment.astimezone(UTC)))}


# --------------------------------------------------------------------------------------------------
# Errors


class ConditionFailed(Exception):
    """A ``ConditionExpression`` did not hold (the adapter that made the call decides what it means).

    ``item`` is the item as it stood, where the request asked for it
    (``ReturnValuesOnConditionCheckFailure="ALL_OLD"``) and there was one.
    """

    def __init__(self, item: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.item = item


class TransactionCancelled(Exception):
    """A transaction was cancelled; ``reasons`` are the per-item codes."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(", ".join(reasons))
        self.reasons = reasons


def call(operation: Callable[..., Any], **kwargs: Any) -> Any:
    """Call a client operation, translating botocore's errors."""
    try:
        return operation(**kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code == "ConditionalCheckFailedException":
            item = exc.response.get("Item")  # only with ReturnValuesOnConditionCheckFailure=ALL_OLD
            raise ConditionFailed(item if isinstance(item, dict) else None) from None
        if code == "TransactionCanceledException":
            reasons = [str(r.get("Code", "None")) for r in exc.response.get("CancellationReasons", [])]
            raise TransactionCancelled(reasons) from None
        if code in _THROTTLED:
            raise RegistryUnavailable(f"DynamoDB is unavailable: {code}") from None
        raise RegistryError(f"DynamoDB refused the request: {code}: {error.get('Message', '')}") from None
    except BotoCoreError as exc:
        raise RegistryUnavailable(f"DynamoDB failed: {exc}") from None


@dataclass(frozen=True)
class Listing:
    """One query of one index partition, restricted to sort keys starting with ``prefix``."""

    index: str
    partition: str
    prefix: str
    #: Optional ``FilterExpression`` with its names and values.
    filter: str | None = None
    names: Mapping[str, str] | None = None
    values: Mapping[str, Any] | None = None


# --------------------------------------------------------------------------------------------------
# The table


class Table:
    """The registry table: its name, its DynamoDB client, and the clock its adapters stamp writes with.

    No client is created at import or construction time; the first call creates one with bounded
    retries (botocore ``standard`` mode), honouring ``AWS_ENDPOINT_URL`` for an emulator. Adapters on
    the same table share one :class:`Table` (one client per container).
    """

    def __init__(
        self, name: str, client: DynamoDBClient | None = None, *, now: Callable[[], datetime] = utcnow
    ) -> None:
        self.name = name
        self.now = now
        self._client = client

    @property
    def client(self) -> DynamoDBClient:
        """The DynamoDB client (created on first use)."""
        if self._client is None:
            self._client = make_client("dynamodb")
        return self._client

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The item under ``key`` (a consistent read), or None."""
        response = call(self.client.get_item, TableName=self.name, Key=key, ConsistentRead=True)
        item: dict[str, Any] | None = response.get("Item")
        return item

    def put(self, item: dict[str, Any], condition: str | None = None, **expression: Any) -> None:
        """Put ``item``, on ``condition`` if given (``expression``: its names and values);
        :class:`ConditionFailed` when it does not hold."""
        kwargs: dict[str, Any] = {"TableName": self.name, "Item": item, **expression}
        if condition is not None:
            kwargs["ConditionExpression"] = condition
        call(self.client.put_item, **kwargs)

    def query(
        self, listing: Listing, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` items of ``listing``, newest first, after ``cursor``; and the next cursor.

        The next cursor is made from the last item returned (not from ``LastEvaluatedKey``), and only
        when one more matching item exists, so the last page never comes with a cursor to an empty one.
        """
        check_limit(limit)
        pk_attr, sk_attr = INDEXES[listing.index]
        fields = ("PK", "SK", pk_attr, sk_attr)
        start: dict[str, Any] | None = None
        if cursor is not None:
            position = decode_cursor(cursor, fields=fields)
            if position[pk_attr] != listing.partition or not position[sk_attr].startswith(listing.prefix):
                raise InvalidCursor("the cursor belongs to another listing", field="cursor")
            start = {name: {"S": value} for name, value in position.items()}
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "IndexName": listing.index,
            "KeyConditionExpression": "#ipk = :ipk AND begins_with(#isk, :prefix)",
            "ExpressionAttributeNames": {"#ipk": pk_attr, "#isk": sk_attr, **(listing.names or {})},
            "ExpressionAttributeValues": {
                ":ipk": {"S": listing.partition},
                ":prefix": {"S": listing.prefix},
                **(listing.values or {}),
            },
            "ScanIndexForward": False,
        }
        if listing.filter is not None:
            kwargs["FilterExpression"] = listing.filter
        found: list[dict[str, Any]] = []
        while len(found) <= limit:
            wanted = limit + 1 - len(found)
            # A filter discards items after the limit is applied: read bigger pages to need fewer calls.
            kwargs["Limit"] = min(MAX_PAGE_SIZE, wanted if listing.filter is None else max(wanted, 100))
            if start is not None:
                kwargs["ExclusiveStartKey"] = start
            response = call(self.client.query, **kwargs)
            found.extend(response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if start is None:
                break
        if len(found) <= limit:
            return found, None
        page = found[:limit]
        return page, encode_cursor({name: page[-1][name]["S"] for name in fields})
