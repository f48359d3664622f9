"""The registry's imports on DynamoDB: one item per import, never overwritten once terminal.

::

    import          PK IMPORT#{id}             SK META
"""

from __future__ import annotations

from typing import Any

from heimdall.adapters.dynamodb.table import (
    MAX_RACES,
    META,
    ConditionFailed,
    Table,
    call,
    decode,
    key_part,
    record_attributes,
)
from heimdall.domain.records import IMPORT_TERMINAL, ImportRecord, ImportStatus, owned
from heimdall.errors import ConflictError, RecordNotFound

__all__ = ["ImportRecords"]


def _import_key(import_id: str) -> dict[str, Any]:
    return {"PK": {"S": f"IMPORT#{key_part(import_id)}"}, "SK": {"S": META}}


def _import_item(record: ImportRecord) -> dict[str, Any]:
    return {**record_attributes(record), **_import_key(record.import_id), "entity": {"S": "IMPORT"}}


class ImportRecords:
    """The import methods of :class:`~heimdall.adapters.dynamodb.registry.DynamoRegistry`."""

    table: Table

    def put_import(self, record: ImportRecord) -> ImportRecord:
        """Create or update an import; a terminal import is never overwritten (it is returned instead)."""
        for _ in range(MAX_RACES):
            try:
                self.table.put(
                    _import_item(record),
                    "attribute_not_exists(PK) OR (#owner = :owner AND #status = :pending)",
                    ExpressionAttributeNames={"#owner": "owner", "#status": "status"},
                    ExpressionAttributeValues={
                        ":owner": {"S": record.owner},
                        ":pending": {"S": str(ImportStatus.PENDING)},
                    },
                )
                return record
            except ConditionFailed:
                item = self.table.get(_import_key(record.import_id))
                if item is None:
                    continue
                stored = decode(item, ImportRecord)
                if stored.owner != record.owner:
                    raise ConflictError(f"import id {record.import_id} is taken", field="import_id") from None
                if stored.status in IMPORT_TERMINAL:
                    return stored
        raise ConflictError(f"import {record.import_id} kept changing", field="import_id")

    def get_import(self, owner: str, import_id: str) -> ImportRecord:
        """The import, if ``owner`` has it; else RecordNotFound."""
        return owned(self._import(import_id), owner, what="import", record_id=import_id, field="import_id")

    def get_import_any_owner(self, import_id: str) -> ImportRecord:
        """The import whoever owns it (the ingest function: S3 events carry no owner)."""
        return owned(self._import(import_id), None, what="import", record_id=import_id, field="import_id")

    def _import(self, import_id: str) -> ImportRecord | None:
        item = self.table.get(_import_key(import_id))
        return None if item is None else decode(item, ImportRecord)

    def claim_import_upload(self, import_id: str, revision: str) -> ImportRecord | None:
        """The first revision claims the import (one conditional ``UpdateItem``); see the port."""
        try:
            response = call(
                self.table.client.update_item,
                TableName=self.table.name,
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
        except ConditionFailed as failed:
            if failed.item is None:
                raise RecordNotFound(f"import {import_id} not found", field="import_id") from None
            return None
        return decode(response["Attributes"], ImportRecord)
