"""The events Heimdall publishes on its EventBridge bus (DESIGN §6): contracts, envelope, sink port.

Every state change downstream systems care about is one event on the stack's bus
(``heimdall-{stage}-events``) with ``source`` ``heimdall`` and one of the :class:`DetailType` values as
``detail-type``. Each detail type
has exactly one pydantic model here; the JSON Schemas in ``events/schemas/`` are generated from these
models (``python -m heimdall.events --write-schemas events/schemas``) and a test keeps them in sync,
so the models are the single source of truth for producers, consumers and documentation.

Every detail carries:

- ``schema_version`` -- ``"1"``. Adding an optional field keeps the version; removing or renaming a
  field, or changing its meaning, bumps it.
- ``idempotency_key`` -- a sha256 hex digest that **consumers dedupe on**: the same cause always
  produces the same key, whichever Lambda instance, retry or duplicate S3 notification emitted it.
  Producers derive it deterministically from the cause with :func:`idempotency_key_for` (or a detail
  class's :meth:`EventDetail.key_for`, which adds the detail type), for example
  ``BundleIndexed.key_for(bucket, key, version_id or etag)``. Never from a clock or a random id.
- ``occurred_at`` -- when the state change happened (timezone-aware, ISO 8601).
- ``owner`` -- the identity that owns the resource (the caller's identity; ``"system"`` for work
  nobody in particular started). Consumers scope what they show by it, like the registry does.

Fields that may be unknown are nullable but always present, so a consumer never has to tell
"absent" from "null". Logic code publishes through the :class:`EventSink` port: the EventBridge
adapter (``heimdall.adapters.eventbridge``) in Lambda, ``heimdall.testing.events.InMemoryEventSink``
in unit tests.

This module imports nothing heavy (not even ``heimdall.contracts.manifest``): every Lambda imports it.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from heimdall.errors import HeimdallError

EVENT_SOURCE = "heimdall"
SCHEMA_VERSION = "1"
#: EventBridge's limit for one PutEvents request and so for one entry (bytes, as AWS counts them).
MAX_EVENT_BYTES = 256 * 1024
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Time counts as 14 bytes in EventBridge's entry size when it is set.
_TIME_BYTES = 14


class DetailType(enum.StrEnum):
    """The ``detail-type`` of every event Heimdall publishes."""

    CHECKPOINT_RECEIVED = "Checkpoint Received"
    CHECKPOINT_REJECTED = "Checkpoint Rejected"
    EXPORT_JOB_SUBMITTED = "Export Job Submitted"
    EXPORT_JOB_STARTED = "Export Job Started"
    EXPORT_JOB_SUCCEEDED = "Export Job Succeeded"
    EXPORT_JOB_FAILED = "Export Job Failed"
    BUNDLE_INDEXED = "Bundle Indexed"
    BUNDLE_REJECTED = "Bundle Rejected"
    DEPLOYMENT_ACTIVATED = "Deployment Activated"
    DEPLOYMENT_DEACTIVATED = "Deployment Deactivated"

    @property
    def slug(self) -> str:
        """Kebab-case name used for files: ``Checkpoint Received`` → ``checkpoint-received``."""
        return self.value.lower().replace(" ", "-")


class EventPublishError(HeimdallError):
    """Events could not be put on the bus after bounded retries: retryable by the caller.

    ``details`` holds ``failed`` (how many events), ``error_code`` (the first error AWS gave) and
    ``bus_name``.
    """

    code = "EVENT_PUBLISH_FAILED"
    http_status = 503


class EventTooLarge(HeimdallError):
    """An event is over EventBridge's 256 KB entry limit: a producer bug, never retried."""

    code = "EVENT_TOO_LARGE"
    http_status = 500


# --------------------------------------------------------------------------------------------------
# Field types shared by the details
# --------------------------------------------------------------------------------------------------

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Text = Annotated[str, StringConstraints(max_length=4096)]
BucketName = Annotated[str, StringConstraints(min_length=3, max_length=63)]
#: An S3 key, **decoded** (S3 notifications URL-encode keys; events never do).
ObjectKey = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
S3Uri = Annotated[str, StringConstraints(pattern=r"^s3://[^/]+/.+", max_length=1100)]
#: An error code as in :mod:`heimdall.errors` (``INVALID_MANIFEST``, ``CHECKSUM_MISMATCH``, …).
ErrorCode = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]
#: A conversion format, one of ``heimdall.contracts.manifest.ExportFormat``'s values (``onnx``,
#: ``onnx_fp16``, …).
#: Kept an open string here so that a new format is not a breaking change for consumers.
FormatName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
DeploymentType = Literal["download", "platform_endpoint", "edge_package", "container"]


def _field(description: str, **kwargs: Any) -> Any:
    """``Field`` with a description (it ends up in the JSON Schema, which is the consumer's doc)."""
    return Field(description=description, **kwargs)


# --------------------------------------------------------------------------------------------------
# Details
# --------------------------------------------------------------------------------------------------


class EventDetail(BaseModel):
    """Fields every Heimdall event detail carries."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        # Validators are built on first use: a Lambda pays only for the details it emits.
        defer_build=True,
        # The schemas describe details as emitted, where every field is present.
        json_schema_serialization_defaults_required=True,
    )

    #: The detail type this model describes; set by each subclass.
    detail_type: ClassVar[DetailType]

    schema_version: Literal["1"] = _field("Version of this detail's schema.", default=SCHEMA_VERSION)
    idempotency_key: Sha256Hex = _field(
        "Consumers dedupe on this: the same cause always yields the same key (sha256 hex of the cause, "
        "e.g. bucket/key/version-or-etag plus the detail type)."
    )
    occurred_at: AwareDatetime = _field("When the state change happened (ISO 8601 with offset).")
    owner: Identifier = _field("Identity that owns the resource; 'system' for unattended work.")

    @classmethod
    def key_for(cls, *parts: str) -> str:
        """The idempotency key of this detail type for a cause made of ``parts``."""
        return idempotency_key_for(cls.detail_type, *parts)


class CheckpointReceived(EventDetail):
    """A checkpoint and its manifest are both in the ingest bucket and the manifest is valid.

    Key: ``key_for(bucket, key, version_id or etag)`` of the checkpoint object.
    """

    detail_type = DetailType.CHECKPOINT_RECEIVED

    bucket: BucketName = _field("Ingest bucket holding the checkpoint.")
    key: ObjectKey = _field("Checkpoint object key (decoded).")
    version_id: Identifier | None = _field("S3 version id of the checkpoint; null when unversioned.")
    etag: Identifier = _field("ETag of the checkpoint object (without quotes).")
    size_bytes: int = _field("Size of the checkpoint object.", ge=0)
    manifest_key: ObjectKey | None = _field("Key of the sidecar manifest; null when it is embedded.")
    model_name: Identifier = _field("Model name from the manifest.")
    version: Identifier = _field("Model version from the manifest.")
    architecture: Identifier = _field("Registered architecture name from the manifest.")


class CheckpointRejected(EventDetail):
    """An upload under ``checkpoints/`` was refused (invalid manifest, unsupported or unsafe file), or
    half a pair waited too long for the other half (``INCOMPLETE_UPLOAD``, from the sweep).

    Key: ``key_for(bucket, key, version_id or etag)`` of the rejected object.
    """

    detail_type = DetailType.CHECKPOINT_REJECTED

    bucket: BucketName = _field("Ingest bucket the upload arrived in.")
    key: ObjectKey = _field("Key of the rejected object (decoded).")
    version_id: Identifier | None = _field("S3 version id; null when unversioned.")
    etag: Identifier = _field("ETag of the rejected object (without quotes).")
    model_name: Identifier | None = _field("Model name, when it could be read.")
    version: Identifier | None = _field("Model version, when it could be read.")
    code: ErrorCode = _field(
        "Why, as a stable error code (e.g. INVALID_MANIFEST; INCOMPLETE_UPLOAD: a checkpoint or manifest "
        "whose other half never came)."
    )
    message: Text = _field("Why, for people.")
    quarantine_bucket: BucketName | None = _field("Bucket holding the kept original.")
    quarantine_key: ObjectKey | None = _field(
        "Key of the kept original (reason.json lies beside it); null when there was nothing to keep."
    )


class _ExportJobDetail(EventDetail):
    """Fields of every export job event. Key: ``key_for(job_id)`` (the job id is deterministic)."""

    job_id: Identifier = _field("Heimdall export job id.")
    model_name: Identifier = _field("Model name from the manifest.")
    version: Identifier = _field("Model version from the manifest.")


class ExportJobSubmitted(_ExportJobDetail):
    """The conversion job was submitted to AWS Batch."""

    detail_type = DetailType.EXPORT_JOB_SUBMITTED

    status: Literal["SUBMITTED"] = _field("Export job state.", default="SUBMITTED")
    batch_job_id: Identifier = _field("AWS Batch job id.")
    checkpoint_uri: S3Uri = _field(
        "s3:// URI of the checkpoint being converted (of the stored bundle, for an imported model's job)."
    )
    formats: list[FormatName] = _field("Formats requested, in order.", min_length=1)


class ExportJobStarted(_ExportJobDetail):
    """The Batch job started running (first RUNNING state change)."""

    detail_type = DetailType.EXPORT_JOB_STARTED

    status: Literal["RUNNING"] = _field("Export job state.", default="RUNNING")
    batch_job_id: Identifier = _field("AWS Batch job id.")


class FormatSummary(BaseModel):
    """What happened to one requested format (``result.json`` has the details)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, defer_build=True, json_schema_serialization_defaults_required=True
    )

    format: FormatName = _field("Format name.")
    status: Literal["built", "failed", "skipped"] = _field("Outcome.")
    reason: Text | None = _field("Why it failed or was skipped; null when built.", default=None)


class ExportJobSucceeded(_ExportJobDetail):
    """The job finished and wrote ``result.json``; its bundle is indexed next (``Bundle Indexed``)."""

    detail_type = DetailType.EXPORT_JOB_SUCCEEDED

    status: Literal["SUCCEEDED"] = _field("Export job state.", default="SUCCEEDED")
    batch_job_id: Identifier = _field("AWS Batch job id.")
    bucket: BucketName = _field("Artifacts bucket holding the outputs.")
    output_prefix: ObjectKey = _field("Key prefix of every output, e.g. exports/{job_id}/.")
    bundle_key: ObjectKey | None = _field("Key of the .heimdall bundle; null if none was built.")
    package_key: ObjectKey | None = _field("Key of export-package.zip; null if none was built.")
    formats: list[FormatSummary] = _field("Outcome per requested format.")


class ExportJobFailed(_ExportJobDetail):
    """The job failed or was cancelled (terminal)."""

    detail_type = DetailType.EXPORT_JOB_FAILED

    status: Literal["FAILED", "CANCELLED"] = _field("Export job state.", default="FAILED")
    batch_job_id: Identifier | None = _field("AWS Batch job id; null if submission itself failed.")
    code: ErrorCode = _field("Why, as a stable error code (from result.json, or e.g. BATCH_JOB_FAILED).")
    message: Text = _field("Why, for people (result.json's message or Batch's statusReason).")
    exit_code: int | None = _field("Container exit code; null when the container never exited.")


class BundleIndexed(EventDetail):
    """A bundle passed both validation passes and is in the registry.

    Key: ``key_for(source_bucket, source_key, version_id or etag)`` of the bundle object.
    """

    detail_type = DetailType.BUNDLE_INDEXED

    model_id: Identifier = _field("Registry model id (new for imports).")
    original_model_id: Identifier | None = _field("The bundle's own model id for imports; else null.")
    model_name: Identifier = _field("Model name as registered (imports get an ' (Imported)' suffix).")
    version: Identifier = _field("Model version.")
    imported: bool = _field("True when the bundle came from another instance (an import).")
    onnx_sha256: Sha256Hex = _field("sha256 of the ONNX model.")
    onnx_size_bytes: int = _field("Size of the ONNX model.", ge=0)
    bucket: BucketName = _field("Artifacts bucket holding bundle_key and onnx_key.")
    bundle_key: ObjectKey = _field("Key of the canonical bundle.")
    onnx_key: ObjectKey = _field("Key of the ONNX model (imported/… for imports).")
    source_bucket: BucketName = _field("Bucket the bundle was dropped into or written to.")
    source_key: ObjectKey = _field("Key of the bundle as dropped (decoded).")
    job_id: Identifier | None = _field("Export job that produced the bundle; null for uploads.")


class BundleRejected(EventDetail):
    """A bundle failed validation and was quarantined.

    Key: ``key_for(source_bucket, source_key, version_id or etag)`` of the bundle object.
    """

    detail_type = DetailType.BUNDLE_REJECTED

    source_bucket: BucketName = _field("Bucket the bundle was dropped into or written to.")
    source_key: ObjectKey = _field("Key of the bundle as dropped (decoded).")
    job_id: Identifier | None = _field("Export job that produced the bundle; null for uploads.")
    code: ErrorCode = _field("Why, as a stable error code (e.g. CHECKSUM_MISMATCH).")
    message: Text = _field("Why, for people.")
    quarantine_bucket: BucketName | None = _field("Bucket holding the kept original.")
    quarantine_key: ObjectKey | None = _field(
        "Key of the kept original (reason.json lies beside it); null when there was nothing to keep."
    )


class _DeploymentDetail(EventDetail):
    """Fields of every deployment event.

    Key: ``key_for(deployment_id, revision)`` where ``revision`` identifies the history entry, so that
    activating again later is a new event while a retried activation is not.
    """

    deployment_id: Identifier = _field("Deployment id.")
    model_id: Identifier = _field("Registry model id deployed.")
    deployment_type: DeploymentType = _field("Kind of deployment.")


class DeploymentActivated(_DeploymentDetail):
    """A deployment became active."""

    detail_type = DetailType.DEPLOYMENT_ACTIVATED

    status: Literal["active"] = _field("Deployment state.", default="active")


class DeploymentDeactivated(_DeploymentDetail):
    """A deployment stopped being active."""

    detail_type = DetailType.DEPLOYMENT_DEACTIVATED

    status: Literal["inactive"] = _field("Deployment state.", default="inactive")


#: The model of every detail type.
DETAIL_MODELS: dict[DetailType, type[EventDetail]] = {
    model.detail_type: model
    for model in (
        CheckpointReceived,
        CheckpointRejected,
        ExportJobSubmitted,
        ExportJobStarted,
        ExportJobSucceeded,
        ExportJobFailed,
        BundleIndexed,
        BundleRejected,
        DeploymentActivated,
        DeploymentDeactivated,
    )
}


def idempotency_key_for(*parts: str) -> str:
    """A deterministic key (sha256 hex) for a cause made of ``parts``.

    The parts are length-delimited (JSON-encoded as a list) before hashing, so ``("a/b", "c")`` and
    ``("a", "b/c")`` differ. Include the detail type (``EventDetail.key_for`` does) so that two events
    with the same cause, e.g. ``Checkpoint Received`` and ``Export Job Submitted``, get different keys.
    """
    if not parts:
        raise ValueError("an idempotency key needs at least one part")
    encoded = json.dumps([str(part) for part in parts], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


def parse_detail(detail_type: str, detail: Mapping[str, Any]) -> EventDetail:
    """Validate a received ``detail`` against its model (raises ``ValueError`` or pydantic's error)."""
    try:
        model = DETAIL_MODELS[DetailType(detail_type)]
    except ValueError:
        raise ValueError(f"not a Heimdall detail type: {detail_type!r}") from None
    return model.model_validate(dict(detail))


# --------------------------------------------------------------------------------------------------
# Envelope and sinks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One event ready to be put on a bus (the bus name is the sink's business).

    Build it with :func:`make_event`, which validates the detail and the size.
    """

    detail_type: DetailType
    detail: dict[str, Any]
    source: str = EVENT_SOURCE
    #: The envelope's ``time`` (the detail's ``occurred_at``).
    time: datetime | None = None

    @property
    def idempotency_key(self) -> str:
        """The detail's idempotency key."""
        return str(self.detail["idempotency_key"])

    def detail_json(self) -> str:
        """The detail as the compact JSON string PutEvents takes."""
        return json.dumps(self.detail, ensure_ascii=False, separators=(",", ":"))

    @cached_property
    def size_bytes(self) -> int:
        """The entry's size as EventBridge counts it against the 256 KB limit."""
        return (
            (_TIME_BYTES if self.time is not None else 0)
            + len(self.source.encode())
            + len(self.detail_type.value.encode())
            + len(self.detail_json().encode())
        )


def make_event(detail: EventDetail) -> Event:
    """The event carrying ``detail``; raises ``EventTooLarge`` over EventBridge's 256 KB limit."""
    model = type(detail)
    detail_type = getattr(model, "detail_type", None)
    if not isinstance(detail_type, DetailType) or DETAIL_MODELS[detail_type] is not model:
        raise TypeError(f"{model.__name__} is not a registered Heimdall event detail")
    event = Event(
        detail_type=detail_type,
        detail=detail.model_dump(mode="json"),
        time=detail.occurred_at,
    )
    ensure_fits(event)
    return event


def ensure_fits(event: Event) -> None:
    """Raise ``EventTooLarge`` if ``event`` is over EventBridge's 256 KB entry limit."""
    if event.size_bytes > MAX_EVENT_BYTES:
        raise EventTooLarge(
            f"{event.detail_type} event is {event.size_bytes} bytes, over EventBridge's {MAX_EVENT_BYTES}"
        )


class EventSink(Protocol):
    """Where logic publishes events (the port; the EventBridge adapter is the real one)."""

    def publish(self, events: Sequence[Event]) -> None:
        """Publish every event or raise ``EventPublishError``; events may be delivered more than once."""
        ...


# --------------------------------------------------------------------------------------------------
# JSON Schemas (generated from the models; ``events/schemas/`` holds the committed copies)
# --------------------------------------------------------------------------------------------------


def schema_file_name(detail_type: DetailType) -> str:
    """``checkpoint-received.json`` for ``Checkpoint Received``."""
    return f"{detail_type.slug}.json"


def detail_schema(detail_type: DetailType) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``detail_type``'s detail, generated from its model."""
    body = DETAIL_MODELS[detail_type].model_json_schema(mode="serialization")
    body.pop("title", None)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:heimdall:events:{detail_type.slug}:v{SCHEMA_VERSION}",
        "title": detail_type.value,
        **body,
    }


def render_schema(detail_type: DetailType) -> str:
    """The schema file's exact text."""
    return json.dumps(detail_schema(detail_type), indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write one schema file per detail type into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for detail_type in DetailType:
        path = directory / schema_file_name(detail_type)
        path.write_text(render_schema(detail_type), encoding="utf-8")
        written.append(path)
    return written


def check_schemas(directory: Path) -> list[str]:
    """Problems with the committed schemas in ``directory`` (missing, stale, unexpected); [] if none."""
    problems = []
    expected = {schema_file_name(t): t for t in DetailType}
    for name, detail_type in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != render_schema(detail_type):
            problems.append(f"{path}: differs from the {detail_type.value!r} model")
    problems.extend(
        f"{path}: not the schema of any detail type"
        for path in sorted(directory.glob("*.json"))
        if path.name not in expected
    )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m heimdall.events --write-schemas DIR | --check DIR``."""
    parser = argparse.ArgumentParser(prog="python -m heimdall.events", description="Heimdall event schemas.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write-schemas", metavar="DIR", type=Path, help="write the JSON Schemas")
    action.add_argument("--check", metavar="DIR", type=Path, help="exit 1 if DIR is out of date")
    args = parser.parse_args(argv)
    if args.write_schemas is not None:
        for path in write_schemas(args.write_schemas):
            print(path)
        return 0
    problems = check_schemas(args.check)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"regenerate with: python -m heimdall.events --write-schemas {args.check}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
