"""Stage: the export package (DESIGN §5), ``export-package.zip``.

Everything a consumer needs to run the converted model without this project: the model files that
were built, ``metadata.json`` (pre/post-processing, I/O specs, performance, compatibility, validation,
the sha256 of every other file), a Python wrapper that runs the model end to end, C++/Swift/Kotlin
wrappers, a Triton model repository and a README. Every text is generated from the same
:class:`IOSpec` and :class:`Manifest` the export used, so names, shapes and normalisation constants
cannot drift between them.

The zip is deterministic: entries in sorted order, fixed timestamps and permissions, model files
stored and text deflated, so the same inputs give the same bytes and a retried job overwrites its
package with an identical one. Nothing in it depends on the clock unless the caller passes
``created_at``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import string
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from heimdall import __version__
from heimdall.bundle.structural import Dim, TensorSpec
from heimdall.contracts.jobs import (
    PACKAGE_FILE_NAME,
    BenchmarkReport,
    FormatOutcome,
    FormatStatus,
    OutputFile,
)
from heimdall.contracts.manifest import ExportFormat, Manifest
from heimdall.errors import ConversionError

# The names, types and zip conventions the deployment packages read back (the API builds edge and
# container packages from this package): defined once, in the core layer.
from heimdall.export_package.deployment import (
    KOTLIN_WRAPPER_PATH,
    METADATA_FILE_NAME,
    README_FILE_NAME,
    SWIFT_WRAPPER_PATH,
    TRITON_TYPES,
    ZIP_TIMESTAMP,
)
from heimdall_batch.architectures import UNCERTAINTY_MAX, UNCERTAINTY_MIN
from heimdall_batch.outputs import file_record
from heimdall_batch.parity import FP32_ONNX_REFERENCE
from heimdall_batch.specs import IOSpec

TEMPLATES_DIR: Final = Path(__file__).resolve().parent / "templates"
METADATA_SCHEMA_VERSION: Final = "1"
PYTHON_WRAPPER_PATH: Final = "runtimes/python/model_wrapper.py"
CPP_HEADER_PATH: Final = "runtimes/cpp/model_wrapper.hpp"
CPP_SOURCE_PATH: Final = "runtimes/cpp/model_wrapper.cpp"

_FILE_MODE: Final = 0o100644  # a regular file, rw-r--r--
_UNIX: Final = 3  # ``create_system`` of a zip entry made on Unix, whatever platform writes it
_COPY_CHUNK: Final = 1024 * 1024

#: How ``metadata.json`` writes shapes (the Triton config and the compiled wrappers use -1 instead).
SHAPE_CONVENTION: Final = (
    "an integer is a fixed size; a string is a dynamic dimension named as in the ONNX graph "
    '("batch" is the batch axis); null is a dynamic dimension without a name. The Triton config '
    "and the C++/Swift/Kotlin wrappers write every dynamic dimension as -1."
)

#: (ONNX Runtime release, highest ai.onnx opset, highest IR version) per release, from the version
#: table of https://onnxruntime.ai/docs/reference/compatibility.html (1.20 is its newest row).
#: A release loads models whose opset and IR version are at most its own.
ONNXRUNTIME_COMPATIBILITY: Final[tuple[tuple[str, int, int], ...]] = (
    ("1.0", 11, 6),
    ("1.3", 12, 7),
    ("1.6", 13, 7),
    ("1.8", 14, 7),
    ("1.9", 15, 8),
    ("1.11", 16, 8),
    ("1.12", 17, 8),
    ("1.14", 18, 8),
    ("1.15", 19, 8),
    ("1.16", 19, 9),
    ("1.17", 20, 9),
    ("1.18", 21, 10),
    ("1.20", 21, 10),
)
ONNXRUNTIME_COMPATIBILITY_SOURCE: Final = "https://onnxruntime.ai/docs/reference/compatibility.html"


# Element types each compiled wrapper can copy out of ONNX Runtime. An output of another type is
# left out of that wrapper's result, with a comment saying so (the other wrappers still return it).
_CPP_TYPES: Final[Mapping[str, str]] = {
    "float32": "float",
    "float64": "double",
    "float16": "Ort::Float16_t",
    "int8": "int8_t",
    "uint8": "uint8_t",
    "int16": "int16_t",
    "uint16": "uint16_t",
    "int32": "int32_t",
    "uint32": "uint32_t",
    "int64": "int64_t",
    "uint64": "uint64_t",
    "bool": "bool",
}
# The Objective-C API's ORTTensorElementDataType covers these only.
_SWIFT_TYPES: Final[Mapping[str, str]] = {
    "float32": "Float",
    "int8": "Int8",
    "uint8": "UInt8",
    "int32": "Int32",
    "uint32": "UInt32",
    "int64": "Int64",
    "uint64": "UInt64",
}
# element type -> (Kotlin array type, extractor function, OnnxTensor buffer property)
_KOTLIN_TYPES: Final[Mapping[str, tuple[str, str, str]]] = {
    "float32": ("FloatArray", "floats", "floatBuffer"),
    "float64": ("DoubleArray", "doubles", "doubleBuffer"),
    "int64": ("LongArray", "longs", "longBuffer"),
    "int32": ("IntArray", "ints", "intBuffer"),
    "int16": ("ShortArray", "shorts", "shortBuffer"),
    "int8": ("ByteArray", "bytes", "byteBuffer"),
    "uint8": ("ByteArray", "bytes", "byteBuffer"),
    "bool": ("ByteArray", "bytes", "byteBuffer"),
}

def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_CPP_KEYWORDS: Final = _words(
    "alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t "
    "char32_t class compl concept const consteval constexpr constinit const_cast continue co_await "
    "co_return co_yield decltype default delete do double dynamic_cast else enum explicit export "
    "extern false float for friend goto if inline int long mutable namespace new noexcept not not_eq "
    "nullptr operator or or_eq private protected public register reinterpret_cast requires return "
    "short signed sizeof static static_assert static_cast struct switch template this thread_local "
    "throw true try typedef typeid typename union unsigned using virtual void volatile wchar_t while "
    "xor xor_eq"
)
_SWIFT_KEYWORDS: Final = _words(
    "associatedtype class deinit enum extension fileprivate func import init inout internal let open "
    "operator private precedencegroup protocol public rethrows static struct subscript typealias var "
    "break case catch continue default defer do else fallthrough for guard if in repeat return throw "
    "switch where while Any as await false is nil self Self super throws true try"
)
_KOTLIN_KEYWORDS: Final = _words(
    "as break class continue do else false for fun if in interface is null object package return "
    "super this throw true try typealias typeof val var when while"
)

#: Layout of the input by rank; axis 1 is the channel axis the normalisation stats describe.
_LAYOUTS: Final[Mapping[int, str]] = {1: "N", 2: "NC", 3: "NCL", 4: "NCHW", 5: "NCDHW"}

# Names and versions go into string literals of four languages unescaped; the manifest's patterns
# already guarantee this, and the generators check it again rather than trust every caller.
_LITERAL_SAFE: Final = re.compile(r"^[A-Za-z0-9_.:/+-]+$")
_RUFF_LINE_LENGTH: Final = 110


class _Source(string.Template):
    """Wrapper templates: ``@@{name}`` placeholders, which no target language uses (Kotlin and
    Swift use ``$``, C++ braces, Swift and Kotlin ``@`` alone)."""

    delimiter = "@@"


@dataclass(frozen=True)
class _Entry:
    """One file of the package: generated text, or a file from the job's output directory."""

    data: bytes | None = None
    path: Path | None = None

    def record(self) -> OutputFile:
        if self.path is not None:
            return file_record(self.path)
        assert self.data is not None  # an _Entry holds one or the other
        return OutputFile(sha256=hashlib.sha256(self.data).hexdigest(), size_bytes=len(self.data))


def write_export_package(
    out_dir: Path,
    manifest: Manifest,
    spec: IOSpec,
    outcomes: Sequence[FormatOutcome],
    benchmark: BenchmarkReport | None,
    *,
    job_id: str,
    onnx_metadata: Mapping[str, Any],
    created_at: datetime | None = None,
    reference: str = "PyTorch",
) -> Path:
    """Write ``out_dir/export-package.zip`` and return its path.

    ``outcomes`` are every requested format's outcome: the built ones are packaged from
    ``out_dir/<outcome.file>`` (their sha256 is checked against the outcome's), the failed and skipped
    ones are listed in the metadata with their reasons. The FP32 ONNX model must be among the built
    ones: the wrappers and the Triton repository run it. ``onnx_metadata`` holds the FP32 model's
    ``opset``, ``ir_version``, ``producer_name`` and ``producer_version``. ``created_at`` is recorded
    as given (``null`` without it: a clock reading would make every retry's bytes differ).
    ``reference`` names what the formats' parity was checked against (PyTorch, or the FP32 ONNX
    model for a model that came as a bundle).
    Raises :class:`ConversionError` when a built file is missing or does not match its outcome.
    """
    onnx_file = _fp32_onnx_file(outcomes)
    entries: dict[str, _Entry] = {}
    for outcome in outcomes:
        if outcome.status is FormatStatus.BUILT:
            entries[_built_file_name(outcome)] = _Entry(path=_checked_model_file(out_dir, outcome))
    entries[f"triton/{manifest.model_name}/1/model.onnx"] = _Entry(path=out_dir / onnx_file)
    min_ort = minimum_onnxruntime(onnx_metadata.get("opset"), onnx_metadata.get("ir_version"))
    header, source = cpp_wrapper(manifest, spec, onnx_file=onnx_file, min_onnxruntime=min_ort)
    texts = {
        PYTHON_WRAPPER_PATH: python_wrapper(manifest, spec, onnx_file=onnx_file, min_onnxruntime=min_ort),
        CPP_HEADER_PATH: header,
        CPP_SOURCE_PATH: source,
        SWIFT_WRAPPER_PATH: swift_wrapper(manifest, spec, onnx_file=onnx_file, min_onnxruntime=min_ort),
        KOTLIN_WRAPPER_PATH: kotlin_wrapper(manifest, spec, onnx_file=onnx_file, min_onnxruntime=min_ort),
        f"triton/{manifest.model_name}/config.pbtxt": triton_config(manifest, spec),
    }
    entries.update({name: _Entry(data=text.encode()) for name, text in texts.items()})
    readme = readme_text(
        manifest,
        spec,
        outcomes,
        benchmark,
        onnx_metadata=onnx_metadata,
        file_names=sorted([*entries, README_FILE_NAME, METADATA_FILE_NAME]),
        reference=reference,
    )
    entries[README_FILE_NAME] = _Entry(data=readme.encode())
    files = {name: entries[name].record() for name in sorted(entries)}
    metadata = build_metadata(
        manifest,
        spec,
        outcomes,
        benchmark,
        job_id=job_id,
        onnx_metadata=onnx_metadata,
        files=files,
        created_at=created_at,
        reference=reference,
    )
    entries[METADATA_FILE_NAME] = _Entry(data=_json_bytes(metadata))
    target = out_dir / PACKAGE_FILE_NAME
    _write_zip(target, entries)
    return target


# --- model files ------------------------------------------------------------------------------------


def _fp32_onnx_file(outcomes: Sequence[FormatOutcome]) -> str:
    onnx = next((o for o in outcomes if o.format is ExportFormat.ONNX), None)
    if onnx is None or onnx.status is not FormatStatus.BUILT:
        raise ConversionError("the export package needs the FP32 ONNX model, which was not built")
    return _built_file_name(onnx)


def _built_file_name(outcome: FormatOutcome) -> str:
    name = outcome.file
    # A plain name in the output directory: never a path that could leave the package root.
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ConversionError(f"the built {outcome.format.value} outcome names no usable file ({name!r})")
    if name in (METADATA_FILE_NAME, README_FILE_NAME):
        raise ConversionError(f"a model file cannot be called {name!r} (the package's own file)")
    return name


def _checked_model_file(out_dir: Path, outcome: FormatOutcome) -> Path:
    path = out_dir / _built_file_name(outcome)
    if not path.is_file():
        raise ConversionError(f"{outcome.format.value} is reported built but {path.name} is missing")
    if outcome.sha256 is not None:
        actual = file_record(path)
        if actual.sha256 != outcome.sha256 or (
            outcome.size_bytes is not None and actual.size_bytes != outcome.size_bytes
        ):
            raise ConversionError(
                f"{path.name} changed after {outcome.format.value} was validated: sha256 "
                f"{actual.sha256[:12]}… ({actual.size_bytes} bytes), outcome says "
                f"{outcome.sha256[:12]}… ({outcome.size_bytes} bytes)"
            )
    return path


def _write_zip(target: Path, entries: Mapping[str, _Entry]) -> None:
    """Write ``entries`` in sorted order with fixed metadata; atomically replace ``target``."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
            for name in sorted(entries):
                entry = entries[name]
                info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
                info.create_system = _UNIX
                info.external_attr = _FILE_MODE << 16
                if entry.path is not None:
                    # Model weights barely compress; storing them keeps big models fast to write and
                    # the bytes independent of the zlib build.
                    info.compress_type = zipfile.ZIP_STORED
                    info.file_size = entry.path.stat().st_size  # decides zip64 up front
                    with entry.path.open("rb") as src, archive.open(info, "w") as dst:
                        shutil.copyfileobj(src, dst, _COPY_CHUNK)
                else:
                    assert entry.data is not None
                    info.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(info, entry.data)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_bytes(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


# --- facts shared by the generators ------------------------------------------------------------------


def minimum_onnxruntime(opset: Any, ir_version: Any) -> str | None:
    """The oldest ONNX Runtime release that loads a model of this opset and IR version.

    ``None`` when either is unknown or newer than the newest row of
    :data:`ONNXRUNTIME_COMPATIBILITY` (then no release in the documented table can be named).
    """
    if not isinstance(opset, int) or not isinstance(ir_version, int):
        return None
    for release, max_opset, max_ir in ONNXRUNTIME_COMPATIBILITY:
        if opset <= max_opset and ir_version <= max_ir:
            return release
    return None


def input_layout(spec: IOSpec) -> str | None:
    """``NCHW``-style layout of the input, from its rank (axis 1 is the channel axis)."""
    return _LAYOUTS.get(len(spec.inputs[0].shape))


def triton_max_batch_size(manifest: Manifest, spec: IOSpec) -> int:
    """Triton's ``max_batch_size``: the TensorRT profile's maximum with a dynamic batch, else 0."""
    return manifest.tensorrt.max_batch_size if spec.dynamic_batch else 0


def _stats(manifest: Manifest) -> tuple[list[float], list[float]] | None:
    # Partial stats (means without stds) cannot normalise: the wrappers are then built without.
    pair = manifest.normalization_stats.means_and_stds() if manifest.normalization_stats else None
    if pair is None:
        return None
    means, stds = pair
    if not all(math.isfinite(v) for v in [*means, *stds]):
        raise ConversionError("normalization_stats must be finite numbers")
    return [float(m) for m in means], [float(s) for s in stds]


def _safe(text: str, what: str) -> str:
    if not _LITERAL_SAFE.match(text):
        raise ConversionError(f"{what} {text!r} cannot be written into the generated wrappers")
    return text


def _shape_text(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"


def _minus_one(shape: Sequence[Dim]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def _example_shape(spec: IOSpec) -> list[int]:
    """A concrete input shape for the usage examples: batch 1, other dynamic dims 1."""
    return [d if isinstance(d, int) else 1 for d in spec.inputs[0].shape]


def _identifiers(names: Sequence[str], keywords: frozenset[str]) -> list[str]:
    """Distinct identifiers for ``names`` in a language with ``keywords``."""
    result: list[str] = []
    for name in names:
        ident = re.sub(r"\W", "_", name)
        if not ident or ident[0].isdigit():
            ident = f"out_{ident}"
        if ident in keywords:
            ident += "_"
        base, n = ident, 2
        while ident in result:
            ident, n = f"{base}_{n}", n + 1
        result.append(ident)
    return result


def _float_literal(value: float, suffix: str = "") -> str:
    text = repr(float(value))
    return text + suffix


def _wrapped(items: Sequence[str], indent: str, width: int = 100) -> str:
    """``items`` joined by ", " over as many lines (each starting with ``indent``) as needed."""
    lines: list[str] = []
    line = ""
    for item in items:
        piece = f"{item},"
        if line and len(indent) + len(line) + 1 + len(piece) > width:
            lines.append(indent + line)
            line = piece
        else:
            line = f"{line} {piece}" if line else piece
    if line:
        lines.append(indent + line)
    return "\n".join(lines)


def _template(name: str) -> _Source:
    # Beside this module (package data ``templates/*``). Not importlib.resources: with an editable
    # install Python 3.11 sees the package as a namespace and cannot read resources from it.
    return _Source((TEMPLATES_DIR / name).read_text(encoding="utf-8"))


def _common_values(manifest: Manifest, spec: IOSpec, onnx_file: str, min_ort: str | None) -> dict[str, str]:
    tensor = spec.inputs[0]
    if tensor.elem_type != "float32":
        raise ConversionError(f"the wrappers feed float32 inputs; {tensor.name!r} is {tensor.elem_type}")
    return {
        "model_name": _safe(manifest.model_name, "model name"),
        "version": _safe(manifest.version, "version"),
        "input_name": _safe(tensor.name, "input name"),
        "onnx_file": _safe(onnx_file, "file name"),
        "min_onnxruntime": min_ort or "a recent release",
        "example_shape": ", ".join(str(d) for d in _example_shape(spec)),
    }


# --- Python wrapper -----------------------------------------------------------------------------------


def python_wrapper(
    manifest: Manifest, spec: IOSpec, *, onnx_file: str = "model.onnx", min_onnxruntime: str | None = None
) -> str:
    """``runtimes/python/model_wrapper.py`` for this model (numpy and onnxruntime only)."""
    values = _common_values(manifest, spec, onnx_file, min_onnxruntime)
    stats = _stats(manifest)
    batch = spec.inputs[0].shape[0]
    text = _template("model_wrapper.py.tmpl").substitute(
        values,
        model_name_literal=_py_str(manifest.model_name),
        version_literal=_py_str(manifest.version),
        input_name_literal=_py_str(spec.inputs[0].name),
        onnx_file_literal=_py_str(onnx_file),
        input_shape=_py_shape(spec.inputs[0].shape),
        output_shapes=_py_output_shapes(spec.outputs),
        feature_means=_py_floats(stats[0]) if stats else "None",
        feature_stds=_py_floats(stats[1]) if stats else "None",
        normalize_by_default=repr(stats is not None),
        default_batch_size=str(batch if isinstance(batch, int) else 1),
    )
    return _noqa_long_lines(text)


def _py_str(text: str) -> str:
    # Double-quoted like the project's code; the names are checked to need no escaping.
    return json.dumps(_safe(text, "name"))


def _py_shape(shape: Sequence[Dim]) -> str:
    return repr(tuple(d if isinstance(d, int) else None for d in shape))


def _py_output_shapes(outputs: Sequence[TensorSpec]) -> str:
    items = "".join(f"    {_py_str(t.name)}: {_py_shape(t.shape)},\n" for t in outputs)
    return "{\n" + items + "}"


def _py_floats(values: Sequence[float]) -> str:
    return "(\n" + _wrapped([_float_literal(v) for v in values], "    ") + "\n)"


def _noqa_long_lines(text: str) -> str:
    # Only generated constants can be long (a name may have 128 characters); the generated module
    # must pass ruff as it is, so such a line says why it may be long. Docstrings hold no names.
    lines = []
    in_docstring = False
    for line in text.split("\n"):
        long = not in_docstring and '"""' not in line and len(line) > _RUFF_LINE_LENGTH
        lines.append(f"{line}  # noqa: E501" if long else line)
        if line.count('"""') % 2:
            in_docstring = not in_docstring
    return "\n".join(lines)


# --- C++, Swift, Kotlin wrappers ----------------------------------------------------------------------


def cpp_wrapper(
    manifest: Manifest, spec: IOSpec, *, onnx_file: str = "model.onnx", min_onnxruntime: str | None = None
) -> tuple[str, str]:
    """``runtimes/cpp/model_wrapper.hpp`` and ``.cpp`` (ONNX Runtime C++ API, C++17)."""
    values = _common_values(manifest, spec, onnx_file, min_onnxruntime)
    stats = _stats(manifest)
    decoded = _decodable(spec.outputs, _CPP_TYPES, _CPP_KEYWORDS)
    fields = []
    for tensor, ident in _all_outputs(spec.outputs, _CPP_KEYWORDS):
        if tensor.elem_type in _CPP_TYPES:
            ctype = _CPP_TYPES[tensor.elem_type]
            fields.append(f"  Tensor<{ctype}> {ident};  // {tensor.name}: {_shape_text(tensor.shape)}")
        else:
            fields.append(f"  // {tensor.name} ({tensor.elem_type}) is not copied out by this wrapper")
    if stats:
        normalize = (
            "    const std::size_t channels = static_cast<std::size_t>(shape[1]);\n"
            "    std::size_t inner = 1;\n"
            "    for (std::size_t i = 2; i < shape.size(); ++i) {\n"
            "      inner *= static_cast<std::size_t>(shape[i]);\n"
            "    }\n"
            "    for (std::size_t i = 0; i < input.size(); ++i) {\n"
            "      const std::size_t c = (i / inner) % channels;\n"
            "      input[i] = (input[i] - kFeatureMeans[c]) / kFeatureStds[c];\n"
            "    }"
        )
    else:
        normalize = (
            f'    throw std::invalid_argument("{values["model_name"]} has no normalisation stats: '
            'call Predict(input, shape, false)");'
        )
    copies = [
        f"  outputs.{ident} = CopyTensor<{_CPP_TYPES[t.elem_type]}>(results[{i}]);"
        for i, (t, ident) in enumerate(decoded)
    ]
    means, stds = stats if stats else ([], [])
    header = _template("model_wrapper.hpp.tmpl").substitute(
        values,
        output_fields="\n".join(fields),
        input_rank=str(len(spec.inputs[0].shape)),
        input_shape=", ".join(str(d) for d in _minus_one(spec.inputs[0].shape)),
        output_count=str(len(decoded)),
        output_names=", ".join(f'"{_safe(t.name, "output name")}"' for t, _ in decoded),
        has_normalization="true" if stats else "false",
        channel_count=str(len(means)),
        feature_means=", ".join(_float_literal(v, "f") for v in means),
        feature_stds=", ".join(_float_literal(v, "f") for v in stds),
    )
    source = _template("model_wrapper.cpp.tmpl").substitute(
        values, normalize_block=normalize, output_copies="\n".join(copies)
    )
    return header, source


def swift_wrapper(
    manifest: Manifest, spec: IOSpec, *, onnx_file: str = "model.onnx", min_onnxruntime: str | None = None
) -> str:
    """``runtimes/swift/ModelWrapper.swift`` (ONNX Runtime Objective-C API from Swift: ``ORTSession``)."""
    values = _common_values(manifest, spec, onnx_file, min_onnxruntime)
    stats = _stats(manifest)
    decoded = _decodable(spec.outputs, _SWIFT_TYPES, _SWIFT_KEYWORDS)
    fields = []
    for tensor, ident in _all_outputs(spec.outputs, _SWIFT_KEYWORDS):
        if tensor.elem_type in _SWIFT_TYPES:
            stype = _SWIFT_TYPES[tensor.elem_type]
            fields.append(
                f"    /// {tensor.name}: {_shape_text(tensor.shape)}\n    public let {ident}: Tensor<{stype}>"
            )
        else:
            fields.append(f"    // {tensor.name} ({tensor.elem_type}) is not copied out by this wrapper")
    if stats:
        normalize = (
            "        let channels = shape[1]\n"
            "        let inner = shape.dropFirst(2).reduce(1, *)\n"
            "        return (0..<input.count).map { index in\n"
            "            let channel = (index / inner) % channels\n"
            "            return (input[index] - featureMeans[channel]) / featureStds[channel]\n"
            "        }"
        )
    else:
        normalize = "        throw ModelWrapperError.noNormalization"
    copies = ",\n".join(
        f'            {ident}: Self.copy(results, "{t.name}", of: {_SWIFT_TYPES[t.elem_type]}.self)'
        for t, ident in decoded
    )
    means, stds = stats if stats else ([], [])
    return _template("ModelWrapper.swift.tmpl").substitute(
        values,
        output_fields="\n".join(fields),
        input_shape=", ".join(str(d) for d in _minus_one(spec.inputs[0].shape)),
        output_names=", ".join(f'"{_safe(t.name, "output name")}"' for t, _ in decoded),
        has_normalization="true" if stats else "false",
        feature_means=", ".join(_float_literal(v) for v in means),
        feature_stds=", ".join(_float_literal(v) for v in stds),
        normalize_block=normalize,
        output_copies=copies,
    )


def kotlin_wrapper(
    manifest: Manifest, spec: IOSpec, *, onnx_file: str = "model.onnx", min_onnxruntime: str | None = None
) -> str:
    """``runtimes/kotlin/ModelWrapper.kt`` (ONNX Runtime Java API ``ai.onnxruntime`` from Kotlin)."""
    values = _common_values(manifest, spec, onnx_file, min_onnxruntime)
    stats = _stats(manifest)
    decoded = _decodable(spec.outputs, _KOTLIN_TYPES, _KOTLIN_KEYWORDS)
    fields = []
    for tensor, ident in _all_outputs(spec.outputs, _KOTLIN_KEYWORDS):
        if tensor.elem_type in _KOTLIN_TYPES:
            array = _KOTLIN_TYPES[tensor.elem_type][0]
            fields.append(
                f"    /** {tensor.name}: {_shape_text(tensor.shape)} */\n    val {ident}: Tensor<{array}>,"
            )
        else:
            fields.append(f"    // {tensor.name} ({tensor.elem_type}) is not copied out by this wrapper")
    if stats:
        normalize = (
            "            val channels = shape[1].toInt()\n"
            "            var inner = 1\n"
            "            for (axis in 2 until shape.size) inner *= shape[axis].toInt()\n"
            "            return FloatArray(input.size) { index ->\n"
            "                val channel = (index / inner) % channels\n"
            "                (input[index] - FEATURE_MEANS[channel]) / FEATURE_STDS[channel]\n"
            "            }"
        )
    else:
        normalize = (
            f'            throw IllegalArgumentException("{values["model_name"]} has no normalisation stats: '
            'call predict(input, shape, normalize = false)")'
        )
    copies = "\n".join(
        f'                    {ident} = {_KOTLIN_TYPES[t.elem_type][1]}(output(result, "{t.name}")),'
        for t, ident in decoded
    )
    extractors = []
    for array, function, buffer in sorted({_KOTLIN_TYPES[t.elem_type] for t, _ in decoded}):
        extractors.append(
            f"\n        private fun {function}(tensor: OnnxTensor): Tensor<{array}> {{\n"
            f"            val buffer = tensor.{buffer}\n"
            f"            val values = {array}(buffer.remaining()).also {{ buffer.get(it) }}\n"
            "            return Tensor(tensor.info.shape, values)\n"
            "        }"
        )
    means, stds = stats if stats else ([], [])
    return _template("ModelWrapper.kt.tmpl").substitute(
        values,
        output_fields="\n".join(fields),
        input_shape=", ".join(str(d) for d in _minus_one(spec.inputs[0].shape)),
        output_names=", ".join(f'"{_safe(t.name, "output name")}"' for t, _ in decoded),
        has_normalization="true" if stats else "false",
        feature_means=", ".join(_float_literal(v, "f") for v in means),
        feature_stds=", ".join(_float_literal(v, "f") for v in stds),
        normalize_block=normalize,
        output_copies=copies,
        extractors="".join(extractors),
    )


def _all_outputs(outputs: Sequence[TensorSpec], keywords: frozenset[str]) -> list[tuple[TensorSpec, str]]:
    names = [_safe(t.name, "output name") for t in outputs]
    return list(zip(outputs, _identifiers(names, keywords), strict=True))


def _decodable(
    outputs: Sequence[TensorSpec], types: Mapping[str, Any], keywords: frozenset[str]
) -> list[tuple[TensorSpec, str]]:
    return [(t, ident) for t, ident in _all_outputs(outputs, keywords) if t.elem_type in types]


# --- Triton -------------------------------------------------------------------------------------------


def triton_config(manifest: Manifest, spec: IOSpec) -> str:
    """``triton/{model_name}/config.pbtxt`` for the ONNX Runtime backend.

    With ``max_batch_size`` > 0 (dynamic batch) Triton adds the batch dimension itself, so ``dims``
    leave it out; with 0 they are the full shape. Other dynamic dimensions are -1. A tensor that is
    only a batch of scalars gets ``dims: [ 1 ]`` and an empty ``reshape``, as Triton requires.
    """
    max_batch = triton_max_batch_size(manifest, spec)
    lines = [
        f'name: "{_safe(manifest.model_name, "model name")}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch}",
        'default_model_filename: "model.onnx"',
    ]
    for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        blocks = [_triton_tensor(t, batched=max_batch > 0) for t in tensors]
        lines.append(f"{kind} [\n" + ",\n".join(blocks) + "\n]")
    if max_batch > 0:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def _triton_tensor(tensor: TensorSpec, *, batched: bool) -> str:
    data_type = TRITON_TYPES.get(tensor.elem_type)
    if data_type is None:
        raise ConversionError(f"{tensor.name!r} has type {tensor.elem_type}, which Triton cannot serve")
    dims = _minus_one(tensor.shape[1:] if batched else tensor.shape)
    body = [f'    name: "{_safe(tensor.name, "tensor name")}"', f"    data_type: {data_type}"]
    if dims:
        body.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    else:
        body += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "  {\n" + "\n".join(body) + "\n  }"


# --- metadata.json ------------------------------------------------------------------------------------


def build_metadata(
    manifest: Manifest,
    spec: IOSpec,
    outcomes: Sequence[FormatOutcome],
    benchmark: BenchmarkReport | None,
    *,
    job_id: str,
    onnx_metadata: Mapping[str, Any],
    files: Mapping[str, OutputFile],
    created_at: datetime | None = None,
    reference: str = "PyTorch",
) -> dict[str, Any]:
    """The content of ``metadata.json`` (``files``: every other file of the package)."""
    return {
        "schema_version": METADATA_SCHEMA_VERSION,
        "generator": f"heimdall-export {__version__}",
        "model": {
            "name": manifest.model_name,
            "version": manifest.version,
            "architecture": manifest.architecture,
            "architecture_kwargs": manifest.architecture_kwargs,
            "description": manifest.description,
            "created_by": manifest.created_by,
            "job_id": job_id,
            "created_at": created_at.isoformat() if created_at is not None else None,
        },
        "preprocessing": preprocessing(manifest, spec),
        "postprocessing": postprocessing(manifest, spec),
        "shape_convention": SHAPE_CONVENTION,
        "inputs": [_tensor_json(t) for t in spec.inputs],
        "outputs": [_tensor_json(t) for t in spec.outputs],
        "dynamic_batch": spec.dynamic_batch,
        "performance": _performance(outcomes, benchmark),
        "compatibility": compatibility(manifest, outcomes, onnx_metadata),
        "validation": {o.format.value: _validation(o, reference) for o in outcomes},
        "files": {name: record.model_dump(mode="json") for name, record in sorted(files.items())},
    }


def preprocessing(manifest: Manifest, spec: IOSpec) -> dict[str, Any]:
    """What a caller does to raw input before the model sees it."""
    stats = _stats(manifest)
    tensor = spec.inputs[0]
    return {
        "input": tensor.name,
        "layout": input_layout(spec),
        "dtype": tensor.elem_type,
        "normalization": (
            {
                "formula": "(x - mean) / std",
                "axis": 1,
                "mean": stats[0],
                "std": stats[1],
            }
            if stats
            else None
        ),
        "note": (
            "normalise per channel (axis 1) before inference; the wrappers do it when asked"
            if stats
            else "no normalisation stats were given: the model takes its input as is"
        ),
    }


def postprocessing(manifest: Manifest, spec: IOSpec) -> dict[str, Any]:
    """What the outputs mean and what was already applied inside the model."""
    outputs = []
    for index, tensor in enumerate(spec.outputs):
        outputs.append(
            {
                "name": tensor.name,
                "dtype": tensor.elem_type,
                "shape": _shape_json(tensor.shape),
                "description": _output_description(manifest, index, len(spec.outputs)),
            }
        )
    return {"outputs": outputs}


def _output_description(manifest: Manifest, index: int, count: int) -> str:
    if manifest.architecture == "localization_net" and count == 2:
        if index == 0:
            return "estimated positions, one row per sample (unbounded regression output, no activation)"
        return (
            f"uncertainty per position: a sigmoid clamped to [{UNCERTAINTY_MIN}, {UNCERTAINTY_MAX}] "
            "inside the model, so every value already lies in that range; no further processing needed"
        )
    return "the model's raw output; no post-processing is applied by the model or the wrappers"


def _tensor_json(tensor: TensorSpec) -> dict[str, Any]:
    return {"name": tensor.name, "dtype": tensor.elem_type, "shape": _shape_json(tensor.shape)}


def _shape_json(shape: Sequence[Dim]) -> list[int | str | None]:
    return list(shape)


def _performance(outcomes: Sequence[FormatOutcome], benchmark: BenchmarkReport | None) -> dict[str, Any]:
    return {
        "unit": "milliseconds, median per batch size",
        "hardware": benchmark.hardware if benchmark else None,
        "benchmark": benchmark.model_dump(mode="json") if benchmark else None,
        "latency_ms": {o.format.value: dict(o.latency_ms) for o in outcomes if o.latency_ms},
        "size_bytes": {o.format.value: o.size_bytes for o in outcomes if o.size_bytes is not None},
    }


def _validation(outcome: FormatOutcome, reference: str) -> dict[str, Any]:
    checks = outcome.parity
    return {
        "status": outcome.status.value,
        "reason": outcome.reason,
        "file": outcome.file if outcome.status is FormatStatus.BUILT else None,
        "parity_passed": all(c.passed for c in checks) if checks else None,
        "parity_reference": (FP32_ONNX_REFERENCE if outcome.format is ExportFormat.TENSORRT else reference)
        if checks
        else None,
        "parity": [c.model_dump(mode="json") for c in checks],
    }


def compatibility(
    manifest: Manifest, outcomes: Sequence[FormatOutcome], onnx_metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """Which runtimes each built file needs."""
    opset, ir_version = onnx_metadata.get("opset"), onnx_metadata.get("ir_version")
    min_ort = minimum_onnxruntime(opset, ir_version)
    newest = ONNXRUNTIME_COMPATIBILITY[-1]
    onnx = {
        "opset": opset,
        "ir_version": ir_version,
        "producer_name": onnx_metadata.get("producer_name"),
        "producer_version": onnx_metadata.get("producer_version"),
        "min_onnxruntime": min_ort,
        "min_onnxruntime_source": ONNXRUNTIME_COMPATIBILITY_SOURCE,
    }
    upgrade = onnx_metadata.get("opset_upgrade")
    if upgrade is not None:
        # A bundle's model ONNX Runtime could not load as stamped: say that model.onnx is its upgrade,
        # not the bundle's bytes (which hash to bundle_onnx_sha256).
        onnx["bundle_onnx_sha256"] = onnx_metadata.get("bundle_onnx_sha256")
        onnx["opset_upgrade"] = dict(upgrade)
    if min_ort is None:
        onnx["note"] = (
            f"opset {opset} / IR {ir_version} is newer than the documented table (which ends at "
            f"onnxruntime {newest[0]}: opset {newest[1]}, IR {newest[2]}); use a recent onnxruntime"
        )
    result: dict[str, Any] = {"onnx": onnx}
    for outcome in outcomes:
        if outcome.status is not FormatStatus.BUILT or outcome.format is ExportFormat.ONNX:
            continue
        if outcome.format in (ExportFormat.ONNX_FP16, ExportFormat.ONNX_INT8):
            result[outcome.format.value] = {
                "file": outcome.file,
                "opset": outcome.details.get("opset", opset),
                "min_onnxruntime": min_ort,
                "note": "derived from the FP32 model; same opset and IR version unless stated",
            }
        elif outcome.format is ExportFormat.TORCHSCRIPT:
            result["torchscript"] = {
                "file": outcome.file,
                "torch_version": outcome.details.get("torch_version", onnx_metadata.get("producer_version")),
                "note": "load with torch.jit.load in PyTorch or LibTorch of this version or newer",
            }
        elif outcome.format is ExportFormat.TENSORRT:
            result["tensorrt"] = _engine_compatibility(manifest, outcome)
    return result


def _engine_compatibility(manifest: Manifest, outcome: FormatOutcome) -> dict[str, Any]:
    details = outcome.details
    return {
        "file": outcome.file,
        "tensorrt_version": details.get("tensorrt_version"),
        "compute_capability": details.get("compute_capability"),
        "gpu": details.get("gpu_name", details.get("gpu")),
        "precision": details.get("precision", manifest.tensorrt.precision),
        "batch_profile": details.get("profile", list(manifest.tensorrt.profile)),
        "portable": False,
        "note": (
            "engines are not portable: one runs only with the TensorRT version that built it, on GPUs "
            "of the same compute capability; rebuild it from model.onnx anywhere else"
        ),
    }


# --- README -------------------------------------------------------------------------------------------


def readme_text(
    manifest: Manifest,
    spec: IOSpec,
    outcomes: Sequence[FormatOutcome],
    benchmark: BenchmarkReport | None,
    *,
    onnx_metadata: Mapping[str, Any],
    file_names: Iterable[str],
    reference: str = "PyTorch",
) -> str:
    """``README.md``: what is inside, how to run it, and how far it was checked."""
    sections = [
        _readme_intro(manifest),
        _readme_contents(file_names),
        _readme_io(manifest, spec),
        _readme_formats(outcomes),
        _readme_parity(outcomes, reference),
        _readme_performance(benchmark, outcomes),
        _readme_compatibility(manifest, outcomes, onnx_metadata),
        _readme_usage(manifest, spec, outcomes),
    ]
    return "\n\n".join(s.rstrip("\n") for s in sections if s) + "\n"


def _cell(value: Any) -> str:
    text = "—" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _readme_intro(manifest: Manifest) -> str:
    lines = [f"# {manifest.model_name} {manifest.version}", ""]
    if manifest.description:
        lines += [manifest.description, ""]
    lines.append(
        f"Architecture `{manifest.architecture}`, exported by Heimdall Export {__version__}. "
        "`metadata.json` holds everything below in machine-readable form, with the sha256 of every "
        "other file in this package."
    )
    return "\n".join(lines)


def _readme_contents(file_names: Iterable[str]) -> str:
    lines = ["## Contents", ""]
    lines += [f"- `{name}`" for name in file_names]
    return "\n".join(lines)


def _readme_io(manifest: Manifest, spec: IOSpec) -> str:
    lines = ["## Inputs and outputs", "", "| | name | dtype | shape |", "|---|---|---|---|"]
    for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        lines += [
            f"| {kind} | `{_cell(t.name)}` | {t.elem_type} | `{_shape_text(t.shape)}` |" for t in tensors
        ]
    lines += ["", "`batch` is the dynamic batch axis." if spec.dynamic_batch else "The batch size is fixed."]
    stats = _stats(manifest)
    layout = input_layout(spec) or f"rank {len(spec.inputs[0].shape)}"
    lines += ["", "### Preprocessing", ""]
    if stats:
        lines += [
            f"Input layout {layout}, float32. Normalise per channel (axis 1): `(x - mean) / std` with",
            "",
            f"- mean = `{stats[0]}`",
            f"- std = `{stats[1]}`",
            "",
            "The wrappers do this for you (`normalize=True` in Python, the default).",
        ]
    else:
        lines.append(f"Input layout {layout}, float32. No normalisation stats: feed the input as it is.")
    lines += ["", "### Postprocessing", ""]
    lines += [
        f"- `{_cell(t.name)}`: {_output_description(manifest, i, len(spec.outputs))}"
        for i, t in enumerate(spec.outputs)
    ]
    return "\n".join(lines)


def _readme_formats(outcomes: Sequence[FormatOutcome]) -> str:
    lines = ["## Formats", "", "| format | status | file | size | reason |", "|---|---|---|---|---|"]
    for o in outcomes:
        size = f"{o.size_bytes:,} bytes" if o.size_bytes is not None else None
        file = o.file if o.status is FormatStatus.BUILT else None
        lines.append(
            f"| {o.format.value} | {o.status.value} | {_cell(file)} | {_cell(size)} | {_cell(o.reason)} |"
        )
    return "\n".join(lines)


def _readme_parity(outcomes: Sequence[FormatOutcome], reference: str) -> str:
    rows = [(o, c) for o in outcomes for c in o.parity]
    if not rows:
        return ""
    lines = [
        "## Validation",
        "",
        f"Each format was compared with {reference}"
        f"{'' if reference == FP32_ONNX_REFERENCE else ' (TensorRT with ONNX Runtime)'} on random inputs.",
        "",
        "| format | batch | output | max abs err | max rel err | tolerance | finite | passed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {o.format.value} | {c.batch_size} | `{_cell(c.output)}` | {c.max_abs_err:.3g} | "
        f"{c.max_rel_err:.3g} | {c.tolerance:g} | {c.finite} | {c.passed} |"
        for o, c in rows
    ]
    return "\n".join(lines)


def _readme_performance(benchmark: BenchmarkReport | None, outcomes: Sequence[FormatOutcome]) -> str:
    lines = ["## Performance", ""]
    if benchmark is not None:
        lines += [
            f"Median latency on {benchmark.hardware} ({benchmark.provider}), in milliseconds:",
            "",
            "| batch | PyTorch | ONNX Runtime | speedup |",
            "|---|---|---|---|",
        ]
        for batch in sorted(benchmark.onnx_ms, key=_batch_order):
            torch_ms = benchmark.torch_ms.get(batch)
            speedup = benchmark.speedup.get(batch)
            lines.append(
                f"| {batch} | {_ms(torch_ms)} | {_ms(benchmark.onnx_ms[batch])} | "
                f"{_cell(f'{speedup:.2f}x' if speedup is not None else None)} |"
            )
    else:
        lines.append("No benchmark was run.")
    others = [o for o in outcomes if o.latency_ms and o.format is not ExportFormat.ONNX]
    if others:
        lines += ["", "Other formats (median ms per batch size):", ""]
        for o in others:
            batches = sorted(o.latency_ms, key=_batch_order)
            timings = ", ".join(f"batch {b}: {_ms(o.latency_ms[b])}" for b in batches)
            lines.append(f"- {o.format.value}: {timings}")
    return "\n".join(lines)


def _batch_order(batch: str) -> tuple[int, str]:
    return (int(batch), batch) if batch.isdigit() else (1 << 30, batch)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _readme_compatibility(
    manifest: Manifest, outcomes: Sequence[FormatOutcome], onnx_metadata: Mapping[str, Any]
) -> str:
    facts = compatibility(manifest, outcomes, onnx_metadata)
    onnx = facts["onnx"]
    lines = [
        "## Compatibility",
        "",
        f"- ONNX: opset {onnx['opset']}, IR version {onnx['ir_version']}, produced by "
        f"{onnx['producer_name']} {onnx['producer_version']}.",
        f"- ONNX Runtime: {onnx['min_onnxruntime'] or 'a recent release'} or newer "
        f"(from the [compatibility table]({ONNXRUNTIME_COMPATIBILITY_SOURCE})).",
    ]
    upgrade = onnx.get("opset_upgrade")
    if upgrade is not None:
        lines.append(
            f"- The FP32 model is the bundle's ONNX model upgraded from opset {upgrade['from_opset']} to "
            f"{upgrade['to_opset']} with {upgrade['converter']} (ONNX Runtime no longer implements an "
            f"operator at the old opset), checked against {upgrade['samples_checked']} of the bundle's "
            f"sample predictions: not byte-identical to the bundle's model (sha256 "
            f"`{onnx['bundle_onnx_sha256']}`)."
        )
    if "torchscript" in facts:
        lines.append(f"- TorchScript: PyTorch/LibTorch {facts['torchscript']['torch_version']} or newer.")
    if "tensorrt" in facts:
        engine = facts["tensorrt"]
        lines.append(
            f"- TensorRT engine `{engine['file']}`: TensorRT {engine['tensorrt_version']}, compute "
            f"capability {engine['compute_capability']} ({engine['gpu']}), {engine['precision']}. "
            "Engines are **not portable**: rebuild from `model.onnx` for another GPU or TensorRT version."
        )
    return "\n".join(lines)


def _readme_usage(manifest: Manifest, spec: IOSpec, outcomes: Sequence[FormatOutcome]) -> str:
    onnx_file = _fp32_onnx_file(outcomes)
    example = ", ".join(str(d) for d in _example_shape(spec))
    max_batch = triton_max_batch_size(manifest, spec)
    name = manifest.model_name
    return f"""## Running it

### Python (numpy + onnxruntime)

```bash
pip install numpy onnxruntime
python runtimes/python/model_wrapper.py          # runs one random batch, prints the output shapes
```

```python
import sys; sys.path.insert(0, "runtimes/python")
from model_wrapper import Model
outputs = Model().predict(x)   # x: raw input of shape ({example}); returns {{output name: array}}
```

### C++ (ONNX Runtime C++ API, C++17)

`runtimes/cpp/model_wrapper.hpp` / `.cpp`: `heimdall::ModelWrapper model(ORT_TSTR("{onnx_file}"));`
then `model.Predict(values, {{{example}}})`. Link against `onnxruntime`.

### Swift (iOS / macOS)

`runtimes/swift/ModelWrapper.swift` uses `ORTSession` from the onnxruntime-objc pod or the
onnxruntime Swift package: `try ModelWrapper(modelPath: path).predict(values, shape: [{example}])`.

### Kotlin (Android / JVM)

`runtimes/kotlin/ModelWrapper.kt` uses `ai.onnxruntime.OrtSession`
(`com.microsoft.onnxruntime:onnxruntime-android` or `:onnxruntime`):
`ModelWrapper(path).use {{ it.predict(values, longArrayOf({example})) }}`.

### Triton Inference Server

`triton/` is a model repository: `tritonserver --model-repository=$PWD/triton`. The model `{name}`
uses the ONNX Runtime backend with `max_batch_size: {max_batch}`; its `config.pbtxt` is generated from
the model's real inputs and outputs.
"""
