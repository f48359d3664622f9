"""The checkpoint manifest (DESIGN §4): what a state_dict needs to become a model.

A state_dict carries no code, so every checkpoint comes with a manifest, as ``heimdall.json`` beside
it or embedded in a dict checkpoint under the key ``heimdall``. This model is shared by the ingest
Lambda (which validates it before submitting a job) and the conversion job (which runs it), so it
lives in the core layer and imports nothing heavy.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from heimdall.bundle.models import (
    NormalizationStats,
    PerformanceMetrics,
    SamplePrediction,
    TrainingConfig,
    carries_nothing,
)
from heimdall.bundle.strict_json import parse_json
from heimdall.errors import BundleError, InvalidManifest
from heimdall.types import ExportFormat

MANIFEST_FILE_NAME = "heimdall.json"
EMBEDDED_MANIFEST_KEY = "heimdall"

_NAME_MAX = 128
_VERSION_MAX = 64
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=_NAME_MAX, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
# A leading digit is allowed: PyTorch's older exporter named graph tensors "0", "5", ..., and a bundle's
# manifest takes its names from the graph (the wrappers make identifiers of them).
TensorName = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$")
]


class TensorRTOptions(BaseModel):
    """How to build a TensorRT engine (GPU only)."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    min_batch_size: int = Field(default=1, ge=1)
    opt_batch_size: int | None = Field(default=None, ge=1)
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    workspace_gb: float = Field(default=4.0, gt=0, le=256)

    @model_validator(mode="after")
    def _ordered(self) -> TensorRTOptions:
        opt = self.opt_batch_size if self.opt_batch_size is not None else self.max_batch_size
        if not self.min_batch_size <= opt <= self.max_batch_size:
            raise ValueError(
                f"batch profile must satisfy min <= opt <= max, got {self.min_batch_size}/{opt}/"
                f"{self.max_batch_size}"
            )
        return self

    @property
    def profile(self) -> tuple[int, int, int]:
        """(min, opt, max) batch sizes of the optimisation profile."""
        opt = self.opt_batch_size if self.opt_batch_size is not None else self.max_batch_size
        return self.min_batch_size, opt, self.max_batch_size


class Tolerances(BaseModel):
    """Parity tolerances per format: maximum absolute error against PyTorch (or ONNX Runtime for
    TensorRT). FP16 and INT8 lose precision by design; their limits are looser and reported."""

    model_config = ConfigDict(extra="forbid")

    onnx: float = Field(default=1e-5, gt=0)
    torchscript: float = Field(default=1e-5, gt=0)
    onnx_fp16: float = Field(default=1e-2, gt=0)
    onnx_int8: float = Field(default=1e-1, gt=0)
    tensorrt: float = Field(default=1e-2, gt=0)

    def for_format(self, fmt: ExportFormat) -> float:
        """The tolerance of ``fmt``."""
        return float(getattr(self, fmt.value))


#: A dotted path into a dict checkpoint (``state_dict``, ``model_ema``, ``ema.module``).
StateDictKey = Annotated[
    str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^.\x00-\x1f]+(\.[^.\x00-\x1f]+)*$")
]


class Manifest(BaseModel):
    """What the conversion job needs besides the weights (DESIGN §4).

    Unknown fields are refused: a misspelt or unsupported one (``"input_dtype": "int64"``) would
    otherwise be ignored without a word, and the model converted as something the user did not ask for.
    """

    model_config = ConfigDict(extra="forbid")

    model_name: Name
    version: Annotated[
        str,
        StringConstraints(min_length=1, max_length=_VERSION_MAX, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"),
    ]
    architecture: Name
    architecture_kwargs: dict[str, Any] = Field(default_factory=dict)
    #: Shape of the (first) input including the batch dimension, e.g. ``[1, 3, 128, 32]``.
    #: Where the weights are in a dict checkpoint, when the job should not find them itself (several
    #: readings fit, e.g. ``model`` and ``model_ema``): a dotted path of keys.
    state_dict_key: StateDictKey | None = None
    #: A prefix every weight name carries that the architecture's names lack (``model.``, ``module.``),
    #: to remove instead of the one the job would find; ``""`` removes nothing.
    strip_prefix: Annotated[str, StringConstraints(max_length=256)] | None = None
    #: Shape of the (first) input including the batch dimension, e.g. ``[1, 3, 128, 32]``.
    input_shape: Annotated[list[Annotated[int, Field(ge=1, le=1_000_000)]], Field(min_length=1, max_length=8)]
    input_names: Annotated[list[TensorName], Field(min_length=1, max_length=16)] = ["input"]
    output_names: Annotated[list[TensorName], Field(min_length=1, max_length=64)]
    dynamic_batch: bool = True
    opset: int = Field(default=17, ge=11, le=23)
    formats: Annotated[list[ExportFormat], Field(min_length=1)] = [ExportFormat.ONNX]
    tensorrt: TensorRTOptions = Field(default_factory=TensorRTOptions)
    #: ``static`` (QDQ with calibration, the default) or ``dynamic`` (only when asked for).
    int8_mode: Literal["static", "dynamic"] = "static"
    calibration_samples: int = Field(default=32, ge=1, le=1024)
    tolerances: Tolerances = Field(default_factory=Tolerances)
    training_config: TrainingConfig | None = None
    performance_metrics: PerformanceMetrics | None = None
    normalization_stats: NormalizationStats | None = None
    sample_predictions: Annotated[list[SamplePrediction], Field(max_length=10)] | None = None
    description: Annotated[str, StringConstraints(max_length=4096)] = ""
    created_by: Annotated[str, StringConstraints(max_length=256)] = ""

    @field_validator(
        "training_config", "performance_metrics", "normalization_stats", "sample_predictions", mode="before"
    )
    @classmethod
    def _nothing_is_absent(cls, value: Any) -> Any:
        # The same rule as a bundle's components: nulls, [] and {} alone mean "not recorded".
        return None if carries_nothing(value) else value

    @field_validator("formats")
    @classmethod
    def _onnx_first(cls, value: list[ExportFormat]) -> list[ExportFormat]:
        # Every other format is derived from, or checked against, the FP32 ONNX model.
        unique = list(dict.fromkeys(value))
        return [ExportFormat.ONNX, *(f for f in unique if f is not ExportFormat.ONNX)]

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(set(self.input_names)) != len(self.input_names):
            raise ValueError("input_names must be unique")
        if len(set(self.output_names)) != len(self.output_names):
            raise ValueError("output_names must be unique")
        if set(self.input_names) & set(self.output_names):
            raise ValueError("a name cannot be both an input and an output")
        if len(self.input_names) != 1:
            raise ValueError("exactly one input is supported (input_names must have one name)")
        means = self.normalization_stats.feature_means if self.normalization_stats else None
        if means is not None and len(self.input_shape) >= 2 and len(means) != self.input_shape[1]:
            raise ValueError(
                f"normalization_stats has {len(means)} features but the input has "
                f"{self.input_shape[1]} channels (input_shape[1])"
            )
        return self

    @property
    def batch_dim(self) -> str | int:
        """The batch dimension as exported: the name ``batch`` when dynamic, else the fixed size."""
        return "batch" if self.dynamic_batch else self.input_shape[0]


def parse_manifest(data: Any, *, source: str = "manifest") -> Manifest:
    """Validate a manifest document; any problem is an :class:`InvalidManifest` naming the field."""
    if not isinstance(data, dict):
        raise InvalidManifest(f"{source} must be a JSON object")
    unknown = sorted(str(key) for key in data if key not in Manifest.model_fields)
    if unknown:
        shown = ", ".join(repr(key[:64]) for key in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise InvalidManifest(
            f"{source} has unknown field{'s' if len(unknown) > 1 else ''} {shown}{more}: a field the "
            "manifest does not define would be ignored, so it is refused (see docs/manifest.md)",
            field=unknown[0][:64],
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}" for e in errors[:5]]
        first = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
        raise InvalidManifest(f"{source} is invalid: " + "; ".join(parts), field=first) from None


def read_manifest(data: bytes, *, source: str = MANIFEST_FILE_NAME) -> Manifest:
    """Parse manifest bytes as strictly as a bundle's metadata, then validate them."""
    try:
        doc = parse_json(data)
    except BundleError as exc:
        raise InvalidManifest(f"{source} is not acceptable JSON: {exc.message}") from None
    return parse_manifest(doc, source=source)


__all__ = [
    "EMBEDDED_MANIFEST_KEY",
    "MANIFEST_FILE_NAME",
    "ExportFormat",
    "Manifest",
    "TensorRTOptions",
    "Tolerances",
    "manifest_names",
    "parse_manifest",
    "read_manifest",
]


def manifest_names(model_name: str, version: str) -> tuple[str, str]:
    """A bundle's display name and version (any text a bundle may hold: spaces, ``../``, any script)
    as a manifest's ``model_name`` and ``version``, which name the job's files: NFKC-normalised, each run
    of other characters one ``_``, starting with a letter or digit; ``model`` / ``1`` when nothing is
    left. The model record keeps the display text; this is only what files are called."""
    return (
        _file_stem(model_name, "._-", _NAME_MAX) or "model",
        _file_stem(version, "._+-", _VERSION_MAX) or "1",
    )


def _file_stem(text: str, punctuation: str, max_length: int) -> str:
    allowed = re.escape(punctuation)
    stem = re.sub(f"[^A-Za-z0-9{allowed}]+", "_", unicodedata.normalize("NFKC", text))
    return re.sub(f"^[{allowed}_]+", "", stem)[:max_length]
