"""Contracts of the conversion job, shared by the job (``heimdall_batch``) and the Lambdas.

``JobSpec`` is what a job is started with; ``ConversionResult`` is ``result.json``, the last file a
job writes, which the job-state Lambda reads to record the outcome.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from heimdall.types import ExportFormat

RESULT_FILE_NAME = "result.json"
PACKAGE_FILE_NAME = "export-package.zip"
RESULT_SCHEMA_VERSION = "1"
_Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
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


class OpsetUpgrade(BaseModel):
    """An indexed model's ONNX converted to a newer default-domain opset so that ONNX Runtime loads it.

    Made at indexing when ONNX Runtime refuses the model as stamped because it no longer implements an
    operator at that opset (:mod:`heimdall.bundle.upgrade`). ``result`` is ``upgraded`` when the copy
    converted, passed the structural pass, loaded in ONNX Runtime and agreed with the bundle's sample
    predictions (``samples_checked`` of them, worst error ``max_abs_error``); otherwise it names the
    step that failed and ``message`` says why. The upgraded copy (``onnx_key``, ``onnx_sha256``,
    ``onnx_size_bytes``) is what platform endpoints serve; the original stays what export returns.
    """

    # (Not in the docstring, which the OpenAPI document carries.) A conversion job of the model's
    # bundle makes the same upgrade and records it in ConversionResult.opset_upgrade, without
    # ``onnx_key``: the copy is then the job's FP32 product.

    model_config = ConfigDict(extra="ignore")

    from_opset: int = Field(ge=0, le=1000)
    to_opset: int = Field(ge=1, le=1000)
    #: The tool that converted, with its version (``onnx.version_converter (onnx 1.23.2)``).
    converter: str = Field(max_length=256)
    result: Literal["upgraded", "convert_failed", "load_failed", "samples_failed"]
    onnx_key: str | None = Field(default=None, max_length=1024)
    onnx_sha256: _Sha256Hex | None = None
    onnx_size_bytes: int | None = Field(default=None, ge=0)
    samples_checked: int = Field(default=0, ge=0)
    max_abs_error: float | None = None
    message: str | None = Field(default=None, max_length=1024)


class WeightsChoice(BaseModel):
    """Which weights of a checkpoint the model took: where they were and what was removed from names."""

    #: Dotted key path of the state_dict in the checkpoint (``state_dict``, ``model_ema``);
    #: ``""`` when the file's top-level dict is the state_dict.
    key_path: str
    #: The prefix removed from every weight name (``model.``, ``module._orig_mod.``); ``""`` for none.
    stripped_prefix: str = ""
    #: Whether the weights are an exponential moving average (an ``ema``/``model_ema`` container).
    ema: bool = False
    #: ``manifest`` when the manifest's ``state_dict_key``/``strip_prefix`` decided, else ``detected``.
    chosen_by: Literal["detected", "manifest"] = "detected"

    def describe(self) -> str:
        """One line for people: ``'state_dict', prefix 'model.' removed``, with EMA and manifest notes."""
        where = repr(self.key_path) if self.key_path else "the top-level dict"
        text = f"{where}, prefix {self.stripped_prefix!r} removed" if self.stripped_prefix else where
        notes = ["EMA"] if self.ema else []
        if self.chosen_by == "manifest":
            notes.append("as the manifest says")
        return text + (f" ({', '.join(notes)})" if notes else "")


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
    #: A checkpoint job: which of the checkpoint's weights were converted.
    weights: WeightsChoice | None = None
    bundle_file: str | None = None
    package_file: str | None = None
    #: A bundle job: the sha256 of the bundle's own ONNX model (what the registry holds for it).
    bundle_onnx_sha256: _Sha256Hex | None = None
    #: A bundle job whose model ONNX Runtime cannot load as stamped: the opset upgrade the serving check
    #: made (:mod:`heimdall.bundle.upgrade`, as at indexing). Its copy, not the bundle's ONNX, is then
    #: the FP32 product (the ``onnx`` outcome's file and sha256) every other format is built from.
    opset_upgrade: OpsetUpgrade | None = None
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
