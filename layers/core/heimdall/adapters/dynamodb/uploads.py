"""The registry's half pairs on DynamoDB: the rounds that pair a checkpoint with its metadata upload.

One item per round (layout in :mod:`heimdall.adapters.dynamodb.registry`)::

    half pair       PK UPLOAD#{id}             SK META
                    GSI2 UPLOADS#AWAITING|UPLOADS#REJECTING / {t}#{id}   (due for the sweep; sparse)
                    GSI3 OWNER#{o} / UPLOAD#{t}#{id}              (by owner)

Unset fields are left out of the item rather than stored as NULL, so that conditions can test
``attribute_not_exists`` (``rejecting_since`` above all). Every write is conditioned on the round being
exactly as last read (:func:`same_round_condition`: status, first half, revision and the announcement in
progress), and a failed condition means "read again and decide again" (the pairing plans of
:mod:`heimdall.domain.registry`), at most :data:`~heimdall.adapters.dynamodb.table.MAX_RACES` times.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from heimdall.adapters.dynamodb.table import (
    MAX_RACES,
    META,
    ConditionFailed,
    Listing,
    Table,
    call,
    decode,
    key_part,
    owner_partition,
    time_attribute,
    to_attribute,
)
from heimdall.domain.paging import DEFAULT_PAGE_SIZE, Page, check_limit
from heimdall.domain.records import PendingUpload, UploadStatus, chronological_key, owned
from heimdall.domain.uploads import paired_with_job, plan_await, plan_pairing
from heimdall.errors import ConflictError, RegistryUnavailable

__all__ = ["UploadRounds"]


def _upload_key(upload_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"UPLOAD#{key_part(upload_id)}"}, "SK": {"S": META}}


#: The sweep's partitions of GSI2 (sparse: a settled round is in neither).
_UPLOADS_AWAITING = "UPLOADS#AWAITING"
_UPLOADS_REJECTING = "UPLOADS#REJECTING"


def _upload_item(record: PendingUpload) -> dict[str, Any]:
    # Unset fields are left out rather than stored as NULL, so that conditions can use
    # attribute_not_exists (rejecting_since above all).
    data = json.loads(record.model_dump_json(exclude_none=True), parse_float=Decimal)
    order = chronological_key(record.created_at, record.upload_id)
    item = {
        **{name: to_attribute(value) for name, value in data.items()},
        **_upload_key(record.upload_id),
        "entity": {"S": "UPLOAD"},
        "GSI3PK": {"S": owner_partition(record.owner)},
        "GSI3SK": {"S": f"UPLOAD#{order}"},
    }
    if record.status is UploadStatus.AWAITING:
        item |= {"GSI2PK": {"S": _UPLOADS_AWAITING}, "GSI2SK": {"S": order}}
    elif record.rejecting_since is not None:
        since = chronological_key(record.rejecting_since, record.upload_id)
        item |= {"GSI2PK": {"S": _UPLOADS_REJECTING}, "GSI2SK": {"S": since}}
    return item


def same_round_condition(seen: PendingUpload) -> tuple[str, dict[str, str], dict[str, Any]]:
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
        values[":seen_since"] = time_attribute(seen.rejecting_since)
    return condition, names, values


class UploadRounds:
    """The half-pair methods of :class:`~heimdall.adapters.dynamodb.registry.DynamoRegistry`."""

    table: Table

    def _get_upload(self, upload_id: str) -> PendingUpload | None:
        item = self.table.get(_upload_key(upload_id))
        return None if item is None else decode(item, PendingUpload)

    def await_upload(self, record: PendingUpload) -> PendingUpload:
        """Record the lone half (one conditional put: no round, or a settled one of other halves)."""
        for _ in range(MAX_RACES):
            try:
                self.table.put(
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
            except ConditionFailed:
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
        for _ in range(MAX_RACES):
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
                    self.table.put(_upload_item(paired), "attribute_not_exists(PK)")
                    return paired
                condition, names, values = same_round_condition(current)
                if current.status is not UploadStatus.AWAITING:
                    self.table.put(
                        _upload_item(paired),
                        condition,
                        ExpressionAttributeNames=names,
                        ExpressionAttributeValues=values,
                    )
                    return paired
                names |= {"#refs": "refs", "#job_id": "job_id", "#updated_at": "updated_at"}
                values |= {
                    ":paired": {"S": str(UploadStatus.PAIRED)},
                    ":refs": to_attribute(list(record.refs)),
                    ":job_id": to_attribute(record.job_id),
                    ":updated_at": time_attribute(self.table.now()),
                }
                names["#paired_key"] = "paired_key"
                values[":paired_key"] = {"S": record.key}  # the half that came second
                assignments = (
                    "#status = :paired, #refs = :refs, #job_id = :job_id, #paired_key = :paired_key, "
                    "#updated_at = :updated_at"
                )
                response = call(
                    self.table.client.update_item,
                    TableName=self.table.name,
                    Key=_upload_key(record.upload_id),
                    UpdateExpression=f"SET {assignments} REMOVE GSI2PK, GSI2SK",
                    ConditionExpression=condition,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                )
                return decode(response["Attributes"], PendingUpload)
            except ConditionFailed:
                continue  # the round changed under us: read again
        raise ConflictError(f"upload {record.upload_id} kept changing", field="upload_id")

    def pair_upload_with_job(
        self, upload_id: str, used: Mapping[str, str], *, job_id: str
    ) -> PendingUpload | None:
        """A consistent read decides (:func:`paired_with_job`); a put conditioned on the round being
        still as read (AWAITING the same half, so the sweep has not rejected it) applies it."""
        for _ in range(MAX_RACES):
            paired = paired_with_job(self._get_upload(upload_id), used, job_id=job_id, now=self.table.now())
            if paired is None:
                return None
            condition, names, values = same_round_condition(
                paired.model_copy(update={"status": UploadStatus.AWAITING})
            )
            try:
                self.table.put(
                    _upload_item(paired),
                    condition,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                )
                return paired
            except ConditionFailed:
                continue  # the round changed under us (the sweep, most likely): read again
        raise ConflictError(f"upload {upload_id} kept changing", field="upload_id")

    def get_upload(self, owner: str, upload_id: str) -> PendingUpload:
        """The round, if ``owner`` has it; else RecordNotFound."""
        return owned(
            self._get_upload(upload_id), owner, what="upload", record_id=upload_id, field="upload_id"
        )

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
        listing = Listing("GSI3", owner_partition(owner), "UPLOAD#", **status_filter)
        items, next_cursor = self.table.query(listing, limit, cursor)
        return Page(items=[decode(item, PendingUpload) for item in items], cursor=next_cursor)

    def due_uploads(
        self, *, arrived_before: datetime, rejecting_before: datetime, limit: int = DEFAULT_PAGE_SIZE
    ) -> list[PendingUpload]:
        """The sweep's work: two range queries of GSI2's sparse partitions, oldest first."""
        check_limit(limit)
        due: list[PendingUpload] = []
        partitions = ((_UPLOADS_AWAITING, arrived_before), (_UPLOADS_REJECTING, rejecting_before))
        for partition, before in partitions:
            response = call(
                self.table.client.query,
                TableName=self.table.name,
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
            due.extend(decode(item, PendingUpload) for item in response.get("Items", []))
            if len(due) >= limit:
                break
        return due

    def begin_upload_rejection(self, seen: PendingUpload, *, code: str, reason: str) -> PendingUpload | None:
        """One ``UpdateItem`` conditioned on the round being exactly as ``seen``; None when it is not."""
        if seen.status is UploadStatus.PAIRED:
            return None
        now = self.table.now()
        condition, names, values = same_round_condition(seen)
        names |= {"#code": "error_code", "#reason": "reason", "#updated_at": "updated_at"}
        values |= {
            ":rejected": {"S": str(UploadStatus.REJECTED)},
            ":code": {"S": code},
            ":reason": {"S": reason[:4096]},
            ":now": time_attribute(now),
            ":gsi2pk": {"S": _UPLOADS_REJECTING},
            ":gsi2sk": {"S": chronological_key(now, seen.upload_id)},
        }
        try:
            response = call(
                self.table.client.update_item,
                TableName=self.table.name,
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
        except ConditionFailed:
            return None
        return decode(response["Attributes"], PendingUpload)

    def finish_upload_rejection(self, seen: PendingUpload, *, quarantine_key: str | None) -> None:
        """Clear the announcement (and leave the sweep's index) if the round is still ``seen``."""
        condition, names, values = same_round_condition(seen)
        names["#updated_at"] = "updated_at"
        values[":now"] = time_attribute(self.table.now())
        assignments = "#updated_at = :now"
        if quarantine_key is not None:
            names["#quarantine_key"] = "quarantine_key"
            values[":quarantine_key"] = {"S": quarantine_key}
            assignments += ", #quarantine_key = :quarantine_key"
        # A failed condition: another sweep took the announcement over after our lease; it finishes it.
        with contextlib.suppress(ConditionFailed):
            call(
                self.table.client.update_item,
                TableName=self.table.name,
                Key=_upload_key(seen.upload_id),
                UpdateExpression=f"SET {assignments} REMOVE #since, GSI2PK, GSI2SK",
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
