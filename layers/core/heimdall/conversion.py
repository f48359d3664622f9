"""Contracts of the conversion job, shared by the job (``heimdall_batch``) and the Lambdas.

``JobSpec`` is what a job is started with; ``ConversionResult`` is ``result.json``, the last file a
job writes, which the job-state Lambda reads to record the outcome.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from heimdall.types import ExportFormat

RESULT_FILE_NAME = "result.json"
PACKAGE_FILE_NAME = "export-package.zip"
RESULT_SCHEMA_VERSION = "1"
#: What a job converts: a checkpoint (the whole pipeline) or a ``.heimdall`` bundle (from its ONNX model).
JobSource = Literal["checkpoint", "bundle"]
#: What a bundle's model is converted to unless asked otherwise (TorchScript needs the PyTorch model).
DEFAULT_BUNDLE_FORMATS = (
    ExportFormat.ONNX,
    ExportFormat.ONNX_FP16,
    ExportFormat.ONNX_INT8,
    ExportFormat.TENSORRT,
)


class FormatStatus(enum.StrEnum):
    BUILT = "built"
    FAILED = "failed"
    SKIPPED = "skipped"


class ParityCheck(BaseModel):
    """One output compared at one batch size."""

    batch_size: int
    output: str
    max_abs_err: float
    max_rel_err: float
    tolerance: float
    finite: bool
    passed: bool


class FormatOutcome(BaseModel):
    """What happened to one requested format."""

    format: ExportFormat
    status: FormatStatus
    reason: str | None = None
    #: File name in the job's output directory (and key suffix under its output prefix).
    file: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    parity: list[ParityCheck] = Field(default_factory=list)
    #: Median latency per batch size, e.g. ``{"1": 0.41, "32": 6.2}``.
    latency_ms: dict[str, float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)


class BenchmarkReport(BaseModel):
    """Median latency of PyTorch eager and ONNX Runtime (FP32) per batch size."""

    hardware: str
    provider: str
    torch_ms: dict[str, float]
    onnx_ms: dict[str, float]
    speedup: dict[str, float]
    runs: int


class StageRecord(BaseModel):
    """One pipeline stage: how long it took and how it ended."""

    name: str
    status: Literal["ok", "failed", "skipped"]
    seconds: float
    error: str | None = None


class OutputFile(BaseModel):
    sha256: str
    size_bytes: int


class ConversionResult(BaseModel):
    """``result.json``: the job's outcome, written last."""

    model_config = ConfigDict(extra="allow")

    schema_version: str = RESULT_SCHEMA_VERSION
    job_id: str
    status: Literal["SUCCEEDED", "FAILED"]
    error_code: str | None = None
    error_message: str | None = None
    exit_code: int = 0
    model_name: str | None = None
    version: str | None = None
    architecture: str | None = None
    formats: list[FormatOutcome] = Field(default_factory=list)
    benchmark: BenchmarkReport | None = None
    stages: list[StageRecord] = Field(default_factory=list)
    #: Every file the job wrote (relative name → hash and size), result.json excepted.
    outputs: dict[str, OutputFile] = Field(default_factory=dict)
    bundle_file: str | None = None
    package_file: str | None = None
    started_at: datetime
    finished_at: datetime

    def outcome(self, fmt: ExportFormat) -> FormatOutcome | None:
        """The outcome of ``fmt``, if it was requested."""
        return next((o for o in self.formats if o.format is fmt), None)


class JobSpec(BaseModel):
    """What a conversion job is started with (the Batch entry point reads it from the environment)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    #: ``s3://bucket/key`` of the checkpoint, or of the ``.heimdall`` bundle when ``source`` is "bundle".
    checkpoint_uri: str = Field(pattern=r"^s3://[^/]+/.+")
    source: JobSource = "checkpoint"
    #: A bundle job: the sha256 the registry holds for the model's ONNX. The bundle's model must hash
    #: to it, so a stored bundle replaced since it was indexed is refused, not converted.
    expected_onnx_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    #: ``s3://bucket/key`` of the sidecar manifest; absent when the checkpoint embeds it.
    manifest_uri: str | None = Field(default=None, pattern=r"^s3://[^/]+/.+")
    #: ``s3://bucket/prefix/`` under which every output is written (deterministic keys).
    output_uri: str = Field(pattern=r"^s3://[^/]+/.*")
    #: ``s3://bucket/prefix/`` holding TensorRT timing caches, one per GPU and TensorRT version.
    timing_cache_uri: str | None = Field(default=None, pattern=r"^s3://[^/]+/.*")
    formats: list[ExportFormat] | None = None

    @model_validator(mode="after")
    def _bundle_has_no_manifest(self) -> JobSpec:
        if self.source == "bundle" and self.manifest_uri is not None:
            raise ValueError("a bundle carries its own metadata: manifest_uri goes with a checkpoint")
        if self.source != "bundle" and self.expected_onnx_sha256 is not None:
            raise ValueError("expected_onnx_sha256 goes with a bundle")
        return self
