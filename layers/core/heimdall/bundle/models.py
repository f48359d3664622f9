"""The canonical form of a `.heimdall` bundle (DESIGN §3) as pydantic v2 models.

Every model keeps unknown fields (``extra="allow"``) so that a bundle read and written again loses
nothing a newer or foreign writer put there. The embedded ONNX model (``model.onnx_model_base64``) is
deliberately *not* a field here: it is streamed by the reader and writer, never held as a string.
"""

from __future__ import annotations

import enum
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from heimdall.types import Shape  # shared with the registry, which must stay light

FORMAT_VERSION = "1.0.0"
SUPPORTED_MAJOR = 1
ONNX_FIELD = "onnx_model_base64"

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Text = Annotated[str, StringConstraints(max_length=65_536)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]

#: Caps on a sender's model name and version (display text; README "The .heimdall bundle").
MAX_MODEL_NAME_CHARS = 200
MAX_VERSION_CHARS = 64
#: Unicode categories no display name may hold: controls (Cc), format characters such as bidi
#: overrides and zero-width ones (Cf), line and paragraph separators (Zl, Zp), surrogates (Cs).
_NOT_DISPLAYABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _display_text(cap: int) -> AfterValidator:
    """A validator for sender text shown to people: non-blank, at most ``cap`` characters, and no
    character that is not display text. Such text is never a key, a path or a raw header."""

    def check(value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or blank")
        if len(value) > cap:
            raise ValueError(f"is {len(value)} characters long; at most {cap} are allowed")
        for position, char in enumerate(value):
            if unicodedata.category(char) in _NOT_DISPLAYABLE:
                raise ValueError(
                    f"holds U+{ord(char):04X} at position {position}: control, format and separator "
                    "characters cannot be part of a display name"
                )
        return value

    return AfterValidator(check)


ModelName = Annotated[str, _display_text(MAX_MODEL_NAME_CHARS)]
ModelVersion = Annotated[str, _display_text(MAX_VERSION_CHARS)]


class _Open(BaseModel):
    """A component that keeps fields it does not know.

    Serialised, a declared field that is ``None`` is left out (absent and null mean the same for
    every optional field of the format), while unknown fields are written exactly as read, nulls
    included.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_serializer(mode="wrap")
    def _omit_null_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        extra = self.model_extra or {}
        return {key: value for key, value in data.items() if value is not None or key in extra}


class BundleMetadata(_Open):
    bundle_id: Name
    created_at: datetime
    created_by: Text = "system"
    description: Text | None = None
    heimdall_version: Text | None = None


class ModelInfo(_Open):
    model_id: Name
    model_name: ModelName
    version: ModelVersion
    architecture: Name
    framework: Name = "pytorch"
    onnx_opset: int = Field(ge=1, le=1000)
    input_shape: Shape
    #: One shape per graph output, in graph order.
    output_shape: Annotated[list[Shape], Field(min_length=1, max_length=64)]
    parameters_count: int | None = Field(default=None, ge=0)

    @field_validator("input_shape", "output_shape")
    @classmethod
    def _dims_valid(cls, value: list[Any]) -> list[Any]:
        shapes = value if value and isinstance(value[0], list) else [value]
        for shape in shapes:
            for dim in shape:
                if isinstance(dim, int) and dim < -1:
                    raise ValueError(f"dimension {dim} is negative (use -1 or a name for a dynamic axis)")
        return value


class TrainingConfig(_Open):
    epochs: int | None = Field(default=None, ge=0)
    batch_size: int | None = Field(default=None, ge=0)
    learning_rate: float | None = None
    optimizer: Text | None = None
    loss_function: Text | None = None
    validation_split: float | None = Field(default=None, ge=0, le=1)
    early_stopping: bool | None = None
    early_stopping_patience: int | None = Field(default=None, ge=0)
    dataset_ids: list[Text] | None = None
    dataset_names: list[Text] | None = None


class PerformanceMetrics(_Open):
    final_train_loss: float | None = None
    final_val_loss: float | None = None
    final_train_accuracy: float | None = None
    final_val_accuracy: float | None = None
    best_epoch: int | None = Field(default=None, ge=0)
    best_val_loss: float | None = None
    training_duration_seconds: float | None = Field(default=None, ge=0)
    inference_latency_ms: float | None = Field(default=None, ge=0)
    onnx_speedup_factor: float | None = Field(default=None, ge=0)
    #: Per-epoch history, as the second dialect carries it (entries may be null).
    train_loss: list[float | None] | None = None
    val_loss: list[float | None] | None = None
    train_rmse: list[float | None] | None = None
    val_rmse: list[float | None] | None = None


class NormalizationStats(_Open):
    """Per-feature means and standard deviations; either may be missing (the original Heimdall's
    exporter wrote what it had), and an empty list reads as missing. Only
    :meth:`means_and_stds` says whether a consumer can normalise with them."""

    feature_means: Annotated[list[float], Field(min_length=1, max_length=65_536)] | None = None
    feature_stds: Annotated[list[float], Field(min_length=1, max_length=65_536)] | None = None

    @field_validator("feature_means", "feature_stds", mode="before")
    @classmethod
    def _empty_is_missing(cls, value: Any) -> Any:
        return None if value == [] else value

    @model_validator(mode="after")
    def _consistent(self) -> NormalizationStats:
        means, stds = self.feature_means, self.feature_stds
        if means is not None and stds is not None and len(means) != len(stds):
            raise ValueError(f"feature_means has {len(means)} values but feature_stds has {len(stds)}")
        if stds is not None and any(std <= 0 for std in stds):
            raise ValueError("feature_stds must all be greater than 0")
        return self

    def means_and_stds(self) -> tuple[list[float], list[float]] | None:
        """``(feature_means, feature_stds)`` when both are there; None for a partial record, which
        cannot normalise anything (every consumer treats it as no normalisation)."""
        if self.feature_means is None or self.feature_stds is None:
            return None
        return self.feature_means, self.feature_stds


class SamplePrediction(_Open):
    sample_id: Name
    input_metadata: dict[str, Any] = Field(default_factory=dict)
    ground_truth: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    error_meters: float | None = None


class Integrity(_Open):
    onnx_sha256: Sha256Hex
    onnx_size_bytes: int = Field(ge=0)


class Signature(_Open):
    algorithm: Literal["ed25519"]
    key_id: Name
    value: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class Bundle(_Open):
    """Everything in a bundle except the base64 model itself."""

    format_version: Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+){0,2}$")]
    bundle_metadata: BundleMetadata
    model: ModelInfo
    training_config: TrainingConfig | None = None
    performance_metrics: PerformanceMetrics | None = None
    normalization_stats: NormalizationStats | None = None
    sample_predictions: Annotated[list[SamplePrediction], Field(min_length=1, max_length=10)] | None = None
    integrity: Integrity | None = None
    signature: Signature | None = None

    @field_validator(
        "training_config", "performance_metrics", "normalization_stats", "sample_predictions", mode="before"
    )
    @classmethod
    def _nothing_is_absent(cls, value: Any) -> Any:
        # The original Heimdall's exporter writes `{}`, `[]`, or an object of nulls and empty lists
        # when it has no data: such a component is read as absent (and so never re-exported, listed
        # or used), while one with any value keeps its nulls as None and its unknown fields as read.
        return None if carries_nothing(value) else value

    def components(self) -> list[str]:
        """The optional components present, in canonical order."""
        return [c.value for c in Component if getattr(self, c.value) is not None]


def carries_nothing(value: Any) -> bool:
    """Whether an optional component holds no data: null, ``[]``, ``{}``, or an object (a dict or a
    component model) whose every field carries nothing. A list with entries, even nulls, is data."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if value is None or value in ([], {}):
        return True
    return isinstance(value, dict) and all(carries_nothing(v) for v in value.values())


class Component(enum.StrEnum):
    """The optional, selectable parts of a bundle (``model`` is always included)."""

    TRAINING_CONFIG = "training_config"
    PERFORMANCE_METRICS = "performance_metrics"
    NORMALIZATION_STATS = "normalization_stats"
    SAMPLE_PREDICTIONS = "sample_predictions"


class ComponentSelection(BaseModel):
    """Which optional components an export or import keeps, and how many samples."""

    model_config = ConfigDict(frozen=True)

    training_config: bool = True
    performance_metrics: bool = True
    normalization_stats: bool = True
    sample_predictions: bool = True
    num_samples: int = Field(default=10, ge=1, le=10)

    @classmethod
    def only(cls, components: list[str] | set[str], num_samples: int = 10) -> ComponentSelection:
        """A selection keeping exactly ``components`` (names from :class:`Component`)."""
        unknown = set(components) - {c.value for c in Component}
        if unknown:
            raise ValueError(f"unknown component(s): {', '.join(sorted(unknown))}")
        return cls(**{c.value: c.value in components for c in Component}, num_samples=num_samples)

    def apply(self, bundle: Bundle) -> Bundle:
        """A copy of ``bundle`` with only the selected components (and at most ``num_samples``)."""
        update: dict[str, Any] = {c.value: None for c in Component if not getattr(self, c.value)}
        if self.sample_predictions and bundle.sample_predictions:
            update["sample_predictions"] = bundle.sample_predictions[: self.num_samples]
        return bundle.model_copy(update=update)
