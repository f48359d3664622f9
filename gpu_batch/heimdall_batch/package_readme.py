"""``README.md`` of the export package: what is inside, how to run it, and how far it was checked.

Generated from the same :class:`Manifest`, :class:`IOSpec` and outcomes as ``metadata.json``
(:mod:`heimdall_batch.package_facts` computes what both say).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from heimdall import __version__
from heimdall.contracts.jobs import BenchmarkReport, FormatOutcome, FormatStatus
from heimdall.contracts.manifest import ExportFormat, Manifest
from heimdall.export_package.metadata import cell, example_shape, shape_text
from heimdall_batch.package_facts import (
    ONNXRUNTIME_COMPATIBILITY_SOURCE,
    compatibility,
    fp32_onnx_file,
    input_layout,
    normalization_stats,
    output_description,
    triton_max_batch_size,
)
from heimdall_batch.parity import FP32_ONNX_REFERENCE
from heimdall_batch.specs import IOSpec


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
            f"| {kind} | `{cell(t.name)}` | {t.elem_type} | `{shape_text(t.shape)}` |" for t in tensors
        ]
    lines += ["", "`batch` is the dynamic batch axis." if spec.dynamic_batch else "The batch size is fixed."]
    stats = normalization_stats(manifest)
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
        f"- `{cell(t.name)}`: {output_description(manifest, i, len(spec.outputs))}"
        for i, t in enumerate(spec.outputs)
    ]
    return "\n".join(lines)


def _readme_formats(outcomes: Sequence[FormatOutcome]) -> str:
    lines = ["## Formats", "", "| format | status | file | size | reason |", "|---|---|---|---|---|"]
    for o in outcomes:
        size = f"{o.size_bytes:,} bytes" if o.size_bytes is not None else None
        file = o.file if o.status is FormatStatus.BUILT else None
        lines.append(
            f"| {o.format.value} | {o.status.value} | {cell(file)} | {cell(size)} | {cell(o.reason)} |"
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
        f"| {o.format.value} | {c.batch_size} | `{cell(c.output)}` | {c.max_abs_err:.3g} | "
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
                f"{cell(f'{speedup:.2f}x' if speedup is not None else None)} |"
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
    onnx_file = fp32_onnx_file(outcomes)
    example = ", ".join(str(d) for d in example_shape(spec.inputs[0].shape))
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
