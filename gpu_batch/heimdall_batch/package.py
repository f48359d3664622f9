"""Stage: the export package (DESIGN §5), ``export-package.zip``.

Everything a consumer needs to run the converted model without this project: the model files that
were built, ``metadata.json`` (pre/post-processing, I/O specs, performance, compatibility, validation,
the sha256 of every other file), a Python wrapper that runs the model end to end, C++/Swift/Kotlin
wrappers (:mod:`heimdall_batch.wrappers`), a Triton model repository and a README
(:mod:`heimdall_batch.package_readme`). Every text is generated from the same :class:`IOSpec` and
:class:`Manifest` the export used, so names, shapes and normalisation constants cannot drift between
them. The layout, ``metadata.json``'s model, the Triton configuration and the zip conventions are
:mod:`heimdall.export_package`'s, which the deployments code reads the package back with.

The zip is deterministic: entries in sorted order, fixed timestamps and permissions, model files
stored and text deflated, so the same inputs give the same bytes and a retried job overwrites its
package with an identical one. Nothing in it depends on the clock unless the caller passes
``created_at``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

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
from heimdall.export_package.archive import ZipEntry, write_zip
from heimdall.export_package.layout import (
    CPP_HEADER_PATH,
    CPP_SOURCE_PATH,
    GENERATOR,
    KOTLIN_WRAPPER_PATH,
    METADATA_FILE_NAME,
    PYTHON_WRAPPER_PATH,
    README_FILE_NAME,
    SWIFT_WRAPPER_PATH,
    triton_config_path,
    triton_model_path,
)
from heimdall.export_package.metadata import (
    METADATA_SCHEMA_VERSION,
    SHAPE_CONVENTION,
    PackageMetadata,
    metadata_bytes,
)
from heimdall.export_package.triton import triton_config
from heimdall_batch.outputs import file_record
from heimdall_batch.package_facts import (
    built_file_name,
    compatibility,
    fp32_onnx_file,
    input_layout,
    minimum_onnxruntime,
    normalization_stats,
    output_description,
    triton_max_batch_size,
)
from heimdall_batch.package_readme import readme_text
from heimdall_batch.parity import FP32_ONNX_REFERENCE
from heimdall_batch.specs import IOSpec
from heimdall_batch.wrappers import cpp_wrapper, kotlin_wrapper, python_wrapper, swift_wrapper


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

    def zip_entry(self) -> ZipEntry:
        return ZipEntry.of_file(self.path) if self.path is not None else ZipEntry(data=self.data)


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
    onnx_file = fp32_onnx_file(outcomes)
    entries: dict[str, _Entry] = {}
    for outcome in outcomes:
        if outcome.status is FormatStatus.BUILT:
            entries[built_file_name(outcome)] = _Entry(path=_checked_model_file(out_dir, outcome))
    entries[triton_model_path(manifest.model_name)] = _Entry(path=out_dir / onnx_file)
    min_ort = minimum_onnxruntime(onnx_metadata.get("opset"), onnx_metadata.get("ir_version"))
    header, source = cpp_wrapper(manifest, spec, onnx_file=onnx_file, min_onnxruntime=min_ort)
    texts = {
        PYTHON_WRAPPER_PATH: python_wrapper(manifest, spec, onnx_file=onnx_file, min_onnxruntime=min_ort),
        CPP_HEADER_PATH: header,
        CPP_SOURCE_PATH: source,
        SWIFT_WRAPPER_PATH: swift_wrapper(manifest, spec, onnx_file=onnx_file, min_onnxruntime=min_ort),
        KOTLIN_WRAPPER_PATH: kotlin_wrapper(manifest, spec, onnx_file=onnx_file, min_onnxruntime=min_ort),
        triton_config_path(manifest.model_name): triton_config(
            manifest.model_name,
            spec.inputs,
            spec.outputs,
            max_batch_size=triton_max_batch_size(manifest, spec),
        ),
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
    entries[METADATA_FILE_NAME] = _Entry(data=metadata_bytes(metadata))
    target = out_dir / PACKAGE_FILE_NAME
    write_zip(target, {name: entry.zip_entry() for name, entry in entries.items()})
    return target


def _checked_model_file(out_dir: Path, outcome: FormatOutcome) -> Path:
    path = out_dir / built_file_name(outcome)
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
) -> PackageMetadata:
    """The content of ``metadata.json`` (``files``: every other file of the package).

    Checked against the model the deployments code reads it with: a package it would refuse is
    not written (:class:`ConversionError`).
    """
    document = {
        "schema_version": METADATA_SCHEMA_VERSION,
        "generator": GENERATOR,
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
    try:
        return PackageMetadata.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConversionError(
            f"the package's metadata.json would not be readable: {where}: {first['msg']}"
        ) from None


def preprocessing(manifest: Manifest, spec: IOSpec) -> dict[str, Any]:
    """What a caller does to raw input before the model sees it."""
    stats = normalization_stats(manifest)
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
                "description": output_description(manifest, index, len(spec.outputs)),
            }
        )
    return {"outputs": outputs}


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
