"""A model that arrives as a ``.heimdall`` bundle instead of a checkpoint: what the pipeline needs of it.

A bundle carries the FP32 ONNX model, not the PyTorch model or its weights, so the pipeline's
PyTorch stages (build, export, parity against PyTorch, TorchScript) cannot run. Everything that
starts from the FP32 ONNX model can: FP16, INT8 and TensorRT (each checked against the FP32 model in
ONNX Runtime instead of PyTorch), the ONNX Runtime benchmark, and the export package with its
wrappers and Triton repository. That is how a model imported from another Heimdall instance gets
engines built for this instance's hardware (TensorRT engines do not port between GPUs).

The bundle passes both validation passes first (:func:`open_bundle`); the manifest the later stages
read is derived from the bundle's metadata and the graph the structural pass saw
(:func:`bundle_manifest`), and the I/O spec is the graph's own (:func:`bundle_io_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heimdall.bundle import ReadResult, read_bundle
from heimdall.bundle.structural import StructuralReport, TensorSpec, check_structure
from heimdall.conversion import DEFAULT_BUNDLE_FORMATS
from heimdall.errors import ChecksumMismatch, UnsupportedArchitecture
from heimdall.manifest import ExportFormat, Manifest, parse_manifest
from heimdall.settings import BundleLimits, get_settings
from heimdall_batch.export_onnx import ONNX_FILE_NAME, OnnxExport
from heimdall_batch.specs import IOSpec

#: Why the stages that need the PyTorch model do not run.
NO_PYTORCH_MODEL = "no PyTorch model: the model came as a .heimdall bundle"


@dataclass(frozen=True)
class OpenedBundle:
    """A verified bundle: its metadata, the graph facts of its model, and the model written out."""

    read: ReadResult
    structure: StructuralReport
    onnx: OnnxExport


def open_bundle(
    path: Path, out_dir: Path, *, limits: BundleLimits | None = None, expected_sha256: str | None = None
) -> OpenedBundle:
    """Run both validation passes on the bundle at ``path`` and write its model to ``out_dir/model.onnx``.

    With ``expected_sha256`` (what the registry holds for the model) the embedded model must also hash
    to it (:class:`~heimdall.errors.ChecksumMismatch` otherwise, before the structural pass).

    The model is written byte for byte as the bundle embeds it (same sha256), and only once both
    passes accepted it: a refused bundle leaves nothing behind. Raises the bundle's typed error
    (:class:`~heimdall.errors.BundleError`) when either pass refuses it.
    """
    limits = limits or get_settings().bundle_limits()
    onnx_path = out_dir / ONNX_FILE_NAME
    partial = out_dir / f".{ONNX_FILE_NAME}.partial"
    try:
        with partial.open("wb") as sink:
            read = read_bundle(path, limits=limits, onnx_sink=sink)
        if expected_sha256 is not None and read.onnx_sha256 != expected_sha256:
            raise ChecksumMismatch(
                f"the bundle's model hashes to {read.onnx_sha256}, not to {expected_sha256}, the model this "
                "job was asked to convert (the stored bundle was replaced)",
                field="model.onnx_model_base64",
            )
        structure = check_structure(partial, read.bundle, limits=limits, expected_sha256=read.onnx_sha256)
        partial.replace(onnx_path)
    finally:
        partial.unlink(missing_ok=True)
    producer_name, _, producer_version = structure.producer.partition(" ")
    exported = OnnxExport(
        path=onnx_path,
        opset=structure.opset,
        ir_version=structure.ir_version,
        producer_name=producer_name,
        producer_version=producer_version,
    )
    return OpenedBundle(read=read, structure=structure, onnx=exported)


def bundle_manifest(opened: OpenedBundle, formats: list[ExportFormat] | None = None) -> Manifest:
    """The manifest the later stages read: names and shapes from the graph, the rest from the bundle.

    Refuses (:class:`~heimdall.errors.UnsupportedArchitecture`, terminal) what the pipeline cannot
    feed: more than one input, a non-float32 input, or a non-batch dimension that is dynamic in the
    graph and not fixed by the bundle's ``input_shape`` (calibration and benchmarks need a shape).
    """
    bundle, structure = opened.read.bundle, opened.structure
    if len(structure.inputs) != 1:
        names = ", ".join(t.name for t in structure.inputs)
        raise UnsupportedArchitecture(
            f"the model has {len(structure.inputs)} inputs ({names}); only single-input models can be "
            "converted"
        )
    tensor = structure.inputs[0]
    if tensor.elem_type != "float32":
        raise UnsupportedArchitecture(
            f"input {tensor.name!r} is {tensor.elem_type}; only float32 inputs can be calibrated and checked"
        )
    document: dict[str, Any] = {
        "model_name": bundle.model.model_name,
        "version": bundle.model.version,
        "architecture": bundle.model.architecture,
        "input_shape": _concrete_input_shape(tensor, bundle.model.input_shape),
        "input_names": [tensor.name],
        "output_names": [t.name for t in structure.outputs],
        "dynamic_batch": not isinstance(tensor.shape[0], int),
        "opset": structure.opset,
        "formats": [f.value for f in (formats or DEFAULT_BUNDLE_FORMATS)],
        "description": bundle.bundle_metadata.description or "",
        "created_by": bundle.bundle_metadata.created_by or "",
    }
    for component in ("training_config", "performance_metrics", "normalization_stats"):
        value = getattr(bundle, component)
        if value is not None:
            document[component] = value.model_dump(mode="json")
    if bundle.sample_predictions:
        document["sample_predictions"] = [s.model_dump(mode="json") for s in bundle.sample_predictions]
    return parse_manifest(document, source="the bundle's metadata")


def _concrete_input_shape(tensor: TensorSpec, declared: list[Any]) -> list[int]:
    if not tensor.rank_known or not tensor.shape:
        raise UnsupportedArchitecture(f"input {tensor.name!r} declares no shape in the graph")
    shape: list[int] = []
    for axis, dim in enumerate(tensor.shape):
        if isinstance(dim, int) and dim >= 1:
            shape.append(dim)
        elif axis == 0:
            shape.append(1)  # the batch axis: any size will do
        elif axis < len(declared) and isinstance(declared[axis], int) and declared[axis] >= 1:
            shape.append(declared[axis])
        else:
            raise UnsupportedArchitecture(
                f"dimension {axis} of input {tensor.name!r} is dynamic ({dim!r}) and the bundle's "
                "model.input_shape does not fix it: calibration and benchmarks need a concrete shape"
            )
    return shape


def bundle_io_spec(opened: OpenedBundle, manifest: Manifest) -> IOSpec:
    """The graph's inputs and outputs: its names, dtypes and batch axis, the input's other dimensions
    made concrete as :func:`bundle_manifest` chose them."""
    graph_input = opened.structure.inputs[0]
    concrete = TensorSpec(
        name=graph_input.name,
        elem_type=graph_input.elem_type,
        shape=(graph_input.shape[0], *manifest.input_shape[1:]),
    )
    return IOSpec(inputs=(concrete,), outputs=opened.structure.outputs, dynamic_batch=manifest.dynamic_batch)
