"""The model registry on one DynamoDB table (single-table design).

Item layout (every key attribute is a string; key components are escaped so that ``#`` and ``%`` in
owners or names cannot forge another partition: ``%`` → ``%25``, ``#`` → ``%23``)::

    model           PK MODEL#{id}              SK META
                    GSI1 OWNER#{o}#NAME#{n} / MODEL#{t}#{id}      (by owner and name)
                    GSI3 OWNER#{o} / MODEL#{t}#{id}               (by owner)
    export job      PK JOB#{id}                SK META
                    GSI1 OWNER#{o}#NAME#{n} / JOB#{t}#{id}        (by owner and model name)
                    GSI2 STATUS#{s} / OWNER#{o}#{t}#{id}          (by status, owner-scoped by prefix)
                    GSI3 OWNER#{o} / JOB#{t}#{id}                 (by owner)
    import          PK IMPORT#{id}             SK META
    half pair       PK UPLOAD#{id}             SK META
                    GSI2 UPLOADS#AWAITING|UPLOADS#REJECTING / {t}#{id}   (due for the sweep; sparse)
                    GSI3 OWNER#{o} / UPLOAD#{t}#{id}              (by owner)
    default export  PK DEFAULT#{o}#{n}#{v}     SK EXPORT          (attribute job_id)
    claim           PK IDEMPOTENCY#{sha256}    SK CLAIM           (expires_at: the table's TTL attribute)

``{t}`` is :func:`heimdall.domain.registry.chronological_key`'s fixed-width UTC time, so sort keys order by
creation; listings query with ``ScanIndexForward=False`` (newest first). Models and jobs are looked up
by id alone (``PK``), which is what the job-state Lambda needs: Batch events carry no owner. Owner
scoping of reads is a check of the ``owner`` attribute (``get``) or the owner in the partition key of
the index queried (listings).

``GSI2PK`` is ``STATUS#{status}`` without the owner, so that a transition can move a job between
status partitions in one conditional ``UpdateItem`` without first reading the owner; the owner leads
``GSI2SK`` instead and listings use ``begins_with``. (The partition per status is shared by every owner;
export jobs arrive at human rates, far below a partition's throughput.) The GSIs are eventually
consistent: a record is readable by id at once, in listings a moment later.

Writes are conditional where the contract needs it: create (``attribute_not_exists``), transitions
(``#status IN (:allowed sources)``), imports (never over a terminal one), claims (absent or expired),
the default export (a transaction guarded by the previous pointer). A failed condition is followed by
a consistent read that decides between "ignore" and an error.

Throttling and 5xx are retried by botocore (``standard`` mode) and then raise
:class:`~heimdall.errors.RegistryUnavailable`; other refusals raise :class:`~heimdall.errors.RegistryError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ValidationError

from heimdall.adapters.aws import make_client
from heimdall.domain.claims import check_ttl, epoch_seconds
from heimdall.domain.job_states import dump_job_field_json, plan_transition, sources_of, validate_job_updates
from heimdall.domain.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Page,
    check_limit,
    decode_cursor,
    encode_cursor,
)
from heimdall.domain.records import (
    IMPORT_TERMINAL,
    ExportJob,
    ImportRecord,
    ImportStatus,
    JobStatus,
    ModelRecord,
    PendingUpload,
    UploadStatus,
    chronological_key,
    utcnow,
)
from heimdall.domain.uploads import paired_with_job, plan_await, plan_pairing
from heimdall.errors import (
    ConflictError,
    InvalidCursor,
    RecordNotFound,
    RegistryError,
    RegistryUnavailable,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["INDEXES", "TTL_ATTRIBUTE", "DynamoRegistry", "create_registry_table", "table_definition"]

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
_META = "META"
#: How often a conditional write is retried when a concurrent writer moved the state under it.
_MAX_RACES = 5
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


def _esc(part: str) -> str:
    """A key component that cannot contain the ``#`` separator."""
    return part.replace("%", "%25").replace("#", "%23")


def _model_key(model_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"MODEL#{_esc(model_id)}"}, "SK": {"S": _META}}


def _job_key(job_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"JOB#{_esc(job_id)}"}, "SK": {"S": _META}}


def _import_key(import_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"IMPORT#{_esc(import_id)}"}, "SK": {"S": _META}}


def _default_key(owner: str, model_name: str, version: str) -> dict[str, Any]:
    return {"PK": {"S": f"DEFAULT#{_esc(owner)}#{_esc(model_name)}#{_esc(version)}"}, "SK": {"S": "EXPORT"}}


def _claim_key(key: str) -> dict[str, Any]:
    # Hashed: S3 keys can be 1 KiB and more once escaped, and a partition key is capped at 2 KiB.
    return {"PK": {"S": f"IDEMPOTENCY#{hashlib.sha256(key.encode()).hexdigest()}"}, "SK": {"S": "CLAIM"}}


def _owner_pk(owner: str) -> str:
    return f"OWNER#{_esc(owner)}"


def _name_pk(owner: str, name: str) -> str:
    return f"OWNER#{_esc(owner)}#NAME#{_esc(name)}"


def _status_pk(status: JobStatus) -> str:
    return f"STATUS#{status}"


# --------------------------------------------------------------------------------------------------
# Items

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_attribute(value: Any) -> dict[str, Any]:
    """A JSON-compatible value (numbers as Decimal) as a DynamoDB attribute value."""
    attribute: dict[str, Any] = dict(_serializer.serialize(value))
    return attribute


def _record_attributes(record: BaseModel) -> dict[str, Any]:
    # Through JSON so that floats become Decimals (DynamoDB numbers) and NaN/Infinity become null.
    data = json.loads(record.model_dump_json(), parse_float=Decimal)
    return {name: _to_attribute(value) for name, value in data.items()}


def _plain(value: Any) -> Any:
    """Deserialised DynamoDB data with Decimals turned back into ints and floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set | frozenset):
        return [_plain(v) for v in value]
    return value


def _decode(item: Mapping[str, Any], model: type[R]) -> R:
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
#: attributes instead of ~25 nested ones makes listings cheap to (de)serialise — in boto3 and in the
#: emulator alike (moto spends about 8 ms per 25-attribute item on a response, 50 ms a page of 50).
_MODEL_ATTRIBUTES = ("model_id", "owner", "model_name", "version", "created_at")
_DOC = "doc"


def _decode_model(item: Mapping[str, Any]) -> ModelRecord:
    document = item.get(_DOC)
    if document is None:  # written attribute by attribute (before models kept a document)
        return _decode(item, ModelRecord)
    try:
        return ModelRecord.model_validate_json(document["S"])
    except (ValidationError, KeyError, TypeError) as exc:
        raise RegistryError(f"the registry holds an unreadable ModelRecord: {exc}") from None


def _model_item(record: ModelRecord) -> dict[str, Any]:
    order = chronological_key(record.created_at, record.model_id)
    document = record.model_dump_json()
    fields = json.loads(document)
    return {
        **{name: {"S": str(fields[name])} for name in _MODEL_ATTRIBUTES},
        _DOC: {"S": document},
        **_model_key(record.model_id),
        "entity": {"S": "MODEL"},
        "GSI1PK": {"S": _name_pk(record.owner, record.model_name)},
        "GSI1SK": {"S": f"MODEL#{order}"},
        "GSI3PK": {"S": _owner_pk(record.owner)},
        "GSI3SK": {"S": f"MODEL#{order}"},
    }


def _job_item(job: ExportJob) -> dict[str, Any]:
    order = chronological_key(job.created_at, job.job_id)
    return {
        **_record_attributes(job),
        **_job_key(job.job_id),
        "entity": {"S": "JOB"},
        "GSI1PK": {"S": _name_pk(job.owner, job.model_name)},
        "GSI1SK": {"S": f"JOB#{order}"},
        "GSI2PK": {"S": _status_pk(job.status)},
        "GSI2SK": {"S": f"{_owner_pk(job.owner)}#{order}"},
        "GSI3PK": {"S": _owner_pk(job.owner)},
        "GSI3SK": {"S": f"JOB#{order}"},
    }


def _import_item(record: ImportRecord) -> dict[str, Any]:
    return {**_record_attributes(record), **_import_key(record.import_id), "entity": {"S": "IMPORT"}}


def _upload_key(upload_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"UPLOAD#{_esc(upload_id)}"}, "SK": {"S": _META}}


#: The sweep's partitions of GSI2 (sparse: a settled round is in neither).
_UPLOADS_AWAITING = "UPLOADS#AWAITING"
_UPLOADS_REJECTING = "UPLOADS#REJECTING"


def _upload_item(record: PendingUpload) -> dict[str, Any]:
    # Unset fields are left out rather than stored as NULL, so that conditions can use
    # attribute_not_exists (rejecting_since above all).
    data = json.loads(record.model_dump_json(exclude_none=True), parse_float=Decimal)
    order = chronological_key(record.created_at, record.upload_id)
    item = {
        **{name: _to_attribute(value) for name, value in data.items()},
        **_upload_key(record.upload_id),
        "entity": {"S": "UPLOAD"},
        "GSI3PK": {"S": _owner_pk(record.owner)},
        "GSI3SK": {"S": f"UPLOAD#{order}"},
    }
    if record.status is UploadStatus.AWAITING:
        item |= {"GSI2PK": {"S": _UPLOADS_AWAITING}, "GSI2SK": {"S": order}}
    elif record.rejecting_since is not None:
        since = chronological_key(record.rejecting_since, record.upload_id)
        item |= {"GSI2PK": {"S": _UPLOADS_REJECTING}, "GSI2SK": {"S": since}}
    return item


def _time(moment: datetime) -> dict[str, Any]:
    """A timestamp attribute, serialised exactly as records serialise theirs."""
    return {"S": json.loads(dump_job_field_json("updated_at", moment))}


def _same_round_condition(seen: PendingUpload) -> tuple[str, dict[str, str], dict[str, Any]]:
    """A condition that holds while the round is still exactly as ``seen`` (status, first half, and
    the announcement in progress, if any)."""
    names = {"#status": "status", "#key": "key", "#revision": "revision", "#since": "rejecting_since"}
    values: dict[str, Any] = {
        ":seen_status": {"S": str(seen.status)},
        ":seen_key": {"S": seen.key},
        ":seen_revision": {"S": seen.revision},
    }
    condition = "#status = :seen_status AND #key = :seen_key AND #revision = :seen_revision AND "
    if seen.rejecting_since is None:
        condition += "attribute_not_exists(#since)"
    else:
        condition += "#since = :seen_since"
        values[":seen_since"] = _time(seen.rejecting_since)
    return condition, names, values


# --------------------------------------------------------------------------------------------------
# Errors


class _ConditionFailed(Exception):
    """A ``ConditionExpression`` did not hold (internal: callers decide what it means).

    ``item`` is the item as it stood, where the request asked for it
    (``ReturnValuesOnConditionCheckFailure="ALL_OLD"``) and there was one.
    """

    def __init__(self, item: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.item = item


class _TransactionCancelled(Exception):
    """A transaction was cancelled; ``reasons`` are the per-item codes."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(", ".join(reasons))
        self.reasons = reasons


def _call(operation: Callable[..., Any], **kwargs: Any) -> Any:
    """Call a client operation, translating botocore's errors."""
    try:
        return operation(**kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code == "ConditionalCheckFailedException":
            item = exc.response.get("Item")  # only with ReturnValuesOnConditionCheckFailure=ALL_OLD
            raise _ConditionFailed(item if isinstance(item, dict) else None) from None
        if code == "TransactionCanceledException":
            reasons = [str(r.get("Code", "None")) for r in exc.response.get("CancellationReasons", [])]
            raise _TransactionCancelled(reasons) from None
        if code in _THROTTLED:
            raise RegistryUnavailable(f"DynamoDB is unavailable: {code}") from None
        raise RegistryError(f"DynamoDB refused the request: {code}: {error.get('Message', '')}") from None
    except BotoCoreError as exc:
        raise RegistryUnavailable(f"DynamoDB failed: {exc}") from None


@dataclass(frozen=True)
class _Listing:
    """One query of one index partition, restricted to sort keys starting with ``prefix``."""

    index: str
    partition: str
    prefix: str
    #: Optional ``FilterExpression`` with its names and values.
    filter: str | None = None
    names: Mapping[str, str] | None = None
    values: Mapping[str, Any] | None = None


# --------------------------------------------------------------------------------------------------
# The repository


class DynamoRegistry:
    """:class:`heimdall.domain.registry.Registry` on one DynamoDB table.

    No client is created at import or construction time; the first call creates one with bounded
    retries (botocore ``standard`` mode), honouring ``AWS_ENDPOINT_URL`` for an emulator. ``now`` is the
    clock (``updated_at``, claim expiry).
    """

    def __init__(
        self, table_name: str, client: DynamoDBClient | None = None, *, now: Callable[[], datetime] = utcnow
    ) -> None:
        self.table_name = table_name
        self._client = client
        self._now = now

    @property
    def client(self) -> DynamoDBClient:
        """The DynamoDB client (created on first use)."""
        if self._client is None:
            self._client = make_client("dynamodb")
        return self._client

    # low-level ----------------------------------------------------------------------------------

    def _get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        response = _call(self.client.get_item, TableName=self.table_name, Key=key, ConsistentRead=True)
        item: dict[str, Any] | None = response.get("Item")
        return item

    def _put(self, item: dict[str, Any], condition: str | None = None, **expression: Any) -> None:
        kwargs: dict[str, Any] = {"TableName": self.table_name, "Item": item, **expression}
        if condition is not None:
            kwargs["ConditionExpression"] = condition
        _call(self.client.put_item, **kwargs)

    def _query(
        self, listing: _Listing, limit: int, cursor: str | None
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
            "TableName": self.table_name,
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
            response = _call(self.client.query, **kwargs)
            found.extend(response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if start is None:
                break
        if len(found) <= limit:
            return found, None
        page = found[:limit]
        return page, encode_cursor({name: page[-1][name]["S"] for name in fields})

    # models -------------------------------------------------------------------------------------

    def put_model(self, record: ModelRecord) -> ModelRecord:
        """Create or replace a model record. Another owner's id raises ConflictError."""
        try:
            self._put(
                _model_item(record),
                "attribute_not_exists(PK) OR #owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": record.owner}},
            )
        except _ConditionFailed:
            raise ConflictError(f"model id {record.model_id} is taken", field="model_id") from None
        return record

    def get_model(self, owner: str, model_id: str) -> ModelRecord:
        """The model, if ``owner`` has it; else RecordNotFound."""
        item = self._get(_model_key(model_id))
        record = None if item is None else _decode_model(item)
        if record is None or record.owner != owner:
            raise RecordNotFound(f"model {model_id} not found", field="model_id")
        return record

    def delete_model(self, owner: str, model_id: str) -> None:
        """Delete the model; RecordNotFound if ``owner`` has no such model."""
        try:
            _call(
                self.client.delete_item,
                TableName=self.table_name,
                Key=_model_key(model_id),
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}},
            )
        except _ConditionFailed:
            raise RecordNotFound(f"model {model_id} not found", field="model_id") from None

    def list_models(
        self,
        owner: str,
        *,
        name: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[ModelRecord]:
        """The owner's models (of one ``name`` if given), newest first."""
        if name is None:
            listing = _Listing("GSI3", _owner_pk(owner), "MODEL#")
        else:
            listing = _Listing("GSI1", _name_pk(owner, name), "MODEL#")
        items, next_cursor = self._query(listing, limit, cursor)
        return Page(items=[_decode_model(item) for item in items], cursor=next_cursor)

    def find_model_by_name_version(self, owner: str, name: str, version: str) -> ModelRecord | None:
        """The newest of the owner's models with this name and version, or None."""
        listing = _Listing(
            "GSI1",
            _name_pk(owner, name),
            "MODEL#",
            filter="#version = :version",
            names={"#version": "version"},
            values={":version": {"S": version}},
        )
        items, _ = self._query(listing, 1, None)
        return _decode_model(items[0]) if items else None

    # export jobs --------------------------------------------------------------------------------

    def create_export_job(self, job: ExportJob) -> ExportJob:
        """Record a new job; ConflictError if the id exists (whoever owns it)."""
        try:
            self._put(_job_item(job), "attribute_not_exists(PK)")
        except _ConditionFailed:
            raise ConflictError(f"export job {job.job_id} already exists", field="job_id") from None
        return job

    def get_export_job(self, owner: str, job_id: str) -> ExportJob:
        """The job, if ``owner`` has it; else RecordNotFound."""
        job = self.get_export_job_any_owner(job_id)
        if job.owner != owner:
            raise RecordNotFound(f"export job {job_id} not found", field="job_id")
        return job

    def get_export_job_any_owner(self, job_id: str) -> ExportJob:
        """The job whoever owns it (the job-state Lambda: Batch events carry no owner)."""
        item = self._get(_job_key(job_id))
        if item is None:
            raise RecordNotFound(f"export job {job_id} not found", field="job_id")
        return _decode(item, ExportJob)

    def list_export_jobs(
        self,
        owner: str,
        *,
        model_name: str | None = None,
        status: JobStatus | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[ExportJob]:
        """The owner's jobs, optionally of one model name and/or in one status, newest first."""
        if model_name is not None:
            # By name (GSI1); a status narrows it with a filter.
            status_filter: dict[str, Any] = {}
            if status is not None:
                status_filter = {
                    "filter": "#status = :status",
                    "names": {"#status": "status"},
                    "values": {":status": {"S": str(JobStatus(status))}},
                }
            listing = _Listing("GSI1", _name_pk(owner, model_name), "JOB#", **status_filter)
        elif status is not None:
            listing = _Listing("GSI2", _status_pk(JobStatus(status)), f"{_owner_pk(owner)}#")
        else:
            listing = _Listing("GSI3", _owner_pk(owner), "JOB#")
        items, next_cursor = self._query(listing, limit, cursor)
        return Page(items=[_decode(item, ExportJob) for item in items], cursor=next_cursor)

    def transition_export_job(
        self, job_id: str, target: JobStatus, *, updates: Mapping[str, Any] | None = None
    ) -> ExportJob | None:
        """Move the job to ``target`` if the state machine allows it at the moment of the write.

        One ``UpdateItem`` conditioned on ``#status IN (states with an edge to target)``; when the
        condition fails, a consistent read decides: stale → ``None``, invalid → InvalidTransition,
        moved meanwhile to a state that allows it → try again.
        """
        target = JobStatus(target)
        fields = validate_job_updates(updates or {})
        sources = sorted(sources_of(target))
        names = {"#status": "status", "#gsi2pk": "GSI2PK", "#updated_at": "updated_at"}
        values: dict[str, Any] = {
            ":target": {"S": str(target)},
            ":gsi2pk": {"S": _status_pk(target)},
        }
        assignments = ["#status = :target", "#gsi2pk = :gsi2pk", "#updated_at = :updated_at"]
        for i, (name, value) in enumerate(fields.items()):
            names[f"#f{i}"] = name
            as_json = json.loads(dump_job_field_json(name, value), parse_float=Decimal)
            values[f":f{i}"] = _to_attribute(as_json)
            assignments.append(f"#f{i} = :f{i}")
        for i, source in enumerate(sources):
            values[f":s{i}"] = {"S": str(source)}
        condition = f"#status IN ({', '.join(f':s{i}' for i in range(len(sources)))})"
        for _ in range(_MAX_RACES):
            if sources:
                values[":updated_at"] = {"S": json.loads(dump_job_field_json("updated_at", self._now()))}
                try:
                    response = _call(
                        self.client.update_item,
                        TableName=self.table_name,
                        Key=_job_key(job_id),
                        UpdateExpression="SET " + ", ".join(assignments),
                        ConditionExpression=condition,
                        ExpressionAttributeNames=names,
                        ExpressionAttributeValues=values,
                        ReturnValues="ALL_NEW",
                    )
                    return _decode(response["Attributes"], ExportJob)
                except _ConditionFailed:
                    pass
            current = self.get_export_job_any_owner(job_id)
            if plan_transition(current.status, target) == "ignore":
                return None
        raise ConflictError(f"export job {job_id} kept changing; {target} not applied", field="job_id")

    def record_job_model(self, job_id: str, model_id: str) -> None:
        """Note the model the job's bundle became (one conditional ``UpdateItem``, any job state)."""
        try:
            _call(
                self.client.update_item,
                TableName=self.table_name,
                Key=_job_key(job_id),
                UpdateExpression="SET #model_id = :model_id, #updated_at = :updated_at",
                ConditionExpression="attribute_exists(PK)",
                ExpressionAttributeNames={"#model_id": "model_id", "#updated_at": "updated_at"},
                ExpressionAttributeValues={
                    ":model_id": {"S": model_id},
                    ":updated_at": {"S": json.loads(dump_job_field_json("updated_at", self._now()))},
                },
            )
        except _ConditionFailed:
            raise RecordNotFound(f"export job {job_id} not found", field="job_id") from None

    def set_default_export(self, owner: str, job_id: str) -> ExportJob:
        """Make a SUCCEEDED job the default export of its (model_name, version), atomically.

        One transaction: the pointer item (guarded by its previous value), the new default's flag
        (guarded by ``status = SUCCEEDED``) and the previous default's flag.
        """
        for _ in range(_MAX_RACES):
            job = self.get_export_job(owner, job_id)
            if job.status is not JobStatus.SUCCEEDED:
                raise ConflictError(
                    f"export job {job_id} is {job.status}; only a succeeded export can be the default",
                    field="job_id",
                )
            pointer_key = _default_key(owner, job.model_name, job.version)
            pointer = self._get(pointer_key)
            previous = None if pointer is None else str(pointer["job_id"]["S"])
            if previous == job_id and job.is_default:
                return job
            now = {"S": json.loads(dump_job_field_json("updated_at", self._now()))}
            pointer_put: dict[str, Any] = {
                "TableName": self.table_name,
                "Item": {**pointer_key, "entity": {"S": "DEFAULT_EXPORT"}, "job_id": {"S": job_id}},
            }
            if previous is None:
                pointer_put["ConditionExpression"] = "attribute_not_exists(PK)"
            else:
                pointer_put["ConditionExpression"] = "job_id = :previous"
                pointer_put["ExpressionAttributeValues"] = {":previous": {"S": previous}}
            items: list[dict[str, Any]] = [
                {"Put": pointer_put},
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": _job_key(job_id),
                        "UpdateExpression": "SET is_default = :true, updated_at = :now",
                        "ConditionExpression": "#status = :succeeded AND #owner = :owner",
                        "ExpressionAttributeNames": {"#status": "status", "#owner": "owner"},
                        "ExpressionAttributeValues": {
                            ":true": {"BOOL": True},
                            ":now": now,
                            ":succeeded": {"S": str(JobStatus.SUCCEEDED)},
                            ":owner": {"S": owner},
                        },
                    }
                },
            ]
            if previous is not None and previous != job_id:
                items.append(
                    {
                        "Update": {
                            "TableName": self.table_name,
                            "Key": _job_key(previous),
                            "UpdateExpression": "SET is_default = :false, updated_at = :now",
                            "ConditionExpression": "attribute_exists(PK)",
                            "ExpressionAttributeValues": {":false": {"BOOL": False}, ":now": now},
                        }
                    }
                )
            try:
                _call(self.client.transact_write_items, TransactItems=items)
            except _TransactionCancelled:
                continue  # the default changed under us: read again
            return self.get_export_job(owner, job_id)
        raise ConflictError(f"the default export of job {job_id}'s model kept changing", field="job_id")

    def get_default_export(self, owner: str, model_name: str, version: str) -> ExportJob | None:
        """The default export of the owner's (model_name, version), if one was set."""
        pointer = self._get(_default_key(owner, model_name, version))
        if pointer is None:
            return None
        job = self.get_export_job_any_owner(str(pointer["job_id"]["S"]))
        return job if job.owner == owner else None

    # imports ------------------------------------------------------------------------------------

    def put_import(self, record: ImportRecord) -> ImportRecord:
        """Create or update an import; a terminal import is never overwritten (it is returned instead)."""
        for _ in range(_MAX_RACES):
            try:
                self._put(
                    _import_item(record),
                    "attribute_not_exists(PK) OR (#owner = :owner AND #status = :pending)",
                    ExpressionAttributeNames={"#owner": "owner", "#status": "status"},
                    ExpressionAttributeValues={
                        ":owner": {"S": record.owner},
                        ":pending": {"S": str(ImportStatus.PENDING)},
                    },
                )
                return record
            except _ConditionFailed:
                item = self._get(_import_key(record.import_id))
                if item is None:
                    continue
                stored = _decode(item, ImportRecord)
                if stored.owner != record.owner:
                    raise ConflictError(f"import id {record.import_id} is taken", field="import_id") from None
                if stored.status in IMPORT_TERMINAL:
                    return stored
        raise ConflictError(f"import {record.import_id} kept changing", field="import_id")

    def get_import(self, owner: str, import_id: str) -> ImportRecord:
        """The import, if ``owner`` has it; else RecordNotFound."""
        record = self.get_import_any_owner(import_id)
        if record.owner != owner:
            raise RecordNotFound(f"import {import_id} not found", field="import_id")
        return record

    def get_import_any_owner(self, import_id: str) -> ImportRecord:
        """The import whoever owns it (the ingest function: S3 events carry no owner)."""
        item = self._get(_import_key(import_id))
        if item is None:
            raise RecordNotFound(f"import {import_id} not found", field="import_id")
        return _decode(item, ImportRecord)

    def claim_import_upload(self, import_id: str, revision: str) -> ImportRecord | None:
        """The first revision claims the import (one conditional ``UpdateItem``); see the port."""
        try:
            response = _call(
                self.client.update_item,
                TableName=self.table_name,
                Key=_import_key(import_id),
                UpdateExpression="SET #revision = :revision",
                # Records store an unset field as NULL: unclaimed is absent or NULL.
                ConditionExpression=(
                    "attribute_exists(PK) AND (attribute_not_exists(#revision) "
                    "OR attribute_type(#revision, :null) OR #revision = :revision)"
                ),
                ExpressionAttributeNames={"#revision": "upload_revision"},
                ExpressionAttributeValues={":revision": {"S": revision}, ":null": {"S": "NULL"}},
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except _ConditionFailed as failed:
            if failed.item is None:
                raise RecordNotFound(f"import {import_id} not found", field="import_id") from None
            return None
        return _decode(response["Attributes"], ImportRecord)

    # idempotency --------------------------------------------------------------------------------

    def claim_once(self, key: str, ttl_s: int) -> bool:
        """True the first time ``key`` is claimed, False while the claim is held (conditional put).

        A claim past ``expires_at`` counts as free even before DynamoDB's TTL sweeper (which can lag by
        days) deletes it.
        """
        check_ttl(ttl_s)
        now = epoch_seconds(self._now())
        try:
            self._put(
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
        except _ConditionFailed:
            return False
        return True

    def release_claim(self, key: str) -> None:
        """Give a claim back (the work it guarded failed and should be retried)."""
        _call(self.client.delete_item, TableName=self.table_name, Key=_claim_key(key))

    def is_claimed(self, key: str) -> bool:
        """Whether ``key`` is claimed and its claim has not expired (a consistent read)."""
        item = self._get(_claim_key(key))
        if item is None:
            return False
        return int(item[TTL_ATTRIBUTE]["N"]) > epoch_seconds(self._now())

    def claim_request(self, key: str, fingerprint: str) -> str:
        """The first request's fingerprint under ``key``: a conditional put, else a consistent read.

        Beside the key's claims (same partition), with no TTL: it lives as long as the table's records.
        """
        item_key = {**_claim_key(key), "SK": {"S": "REQUEST"}}
        try:
            self._put(
                {
                    **item_key,
                    "entity": {"S": "REQUEST"},
                    "claim_key": {"S": key[:1024]},
                    "fingerprint": {"S": fingerprint},
                },
                "attribute_not_exists(PK)",
            )
        except _ConditionFailed:
            stored = self._get(item_key)
            if stored is not None:
                return str(stored["fingerprint"]["S"])
            raise RegistryError(f"the request recorded under {key[:64]!r} vanished") from None
        return fingerprint

    # half pairs ---------------------------------------------------------------------------------

    def _get_upload(self, upload_id: str) -> PendingUpload | None:
        item = self._get(_upload_key(upload_id))
        return None if item is None else _decode(item, PendingUpload)

    def await_upload(self, record: PendingUpload) -> PendingUpload:
        """Record the lone half (one conditional put: no round, or a settled one of other halves)."""
        for _ in range(_MAX_RACES):
            try:
                self._put(
                    _upload_item(record),
                    "attribute_not_exists(PK) OR (#status <> :awaiting AND attribute_not_exists(#since) "
                    "AND NOT contains(#refs, :ref))",
                    ExpressionAttributeNames={
                        "#status": "status",
                        "#since": "rejecting_since",
                        "#refs": "refs",
                    },
                    ExpressionAttributeValues={
                        ":awaiting": {"S": str(UploadStatus.AWAITING)},
                        ":ref": {"S": record.refs[0]},
                    },
                )
                return record
            except _ConditionFailed:
                current = self._get_upload(record.upload_id)
                plan = plan_await(current, record.refs[0])
                if plan == "busy":
                    raise RegistryUnavailable(
                        f"upload {record.upload_id}: a rejection is being announced", field="upload_id"
                    ) from None
                if plan == "keep" and current is not None:
                    return current
        raise ConflictError(f"upload {record.upload_id} kept changing", field="upload_id")

    def pair_upload(self, record: PendingUpload) -> PendingUpload | None:
        """Settle the round PAIRED: a consistent read decides, a write conditioned on the round being
        as read applies it (an AWAITING round is updated in place, keeping its first half)."""
        paired = record.model_copy(update={"status": UploadStatus.PAIRED, "rejecting_since": None})
        for _ in range(_MAX_RACES):
            current = self._get_upload(record.upload_id)
            plan = plan_pairing(current, record.refs)
            if plan == "busy":
                raise RegistryUnavailable(
                    f"upload {record.upload_id}: a rejection is being announced", field="upload_id"
                )
            if plan == "refuse":
                return None
            try:
                if current is None:
                    self._put(_upload_item(paired), "attribute_not_exists(PK)")
                    return paired
                condition, names, values = _same_round_condition(current)
                if current.status is not UploadStatus.AWAITING:
                    self._put(
                        _upload_item(paired),
                        condition,
                        ExpressionAttributeNames=names,
                        ExpressionAttributeValues=values,
                    )
                    return paired
                names |= {"#refs": "refs", "#job_id": "job_id", "#updated_at": "updated_at"}
                values |= {
                    ":paired": {"S": str(UploadStatus.PAIRED)},
                    ":refs": _to_attribute(list(record.refs)),
                    ":job_id": _to_attribute(record.job_id),
                    ":updated_at": _time(self._now()),
                }
                names["#paired_key"] = "paired_key"
                values[":paired_key"] = {"S": record.key}  # the half that came second
                assignments = (
                    "#status = :paired, #refs = :refs, #job_id = :job_id, #paired_key = :paired_key, "
                    "#updated_at = :updated_at"
                )
                response = _call(
                    self.client.update_item,
                    TableName=self.table_name,
                    Key=_upload_key(record.upload_id),
                    UpdateExpression=f"SET {assignments} REMOVE GSI2PK, GSI2SK",
                    ConditionExpression=condition,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                )
                return _decode(response["Attributes"], PendingUpload)
            except _ConditionFailed:
                continue  # the round changed under us: read again
        raise ConflictError(f"upload {record.upload_id} kept changing", field="upload_id")

    def pair_upload_with_job(
        self, upload_id: str, used: Mapping[str, str], *, job_id: str
    ) -> PendingUpload | None:
        """A consistent read decides (:func:`paired_with_job`); a put conditioned on the round being
        still as read (AWAITING the same half, so the sweep has not rejected it) applies it."""
        for _ in range(_MAX_RACES):
            paired = paired_with_job(self._get_upload(upload_id), used, job_id=job_id, now=self._now())
            if paired is None:
                return None
            condition, names, values = _same_round_condition(
                paired.model_copy(update={"status": UploadStatus.AWAITING})
            )
            try:
                self._put(
                    _upload_item(paired),
                    condition,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                )
                return paired
            except _ConditionFailed:
                continue  # the round changed under us (the sweep, most likely): read again
        raise ConflictError(f"upload {upload_id} kept changing", field="upload_id")

    def get_upload(self, owner: str, upload_id: str) -> PendingUpload:
        """The round, if ``owner`` has it; else RecordNotFound."""
        record = self._get_upload(upload_id)
        if record is None or record.owner != owner:
            raise RecordNotFound(f"upload {upload_id} not found", field="upload_id")
        return record

    def list_uploads(
        self,
        owner: str,
        *,
        status: UploadStatus | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Page[PendingUpload]:
        """The owner's rounds (by owner, GSI3; a status narrows it with a filter), newest first."""
        status_filter: dict[str, Any] = {}
        if status is not None:
            status_filter = {
                "filter": "#status = :status",
                "names": {"#status": "status"},
                "values": {":status": {"S": str(UploadStatus(status))}},
            }
        listing = _Listing("GSI3", _owner_pk(owner), "UPLOAD#", **status_filter)
        items, next_cursor = self._query(listing, limit, cursor)
        return Page(items=[_decode(item, PendingUpload) for item in items], cursor=next_cursor)

    def due_uploads(
        self, *, arrived_before: datetime, rejecting_before: datetime, limit: int = DEFAULT_PAGE_SIZE
    ) -> list[PendingUpload]:
        """The sweep's work: two range queries of GSI2's sparse partitions, oldest first."""
        check_limit(limit)
        due: list[PendingUpload] = []
        partitions = ((_UPLOADS_AWAITING, arrived_before), (_UPLOADS_REJECTING, rejecting_before))
        for partition, before in partitions:
            response = _call(
                self.client.query,
                TableName=self.table_name,
                IndexName="GSI2",
                KeyConditionExpression="GSI2PK = :pk AND GSI2SK < :before",
                ExpressionAttributeValues={
                    ":pk": {"S": partition},
                    # Sorts before every key of that instant: "{t}#" < "{t}#{id}".
                    ":before": {"S": chronological_key(before, "")},
                },
                ScanIndexForward=True,
                Limit=limit - len(due),
            )
            due.extend(_decode(item, PendingUpload) for item in response.get("Items", []))
            if len(due) >= limit:
                break
        return due

    def begin_upload_rejection(self, seen: PendingUpload, *, code: str, reason: str) -> PendingUpload | None:
        """One ``UpdateItem`` conditioned on the round being exactly as ``seen``; None when it is not."""
        if seen.status is UploadStatus.PAIRED:
            return None
        now = self._now()
        condition, names, values = _same_round_condition(seen)
        names |= {"#code": "error_code", "#reason": "reason", "#updated_at": "updated_at"}
        values |= {
            ":rejected": {"S": str(UploadStatus.REJECTED)},
            ":code": {"S": code},
            ":reason": {"S": reason[:4096]},
            ":now": _time(now),
            ":gsi2pk": {"S": _UPLOADS_REJECTING},
            ":gsi2sk": {"S": chronological_key(now, seen.upload_id)},
        }
        try:
            response = _call(
                self.client.update_item,
                TableName=self.table_name,
                Key=_upload_key(seen.upload_id),
                UpdateExpression=(
                    "SET #status = :rejected, #code = :code, #reason = :reason, #since = :now, "
                    "#updated_at = :now, GSI2PK = :gsi2pk, GSI2SK = :gsi2sk"
                ),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except _ConditionFailed:
            return None
        return _decode(response["Attributes"], PendingUpload)

    def finish_upload_rejection(self, seen: PendingUpload, *, quarantine_key: str | None) -> None:
        """Clear the announcement (and leave the sweep's index) if the round is still ``seen``."""
        condition, names, values = _same_round_condition(seen)
        names["#updated_at"] = "updated_at"
        values[":now"] = _time(self._now())
        assignments = "#updated_at = :now"
        if quarantine_key is not None:
            names["#quarantine_key"] = "quarantine_key"
            values[":quarantine_key"] = {"S": quarantine_key}
            assignments += ", #quarantine_key = :quarantine_key"
        # A failed condition: another sweep took the announcement over after our lease; it finishes it.
        with contextlib.suppress(_ConditionFailed):
            _call(
                self.client.update_item,
                TableName=self.table_name,
                Key=_upload_key(seen.upload_id),
                UpdateExpression=f"SET {assignments} REMOVE #since, GSI2PK, GSI2SK",
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
