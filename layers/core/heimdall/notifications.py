"""S3 notifications: parsed once, keys URL-decoded in exactly one place, and classified by layout.

S3 delivers object keys URL-encoded (a space as ``+``, other bytes as ``%XX``; some emulators encode
``/`` too). :func:`decode_key` is the only place that decodes them. Two shapes reach the ingest
function, and both are accepted: the EventBridge "Object Created" event (the production path: S3 →
EventBridge → SQS) and the classic S3 notification record (``Records[].s3``), plus S3's
``s3:TestEvent``, which is acknowledged and ignored.

Key layout (DESIGN §6):

* ingest bucket: ``checkpoints/{model_name}/{version}/{file}`` (a checkpoint, or ``heimdall.json``)
  and ``bundles/…/{name}.heimdall[.gz]``;
* artifacts bucket: ``exports/{job_id}/{name}.heimdall`` (a bundle written by a conversion job).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from heimdall.contracts.manifest import MANIFEST_FILE_NAME

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_BUNDLE_SUFFIXES = (".heimdall", ".heimdall.gz")
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
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


def parse_notification(body: Any) -> ObjectCreated | S3TestEvent:
    """Parse an EventBridge "Object Created" event, a classic S3 record, or an ``s3:TestEvent``."""
    if not isinstance(body, dict):
        raise NotificationError("the notification is not a JSON object")
    if body.get("Event") == "s3:TestEvent":
        return S3TestEvent(bucket=str(body.get("Bucket", "")))
    if body.get("source") == "aws.s3" and isinstance(body.get("detail"), dict):
        if body.get("detail-type") != "Object Created":
            raise NotificationError(f"unexpected S3 event type {body.get('detail-type')!r}")
        detail = body["detail"]
        return _object_created(detail.get("bucket"), detail.get("object"))
    records = body.get("Records")
    if isinstance(records, list) and len(records) == 1 and isinstance(records[0], dict):
        s3 = records[0].get("s3")
        if isinstance(s3, dict):
            return _object_created(s3.get("bucket"), s3.get("object"))
    raise NotificationError("not an S3 Object Created notification")


def _object_created(bucket: Any, obj: Any) -> ObjectCreated:
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        raise NotificationError("the notification has no bucket or object")
    name, raw_key = bucket.get("name"), obj.get("key")
    if not isinstance(name, str) or not name or not isinstance(raw_key, str) or not raw_key:
        raise NotificationError("the notification's bucket name or object key is missing")
    key = decode_key(raw_key)
    if len(key) > MAX_KEY_LENGTH:
        raise NotificationError(f"the object key is longer than {MAX_KEY_LENGTH} characters")
    size = obj.get("size", 0)
    etag = obj.get("etag") or obj.get("eTag") or ""
    return ObjectCreated(
        bucket=name,
        key=key,
        size=size if isinstance(size, int) and size >= 0 else 0,
        etag=str(etag).strip('"'),
        version_id=_version_id(obj),
        sequencer=str(obj["sequencer"]) if obj.get("sequencer") else None,
    )


def _version_id(obj: dict[str, Any]) -> str | None:
    # Unversioned buckets report no version id, or the string "null".
    value = obj.get("version-id") or obj.get("versionId")
    return str(value) if value and value != "null" else None


class KeyKind(enum.StrEnum):
    CHECKPOINT = "checkpoint"
    MANIFEST = "manifest"
    BUNDLE = "bundle"
    JOB_BUNDLE = "job_bundle"
    IGNORED = "ignored"  # something a job writes that is not a bundle (models, package, result.json)
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ClassifiedKey:
    kind: KeyKind
    model_name: str | None = None
    version: str | None = None
    job_id: str | None = None
    reason: str | None = None

    @property
    def prefix(self) -> str | None:
        """``checkpoints/{model_name}/{version}/`` for checkpoints and manifests."""
        if self.model_name is None or self.version is None:
            return None
        return f"checkpoints/{self.model_name}/{self.version}/"


def classify_ingest_key(key: str) -> ClassifiedKey:
    """What an object in the ingest bucket is, by its key (content is checked later)."""
    parts = key.split("/")
    if _has_path_tricks(parts):
        return ClassifiedKey(KeyKind.UNKNOWN, reason="the key contains '.', '..' or empty path segments")
    if parts[0] == "checkpoints":
        if len(parts) != 4:
            return ClassifiedKey(
                KeyKind.UNKNOWN, reason="checkpoints go under checkpoints/{model_name}/{version}/{file}"
            )
        _, name, version, file_name = parts
        if not _NAME.match(name) or not _VERSION.match(version):
            return ClassifiedKey(KeyKind.UNKNOWN, reason=f"invalid model name or version in {key!r}")
        if file_name == MANIFEST_FILE_NAME:
            return ClassifiedKey(KeyKind.MANIFEST, model_name=name, version=version)
        if file_name.lower().endswith(_CHECKPOINT_SUFFIXES):
            return ClassifiedKey(KeyKind.CHECKPOINT, model_name=name, version=version)
        return ClassifiedKey(
            KeyKind.UNKNOWN,
            reason=f"unsupported file {file_name!r}: expected {MANIFEST_FILE_NAME} or a checkpoint "
            f"({', '.join(_CHECKPOINT_SUFFIXES)})",
        )
    if parts[0] == "bundles" and len(parts) >= 2:
        if parts[-1].lower().endswith(_BUNDLE_SUFFIXES):
            return ClassifiedKey(KeyKind.BUNDLE)
        return ClassifiedKey(KeyKind.UNKNOWN, reason="bundles must end in .heimdall or .heimdall.gz")
    return ClassifiedKey(KeyKind.UNKNOWN, reason="not under checkpoints/ or bundles/")


def classify_artifacts_key(key: str) -> ClassifiedKey:
    """What an object in the artifacts bucket is: only a job's bundle is acted on."""
    parts = key.split("/")
    if _has_path_tricks(parts):
        return ClassifiedKey(KeyKind.UNKNOWN, reason="the key contains '.', '..' or empty path segments")
    if len(parts) == 3 and parts[0] == "exports" and _JOB_ID.match(parts[1]):
        if parts[2].lower().endswith(_BUNDLE_SUFFIXES):
            return ClassifiedKey(KeyKind.JOB_BUNDLE, job_id=parts[1])
        return ClassifiedKey(KeyKind.IGNORED, job_id=parts[1])
    # Everything else in the artifacts bucket is written by Heimdall itself and triggers nothing.
    return ClassifiedKey(KeyKind.IGNORED)


def _has_path_tricks(parts: list[str]) -> bool:
    return any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts)
