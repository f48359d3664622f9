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

``{t}`` is :func:`heimdall.domain.records.chronological_key`'s fixed-width UTC time, so sort keys order by
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

This module holds the models, export jobs and default exports; imports, claims and half pairs are in
:mod:`~heimdall.adapters.dynamodb.imports`, :mod:`~heimdall.adapters.dynamodb.claims` and
:mod:`~heimdall.adapters.dynamodb.uploads`, and what every item shares (the table's definition, key
escaping, attribute encoding, the translation of DynamoDB's errors: throttling and 5xx, retried by
botocore's ``standard`` mode, then :class:`~heimdall.errors.RegistryUnavailable`; other refusals
:class:`~heimdall.errors.RegistryError`) in :mod:`~heimdall.adapters.dynamodb.table`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from heimdall.adapters.dynamodb.claims import ClaimItems
from heimdall.adapters.dynamodb.imports import ImportRecords
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
    to_attribute,
)
from heimdall.adapters.dynamodb.uploads import UploadRounds
from heimdall.domain.job_states import dump_job_field_json, plan_transition, sources_of, validate_job_updates
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page
from heimdall.domain.records import ExportJob, JobStatus, ModelRecord, chronological_key, owned, utcnow
from heimdall.errors import ConflictError, RecordNotFound, RegistryError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["DynamoRegistry"]


def _model_key(model_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"MODEL#{key_part(model_id)}"}, "SK": {"S": META}}


def _job_key(job_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"JOB#{key_part(job_id)}"}, "SK": {"S": META}}


def _default_key(owner: str, model_name: str, version: str) -> dict[str, Any]:
    partition = f"DEFAULT#{key_part(owner)}#{key_part(model_name)}#{key_part(version)}"
    return {"PK": {"S": partition}, "SK": {"S": "EXPORT"}}


def _name_pk(owner: str, name: str) -> str:
    return f"OWNER#{key_part(owner)}#NAME#{key_part(name)}"


def _status_pk(status: JobStatus) -> str:
    return f"STATUS#{status}"


#: What a model item keeps as attributes of its own (conditions and filters name them). The rest of the
#: record is one JSON string, ``doc``: models are only written and read whole, and a handful of
#: attributes instead of ~25 nested ones makes listings cheap to (de)serialise — in boto3 and in the
#: emulator alike (moto spends about 8 ms per 25-attribute item on a response, 50 ms a page of 50).
_MODEL_ATTRIBUTES = ("model_id", "owner", "model_name", "version", "created_at")
_DOC = "doc"


def _decode_model(item: Mapping[str, Any]) -> ModelRecord:
    document = item.get(_DOC)
    if document is None:  # written attribute by attribute (before models kept a document)
        return decode(item, ModelRecord)
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
        "GSI3PK": {"S": owner_partition(record.owner)},
        "GSI3SK": {"S": f"MODEL#{order}"},
    }


def _job_item(job: ExportJob) -> dict[str, Any]:
    order = chronological_key(job.created_at, job.job_id)
    return {
        **record_attributes(job),
        **_job_key(job.job_id),
        "entity": {"S": "JOB"},
        "GSI1PK": {"S": _name_pk(job.owner, job.model_name)},
        "GSI1SK": {"S": f"JOB#{order}"},
        "GSI2PK": {"S": _status_pk(job.status)},
        "GSI2SK": {"S": f"{owner_partition(job.owner)}#{order}"},
        "GSI3PK": {"S": owner_partition(job.owner)},
        "GSI3SK": {"S": f"JOB#{order}"},
    }


# --------------------------------------------------------------------------------------------------
# The repository


class DynamoRegistry(UploadRounds, ImportRecords, ClaimItems):
    """:class:`heimdall.domain.registry.Registry` on one DynamoDB table.

    Models, export jobs and default exports here; imports, claims and half pairs come from
    :class:`~heimdall.adapters.dynamodb.imports.ImportRecords`,
    :class:`~heimdall.adapters.dynamodb.claims.ClaimItems` and
    :class:`~heimdall.adapters.dynamodb.uploads.UploadRounds`, all on the same :class:`Table`.
    No client is created at import or construction time (see :class:`Table`). ``now`` is the clock
    (``updated_at``, claim expiry).
    """

    def __init__(
        self, table_name: str, client: DynamoDBClient | None = None, *, now: Callable[[], datetime] = utcnow
    ) -> None:
        self.table = Table(table_name, client, now=now)

    @property
    def client(self) -> DynamoDBClient:
        """The DynamoDB client (created on first use)."""
        return self.table.client

    # models -------------------------------------------------------------------------------------

    def put_model(self, record: ModelRecord) -> ModelRecord:
        """Create or replace a model record. Another owner's id raises ConflictError."""
        try:
            self.table.put(
                _model_item(record),
                "attribute_not_exists(PK) OR #owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": record.owner}},
            )
        except ConditionFailed:
            raise ConflictError(f"model id {record.model_id} is taken", field="model_id") from None
        return record

    def get_model(self, owner: str, model_id: str) -> ModelRecord:
        """The model, if ``owner`` has it; else RecordNotFound."""
        item = self.table.get(_model_key(model_id))
        record = None if item is None else _decode_model(item)
        return owned(record, owner, what="model", record_id=model_id, field="model_id")

    def delete_model(self, owner: str, model_id: str) -> None:
        """Delete the model; RecordNotFound if ``owner`` has no such model."""
        try:
            call(
                self.table.client.delete_item,
                TableName=self.table.name,
                Key=_model_key(model_id),
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}},
            )
        except ConditionFailed:
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
            listing = Listing("GSI3", owner_partition(owner), "MODEL#")
        else:
            listing = Listing("GSI1", _name_pk(owner, name), "MODEL#")
        items, next_cursor = self.table.query(listing, limit, cursor)
        return Page(items=[_decode_model(item) for item in items], cursor=next_cursor)

    def find_model_by_name_version(self, owner: str, name: str, version: str) -> ModelRecord | None:
        """The newest of the owner's models with this name and version, or None."""
        listing = Listing(
            "GSI1",
            _name_pk(owner, name),
            "MODEL#",
            filter="#version = :version",
            names={"#version": "version"},
            values={":version": {"S": version}},
        )
        items, _ = self.table.query(listing, 1, None)
        return _decode_model(items[0]) if items else None

    # export jobs --------------------------------------------------------------------------------

    def create_export_job(self, job: ExportJob) -> ExportJob:
        """Record a new job; ConflictError if the id exists (whoever owns it)."""
        try:
            self.table.put(_job_item(job), "attribute_not_exists(PK)")
        except ConditionFailed:
            raise ConflictError(f"export job {job.job_id} already exists", field="job_id") from None
        return job

    def get_export_job(self, owner: str, job_id: str) -> ExportJob:
        """The job, if ``owner`` has it; else RecordNotFound."""
        return owned(self._export_job(job_id), owner, what="export job", record_id=job_id, field="job_id")

    def get_export_job_any_owner(self, job_id: str) -> ExportJob:
        """The job whoever owns it (the job-state Lambda: Batch events carry no owner)."""
        return owned(self._export_job(job_id), None, what="export job", record_id=job_id, field="job_id")

    def _export_job(self, job_id: str) -> ExportJob | None:
        item = self.table.get(_job_key(job_id))
        return None if item is None else decode(item, ExportJob)

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
            listing = Listing("GSI1", _name_pk(owner, model_name), "JOB#", **status_filter)
        elif status is not None:
            listing = Listing("GSI2", _status_pk(JobStatus(status)), f"{owner_partition(owner)}#")
        else:
            listing = Listing("GSI3", owner_partition(owner), "JOB#")
        items, next_cursor = self.table.query(listing, limit, cursor)
        return Page(items=[decode(item, ExportJob) for item in items], cursor=next_cursor)

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
            values[f":f{i}"] = to_attribute(as_json)
            assignments.append(f"#f{i} = :f{i}")
        for i, source in enumerate(sources):
            values[f":s{i}"] = {"S": str(source)}
        condition = f"#status IN ({', '.join(f':s{i}' for i in range(len(sources)))})"
        for _ in range(MAX_RACES):
            if sources:
                values[":updated_at"] = time_attribute(self.table.now())
                try:
                    response = call(
                        self.table.client.update_item,
                        TableName=self.table.name,
                        Key=_job_key(job_id),
                        UpdateExpression="SET " + ", ".join(assignments),
                        ConditionExpression=condition,
                        ExpressionAttributeNames=names,
                        ExpressionAttributeValues=values,
                        ReturnValues="ALL_NEW",
                    )
                    return decode(response["Attributes"], ExportJob)
                except ConditionFailed:
                    pass
            current = self.get_export_job_any_owner(job_id)
            if plan_transition(current.status, target) == "ignore":
                return None
        raise ConflictError(f"export job {job_id} kept changing; {target} not applied", field="job_id")

    def record_job_model(self, job_id: str, model_id: str) -> None:
        """Note the model the job's bundle became (one conditional ``UpdateItem``, any job state)."""
        try:
            call(
                self.table.client.update_item,
                TableName=self.table.name,
                Key=_job_key(job_id),
                UpdateExpression="SET #model_id = :model_id, #updated_at = :updated_at",
                ConditionExpression="attribute_exists(PK)",
                ExpressionAttributeNames={"#model_id": "model_id", "#updated_at": "updated_at"},
                ExpressionAttributeValues={
                    ":model_id": {"S": model_id},
                    ":updated_at": time_attribute(self.table.now()),
                },
            )
        except ConditionFailed:
            raise RecordNotFound(f"export job {job_id} not found", field="job_id") from None

    def set_default_export(self, owner: str, job_id: str) -> ExportJob:
        """Make a SUCCEEDED job the default export of its (model_name, version), atomically.

        One transaction: the pointer item (guarded by its previous value), the new default's flag
        (guarded by ``status = SUCCEEDED``) and the previous default's flag.
        """
        for _ in range(MAX_RACES):
            job = self.get_export_job(owner, job_id)
            if job.status is not JobStatus.SUCCEEDED:
                raise ConflictError(
                    f"export job {job_id} is {job.status}; only a succeeded export can be the default",
                    field="job_id",
                )
            pointer_key = _default_key(owner, job.model_name, job.version)
            pointer = self.table.get(pointer_key)
            previous = None if pointer is None else str(pointer["job_id"]["S"])
            if previous == job_id and job.is_default:
                return job
            now = time_attribute(self.table.now())
            pointer_put: dict[str, Any] = {
                "TableName": self.table.name,
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
                        "TableName": self.table.name,
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
                            "TableName": self.table.name,
                            "Key": _job_key(previous),
                            "UpdateExpression": "SET is_default = :false, updated_at = :now",
                            "ConditionExpression": "attribute_exists(PK)",
                            "ExpressionAttributeValues": {":false": {"BOOL": False}, ":now": now},
                        }
                    }
                )
            try:
                call(self.table.client.transact_write_items, TransactItems=items)
            except TransactionCancelled:
                continue  # the default changed under us: read again
            return self.get_export_job(owner, job_id)
        raise ConflictError(f"the default export of job {job_id}'s model kept changing", field="job_id")

    def get_default_export(self, owner: str, model_name: str, version: str) -> ExportJob | None:
        """The default export of the owner's (model_name, version), if one was set."""
        pointer = self.table.get(_default_key(owner, model_name, version))
        if pointer is None:
            return None
        job = self.get_export_job_any_owner(str(pointer["job_id"]["S"]))
        return job if job.owner == owner else None
