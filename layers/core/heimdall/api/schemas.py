"""The HTTP API's request and response bodies (how operations document them: :mod:`heimdall.api.documented`).

Response models are the public shapes of the registry's records (:mod:`heimdall.domain.records`): they
reuse the records' field types and leave out what is internal (``owner``, storage keys, attempt
counters). Request models forbid unknown fields, so that a misspelt field is a 422 naming it rather
than a silently ignored option.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from heimdall.api.seed_names import seed_export_job
from heimdall.contracts.jobs import JobSource, OpsetUpgrade
from heimdall.domain.deployments import (
    Deployment,
    DeploymentAction,
    DeploymentArtifact,
    DeploymentStatus,
    DeploymentType,
    Tier,
    UsageSummary,
)
from heimdall.domain.records import (
    ExportJob,
    ImportRecord,
    ImportStatus,
    JobResultSummary,
    JobStatus,
    MetricsSummary,
    ModelRecord,
    Name,
    PendingUpload,
    RecordId,
    Sha256Hex,
    UploadHalf,
    UploadStatus,
)
from heimdall.domain.storage import Download
from heimdall.logic.deployment_requests import CreateDeploymentRequest
from heimdall.types import ExportFormat, Shape

SCHEMAS = "#/components/schemas/"

# --------------------------------------------------------------------------------------------------
# Errors


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code``, a message for people, and where (``field``) when known."""

    code: str = Field(description="Stable error code (UNAUTHORIZED, NOT_FOUND, INVALID_BUNDLE, ...).")
    message: str
    field: str | None = Field(default=None, description="The request field or parameter at fault.")
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code", "message", "field"?, "details"?}}``."""

    error: ErrorDetail


# --------------------------------------------------------------------------------------------------
# Resources


class _Out(BaseModel):
    """Response models read the registry's records by attribute; the records' extra fields stay out."""

    model_config = ConfigDict(from_attributes=True, extra="ignore")


class ModelOut(_Out):
    """An indexed model version, exported by a job or imported from a bundle."""

    model_id: RecordId
    model_name: Name
    display_name: str | None
    version: Name
    architecture: str | None
    source: Literal["export", "import"]
    original_model_id: str | None
    onnx_sha256: Sha256Hex | None
    onnx_size_bytes: int | None
    opset: int | None
    input_shape: Shape | None
    output_shape: list[Shape] | None
    components: list[str]
    metrics: MetricsSummary
    export_job_id: str | None
    servable: bool = Field(
        description="Whether ONNX Runtime serves the model (as stamped, or its opset_upgrade): a "
        "platform_endpoint of a model that is not is refused with 409 MODEL_NOT_SERVABLE."
    )
    not_servable_reason: str | None
    opset_upgrade: OpsetUpgrade | None = Field(
        description="The conversion to a newer opset indexing made because ONNX Runtime no longer "
        "implements the model's operators at its opset; endpoints serve the upgraded copy, exports "
        "return the original ONNX (onnx_sha256)."
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: ModelRecord) -> ModelOut:
        """The public view of ``record``."""
        return cls.model_validate(record)


class ExportJobOut(_Out):
    """One conversion job and where it is in its life."""

    job_id: RecordId
    model_name: Name
    version: Name
    status: JobStatus
    formats: list[ExportFormat]
    source: JobSource = Field(
        description="checkpoint: the whole pipeline; bundle: an imported model's stored bundle, converted "
        "from its ONNX model (no PyTorch stages)"
    )
    checkpoint_uri: str = Field(
        description="s3://bucket/key of the checkpoint converted (of the bundle, for a bundle job)."
    )
    manifest_uri: str | None = Field(description="s3://bucket/key of its manifest, when a sidecar.")
    batch_job_id: str | None
    output_prefix: str | None
    reason: str | None
    exit_code: int | None
    result: JobResultSummary | None
    model_id: str | None
    is_default: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, job: ExportJob) -> ExportJobOut:
        """The public view of ``job`` (its checkpoint and manifest as ``s3://`` URIs)."""
        bucket = job.checkpoint_bucket
        manifest = f"s3://{bucket}/{job.manifest_key}" if job.manifest_key else None
        return cls.model_validate(
            {
                **job.model_dump(),
                "checkpoint_uri": f"s3://{bucket}/{job.checkpoint_key}",
                "manifest_uri": manifest,
            }
        )


class ImportOut(_Out):
    """One bundle import: ``PENDING`` until indexed (``model_id`` set) or rejected (``error_code``)."""

    import_id: RecordId
    status: ImportStatus
    model_id: str | None
    error_code: str | None
    reason: str | None
    components: list[str] | None = Field(
        default=None, description="The optional components the import keeps (null: all of them)."
    )
    upload_expires_at: datetime | None = Field(
        default=None,
        description="Presigned imports: when the upload URL stops working. An import still PENDING a few "
        "minutes after that, with nothing uploaded, becomes REJECTED with UPLOAD_EXPIRED.",
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: ImportRecord) -> ImportOut:
        """The public view of ``record``."""
        return cls.model_validate(record)


class ModelPage(BaseModel):
    """One page of models, newest first; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[ModelOut]
    next_cursor: str | None


class ExportJobPage(BaseModel):
    """One page of export jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[ExportJobOut]
    next_cursor: str | None


# --------------------------------------------------------------------------------------------------
# Half pairs (checkpoint uploads waiting for the other half)


class UploadOut(_Out):
    """A checkpoint/manifest pair under ``checkpoints/{model_name}/{version}/`` in the ingest bucket:
    ``AWAITING`` while one half waits for the other, then ``PAIRED`` (``job_id``: the export job it
    started) or ``REJECTED`` (``INCOMPLETE_UPLOAD`` after ``reject_after``)."""

    upload_id: RecordId
    status: UploadStatus
    model_name: Name = Field(description="From the prefix the files were dropped under.")
    version: Name
    prefix_uri: str = Field(description="s3://bucket/checkpoints/{model_name}/{version}/")
    half: UploadHalf = Field(description="The half that arrived first.")
    uri: str = Field(description="s3://bucket/key of that half.")
    revision: str = Field(description="Its S3 version id, else its ETag.")
    missing: UploadHalf = Field(description="The half it waits (or waited) for.")
    reject_after: datetime | None = Field(
        description="AWAITING: when it is rejected unless the other half arrives (null once settled)."
    )
    job_id: str | None = Field(description="PAIRED: the export job the pair started.")
    paired_uri: str | None = Field(description="PAIRED: s3://bucket/key of the other half.")
    error_code: str | None
    reason: str | None
    quarantine_uri: str | None = Field(description="REJECTED: s3://bucket/key of the kept copy.")
    created_at: datetime = Field(description="When the first half arrived.")
    updated_at: datetime

    @classmethod
    def of(cls, record: PendingUpload, *, reject_after: datetime | None, artifacts_bucket: str) -> UploadOut:
        """The public view of ``record`` (keys as ``s3://`` URIs)."""
        bucket = record.bucket
        return cls.model_validate(
            {
                **record.model_dump(),
                "prefix_uri": f"s3://{bucket}/{record.prefix}",
                "uri": f"s3://{bucket}/{record.key}",
                "missing": record.missing,
                "reject_after": reject_after,
                "paired_uri": f"s3://{bucket}/{record.paired_key}" if record.paired_key else None,
                "quarantine_uri": (
                    f"s3://{artifacts_bucket}/{record.quarantine_key}" if record.quarantine_key else None
                ),
            }
        )


class UploadPage(BaseModel):
    """One page of half pairs, newest first; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[UploadOut]
    next_cursor: str | None


# --------------------------------------------------------------------------------------------------
# Imports


class PresignedImportRequest(BaseModel):
    """The body of ``POST .../models/import?mode=presigned``: how big the bundle to upload is."""

    model_config = ConfigDict(extra="forbid")

    size_bytes: int = Field(gt=0, description="Size of the bundle that will be uploaded, in bytes.")
    filename: str | None = Field(default=None, min_length=1, max_length=255)


class PresignedUploadOut(BaseModel):
    """An S3 presigned POST: send ``fields`` and then the bundle as the form field ``file`` to ``url``."""

    url: str
    method: Literal["POST"] = "POST"
    fields: dict[str, str]
    max_bytes: int
    expires_at: datetime


class ImportStartedOut(BaseModel):
    """A presigned import: follow it with ``GET /api/v1/imports/{import_id}`` after the upload."""

    model_config = ConfigDict(populate_by_name=True)

    import_: ImportOut = Field(alias="import")
    upload: PresignedUploadOut


class ImportedOut(BaseModel):
    """An inline import, indexed: the import record and the new model."""

    model_config = ConfigDict(populate_by_name=True)

    import_: ImportOut = Field(alias="import")
    model: ModelOut | None


#: What the original Heimdall answered to an import; its clients read ``model_id`` from it.
SEED_IMPORT_MESSAGE = "Model imported successfully"


class LegacyImportedOut(ImportedOut):
    """An inline import through the existing clients' path: the current answer, plus the original
    Heimdall's top-level ``model_id``, ``message`` and ``onnx_path`` that their scripts read."""

    model_id: RecordId | None = Field(description="The new model's id (the same as model.model_id).")
    message: str = Field(default=SEED_IMPORT_MESSAGE, description=f"Always {SEED_IMPORT_MESSAGE!r}.")
    onnx_path: str | None = Field(
        description="Where the imported ONNX model is stored in the artifacts bucket (imported/...)."
    )


# --------------------------------------------------------------------------------------------------
# Export jobs and downloads


class CreateExportJobRequest(BaseModel):
    """Convert a model again (``model_id``) or a checkpoint in the ingest bucket (``checkpoint_uri``).

    The original Heimdall's names are accepted too (:mod:`heimdall.api.seed_names`): ``export_format``,
    ``export_config`` and ``optimization_config`` become ``formats``; what they ask that a job cannot
    do is a 422 naming the field.
    """

    model_config = ConfigDict(extra="forbid")

    model_id: RecordId | None = None
    checkpoint_uri: str | None = Field(
        default=None, min_length=6, max_length=2048, description="s3://{ingest bucket}/checkpoints/..."
    )
    manifest_uri: str | None = Field(default=None, min_length=6, max_length=2048)
    formats: list[ExportFormat] | None = Field(default=None, min_length=1, max_length=len(ExportFormat))
    export_format: ExportFormat | None = Field(
        default=None,
        description="The original Heimdall's name: one format, the same as formats: [export_format] "
        "(with formats too, the two must agree).",
    )
    export_config: dict[str, Any] | None = Field(
        default=None,
        description="The original Heimdall's name: only {format} or {formats} can be honoured (the opset "
        "and shapes come from the manifest or the imported model); any other key is a 422 naming it.",
    )
    optimization_config: dict[str, Any] | None = Field(
        default=None,
        description="The original Heimdall's name: {quantization: int8|fp16|none, int8: bool, fp16: bool, "
        "tensorrt: bool} adds onnx_int8 / onnx_fp16 / tensorrt to the format asked (else to onnx); any "
        "other key is a 422 naming it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _seed_names(cls, data: Any) -> Any:
        return seed_export_job(data)

    @model_validator(mode="after")
    def _one_source(self) -> CreateExportJobRequest:
        if (self.model_id is None) == (self.checkpoint_uri is None):
            raise ValueError("give exactly one of model_id and checkpoint_uri")
        if self.manifest_uri is not None and self.checkpoint_uri is None:
            raise ValueError("manifest_uri goes with checkpoint_uri, not with model_id")
        return self


# --------------------------------------------------------------------------------------------------
# Deployments


class DeploymentOut(_Out):
    """A deployment: what it delivers, its state, and (platform endpoints) where and how it serves."""

    deployment_id: RecordId
    model_id: RecordId
    export_job_id: str | None
    type: DeploymentType
    name: Name
    status: DeploymentStatus
    tier: Tier | None
    apply_normalization: bool
    options: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    key_id: str | None = Field(description="Id of the endpoint's API key (the key itself is never stored).")
    endpoint: str | None = Field(description="Path of the inference endpoint (platform endpoints).")
    model_version: str | None
    onnx_sha256: str | None = Field(
        description="sha256 of the ONNX model a platform endpoint serves (FP32, or its precision's build)."
    )
    artifact: DeploymentArtifact | None
    usage: UsageSummary | None = Field(
        default=None,
        description="What a platform endpoint served so far (in GET of one deployment; null in listings).",
    )

    @classmethod
    def of(cls, deployment: Deployment, usage: UsageSummary | None = None) -> DeploymentOut:
        """The public view of ``deployment``."""
        endpoint = None
        if deployment.type is DeploymentType.PLATFORM_ENDPOINT:
            endpoint = f"/v1/infer/{deployment.deployment_id}"
        return cls.model_validate({**deployment.model_dump(), "endpoint": endpoint, "usage": usage})


class CreatedDeploymentOut(BaseModel):
    """A new deployment; ``api_key`` (platform endpoints) is shown this once and never again."""

    deployment: DeploymentOut
    api_key: str | None = Field(description="The endpoint's API key: store it now, it cannot be read back.")
    download: Download | None = Field(description="Where to download what the deployment delivers.")


class RotatedKeyOut(BaseModel):
    """The deployment with its new key; the old key stopped working."""

    deployment: DeploymentOut
    api_key: str


class DeploymentPage(BaseModel):
    """One page of deployments, newest first; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[DeploymentOut]
    next_cursor: str | None


class DeploymentEventOut(_Out):
    """One change of a deployment: what, when, by whom, status before and after."""

    at: datetime
    actor: str
    action: DeploymentAction
    before: DeploymentStatus | None
    after: DeploymentStatus | None
    detail: dict[str, Any]


class DeploymentHistoryOut(BaseModel):
    """Every change of a deployment, oldest first."""

    items: list[DeploymentEventOut]


#: Bodies the routes parse themselves (:func:`heimdall.api.bodies.json_model`): Powertools does not see
#: them, so the document's components get their schemas from this list.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    CreateExportJobRequest,
    PresignedImportRequest,
    CreateDeploymentRequest,
)


class ExportRedirectOut(BaseModel):
    """The body of a 307 from the export endpoint: the bundle is too large for a response."""

    url: str
    expires_at: datetime | None
    size_bytes: int
