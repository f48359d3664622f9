"""Use case: what the conversion job can build, per framework — a static, honest matrix.

The figures are the conversion job's own (``gpu_batch/heimdall_batch``): each format is checked
against PyTorch at the manifest's default parity tolerance (:class:`heimdall.contracts.manifest.Tolerances`),
and a format that fails its check fails the job's format, it is never shipped with a warning.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from heimdall.contracts.manifest import TensorRTOptions, Tolerances
from heimdall.errors import RequestInvalid
from heimdall.types import ExportFormat

#: Frameworks the conversion job loads checkpoints of.
FRAMEWORKS = ("pytorch",)

Quality = Literal["exact", "high", "approximate"]


class FormatCapability(BaseModel):
    """One format the conversion job builds, and how faithful it is."""

    model_config = ConfigDict(frozen=True)

    format: ExportFormat
    framework: str
    precision: str
    #: ``exact``: parity within float32 rounding; ``high``: reduced precision, small error;
    #: ``approximate``: quantised, error bounded by a loose tolerance.
    quality: Quality
    requires_gpu: bool
    #: The default maximum absolute error against PyTorch (a manifest may set its own).
    tolerance: float
    description: str


class Capabilities(BaseModel):
    """The frameworks known, and the formats of the one(s) asked about."""

    model_config = ConfigDict(frozen=True)

    frameworks: list[str]
    formats: list[FormatCapability]


def _pytorch_formats() -> list[FormatCapability]:
    tolerances = Tolerances()
    trt_precision = TensorRTOptions().precision

    def entry(fmt: ExportFormat, precision: str, quality: Quality, gpu: bool, text: str) -> FormatCapability:
        return FormatCapability(
            format=fmt,
            framework="pytorch",
            precision=precision,
            quality=quality,
            requires_gpu=gpu,
            tolerance=tolerances.for_format(fmt),
            description=text,
        )

    return [
        entry(
            ExportFormat.ONNX,
            "fp32",
            "exact",
            False,
            "ONNX (torch.onnx.export), float32; checked against PyTorch at batch sizes 1 and 8. "
            "Always built: every other format starts from it, and it is the model a bundle embeds.",
        ),
        entry(
            ExportFormat.TORCHSCRIPT,
            "fp32",
            "exact",
            False,
            "TorchScript archive traced from the PyTorch model (for LibTorch and Triton's PyTorch "
            "backend); the reloaded archive is checked at batch sizes 1 and 8.",
        ),
        entry(
            ExportFormat.ONNX_FP16,
            "fp16",
            "high",
            False,
            "ONNX with float16 weights and activations, float32 inputs and outputs. Built anywhere, "
            "but meant for GPUs: on CPU ONNX Runtime falls back to casts and may be slower than fp32.",
        ),
        entry(
            ExportFormat.ONNX_INT8,
            "int8",
            "approximate",
            False,
            "ONNX quantised to int8 (static QDQ calibrated on representative inputs by default, "
            "dynamic on request); error bounded by the loose int8 tolerance.",
        ),
        entry(
            ExportFormat.TENSORRT,
            trt_precision,
            "high",
            True,
            f"TensorRT engine ({trt_precision} by default; fp32 and int8 on request, int8 at the int8 "
            "tolerance). Needs a CUDA GPU and TensorRT: without one the format is reported skipped. "
            "An engine runs only on the GPU kind and TensorRT version it was built for.",
        ),
    ]


def capabilities(framework: str | None = None) -> Capabilities:
    """The formats of ``framework`` (all frameworks when None); an unknown one → RequestInvalid."""
    if framework is not None and framework.strip().lower() not in FRAMEWORKS:
        raise RequestInvalid(
            f"unknown framework {framework[:64]!r}; known: {', '.join(FRAMEWORKS)}",
            field="framework",
            known=list(FRAMEWORKS),
        )
    return Capabilities(frameworks=list(FRAMEWORKS), formats=_pytorch_formats())
