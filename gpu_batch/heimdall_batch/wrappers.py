"""The export package's runtime wrappers: Python (numpy + onnxruntime), C++ (ONNX Runtime C++ API),
Swift (``onnxruntime-objc``) and Kotlin (``ai.onnxruntime``).

Each is a template beside this module (``templates/*.tmpl``) filled from the same :class:`IOSpec`
and :class:`Manifest` the export used, so names, shapes and normalisation constants cannot drift
between the languages. Names go into string literals unescaped, so every one is checked first
(:func:`~heimdall.export_package.metadata.checked_literal`).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from heimdall.bundle.structural import Dim, TensorSpec
from heimdall.contracts.manifest import Manifest
from heimdall.errors import ConversionError
from heimdall.export_package.metadata import checked_literal, example_shape, minus_one, shape_text
from heimdall_batch.package_facts import normalization_stats
from heimdall_batch.specs import IOSpec

TEMPLATES_DIR: Final = Path(__file__).resolve().parent / "templates"

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

_RUFF_LINE_LENGTH: Final = 110


class _Source(string.Template):
    """Wrapper templates: ``@@{name}`` placeholders, which no target language uses (Kotlin and
    Swift use ``$``, C++ braces, Swift and Kotlin ``@`` alone)."""

    delimiter = "@@"


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
        "model_name": checked_literal(manifest.model_name, "model name"),
        "version": checked_literal(manifest.version, "version"),
        "input_name": checked_literal(tensor.name, "input name"),
        "onnx_file": checked_literal(onnx_file, "file name"),
        "min_onnxruntime": min_ort or "a recent release",
        "example_shape": ", ".join(str(d) for d in example_shape(spec.inputs[0].shape)),
    }


# --- Python wrapper -----------------------------------------------------------------------------------


def python_wrapper(
    manifest: Manifest, spec: IOSpec, *, onnx_file: str = "model.onnx", min_onnxruntime: str | None = None
) -> str:
    """``runtimes/python/model_wrapper.py`` for this model (numpy and onnxruntime only)."""
    values = _common_values(manifest, spec, onnx_file, min_onnxruntime)
    stats = normalization_stats(manifest)
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
    return json.dumps(checked_literal(text, "name"))


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
    stats = normalization_stats(manifest)
    decoded = _decodable(spec.outputs, _CPP_TYPES, _CPP_KEYWORDS)
    fields = []
    for tensor, ident in _all_outputs(spec.outputs, _CPP_KEYWORDS):
        if tensor.elem_type in _CPP_TYPES:
            ctype = _CPP_TYPES[tensor.elem_type]
            fields.append(f"  Tensor<{ctype}> {ident};  // {tensor.name}: {shape_text(tensor.shape)}")
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
        input_shape=", ".join(str(d) for d in minus_one(spec.inputs[0].shape)),
        output_count=str(len(decoded)),
        output_names=", ".join(f'"{checked_literal(t.name, "output name")}"' for t, _ in decoded),
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
    stats = normalization_stats(manifest)
    decoded = _decodable(spec.outputs, _SWIFT_TYPES, _SWIFT_KEYWORDS)
    fields = []
    for tensor, ident in _all_outputs(spec.outputs, _SWIFT_KEYWORDS):
        if tensor.elem_type in _SWIFT_TYPES:
            stype = _SWIFT_TYPES[tensor.elem_type]
            fields.append(
                f"    /// {tensor.name}: {shape_text(tensor.shape)}\n    public let {ident}: Tensor<{stype}>"
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
        input_shape=", ".join(str(d) for d in minus_one(spec.inputs[0].shape)),
        output_names=", ".join(f'"{checked_literal(t.name, "output name")}"' for t, _ in decoded),
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
    stats = normalization_stats(manifest)
    decoded = _decodable(spec.outputs, _KOTLIN_TYPES, _KOTLIN_KEYWORDS)
    fields = []
    for tensor, ident in _all_outputs(spec.outputs, _KOTLIN_KEYWORDS):
        if tensor.elem_type in _KOTLIN_TYPES:
            array = _KOTLIN_TYPES[tensor.elem_type][0]
            fields.append(
                f"    /** {tensor.name}: {shape_text(tensor.shape)} */\n    val {ident}: Tensor<{array}>,"
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
        input_shape=", ".join(str(d) for d in minus_one(spec.inputs[0].shape)),
        output_names=", ".join(f'"{checked_literal(t.name, "output name")}"' for t, _ in decoded),
        has_normalization="true" if stats else "false",
        feature_means=", ".join(_float_literal(v, "f") for v in means),
        feature_stds=", ".join(_float_literal(v, "f") for v in stds),
        normalize_block=normalize,
        output_copies=copies,
        extractors="".join(extractors),
    )


def _all_outputs(outputs: Sequence[TensorSpec], keywords: frozenset[str]) -> list[tuple[TensorSpec, str]]:
    names = [checked_literal(t.name, "output name") for t in outputs]
    return list(zip(outputs, _identifiers(names, keywords), strict=True))


def _decodable(
    outputs: Sequence[TensorSpec], types: Mapping[str, Any], keywords: frozenset[str]
) -> list[tuple[TensorSpec, str]]:
    return [(t, ident) for t, ident in _all_outputs(outputs, keywords) if t.elem_type in types]
