"""The registry's records: indexed models, export jobs, bundle imports and half pairs.

:class:`ModelRecord` (an indexed model: exported by a job or imported from a bundle), :class:`ExportJob`
(one conversion job and its state), :class:`ImportRecord` (one bundle import) and :class:`PendingUpload`
(a checkpoint or manifest waiting for the other half), with their states and the summaries they carry.
Every record has an ``owner``; every read is scoped by it, and another owner's record is reported
exactly like a missing one (:class:`~heimdall.errors.RecordNotFound`).

The rules that move them live beside them: the export-job state machine in
:mod:`heimdall.domain.job_states`, the half-pair rules in :mod:`heimdall.domain.uploads`; the port that
stores them is :class:`heimdall.domain.registry.Registry`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

# OpsetUpgrade lives with the job contract: a bundle job's result.json records one too.
from heimdall.contracts.jobs import ConversionResult, FormatStatus, JobSource, OpsetUpgrade
from heimdall.errors import RecordNotFound
from heimdall.types import ExportFormat, Shape

__all__ = [
    "IMPORTED_SUFFIX",
    "IMPORT_TERMINAL",
    "ExportJob",
    "FormatSummary",
    "ImportRecord",
    "ImportStatus",
    "JobResultSummary",
    "JobStatus",
    "MetricsSummary",
    "ModelRecord",
    "Name",
    "Owned",
    "Owner",
    "PendingUpload",
    "Reason",
    "RecordId",
    "Sha256Hex",
    "UploadHalf",
    "UploadStatus",
    "as_utc",
    "chronological_key",
    "imported_display_name",
    "owned",
    "utcnow",
]

IMPORTED_SUFFIX = " (Imported)"

#: An id: a uuid, a job id (see ``JobSpec.job_id``), or an import id. No ``/``, ``#`` or spaces.
RecordId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]
#: The caller's identity (a JWT subject, or ``"system"`` for records made by the pipeline itself).
Owner = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Reason = Annotated[str, StringConstraints(max_length=4096)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind of timestamp records hold)."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in aware UTC, the only kind of timestamp records hold: naive datetimes are taken to be
    UTC, aware ones are converted to it."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def chronological_key(created_at: datetime, record_id: str) -> str:
    """A string that sorts like ``(created_at, record_id)``: fixed-width UTC time, then the id.

    Both registries order listings by it (newest first), so they agree on ties to the microsecond.
    """
    return f"{as_utc(created_at).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}#{record_id}"


class Owned(Protocol):
    """A record that belongs to someone: every read of one is scoped by its owner."""

    @property
    def owner(self) -> str: ...


_O = TypeVar("_O", bound=Owned)


def owned(record: _O | None, owner: str | None, *, what: str, record_id: str, field: str) -> _O:
    """``record``, when there is one and ``owner`` (None: whoever) owns it; else RecordNotFound.

    Another owner's record is reported exactly like a missing one: an id says nothing about records
    its caller does not own. The one rule the stores (DynamoDB and the in-memory fakes) share.
    """
    if record is None or (owner is not None and record.owner != owner):
        raise RecordNotFound(f"{what} {record_id} not found", field=field)
    return record


def imported_display_name(model_name: str) -> str:
    """The display name of an imported model: ``model_name`` with the `` (Imported)`` suffix, once."""
    return model_name if model_name.endswith(IMPORTED_SUFFIX) else f"{model_name}{IMPORTED_SUFFIX}"


class _Record(BaseModel):
    """Common configuration of stored records.

    Unknown fields are ignored on read, so that a record written by a newer release (during a rolling
    deploy) still loads. Timestamps are normalised to aware UTC.
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    owner: Owner
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @field_validator("created_at", "updated_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)


class MetricsSummary(BaseModel):
    """The headline figures of a model, as listings show them (from the bundle's performance metrics)."""

    model_config = ConfigDict(extra="ignore")

    final_train_loss: float | None = None
    final_val_loss: float | None = None
    final_train_accuracy: float | None = None
    final_val_accuracy: float | None = None
    best_epoch: int | None = None
    inference_latency_ms: float | None = None
    onnx_speedup_factor: float | None = None


class ModelRecord(_Record):
    """An indexed model version: exported by one of our jobs, or imported from someone's bundle.

    Imports get a new ``model_id``, keep the sender's id in ``original_model_id``, and are shown as
    ``display_name`` = ``model_name`` + `` (Imported)`` (:func:`imported_display_name`); ``model_name``
    itself stays the original so that name/version look-ups match across instances.
    """

    model_id: RecordId
    model_name: Name
    version: Name
    architecture: Name | None = None
    source: Literal["export", "import"] = "export"
    original_model_id: str | None = Field(default=None, max_length=256)
    display_name: Name | None = None
    #: Keys in the artifacts bucket.
    onnx_key: str | None = Field(default=None, max_length=1024)
    onnx_sha256: Sha256Hex | None = None
    onnx_size_bytes: int | None = Field(default=None, ge=0)
    bundle_key: str | None = Field(default=None, max_length=1024)
    opset: int | None = Field(default=None, ge=1, le=1000)
    input_shape: Shape | None = None
    #: One shape per graph output, in graph order.
    output_shape: list[Shape] | None = None
    #: The optional bundle components present (``training_config``, ``performance_metrics``, ...).
    components: list[str] = Field(default_factory=list)
    metrics: MetricsSummary = Field(default_factory=MetricsSummary)
    #: The export job that produced the model (exports only).
    export_job_id: str | None = Field(default=None, max_length=128)
    #: Whether ONNX Runtime can serve the model (as stamped, or its ``opset_upgrade``); when false,
    #: ``not_servable_reason`` says why and no platform endpoint of it is created. Records indexed
    #: before this check existed read as servable.
    servable: bool = True
    not_servable_reason: str | None = Field(default=None, max_length=1024)
    #: The conversion to a newer opset, when indexing had to try one (successful or not).
    opset_upgrade: OpsetUpgrade | None = None

    def served_onnx(self) -> tuple[str | None, str | None]:
        """The key and sha256 of the ONNX model an endpoint serves: the upgraded copy, if any."""
        upgrade = self.opset_upgrade
        if upgrade is not None and upgrade.result == "upgraded" and upgrade.onnx_key:
            return upgrade.onnx_key, upgrade.onnx_sha256
        return self.onnx_key, self.onnx_sha256

    def model_post_init(self, __context: Any) -> None:
        """An unset display name is the model name (with the import suffix for imports)."""
        if self.display_name is None:
            name = imported_display_name(self.model_name) if self.source == "import" else self.model_name
            object.__setattr__(self, "display_name", name)


class JobStatus(enum.StrEnum):
    """States of an export job (DESIGN §6)."""

    PENDING = "PENDING"
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class FormatSummary(BaseModel):
    """One requested format's outcome, as the registry keeps it (the full detail stays in result.json)."""

    model_config = ConfigDict(extra="ignore")

    format: ExportFormat
    status: FormatStatus
    reason: str | None = Field(default=None, max_length=1024)
    file: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None


class JobResultSummary(BaseModel):
    """What a finished job's ``result.json`` said, small enough to live in the job record."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["SUCCEEDED", "FAILED"]
    error_code: str | None = None
    error_message: str | None = Field(default=None, max_length=4096)
    formats: list[FormatSummary] = Field(default_factory=list)
    bundle_file: str | None = None
    package_file: str | None = None
    #: ONNX Runtime over PyTorch, per batch size (``{"1": 2.1, "32": 1.7}``).
    speedup: dict[str, float] = Field(default_factory=dict)
    finished_at: datetime | None = None

    @classmethod
    def from_result(cls, result: ConversionResult) -> JobResultSummary:
        """Summarise ``result.json``."""
        message = result.error_message
        return cls(
            status=result.status,
            error_code=result.error_code,
            error_message=message[:4096] if message else None,
            formats=[
                FormatSummary(
                    format=o.format,
                    status=o.status,
                    reason=o.reason[:1024] if o.reason else None,
                    file=o.file,
                    sha256=o.sha256,
                    size_bytes=o.size_bytes,
                )
                for o in result.formats
            ],
            bundle_file=result.bundle_file,
            package_file=result.package_file,
            speedup=dict(result.benchmark.speedup) if result.benchmark else {},
            finished_at=result.finished_at,
        )


class ExportJob(_Record):
    """One conversion job: what it converts, where its outputs go, and where it is in its life."""

    job_id: RecordId
    model_name: Name
    version: Name
    status: JobStatus = JobStatus.PENDING
    #: What it converts: a checkpoint, or (``bundle``) the stored bundle of an imported model, whose key
    #: is then in ``checkpoint_bucket``/``checkpoint_key`` and whose model is ``model_id`` from the start.
    source: JobSource = "checkpoint"
    checkpoint_bucket: Name
    checkpoint_key: str = Field(min_length=1, max_length=1024)
    manifest_key: str | None = Field(default=None, max_length=1024)
    formats: list[ExportFormat] = Field(default_factory=list)
    batch_job_id: str | None = Field(default=None, max_length=256)
    #: ``s3://bucket/exports/{job_id}/`` (deterministic: a re-run overwrites the same keys).
    output_prefix: str | None = Field(default=None, max_length=1024)
    #: Why it failed or was cancelled.
    reason: Reason | None = None
    exit_code: int | None = None
    result: JobResultSummary | None = None
    #: The model indexed from the job's bundle, once it is (a bundle job: the model it converts).
    model_id: str | None = Field(default=None, max_length=128)
    #: Managed by ``set_default_export`` only: at most one default per (owner, model_name, version).
    is_default: bool = False
    attempts: int = Field(default=0, ge=0)


class ImportStatus(enum.StrEnum):
    """States of a bundle import: ``PENDING → INDEXED | REJECTED`` (both terminal)."""

    PENDING = "PENDING"
    INDEXED = "INDEXED"
    REJECTED = "REJECTED"


IMPORT_TERMINAL: frozenset[ImportStatus] = frozenset({ImportStatus.INDEXED, ImportStatus.REJECTED})


class ImportRecord(_Record):
    """One bundle import, followed by ``GET /api/v1/imports/{import_id}``."""

    import_id: RecordId
    status: ImportStatus = ImportStatus.PENDING
    #: The model it became (``INDEXED`` only).
    model_id: str | None = Field(default=None, max_length=128)
    reason: Reason | None = None
    error_code: str | None = Field(default=None, max_length=64)
    bucket: str | None = Field(default=None, max_length=256)
    key: str | None = Field(default=None, max_length=1024)
    #: The optional components to keep (names of ``heimdall.bundle.models.Component``); None: all.
    components: list[str] | None = Field(default=None, max_length=16)
    #: When the presigned upload URL of a presigned import stops working (None for inline imports).
    upload_expires_at: datetime | None = None
    #: The largest upload the presigned form promised to take (checked again when it is ingested).
    upload_max_bytes: int | None = Field(default=None, ge=1)
    #: The revision (version id, else ETag) of the object that claimed the import: one import, one
    #: upload; any other revision under its key is refused (``UPLOAD_REUSED``).
    upload_revision: str | None = Field(default=None, max_length=1024)

    @field_validator("upload_expires_at")
    @classmethod
    def _utc_or_none(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)


# --------------------------------------------------------------------------------------------------
# Half pairs: a checkpoint or manifest waiting for the other half


class UploadStatus(enum.StrEnum):
    """States of a half pair's round: ``AWAITING → PAIRED | REJECTED`` (both settle the round)."""

    AWAITING = "AWAITING"
    PAIRED = "PAIRED"
    REJECTED = "REJECTED"


#: Which half of a pair an object is.
UploadHalf = Literal["checkpoint", "manifest"]


class PendingUpload(_Record):
    """The pair under one ``checkpoints/{model_name}/{version}/`` prefix: a half that arrived alone waits
    (``AWAITING``) until the other half comes (``PAIRED``, the job started) or the sweep gives up on it
    (``REJECTED``, ``INCOMPLETE_UPLOAD``). One record per prefix; a later lone half starts a new round.

    ``created_at`` is when the round's first half arrived.
    """

    upload_id: RecordId
    status: UploadStatus = UploadStatus.AWAITING
    bucket: Name
    prefix: str = Field(min_length=1, max_length=1024)
    #: From the prefix (display only).
    model_name: Name
    version: Name
    #: The half that arrived first, and which revision of it.
    half: UploadHalf
    key: str = Field(min_length=1, max_length=1024)
    revision: Name
    version_id: str | None = Field(default=None, max_length=1024)
    etag: str | None = Field(default=None, max_length=256)
    size_bytes: int | None = Field(default=None, ge=0)
    #: :func:`half_ref` of each half of this round, the one that arrived first first.
    refs: list[Sha256Hex] = Field(min_length=1, max_length=2)
    #: PAIRED: the job the pair started, and the key of the other half than ``key``.
    job_id: str | None = Field(default=None, max_length=128)
    paired_key: str | None = Field(default=None, max_length=1024)
    #: REJECTED: why, and where the original was kept (once announced).
    error_code: str | None = Field(default=None, max_length=64)
    reason: Reason | None = None
    quarantine_key: str | None = Field(default=None, max_length=1024)
    #: REJECTED whose quarantine copy and event are still being made, since when (None once done).
    rejecting_since: datetime | None = None

    @field_validator("rejecting_since")
    @classmethod
    def _utc_or_none(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)

    @property
    def missing(self) -> UploadHalf:
        """The half the round waits (or waited) for."""
        return "manifest" if self.half == "checkpoint" else "checkpoint"
