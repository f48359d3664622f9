"""A model that arrives as a ``.heimdall`` bundle instead of a checkpoint: what the pipeline needs of it.

A bundle carries the FP32 ONNX model, not the PyTorch model or its weights, so the pipeline's
PyTorch stages (build, export, parity against PyTorch, TorchScript) cannot run. Everything that
starts from the FP32 ONNX model can: FP16, INT8 and TensorRT (each checked against the FP32 model in
ONNX Runtime instead of PyTorch), the ONNX Runtime benchmark, and the export package with its
wrappers and Triton repository. That is how a model imported from another Heimdall instance gets
engines built for this instance's hardware (TensorRT engines do not port between GPUs).

The bundle passes both validation passes first (:func:`open_bundle`), then the serving check that
indexing runs (:func:`heimdall.bundle.upgrade.check_serving`): a model ONNX Runtime loads as stamped
is the FP32 model byte for byte; one it refuses for an old opset is converted as indexing converts it,
and that checked copy is the FP32 model every other format is built from; one it cannot serve at all
is refused (:class:`~heimdall.errors.ModelNotServable`, terminal) before anything is built. The
manifest the later stages read is derived from the bundle's metadata and the graph the structural
pass saw (:func:`bundle_manifest`), and the I/O spec is the graph's own (:func:`bundle_io_spec`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heimdall.bundle import ReadResult, read_bundle
from heimdall.bundle.structural import StructuralReport, TensorSpec, check_structure
from heimdall.bundle.upgrade import check_serving
from heimdall.contracts.jobs import DEFAULT_BUNDLE_FORMATS, OpsetUpgrade
from heimdall.contracts.manifest import ExportFormat, Manifest, manifest_names, parse_manifest
from heimdall.errors import ChecksumMismatch, ModelNotServable, UnsupportedArchitecture
from heimdall.settings import BundleLimits, get_settings
from heimdall_batch.export_onnx import ONNX_FILE_NAME, OnnxExport
from heimdall_batch.specs import IOSpec

#: Why the stages that need the PyTorch model do not run.
NO_PYTORCH_MODEL = "no PyTorch model: the model came as a .heimdall bundle"


@dataclass(frozen=True)
class OpenedBundle:
    """A verified bundle: its metadata, the graph facts of its model, and its FP32 model written out.

    ``upgrade`` is the opset upgrade the serving check made when ONNX Runtime cannot load the bundle's
    model as stamped: ``onnx`` is then that upgraded copy (``read.onnx_sha256`` stays the bundle's).
    """

    read: ReadResult
    structure: StructuralReport
    onnx: OnnxExport
    upgrade: OpsetUpgrade | None = None


def open_bundle(
    path: Path, out_dir: Path, *, limits: BundleLimits | None = None, expected_sha256: str | None = None
) -> OpenedBundle:
    """Run both validation passes and the serving check on the bundle at ``path`` and write its FP32
    model to ``out_dir/model.onnx``.

    With ``expected_sha256`` (what the registry holds for the model) the embedded model must also hash
    to it (:class:`~heimdall.errors.ChecksumMismatch` otherwise, before the structural pass).

    The model is written byte for byte as the bundle embeds it (same sha256) when ONNX Runtime loads
    it as stamped; when it needs an opset upgrade, the upgraded copy is written instead (see the
    module docstring). It is written only once every check accepted it: a refused bundle leaves
    nothing behind. Raises the bundle's typed error (:class:`~heimdall.errors.BundleError`) when
    either pass refuses it, :class:`~heimdall.errors.ModelNotServable` with the serving check's reason
    (the model record's ``not_servable_reason``) when ONNX Runtime cannot serve it even upgraded.
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
        # The check indexing runs (the same child process, limits, target opset and samples), so that
        # the job builds from the model platform endpoints serve, or refuses what they refuse.
        with tempfile.TemporaryDirectory(prefix=".serving-", dir=out_dir) as workdir:
            serving = check_serving(
                partial,
                structure,
                limits=limits,
                workdir=Path(workdir),
                samples=read.bundle.sample_predictions,
            )
            if not serving.servable:
                reason = serving.reason or "ONNX Runtime cannot load it"
                raise ModelNotServable(
                    f"ONNX Runtime cannot serve the bundle's model, so nothing is built from it: {reason}",
                    reason=serving.reason,
                )
            (serving.upgraded or partial).replace(onnx_path)
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
    if serving.upgraded is not None:
        exported = _upgraded_export(onnx_path)
    return OpenedBundle(read=read, structure=structure, onnx=exported, upgrade=serving.upgrade)


def _upgraded_export(path: Path) -> OnnxExport:
    """The facts of the upgraded copy (its opset, IR version and producer as the converter left them)."""
    import onnx  # noqa: PLC0415 - heavy; the copy already passed the structural pass in the checker

    return OnnxExport.of(path, onnx.load(str(path), load_external_data=False))


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
    model_name, version = manifest_names(bundle.model.model_name, bundle.model.version)
    document: dict[str, Any] = {
        "model_name": model_name,
        "version": version,
        "architecture": bundle.model.architecture,
        "input_shape": _concrete_input_shape(tensor, bundle.model.input_shape),
        "input_names": [tensor.name],
        "output_names": [t.name for t in structure.outputs],
        "dynamic_batch": not isinstance(tensor.shape[0], int),
        "opset": opened.onnx.opset,  # the FP32 model's: an upgraded copy's, when there is one
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


def derivable_model(opened: OpenedBundle, folder: Path) -> Path:
    """The FP32 model as FP16, INT8 and TensorRT are built from it: its own file, or, when its graph
    lists initializers among its inputs (IR version 3 required that; old backend-test models and
    their opset upgrades do it), a copy in ``folder`` where they are plain constants.

    Those inputs are never fed (the I/O spec leaves them out, as serving does), so the copy computes
    the same function; the converters need it: FP16 would give the weights a type their input
    declarations contradict, and the quantiser would ask the calibration data for them. The copy's IR
    version is raised to the lowest one its opsets allow (listing initializers as inputs is optional
    from IR 4 on).
    """
    import onnx  # noqa: PLC0415 - heavy; the model already passed the structural pass

    model = onnx.load(str(opened.onnx.path), load_external_data=False)
    weights = {tensor.name for tensor in model.graph.initializer}
    if not any(value.name in weights for value in model.graph.input):
        return opened.onnx.path
    kept = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, onnx.helper.find_min_ir_version_for(model.opset_import))
    path = folder / ONNX_FILE_NAME
    onnx.save(model, str(path))
    return path
