"""S3 notifications: parsed into models once, with keys URL-decoded in exactly one place.

S3 delivers object keys URL-encoded (a space as ``+``, other bytes as ``%XX``; some emulators encode
``/`` too). :func:`decode_key` is the only place that decodes them, and only the models' key field calls
it. Two shapes reach the ingest function, and both are accepted: the EventBridge "Object Created" event
(the production path: S3 → EventBridge → SQS) and the classic S3 notification record
(``Records[].s3``), plus S3's ``s3:TestEvent``, which is acknowledged and ignored.

The models are as lenient as S3's many producers need (moto, the local stack, the classic and EventBridge
spellings of the same fields): only the bucket name and the object key are required; a missing or odd
size, etag, version id or sequencer reads as absent. :func:`parse_notification` picks the shape, validates
it, and turns any validation error into a :class:`NotificationError`, so a malformed record fails alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote_plus

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_KEY_LENGTH = 1024


class NotificationError(ValueError):
    """The notification itself is malformed (not the object it points at)."""


@dataclass(frozen=True)
class ObjectCreated:
    """An object was written: where, and which version of it."""

    bucket: str
    key: str  # decoded
    size: int
    etag: str
    version_id: str | None
    sequencer: str | None

    @property
    def revision(self) -> str:
        """What makes this write unique: the version id when versioning is on, else the etag."""
        return self.version_id or self.etag


@dataclass(frozen=True)
class S3TestEvent:
    """S3's ``s3:TestEvent``, sent when a notification configuration is saved: ignored."""

    bucket: str


def decode_key(raw: str) -> str:
    """The one place S3 keys are URL-decoded."""
    return unquote_plus(raw)


def _decoded_key(raw: str) -> str:
    key = decode_key(raw)
    if len(key) > MAX_KEY_LENGTH:
        raise PydanticCustomError(
            "key_too_long", "the object key is longer than {limit} characters", {"limit": MAX_KEY_LENGTH}
        )
    return key


def _size(value: Any) -> Any:
    # A size that is not a non-negative integer reads as unknown (0) rather than failing the record.
    return value if isinstance(value, int) and value >= 0 else 0


def _etag(value: Any) -> str:
    # Some producers send the etag as HTTP does, in double quotes.
    return str(value).strip('"') if value else ""


def _text_or_none(value: Any) -> str | None:
    return str(value) if value else None


def _version_id(value: Any) -> str | None:
    # Unversioned buckets report no version id, or the string "null".
    return str(value) if value and value != "null" else None


NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
#: A key as S3 sends it (URL-encoded), decoded on validation.
S3Key = Annotated[NonEmptyStr, AfterValidator(_decoded_key)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class S3BucketModel(_Model):
    """``bucket``: only its name is read."""

    name: NonEmptyStr


class S3ObjectModel(_Model):
    """``object``: the key (decoded) and what identifies this write of it."""

    key: S3Key
    size: Annotated[int, BeforeValidator(_size)] = 0
    etag: Annotated[str, BeforeValidator(_etag)] = ""
    version_id: Annotated[str | None, BeforeValidator(_version_id)] = Field(None, alias="version-id")
    sequencer: Annotated[str | None, BeforeValidator(_text_or_none)] = None

    @model_validator(mode="before")
    @classmethod
    def _either_spelling(cls, data: Any) -> Any:
        """EventBridge spells ``etag`` and ``version-id``, classic records ``eTag`` and ``versionId``."""
        if not isinstance(data, dict):
            return data
        return {
            **data,
            "etag": data.get("etag") or data.get("eTag"),
            "version-id": data.get("version-id") or data.get("versionId"),
        }


class S3EntityModel(_Model):
    """The bucket and object of a notification: EventBridge's ``detail``, a classic record's ``s3``."""

    bucket: S3BucketModel
    object: S3ObjectModel

    def object_created(self) -> ObjectCreated:
        obj = self.object
        return ObjectCreated(
            bucket=self.bucket.name,
            key=obj.key,
            size=obj.size,
            etag=obj.etag,
            version_id=obj.version_id,
            sequencer=obj.sequencer,
        )


class S3EventBridgeModel(_Model):
    """EventBridge "Object Created" (after Powertools' ``S3EventNotificationEventBridgeModel``)."""

    source: Literal["aws.s3"]
    detail_type: Literal["Object Created"] = Field(alias="detail-type")
    detail: S3EntityModel


class S3RecordModel(_Model):
    """One classic notification record (after Powertools' ``S3RecordModel``)."""

    s3: S3EntityModel


class S3RecordsModel(_Model):
    """A classic notification: S3 sends one record per event."""

    Records: tuple[S3RecordModel]


class S3TestEventModel(_Model):
    """``{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": …}``."""

    Event: Literal["s3:TestEvent"]
    Bucket: Annotated[str, BeforeValidator(str)] = ""


def parse_notification(body: Any) -> ObjectCreated | S3TestEvent:
    """Parse an EventBridge "Object Created" event, a classic S3 record, or an ``s3:TestEvent``.

    The shape is picked by its marks (``Event``; ``source`` with a ``detail`` object; a single
    ``Records[].s3`` object) before the model of that shape validates the rest.
    """
    if not isinstance(body, dict):
        raise NotificationError("the notification is not a JSON object")
    if body.get("Event") == "s3:TestEvent":
        return S3TestEvent(bucket=_validated(S3TestEventModel, body).Bucket)
    if body.get("source") == "aws.s3" and isinstance(body.get("detail"), dict):
        if body.get("detail-type") != "Object Created":
            raise NotificationError(f"unexpected S3 event type {body.get('detail-type')!r}")
        return _validated(S3EventBridgeModel, body).detail.object_created()
    records = body.get("Records")
    if (
        isinstance(records, list)
        and len(records) == 1
        and isinstance(records[0], dict)
        and isinstance(records[0].get("s3"), dict)
    ):
        return _validated(S3RecordsModel, body).Records[0].s3.object_created()
    raise NotificationError("not an S3 Object Created notification")


_M = TypeVar("_M", bound=BaseModel)


def _validated(model: type[_M], body: dict[str, Any]) -> _M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise NotificationError(_reason(exc)) from None


def _reason(exc: ValidationError) -> str:
    """The first problem, checked in order: no bucket or object, no name or key, too long a key."""
    errors = exc.errors()
    if any(e["loc"][-1] in ("bucket", "object") for e in errors):
        return "the notification has no bucket or object"
    too_long = [e for e in errors if e["type"] == "key_too_long"]
    if len(too_long) < len(errors):
        return "the notification's bucket name or object key is missing"
    return too_long[0]["msg"]
