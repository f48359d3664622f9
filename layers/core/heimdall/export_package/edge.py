"""The edge package (DESIGN §5, §7): ``{name}-edge.zip`` for mobile and edge devices.

Built from an export package: one ONNX model (INT8 when it was built, else FP16, else FP32, or the
precision asked for), the Kotlin and Swift wrappers of the export package, ``metadata.json`` (the
package's, with an ``edge`` section and the edge package's own files) and a README for Android
(``ai.onnxruntime``) and iOS (``onnxruntime-objc``). The export package is checked first
(:mod:`heimdall.export_package.reader`); every file copied must match its sha256 in ``metadata.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, get_args

from heimdall import __version__
from heimdall.domain.deployments import EdgePrecision, ModelPrecision
from heimdall.errors import PackageInconsistent, RequestInvalid
from heimdall.export_package.archive import ZipEntry, json_bytes, shown
from heimdall.export_package.deployment import (
    BuiltPackage,
    copied,
    file_records,
    io_table,
    min_onnxruntime,
    package_name,
    postprocessing_lines,
    preprocessing_lines,
    write_package,
)
from heimdall.export_package.layout import (
    GENERATOR,
    KOTLIN_WRAPPER_PATH,
    METADATA_FILE_NAME,
    README_FILE_NAME,
    SWIFT_WRAPPER_PATH,
)
from heimdall.export_package.metadata import PackageMetadata, cell, example_shape
from heimdall.export_package.reader import MAX_PACKAGE_BYTES, ExportPackage, open_export_package

#: What ``auto`` prefers, best first, and the export format (``metadata.json``'s ``validation`` key)
#: that holds each precision.
EDGE_PRECISION_ORDER: Final[tuple[ModelPrecision, ...]] = ("int8", "fp16", "fp32")
_PRECISION_FORMATS: Final[Mapping[ModelPrecision, str]] = {
    "int8": "onnx_int8",
    "fp16": "onnx_fp16",
    "fp32": "onnx",
}


def build_edge_package(
    export_package: Path,
    out_dir: Path,
    *,
    name: str,
    precision: EdgePrecision = "auto",
    max_bytes: int = MAX_PACKAGE_BYTES,
) -> BuiltPackage:
    """Write ``out_dir/{name}-edge.zip`` from the export package and return what was written.

    ``precision="auto"`` takes the INT8 model when it was built, else the FP16, else the FP32 one; an
    explicit precision that was not built raises :class:`RequestInvalid` (``options.precision``)
    naming those that were. The package is checked first (see the module's docstring); every file
    copied must match its sha256 in ``metadata.json``, else :class:`PackageInconsistent`.
    """
    requested = _checked_precision(precision)
    with open_export_package(Path(export_package), max_bytes=max_bytes) as package:
        metadata = package.metadata
        slug = package_name(name, metadata)
        available = _built_models(package)
        chosen = _chosen_precision(requested, available)
        model_file = available[chosen]
        model_record = package.record(model_file)
        wrappers = {path: package.record(path) for path in (KOTLIN_WRAPPER_PATH, SWIFT_WRAPPER_PATH)}
        readme = _edge_readme(metadata, name=name, model_file=model_file, precision=chosen).encode()
        edge = {
            "deployment_name": name,
            "generator": GENERATOR,
            "requested_precision": requested,
            "precision": chosen,
            "format": _PRECISION_FORMATS[chosen],
            "model_file": model_file,
            "sha256": model_record.sha256,
            "size_bytes": model_record.size_bytes,
            "available_precisions": [p for p in EDGE_PRECISION_ORDER if p in available],
            "wrappers": {"kotlin": KOTLIN_WRAPPER_PATH, "swift": SWIFT_WRAPPER_PATH},
            "runtimes": {
                "android": "com.microsoft.onnxruntime:onnxruntime-android (ai.onnxruntime)",
                "ios": "onnxruntime-objc (CocoaPods) or onnxruntime-swift-package-manager",
                "min_onnxruntime": min_onnxruntime(metadata),
            },
        }
        files = file_records({README_FILE_NAME: readme}, {model_file: model_record, **wrappers})
        document = {**package.raw_metadata, "files": files, "edge": edge}
        entries = {
            README_FILE_NAME: ZipEntry(data=readme),
            METADATA_FILE_NAME: ZipEntry(data=json_bytes(document)),
            model_file: copied(package, model_file),
            **{path: copied(package, path) for path in wrappers},
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{slug}-edge.zip"
        return write_package(target, entries, model_file, chosen)


def _checked_precision(precision: Any) -> EdgePrecision:
    allowed = get_args(EdgePrecision)
    if precision not in allowed:
        raise RequestInvalid(
            f"precision must be one of {', '.join(allowed)}, not {str(precision)[:40]!r}",
            field="options.precision",
        )
    result: EdgePrecision = precision
    return result


def _built_models(package: ExportPackage) -> dict[ModelPrecision, str]:
    """Each precision whose model ``metadata.json`` reports built, with its file (which must exist)."""
    available: dict[ModelPrecision, str] = {}
    for precision in EDGE_PRECISION_ORDER:
        export_format = _PRECISION_FORMATS[precision]
        outcome = package.metadata.validation.get(export_format)
        if outcome is None or outcome.status != "built":
            continue
        file = outcome.file
        if (
            not file
            or "/" in file
            or "\\" in file
            or not file.endswith(".onnx")
            or file in (METADATA_FILE_NAME, README_FILE_NAME)
        ):
            raise PackageInconsistent(
                f"metadata.json reports {export_format} built but names no usable model file "
                f"({shown(str(file))})",
                file=METADATA_FILE_NAME,
            )
        if not package.has(file):
            raise PackageInconsistent(
                f"metadata.json reports {export_format} built as {shown(file)}, which the export "
                "package does not hold",
                file=file,
            )
        available[precision] = file
    if "fp32" not in available:
        raise PackageInconsistent(
            "the export package has no FP32 ONNX model (metadata.json's validation.onnx is not built)",
            file=METADATA_FILE_NAME,
        )
    return available


def _chosen_precision(requested: EdgePrecision, available: Mapping[ModelPrecision, str]) -> ModelPrecision:
    if requested == "auto":
        return next(p for p in EDGE_PRECISION_ORDER if p in available)
    if requested not in available:
        built = ", ".join(p for p in EDGE_PRECISION_ORDER if p in available)
        raise RequestInvalid(
            f"this export has no {requested} model; built: {built}",
            field="options.precision",
            built=[p for p in EDGE_PRECISION_ORDER if p in available],
        )
    return requested


_PRECISION_NOTES: Final[Mapping[ModelPrecision, str]] = {
    "int8": (
        "INT8, statically quantised (QDQ form: int8 weights, uint8 activations). Inputs and outputs "
        "stay float32, so the wrappers feed it exactly like the FP32 model. The smallest of the three, "
        "and often the fastest on mobile CPUs."
    ),
    "fp16": (
        "FP16 weights and activations; inputs and outputs stay float32 (casts at the edges), so the "
        "wrappers feed it exactly like the FP32 model. Half the size of FP32; it is fastest where the "
        "device has float16 kernels (GPU or NPU execution providers), and may be slower on plain CPUs."
    ),
    "fp32": "FP32, the model as exported and validated against PyTorch.",
}


def _edge_readme(metadata: PackageMetadata, *, name: str, model_file: str, precision: ModelPrecision) -> str:
    model = metadata.model
    tensor = metadata.inputs[0]
    example = ", ".join(str(d) for d in example_shape(tensor.shape))
    count = math.prod(example_shape(tensor.shape))
    stem = model_file.removesuffix(".onnx")
    min_ort = min_onnxruntime(metadata) or "a recent release"
    has_norm = bool(metadata.preprocessing and metadata.preprocessing.normalization)
    outcome = metadata.validation.get(_PRECISION_FORMATS[precision])
    parity = outcome.parity if outcome else []
    lines = [
        f"# {cell(name)}: edge package for {model.name} {model.version}",
        "",
        f"The model `{model.name}` {model.version} for Android and iOS, run with ONNX Runtime "
        f"({min_ort} or newer). Generated by Heimdall Export {__version__} from the model's export "
        "package; `metadata.json` holds the same facts in machine-readable form (the `edge` section "
        "names the model file), with the sha256 of every other file here.",
        "",
        "## Contents",
        "",
        f"- `{model_file}`: the model to ship with the app (**pass this file to the wrappers**)",
        f"- `{KOTLIN_WRAPPER_PATH}`: Kotlin wrapper (`ai.onnxruntime`)",
        f"- `{SWIFT_WRAPPER_PATH}`: Swift wrapper (`onnxruntime-objc`)",
        "- `metadata.json`, `README.md`",
        "",
        "## Model",
        "",
        _PRECISION_NOTES[precision],
        "",
        f"- file: `{model_file}` ({metadata.files[model_file].size_bytes:,} bytes)",
        f"- sha256: `{metadata.files[model_file].sha256}`",
    ]
    if parity:
        worst = max(c.max_abs_err for c in parity)
        lines.append(
            f"- checked against PyTorch: max abs error {worst:.3g} (tolerance {parity[0].tolerance:g})"
        )
    lines += ["", "## Inputs and outputs", "", *io_table(metadata, "each wrapper")]
    lines += ["", "### Preprocessing", "", *preprocessing_lines(metadata)]
    if has_norm:
        lines += ["", "The wrappers normalise for you: `predict(...)` does it by default."]
    post = postprocessing_lines(metadata)
    if post:
        lines += ["", "### Outputs", "", *post]
    lines += [
        "",
        "## Android (Kotlin, `ai.onnxruntime`)",
        "",
        f"Add `com.microsoft.onnxruntime:onnxruntime-android` ({min_ort} or newer) to the app's "
        f"dependencies, copy `{KOTLIN_WRAPPER_PATH}` into the sources and `{model_file}` into "
        "`src/main/assets/`. ONNX Runtime opens a model from a file path, so copy the asset to the "
        "app's files once:",
        "",
        "```kotlin",
        f'val modelFile = File(context.filesDir, "{model_file}")',
        "if (!modelFile.exists()) {",
        f'    context.assets.open("{model_file}").use {{ input -> '
        "modelFile.outputStream().use { input.copyTo(it) } }",
        "}",
        "ModelWrapper(modelFile.path).use { model ->",
        f"    val input = FloatArray({count})  // row-major, shape ({example})",
        f"    val outputs = model.predict(input, longArrayOf({example}))",
        "    // one property per output, each a Tensor(shape, data): see ModelOutputs in ModelWrapper.kt",
        "}",
        "```",
        "",
        "## iOS (Swift, `onnxruntime-objc`)",
        "",
        f"Add ONNX Runtime ({min_ort} or newer) with CocoaPods (`pod 'onnxruntime-objc'`) or Swift "
        "Package Manager (`onnxruntime-swift-package-manager`, product `onnxruntime`), add "
        f"`{SWIFT_WRAPPER_PATH}` to the target and `{model_file}` to the app bundle:",
        "",
        "```swift",
        f'let path = Bundle.main.path(forResource: "{stem}", ofType: "onnx")!',
        "let model = try ModelWrapper(modelPath: path)",
        f"let input = [Float](repeating: 0, count: {count})  // row-major, shape [{example}]",
        f"let outputs = try model.predict(input, shape: [{example}])",
        "```",
        "",
        "The wrappers check the input's shape against the model's (`INPUT_SHAPE` / `inputShape`, -1 for "
        "a dynamic dimension) before running it.",
    ]
    return "\n".join(lines) + "\n"
