"""``metadata.json`` of the export package: one model for the job that writes it and the code that
reads it back.

:class:`PackageMetadata` declares every section the Batch job writes, in the order it writes them:
the job builds one and :func:`metadata_bytes` serialises it (only the fields it set, so optional
sections stay absent), and the deployments code validates a package's document against the same
model (:func:`parse_metadata`). Reading is tolerant where the deployments need nothing: unknown keys
are ignored, and the fields nothing reads back are plain JSON values of any shape; what a deployment
package relies on (names, versions, tensors, file records, outcomes, normalisation constants) is
typed and constrained, because a package is input like any other.

Shapes follow :data:`SHAPE_CONVENTION`; :func:`shape_text`, :func:`example_shape` and
:func:`minus_one` are the ways every generated text writes them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError

from heimdall.errors import ConversionError, PackageInconsistent
from heimdall.export_package.archive import json_bytes
from heimdall.export_package.layout import METADATA_FILE_NAME

METADATA_SCHEMA_VERSION: Final = "1"

#: How ``metadata.json`` writes shapes (the Triton config and the compiled wrappers use -1 instead).
SHAPE_CONVENTION: Final = (
    "an integer is a fixed size; a string is a dynamic dimension named as in the ONNX graph "
    '("batch" is the batch axis); null is a dynamic dimension without a name. The Triton config '
    "and the C++/Swift/Kotlin wrappers write every dynamic dimension as -1."
)

# Names that go into string literals of generated code, Dockerfiles, shell scripts and configs
# unescaped: the manifest's own patterns (heimdall.contracts.manifest), checked again on both sides.
_MODEL_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_VERSION: Final = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
_TENSOR_NAME: Final = r"^[A-Za-z0-9_.:/+-]+$"
_SHA256: Final = r"^[0-9a-f]{64}$"
_MAX_RANK: Final = 8
_MAX_TENSORS: Final = 64
_LITERAL_SAFE: Final = re.compile(_TENSOR_NAME)

TensorType = Literal[
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "bfloat16",
    "string",
]

_T = TypeVar("_T", bound=BaseModel)
_ModelName = Annotated[str, StringConstraints(pattern=_MODEL_NAME, max_length=128)]
_Version = Annotated[str, StringConstraints(pattern=_VERSION, max_length=64)]
_TensorName = Annotated[str, StringConstraints(pattern=_TENSOR_NAME, max_length=256)]
_Dim = Annotated[int, Field(ge=1)] | _TensorName | None


class _Section(BaseModel):
    """A part of ``metadata.json``: strict types, unknown keys ignored on read."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class ModelInfo(_Section):
    name: _ModelName
    version: _Version
    architecture: JsonValue = None
    architecture_kwargs: JsonValue = None
    description: JsonValue = None
    created_by: JsonValue = None
    job_id: JsonValue = None
    #: ISO 8601, or null: the job records no clock reading unless told (retries stay identical).
    created_at: JsonValue = None


class Tensor(_Section):
    name: _TensorName
    dtype: TensorType
    shape: list[_Dim] = Field(max_length=_MAX_RANK)


class Normalization(_Section):
    formula: JsonValue = None
    axis: int = 1
    mean: list[float]
    std: list[float]


class Preprocessing(_Section):
    input: JsonValue = None
    layout: JsonValue = None
    dtype: JsonValue = None
    normalization: Normalization | None = None
    note: JsonValue = None


class OutputMeaning(_Section):
    name: str
    dtype: JsonValue = None
    shape: JsonValue = None
    description: str = ""


class Postprocessing(_Section):
    outputs: list[OutputMeaning] = Field(default_factory=list)


class OnnxCompatibility(_Section):
    opset: int | None = None
    ir_version: JsonValue = None
    producer_name: JsonValue = None
    producer_version: JsonValue = None
    min_onnxruntime: str | None = None
    min_onnxruntime_source: JsonValue = None
    #: Only for a bundle's model that was upgraded to a newer opset (with ``opset_upgrade``).
    bundle_onnx_sha256: JsonValue = None
    opset_upgrade: JsonValue = None
    #: Only when no release of the compatibility table loads the model.
    note: JsonValue = None


class Compatibility(_Section):
    """``onnx``, then one section per other built format (``onnx_fp16``, ``torchscript``,
    ``tensorrt``...), in the order of the outcomes: kept as written, nothing reads them back."""

    model_config = ConfigDict(extra="allow")

    onnx: OnnxCompatibility | None = None


class Parity(_Section):
    batch_size: JsonValue = None
    output: JsonValue = None
    max_abs_err: float
    max_rel_err: JsonValue = None
    tolerance: float
    finite: JsonValue = None
    passed: JsonValue = None


class Outcome(_Section):
    """One requested format: ``built`` (with its ``file``), ``failed`` or ``skipped`` and why."""

    status: str
    reason: JsonValue = None
    file: str | None = None
    parity_passed: JsonValue = None
    parity_reference: JsonValue = None
    parity: list[Parity] = Field(default_factory=list)


class FileRecord(_Section):
    sha256: Annotated[str, StringConstraints(pattern=_SHA256)]
    size_bytes: int = Field(ge=0)


_Tensors = Annotated[list[Tensor], Field(min_length=1, max_length=_MAX_TENSORS)]


class PackageMetadata(_Section):
    """``metadata.json`` of an export package (DESIGN §5).

    ``performance`` holds ``unit``, ``hardware``, ``benchmark`` (the job's benchmark report or null),
    ``latency_ms`` and ``size_bytes`` per format; ``validation`` one :class:`Outcome` per requested
    format; ``files`` the sha256 and size of every other file of the package, sorted by name.
    """

    schema_version: JsonValue = None
    generator: JsonValue = None
    model: ModelInfo
    preprocessing: Preprocessing | None = None
    postprocessing: Postprocessing | None = None
    shape_convention: JsonValue = None
    inputs: _Tensors
    outputs: _Tensors
    dynamic_batch: bool
    performance: JsonValue = None
    compatibility: Compatibility | None = None
    validation: dict[str, Outcome]
    files: dict[str, FileRecord]


class TritonFacts(_Section):
    """What a Triton configuration is checked against: the parts of :class:`PackageMetadata` it
    describes (``triton.check_triton_config`` needs no more)."""

    model: ModelInfo
    inputs: _Tensors
    outputs: _Tensors
    dynamic_batch: bool


# When a document has several faults, the one reported is the first in this order (the order the
# checks were always made in), whatever order the sections are written in.
_REPORT_ORDER: Final = (
    "model",
    "inputs",
    "outputs",
    "dynamic_batch",
    "files",
    "validation",
    "preprocessing",
    "postprocessing",
    "compatibility",
)


def _report_rank(loc: tuple[int | str, ...]) -> int:
    top = loc[0] if loc else ""
    return _REPORT_ORDER.index(top) if top in _REPORT_ORDER else len(_REPORT_ORDER)


def validated(model: type[_T], document: Any) -> _T:
    """``document`` as ``model`` (:class:`PackageMetadata` or :class:`TritonFacts`), else
    :class:`PackageInconsistent` naming the first fault; an input or output named twice is one."""
    try:
        facts = model.model_validate(document)
    except ValidationError as exc:
        first = min(exc.errors(), key=lambda error: _report_rank(error["loc"]))
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise PackageInconsistent(
            f"metadata.json does not describe the package: {where}: {first['msg']}", file=METADATA_FILE_NAME
        ) from None
    if isinstance(facts, PackageMetadata | TritonFacts):
        for kind, tensors in (("input", facts.inputs), ("output", facts.outputs)):
            names = [t.name for t in tensors]
            if len(set(names)) != len(names):
                raise PackageInconsistent(
                    f"metadata.json names an {kind} twice: {names}", file=METADATA_FILE_NAME
                )
    return facts


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key!r}")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 reads as infinity, which JSON cannot write back
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def parse_metadata(raw: bytes) -> dict[str, Any]:
    """The JSON object of ``metadata.json``: UTF-8, no duplicate keys, finite numbers only, else
    :class:`PackageInconsistent`. Validate it with :func:`validated`."""
    try:
        document = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PackageInconsistent(
            f"metadata.json is not valid JSON: {str(exc)[:200]}", file=METADATA_FILE_NAME
        ) from None
    if not isinstance(document, dict):
        raise PackageInconsistent("metadata.json is not a JSON object", file=METADATA_FILE_NAME)
    return document


def metadata_bytes(metadata: PackageMetadata) -> bytes:
    """``metadata.json`` as the job writes it: the fields that were set, in the model's order."""
    return json_bytes(metadata.model_dump(mode="json", exclude_unset=True))


# --- names and shapes in generated text ----------------------------------------------------------


def checked_literal(text: str, what: str) -> str:
    """``text`` if it can go into a string literal of any generated language unescaped, else
    :class:`ConversionError` (the manifest's patterns guarantee it; the generators check again
    rather than trust every caller)."""
    if not _LITERAL_SAFE.match(text):
        raise ConversionError(f"{what} {text!r} cannot be written into the generated wrappers")
    return text


def shape_text(shape: Sequence[int | str | None]) -> str:
    """``[batch, 3, 224, 224]``: a dynamic dimension by its name, or ``?`` without one."""
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"


def example_shape(shape: Sequence[int | str | None]) -> list[int]:
    """A concrete shape for the usage examples: batch 1, every other dynamic dimension 1."""
    return [d if isinstance(d, int) else 1 for d in shape]


def minus_one(shape: Sequence[int | str | None]) -> list[int]:
    """The shape as Triton and the compiled wrappers write it: every dynamic dimension -1."""
    return [d if isinstance(d, int) else -1 for d in shape]


def cell(value: Any) -> str:
    """``value`` as a Markdown table cell: ``—`` for nothing, pipes escaped, on one line."""
    text = "—" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")
